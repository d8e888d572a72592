//! A proxy whose wall clock can be stepped while it runs, as NTP or a resumed VM steps it:
//! libfaketime, preloaded into the proxy, reads an offset from a file on every clock read and
//! leaves the monotonic clock alone. `scripts/test.sh` installs it (`apt-get install faketime`).

use std::path::PathBuf;

/// Where Debian's `libfaketime` package puts the library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The offset file of one proxy's clock.
pub struct FakeClock {
    dir: tempfile::TempDir,
}

impl FakeClock {
    /// A clock at the real time (offset zero) until stepped.
    pub fn new() -> Self {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: scripts/test.sh installs it (apt-get install faketime)"
        );
        let clock = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        clock.step_to(0);
        clock
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("offset")
    }

    /// The environment that puts a proxy on this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", LIBFAKETIME.to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file().display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Sets the wall clock `secs` seconds off the real time (negative: behind), at once.
    pub fn step_to(&self, secs: i64) {
        let tmp = self.dir.path().join("offset.tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).unwrap();
        std::fs::rename(tmp, self.file()).unwrap();
    }
}

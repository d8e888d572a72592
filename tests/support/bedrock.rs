//! The Bedrock stand-in (`tests/fixtures/bedrock_origin.py`): checks every request's SigV4
//! signature with botocore's signer against the keys it is given, and logs what it received.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenant_proxy_loadtest::tls::PemPair;

use super::repo_root;

/// A running Bedrock stand-in, killed on drop.
pub struct BedrockOrigin {
    /// The port it listens on (its own choice).
    pub port: u16,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl BedrockOrigin {
    /// Starts it with `keys` (`{"AKID": {"secret": …, "token": …|null}}`); `tls` serves HTTPS.
    pub fn start(keys: &Value, tls: Option<&PemPair>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let port_file = dir.path().join("port");
        let keys_file = dir.path().join("keys.json");
        std::fs::write(&keys_file, keys.to_string()).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/fixtures/bedrock_origin.py"))
            .arg(&port_file)
            .arg(&log)
            .arg(&keys_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap());
        if let Some(pair) = tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, &pair.cert).unwrap();
            std::fs::write(&key, &pair.key).unwrap();
            cmd.arg("--tls").arg(cert).arg(key);
        }
        let mut child = cmd
            .spawn()
            .expect("python3 with `boto3` installed (scripts/test.sh installs it)");
        let server_log =
            || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("Bedrock origin exited ({status}): {}", server_log());
            }
            assert!(
                Instant::now() < deadline,
                "Bedrock origin did not start: {}",
                server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    /// Every request it received, in order: `{path, akid, ok, error, body, headers}`.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for BedrockOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

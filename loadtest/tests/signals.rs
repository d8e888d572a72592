//! A run stopped by a signal stops every process it started: a `timeout` or a CI runner that
//! ends the loadtest must not leave proxies, baselines or Redis behind, holding ports and memory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pids of `pid`'s child processes (of every thread of it).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_run_stopped_by_sigterm_stops_the_processes_it_started() {
    let mut run = Command::new(env!("CARGO_BIN_EXE_tenant-proxy-loadtest"))
        .args(["run", "--only", "bare-pingora", "--concurrency", "1"])
        .args(["--requests", "100000000", "--duration-limit", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = run.id();
    // The bare-pingora server, once started (and past its start-up probe).
    let children = wait_for("the run's server process", || {
        let c = children_of(pid);
        (!c.is_empty()).then_some(c)
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_for("the run to end", || run.try_wait().unwrap());
    assert!(!status.success(), "a stopped run is no success");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    for child in children {
        let alive = Path::new(&format!("/proc/{child}")).exists();
        if alive {
            // Not left running by the test either.
            let _ = Command::new("kill")
                .args(["-KILL", &child.to_string()])
                .status();
        }
        assert!(!alive, "process {child} outlived the run: {stderr}");
    }
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
}

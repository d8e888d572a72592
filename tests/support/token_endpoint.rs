//! Python stand-ins for real servers: the OAuth2 token endpoint
//! (`tests/fixtures/token_endpoint.py`), which verifies each client's secret or JWT assertion
//! itself (PyJWT) and counts the grants it gives, and the recorded-shapes LLM origin.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::repo_root;

/// A running token endpoint, killed on drop.
pub struct TokenEndpoint {
    /// The port it listens on (its own choice).
    pub port: u16,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TokenEndpoint {
    /// Starts it with `clients` (`{"id": {"secret"|"public_key", "expires_in"?, "delay"?}}`).
    pub fn start(clients: &Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("grants.jsonl");
        let clients_file = dir.path().join("clients.json");
        std::fs::write(&clients_file, clients.to_string()).unwrap();
        let (child, port) = spawn_python(
            "tests/fixtures/token_endpoint.py",
            &[&log, &clients_file],
            dir.path(),
        );
        Self {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every grant asked for, in order: `{client, grant_type, ok, error, token}`.
    pub fn grants(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The grants given to `client`.
    pub fn granted(&self, client: &str) -> Vec<Value> {
        self.grants()
            .into_iter()
            .filter(|g| g["client"] == client && g["ok"] == true)
            .collect()
    }
}

/// Starts the Python server `script` (relative to the repo root) with a port file and `args`,
/// its stderr in `dir`; waits (30 s at most) for the port it reports.
pub fn spawn_python<A: AsRef<OsStr>>(script: &str, args: &[A], dir: &Path) -> (Child, u16) {
    let port_file = dir.join("port");
    let server_log = dir.join("server.log");
    let mut child = Command::new("python3")
        .arg(repo_root().join(script))
        .arg(&port_file)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&server_log).unwrap())
        .spawn()
        .expect("python3 with what the fixtures import (scripts/test.sh installs it)");
    let log = || std::fs::read_to_string(&server_log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            return (child, text.trim().parse().unwrap());
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{script} exited ({status}): {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{script} did not start: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The recorded-shapes LLM origin (`tests/fixtures/llm_shapes_origin.py`): Azure OpenAI and
/// OpenAI-compatible (vLLM) responses as those servers send them; logs every request.
pub struct ShapesOrigin {
    /// The port it listens on (its own choice).
    pub port: u16,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl ShapesOrigin {
    /// Starts it.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let (child, port) =
            spawn_python("tests/fixtures/llm_shapes_origin.py", &[&log], dir.path());
        Self {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    /// Every request it received: `{method, path, query, headers, body}`.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for ShapesOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

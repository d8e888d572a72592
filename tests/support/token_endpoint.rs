//! The OAuth2 token endpoint stand-in (`tests/fixtures/token_endpoint.py`): verifies each
//! client's secret or JWT assertion itself (PyJWT), counts and logs the grants it gives.

use std::path::PathBuf;
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
        let port_file = dir.path().join("port");
        let clients_file = dir.path().join("clients.json");
        std::fs::write(&clients_file, clients.to_string()).unwrap();
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/fixtures/token_endpoint.py"))
            .arg(&port_file)
            .arg(&log)
            .arg(&clients_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("python3 with `PyJWT` and `cryptography` (scripts/test.sh installs them)");
        let server_log =
            || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("token endpoint exited ({status}): {}", server_log());
            }
            assert!(
                Instant::now() < deadline,
                "token endpoint did not start: {}",
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

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

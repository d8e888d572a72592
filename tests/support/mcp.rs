//! The MCP server fixture (`tests/fixtures/mcp_server.py`: the official Python SDK over
//! Streamable HTTP) as a child process that records what it ran.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenant_proxy_loadtest::tls::PemPair;

use super::repo_root;

/// A running MCP fixture, killed on drop.
pub struct McpFixture {
    /// The port it listens on (its own choice, read from the port file it writes).
    pub port: u16,
    log: PathBuf,
    child: Child,
    /// Its certificate, log and port file; removed on drop.
    _dir: tempfile::TempDir,
}

impl McpFixture {
    /// Starts the fixture: `json_response` answers POSTs with one JSON body instead of an
    /// event stream; `tls` serves HTTPS with this certificate to requests naming these hosts
    /// (comma-separated).
    pub fn start(json_response: bool, tls: Option<(&PemPair, &str)>) -> Self {
        Self::start_with(
            if json_response {
                &["--json-response"]
            } else {
                &[]
            },
            tls,
        )
    }

    /// Streamable HTTP with sessions: `initialize` opens one (`Mcp-Session-Id`) that every later
    /// request must name (JSON answers).
    pub fn start_stateful() -> Self {
        Self::start_with(&["--json-response", "--stateful"], None)
    }

    /// The legacy HTTP+SSE transport (`GET /sse`, `POST /messages/?session_id=`).
    pub fn start_legacy_sse() -> Self {
        Self::start_with(&["--legacy-sse"], None)
    }

    fn start_with(mode: &[&str], tls: Option<(&PemPair, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.jsonl");
        let port_file = dir.path().join("port");
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/fixtures/mcp_server.py"))
            .arg(&port_file)
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap());
        cmd.args(mode);
        if let Some((pair, hosts)) = tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, &pair.cert).unwrap();
            std::fs::write(&key, &pair.key).unwrap();
            cmd.arg("--tls").arg(cert).arg(key).arg(hosts);
        }
        let mut child = cmd
            .spawn()
            .expect("python3 with `mcp` installed (scripts/test.sh installs it)");
        let server_log =
            || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            // The fixture renames the file into place once it listens: it is whole or absent.
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("MCP server exited ({status}): {}", server_log());
            }
            assert!(
                Instant::now() < deadline,
                "MCP server did not start: {}",
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

    /// Everything the server ran, in order: `{"tool"|"resource"|"prompt": …, "args": …}`.
    pub fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The tool calls the server ran, in order: (tool, arguments).
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.log()
            .into_iter()
            .map(|v| (v["tool"].as_str().unwrap().to_string(), v["args"].clone()))
            .collect()
    }
}

impl Drop for McpFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

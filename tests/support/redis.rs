//! A real `redis-server` on a loopback port, stopped and started again on the same port when a
//! test needs Redis to go away and come back.
//!
//! `redis-server --port 0` does not mean "any port" (it turns TCP off), and the proxy's
//! configuration takes `redis://host:port` URLs only, so the harness picks the port: it holds a
//! [`HeldPort::for_child`] (bound, not listening, `SO_REUSEADDR`) for the server's whole life,
//! and `redis-server`, which binds with `SO_REUSEADDR` too, listens on it beside that socket.
//! Nothing else is given the port meanwhile, even while the server is down between a stop and a
//! restart, so a restart cannot lose its port to another process.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::HeldPort;

/// A running (or stopped) `redis-server`, killed on drop.
pub struct RedisServer {
    pub port: u16,
    held: HeldPort,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A new, empty server.
    pub fn start() -> Self {
        let held = HeldPort::for_child().unwrap();
        let mut redis = RedisServer {
            port: held.port,
            held,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL, as a crash): connections to its port are refused until
    /// [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its port, empty (nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.held.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").first().map(String::as_str) != Some("PONG") {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends an inline command; returns the reply lines (status, bulk strings and array items).
    pub fn command(&self, cmd: &str) -> Vec<String> {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return vec![];
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            return vec![];
        }
        let mut r = BufReader::new(s);
        let mut first = String::new();
        if r.read_line(&mut first).is_err() {
            return vec![];
        }
        let first = first.trim_end().to_string();
        match first.chars().next() {
            Some('+') | Some(':') => vec![first[1..].to_string()],
            Some('$') if first == "$-1" => vec![],
            Some('$') => {
                let mut v = String::new();
                r.read_line(&mut v).unwrap();
                vec![v.trim_end().to_string()]
            }
            Some('*') => {
                let n: usize = first[1..].parse().unwrap_or(0);
                (0..n)
                    .map(|_| {
                        let mut len = String::new();
                        r.read_line(&mut len).unwrap();
                        let mut v = String::new();
                        r.read_line(&mut v).unwrap();
                        v.trim_end().to_string()
                    })
                    .collect()
            }
            _ => vec![first],
        }
    }

    /// Runs `redis-cli --raw ARGS` against this server (for replies [`Self::command`] does not
    /// parse, such as nested arrays); its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

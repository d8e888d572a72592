//! A recording origin: a plain-HTTP or TLS server on an ephemeral loopback port that keeps
//! every request it receives.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// Which of the origin's connections it came on (numbered from 0 in the order accepted).
    pub conn: usize,
}

/// An origin that records every request. Paths: `/slow/...` sleeps 3 s before answering,
/// `/reset/...` closes the connection without a response, `/only100/...` sends `100 Continue`
/// and closes, `/switch/...` answers `101` with no WebSocket handshake and reads on as HTTP,
/// `/trailers/...` answers chunked with a `Trailer`-announced trailer (as gRPC does),
/// `/echo/...` (and `/e404/...` with a
/// 404) reflects the `Authorization` it got in a header and the body, as a careless upstream
/// would, `/logged/...` the latest `Authorization` any request brought (a request log);
/// anything else answers 200 with a small JSON body.
pub struct Origin {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Origin {
    pub fn start() -> Self {
        Self::serve(serve_recorded)
    }

    /// The same origin over TLS with the certificate `pair`.
    pub fn start_tls(pair: &tenant_proxy_loadtest::tls::PemPair) -> Self {
        let config = tenant_proxy_loadtest::tls::server_config(pair).unwrap();
        Self::serve(move |stream, seen, number| {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            serve_recorded(rustls::StreamOwned::new(conn, stream), seen, number)
        })
    }

    /// Accepts on a new ephemeral loopback listener, each connection on a thread of its own.
    fn serve<F>(conn: F) -> Self
    where
        F: Fn(std::net::TcpStream, Arc<Mutex<Vec<Recorded>>>, usize) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (recorder, conn) = (seen.clone(), Arc::new(conn));
        std::thread::spawn(move || {
            for (number, stream) in listener.incoming().flatten().enumerate() {
                let (seen, conn) = (recorder.clone(), conn.clone());
                std::thread::spawn(move || conn(stream, seen, number));
            }
        });
        Self { port, seen }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests whose target contains `needle`.
    pub fn matching(&self, needle: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.target.contains(needle))
            .collect()
    }
}

/// Serves the recording origin on one connection (plain or TLS).
fn serve_recorded<S: Read + Write>(stream: S, seen: Arc<Mutex<Vec<Recorded>>>, conn: usize) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut body = Vec::new();
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            body.resize(len, 0);
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        seen.lock().unwrap().push(Recorded {
            method: method.clone(),
            target: target.clone(),
            headers: headers.clone(),
            body,
            conn,
        });
        if target.contains("/reset/") {
            return;
        }
        if target.contains("/only100/") {
            // An interim answer, then nothing: the connection closes with no response.
            let _ = reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            return;
        }
        if target.contains("/switch/") {
            // Answers `101` to anything (as an endpoint that reflects a status does), with no
            // WebSocket accept, and goes on reading the connection as HTTP: a client's next
            // bytes would be served as a request no policy decided.
            if reader
                .get_mut()
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        if target.contains("/trailers/") {
            // A gRPC-style answer: chunked, its status in trailers it announces.
            let resp = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntrailer: grpc-status\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n";
            if reader.get_mut().write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if target.contains("/slow/") {
            std::thread::sleep(Duration::from_secs(3));
        }
        if target.contains("/logged/") {
            // Shows the latest `Authorization` it was ever sent, as an upstream with a request
            // log (a debug page, a cache) would, to whoever asks next.
            let logged = seen
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find_map(|r| r.headers.get("authorization").cloned())
                .unwrap_or_default();
            let body = format!("{{\"last_key\":\"{logged}\"}}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if reader.get_mut().write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if target.contains("/echo/") || target.contains("/e404/") {
            // Reflects what it received, as a careless upstream would (in a header and the body).
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            let body = format!(
                "{{\"you_sent\":\"{auth}\",\"body\":{:?}}}",
                String::from_utf8_lossy(&seen.lock().unwrap().last().unwrap().body)
            );
            let status = if target.contains("/e404/") {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-echo: {auth}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if reader.get_mut().write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let resp_body = format!(r#"{{"ok":true,"method":"{method}","path":"{target}"}}"#);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            resp_body.len(),
            resp_body
        );
        if reader.get_mut().write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

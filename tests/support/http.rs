//! HTTP from the test's side: a raw client for requests no ordinary client sends (spoofed
//! `Host`, `CONNECT`, broken framing), and the real clients (curl, Python).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_text()))
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The refusal code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn request_id(&self) -> String {
        self.header("x-request-id").unwrap_or("").to_string()
    }

    /// Asserts a refusal with this status and code; the JSON body, for more checks.
    pub fn assert_refused(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}",
            self.body_text()
        );
        self.json()
    }
}

/// Sends `raw` on a new connection and reads one response (Content-Length or close-delimited).
pub fn raw_request(port: u16, raw: &str) -> std::io::Result<Response> {
    raw_request_bytes(port, raw.as_bytes())
}

/// [`raw_request`] to `addr`.
pub fn raw_request_to(addr: std::net::SocketAddr, raw: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(raw.as_bytes())?;
    read_response(&mut BufReader::new(s))
}

/// [`raw_request`] with bytes that need not be UTF-8.
pub fn raw_request_bytes(port: u16, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(raw)?;
    read_response(&mut BufReader::new(s))
}

/// Reads one response from a connection (Content-Length, chunked or close-delimited).
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line `{status_line}`"),
            )
        })?;
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v[0].parse::<usize>().ok())
    {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v[0].contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// An absolute-form GET through the proxy with an optional bearer token and extra header lines.
pub fn forward_get(proxy_port: u16, url: &str, token: Option<&str>, extra: &str) -> Response {
    let authority = url.split("//").nth(1).unwrap().split('/').next().unwrap();
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw_request(
        proxy_port,
        &format!(
            "GET {url} HTTP/1.1\r\nHost: {authority}\r\n{auth}{extra}Connection: close\r\n\r\n"
        ),
    )
    .unwrap()
}

/// POSTs a chat-completions `body` to the `/llm/` route on a proxy listener, with extra header
/// lines (`"Name: value\r\n"` each).
pub fn llm_chat(port: u16, body: &str, extra_headers: &str) -> Response {
    raw_request(
        port,
        &format!(
            "POST /llm/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

/// Makes `n` calls at once, spread round-robin over `ports`; the responses in call order.
pub fn all_at_once(
    n: usize,
    ports: &[u16],
    call: impl Fn(u16) -> Response + Sync,
) -> Vec<Response> {
    std::thread::scope(|s| {
        let call = &call;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let port = ports[i % ports.len()];
                s.spawn(move || call(port))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Runs curl and returns (status, body). `args` come after the defaults.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Runs a Python snippet with `env`; returns stdout (asserting success).
pub fn python(code: &str, env: &[(&str, String)]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python3 is installed");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

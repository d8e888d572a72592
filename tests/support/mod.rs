//! Test support: a recording origin, a proxy process on ephemeral loopback ports, token minting
//! and small HTTP helpers. Everything listens on 127.0.0.1 only.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use tenant_proxy::identity::token::RunBudget;
use tenant_proxy::identity::token::{mint, MintRequest};
use tenant_proxy::ids::{TenantId, WorkloadId};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `tenant-proxy` binary built by `cargo build -p tenant-proxy` (scripts/test.sh does it).
pub fn proxy_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/tenant-proxy
    let bin = exe.parent().unwrap().parent().unwrap().join("tenant-proxy");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p tenant-proxy` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Recording origin

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A plain-HTTP origin that records every request. Paths: `/slow/...` sleeps 3 s before
/// answering, `/reset/...` closes the connection without a response, anything else answers 200
/// with a small JSON body.
pub struct Origin {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Origin {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen2.clone();
                std::thread::spawn(move || serve_conn(stream, seen));
            }
        });
        Self { port, seen }
    }

    /// The same origin over TLS with the certificate `pair` (plus a connection counter).
    pub fn start_tls(pair: &tenant_proxy_loadtest::tls::PemPair) -> Self {
        let config = tenant_proxy_loadtest::tls::server_config(pair).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen2.clone();
                let config = config.clone();
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    serve_recorded(rustls::StreamOwned::new(conn, stream), seen)
                });
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

fn serve_conn(stream: TcpStream, seen: Arc<Mutex<Vec<Recorded>>>) {
    serve_recorded(stream, seen)
}

/// Serves the recording origin on one connection (plain or TLS).
fn serve_recorded<S: Read + Write>(stream: S, seen: Arc<Mutex<Vec<Recorded>>>) {
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
        });
        if target.contains("/reset/") {
            return;
        }
        if target.contains("/slow/") {
            std::thread::sleep(Duration::from_secs(3));
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

// ---------------------------------------------------------------------------------------------
// Proxy process

pub const TEST_KEY: &str = "proxy/src/identity/testdata/ed25519-test.pem";
pub const TEST_KEY_ES256: &str = "proxy/src/identity/testdata/es256-test.pem";
pub const OTHER_KEY: &str = "proxy/src/identity/testdata/other-ed25519.pem";
pub const TEST_JWKS: &str = "proxy/src/identity/testdata/test-jwks.json";

/// How to lay out a proxy's configuration.
pub struct ProxySpec {
    /// Policy directory to copy (relative to the repo root) — the schema is always the repo's.
    pub policies: &'static str,
    /// Extra `[[route]]` tables (TOML) for the tenant file; `ORIGIN` is replaced by the origin port.
    pub routes: String,
    /// Settings of `[upstream]` besides `connect_timeout` (default: a 10 s read timeout).
    pub upstream: String,
    /// Extra TOML appended to the tenant file (e.g. `[credentials]`).
    pub tenants_extra: String,
    /// Top-level keys of the tenant file, written before any table (e.g. `prices_file`).
    pub tenants_top: String,
    /// Keys added to one tenant's own table: (tenant, TOML lines), e.g. its `time_zone`.
    pub tenant_settings: Vec<(&'static str, String)>,
    /// Extra TOML appended to the static file (e.g. `[limiter]`).
    pub static_extra: String,
    /// Extra keys of the static file's `[audit]` table (e.g. `max_file_bytes = 4096`).
    pub audit: String,
    /// Environment variables for the proxy process.
    pub env: Vec<(String, String)>,
    /// Extra static settings appended to `[limits]`.
    pub limits: &'static str,
    /// The `[egress]` table's body. Default: the test origins on 127.0.0.1 are an explicit
    /// exception to the SSRF guard (loopback is never reachable by default).
    pub egress: String,
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            policies: "tests/fixtures/policies",
            routes: String::new(),
            upstream: "read_timeout = \"10s\"".into(),
            tenants_extra: String::new(),
            tenants_top: String::new(),
            tenant_settings: Vec::new(),
            static_extra: String::new(),
            audit: String::new(),
            env: Vec::new(),
            limits: "",
            egress: "allow = [\"127.0.0.1/32\"]".into(),
        }
    }
}

/// A running proxy with two listeners: `sidecar_port` bound to acme/bot and `shared_port`
/// (tokens). Killed on drop.
pub struct Proxy {
    pub dir: tempfile::TempDir,
    pub sidecar_port: u16,
    pub shared_port: u16,
    pub admin_port: u16,
    child: Child,
}

pub const TENANTS: &str = r#"
[tenants.acme]
plan = "pro"
region = "eu"
workloads = ["bot", "researcher"]

[tenants.globex]
plan = "free"
region = "us"
workloads = ["agent"]

[tenants.evalerr]
plan = "pro"
region = "eu"
workloads = ["agent"]
"#;

impl Proxy {
    pub fn start(spec: ProxySpec) -> Self {
        Self::start_prepared(spec, |_| {})
    }

    /// Writes the configuration, runs `prepare` in the config directory, then starts the proxy.
    pub fn start_prepared(spec: ProxySpec, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = repo_root();
        copy_dir(&root.join(spec.policies), &dir.path().join("policies"));
        std::fs::copy(
            root.join("policies/schema.cedarschema"),
            dir.path().join("policies/schema.cedarschema"),
        )
        .unwrap();
        std::fs::copy(root.join(TEST_JWKS), dir.path().join("jwks.json")).unwrap();
        std::fs::write(dir.path().join("revoked.txt"), "# revoked\nrevoked-jti-1\n").unwrap();
        let (sidecar_port, shared_port, admin_port) = (free_port(), free_port(), free_port());
        let static_toml = format!(
            r#"tenants_file = "tenants.toml"
[admin]
listen = "127.0.0.1:{admin_port}"
[[listener]]
name = "sidecar"
listen = "127.0.0.1:{sidecar_port}"
identity = ["binding"]
binding = {{ tenant = "acme", workload = "bot" }}
[[listener]]
name = "shared"
listen = "127.0.0.1:{shared_port}"
identity = ["token"]
[audit]
dir = "audit"
flush_interval = "5ms"
{}
[upstream]
connect_timeout = "1s"
{}
[egress]
{}
[limits]
{}
[server]
threads = 2
grace_period = "0s"
graceful_shutdown_timeout = "1s"
[log]
level = "info"
{}
"#,
            spec.audit, spec.upstream, spec.egress, spec.limits, spec.static_extra
        );
        std::fs::write(dir.path().join("tenant-proxy.toml"), static_toml).unwrap();
        let mut tenants_tables = TENANTS.to_string();
        for (tenant, lines) in &spec.tenant_settings {
            let header = format!("[tenants.{tenant}]\n");
            assert!(
                tenants_tables.contains(&header),
                "no tenant {tenant} in TENANTS"
            );
            tenants_tables = tenants_tables.replace(&header, &format!("{header}{lines}\n"));
        }
        let tenants = format!(
            r#"policy_dir = "policies"
{}
[token]
jwks_file = "jwks.json"
audience = "tenant-proxy"
max_lifetime = "1h"
leeway = "5s"
revoked_jtis_file = "revoked.txt"
{}
{}
{tenants_tables}"#,
            spec.tenants_top, spec.routes, spec.tenants_extra
        );
        std::fs::write(dir.path().join("tenants.toml"), tenants).unwrap();
        prepare(dir.path());

        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = Command::new(proxy_bin())
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("tenant-proxy.toml"))
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Both streams go to proxy.log (one file offset), so tests can search all output.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let proxy = Proxy {
            dir,
            sidecar_port,
            shared_port,
            admin_port,
            child,
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = raw_request(
                self.admin_port,
                "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
            ) {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("proxy did not become ready; log:\n{}", self.log());
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("proxy.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        raw_request(
            self.admin_port,
            "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .body_text()
    }

    /// Audit records of `tenant` (all days).
    pub fn audit_records(&self, tenant: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let dir = self.path("audit").join(tenant);
        // Record files only: the signed checkpoints sit beside them.
        for file in walk(&dir)
            .into_iter()
            .filter(|f| !f.ends_with("checkpoints.jsonl"))
        {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
        out
    }

    /// Waits until `tenant` has at least `n` records, and returns them all.
    pub fn wait_audit_records(&self, tenant: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let recs = self.audit_records(tenant);
            if recs.len() >= n {
                return recs;
            }
            assert!(
                Instant::now() < deadline,
                "{tenant} has {} audit records, expected {n}",
                recs.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `tenant` has a record with `request_id`, and returns it.
    pub fn audit_record(&self, tenant: &str, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self
                .audit_records(tenant)
                .into_iter()
                .find(|r| r["request_id"] == request_id)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record {request_id} for {tenant}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sighup(&self) {
        Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct TokenOpts {
    pub key: &'static str,
    pub tenant: &'static str,
    pub workload: &'static str,
    pub audience: &'static str,
    pub ttl_secs: u64,
    pub issued_at: u64,
    pub not_before: Option<u64>,
    pub run_id: Option<&'static str>,
    pub jti: Option<&'static str>,
    pub kid: Option<&'static str>,
    pub run_budget: Option<RunBudget>,
}

impl Default for TokenOpts {
    fn default() -> Self {
        Self {
            key: TEST_KEY,
            tenant: "acme",
            workload: "bot",
            audience: "tenant-proxy",
            ttl_secs: 300,
            issued_at: now(),
            not_before: None,
            run_id: None,
            jti: None,
            kid: Some("test-ed"),
            run_budget: None,
        }
    }
}

pub fn token(o: TokenOpts) -> String {
    let pem = std::fs::read_to_string(repo_root().join(o.key)).unwrap();
    let req = MintRequest {
        tenant: TenantId::new(o.tenant).unwrap(),
        workload: WorkloadId::new(o.workload).unwrap(),
        audience: o.audience.into(),
        issuer: None,
        ttl: Duration::from_secs(o.ttl_secs),
        run_id: o.run_id.map(String::from),
        run_budget: o.run_budget,
        scopes: vec![],
        jti: o.jti.map(String::from),
        kid: o.kid.map(String::from),
        now_unix: o.issued_at,
        not_before: o.not_before,
    };
    mint(&pem, &req).unwrap()
}

pub fn token_for(tenant: &'static str, workload: &'static str) -> String {
    token(TokenOpts {
        tenant,
        workload,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP client (for requests no ordinary client will send: spoofed Host, CONNECT, ...)

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

/// Runs `tenant-proxy ARGS` in `dir` with `stdin`; returns (exit code, stdout+stderr).
pub fn proxy_cli(dir: &Path, args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(proxy_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Starts the loadtest mock on an ephemeral loopback port in its own runtime thread.
pub fn start_mock() -> u16 {
    serve_on_loopback(tenant_proxy_loadtest::mock::serve_mock)
}

/// Starts the loadtest mock over TLS (certificate `pair`) on an ephemeral loopback port.
pub fn start_mock_tls(pair: &tenant_proxy_loadtest::tls::PemPair) -> u16 {
    let config = tenant_proxy_loadtest::tls::server_config(pair).unwrap();
    serve_on_loopback(move |l| tenant_proxy_loadtest::tls::serve_mock_tls(l, config))
}

/// Runs `serve` on a new ephemeral loopback listener in its own runtime thread; returns the port.
fn serve_on_loopback<F, Fut>(serve: F) -> u16
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = serve(l).await;
        });
    });
    port
}

/// Cost (micro-units) the audit records say calls were settled at.
pub fn cost_spent(records: &[serde_json::Value]) -> u64 {
    records
        .iter()
        .filter_map(|r| r["settled"]["cost_micros"].as_u64())
        .sum()
}

/// LLM tokens (input + output) the audit records say were used.
pub fn tokens_spent(records: &[serde_json::Value]) -> u64 {
    records
        .iter()
        .filter_map(|r| r["usage"].as_object())
        .map(|u| u["input_tokens"].as_u64().unwrap_or(0) + u["output_tokens"].as_u64().unwrap_or(0))
        .sum()
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

// ---------------------------------------------------------------------------------------------
// Redis

/// A real `redis-server` on a loopback port (ephemeral with [`RedisServer::start`]), killed on
/// drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let redis = RedisServer {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.command("PING").first().map(String::as_str) != Some("PONG") {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
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
}

impl RedisServer {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A tenant-proxy process for one test: its configuration written from typed values, every
//! socket on a port the proxy picked itself (`127.0.0.1:0`, read back from `--ready-file`), its
//! log, metrics and audit trail at hand, and its CLI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenant_proxy_loadtest::config::{
    Limiter, Listener, Ready, Route, StaticFile, Tenant, TenantFile, Token, LOOPBACK_ANY_PORT,
};

use super::{copy_dir, proxy_bin, raw_request_to, repo_root, TEST_JWKS};

/// The listener bound to acme's `bot` workload.
pub const SIDECAR: &str = "sidecar";
/// The listener that identifies workloads by token.
pub const SHARED: &str = "shared";

/// How to lay out a proxy's configuration directory.
pub struct ProxySpec {
    /// Policy directory to copy (relative to the repo root); the schema is always the repo's.
    pub policies: &'static str,
    /// `tenant-proxy.toml`.
    pub config: StaticFile,
    /// `tenants.toml`.
    pub tenants: TenantFile,
    /// Files copied from the repository into the configuration directory: (source relative to
    /// the repo root, destination relative to the directory).
    pub copies: Vec<(&'static str, &'static str)>,
    /// Environment variables for the proxy process.
    pub env: Vec<(String, String)>,
    /// A command the proxy runs under (`ip netns exec NS setpriv --reuid …`): it must exec the
    /// proxy in place, so the child is the proxy. Empty: the proxy runs directly.
    pub command_prefix: Vec<String>,
}

/// The tenants every test proxy knows: acme (pro, eu; `bot`, `researcher`), globex (free, us;
/// `agent`) and evalerr (pro, eu; `agent`), whose policies the fixtures write.
pub fn standard_tenants() -> TenantFile {
    let mut t = TenantFile::new("policies");
    t.tenants.insert(
        "acme".into(),
        Tenant::new("pro", "eu", &["bot", "researcher"]),
    );
    t.tenants
        .insert("globex".into(), Tenant::new("free", "us", &["agent"]));
    t.tenants
        .insert("evalerr".into(), Tenant::new("pro", "eu", &["agent"]));
    t
}

impl Default for ProxySpec {
    /// Two listeners: `sidecar` bound to acme/bot and `shared` (tokens, verified against the
    /// test JWKS with a revocation list); the test origins on 127.0.0.1 are an explicit
    /// exception to the egress guard (loopback is never reachable by default); a 10 s upstream
    /// read timeout; audit batches every 5 ms; no shutdown grace.
    fn default() -> Self {
        let mut config = StaticFile::new("tenants.toml", "audit");
        config.admin.listen = Some(LOOPBACK_ANY_PORT);
        config.listeners = vec![
            Listener::bound(SIDECAR, "acme", "bot"),
            Listener::token(SHARED),
        ];
        config.audit.flush_interval = Some(Duration::from_millis(5));
        config.upstream.connect_timeout = Some(Duration::from_secs(1));
        config.upstream.read_timeout = Some(Duration::from_secs(10));
        config.egress.allow = vec!["127.0.0.1/32".into()];
        config.server.threads = Some(2);
        config.server.grace_period = Some(Duration::ZERO);
        config.server.graceful_shutdown_timeout = Some(Duration::from_secs(1));
        config.log.level = Some("info".into());
        let mut tenants = standard_tenants();
        tenants.token = Some(Token {
            audience: Some("tenant-proxy".into()),
            max_lifetime: Some(Duration::from_secs(3600)),
            leeway: Some(Duration::from_secs(5)),
            revoked_jtis_file: Some("revoked.txt".into()),
            ..Token::new("jwks.json")
        });
        Self {
            policies: "tests/fixtures/policies",
            config,
            tenants,
            copies: Vec::new(),
            env: Vec::new(),
            command_prefix: Vec::new(),
        }
    }
}

impl ProxySpec {
    /// The tenant `id` of the tenant file.
    pub fn tenant(&mut self, id: &str) -> &mut Tenant {
        self.tenants.tenant(id)
    }

    /// Adds the route `llm` (`/llm/`) to `http://127.0.0.1:PORT/v1/` (the loadtest mock, or an
    /// origin standing in for an LLM).
    pub fn llm_route(&mut self, port: u16) -> &mut Route {
        self.tenants.routes.push(Route::new(
            "llm",
            "/llm/",
            format!("http://127.0.0.1:{port}/v1/"),
        ));
        self.tenants.routes.last_mut().unwrap()
    }

    /// Lays the configuration out in `dir` (`tenant-proxy.toml` and what it names), as
    /// [`Proxy::start`] does, without starting anything: for `tenant-proxy check`.
    pub fn write_in(&self, dir: &Path) {
        let root = repo_root();
        copy_dir(&root.join(self.policies), &dir.join("policies"));
        std::fs::copy(
            root.join("policies/schema.cedarschema"),
            dir.join("policies/schema.cedarschema"),
        )
        .unwrap();
        std::fs::copy(root.join(TEST_JWKS), dir.join("jwks.json")).unwrap();
        std::fs::write(dir.join("revoked.txt"), "# revoked\nrevoked-jti-1\n").unwrap();
        for (from, to) in &self.copies {
            std::fs::copy(root.join(from), dir.join(to)).unwrap();
        }
        self.config.write(&dir.join("tenant-proxy.toml")).unwrap();
        self.tenants.write(&dir.join("tenants.toml")).unwrap();
    }

    /// Prices LLM calls with `tests/fixtures/prices.toml` (1 micro-unit an input token of
    /// gpt-4o-mini, 2 an output token).
    pub fn with_prices(mut self) -> Self {
        self.tenants.prices_file = Some("prices.toml".into());
        self.copies
            .push(("tests/fixtures/prices.toml", "prices.toml"));
        self
    }

    /// Counts limits in Redis at `url`, each call allowed `timeout`.
    pub fn with_redis_limiter(mut self, url: String, timeout: Duration) -> Self {
        self.config.limiter = Limiter::redis(url, timeout);
        self
    }
}

/// The sum of the samples of `family` in a Prometheus text exposition whose `label` is exactly
/// `value` (not a prefix of it: `tenant="acme"` is not `tenant="acme2"`).
pub fn metric_sum(metrics: &str, family: &str, label: &str, value: &str) -> f64 {
    let exact = format!("{label}=\"{value}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            let labels = &l[l.find('{').unwrap() + 1..l.rfind('}').unwrap()];
            labels.split(',').any(|kv| kv == exact)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A running proxy, killed on drop. Its ports are those it reported in its ready file.
pub struct Proxy {
    pub dir: tempfile::TempDir,
    /// The `sidecar` listener's port.
    pub sidecar_port: u16,
    /// The `shared` listener's port.
    pub shared_port: u16,
    pub admin_port: u16,
    ready: Ready,
    tenants: TenantFile,
    child: Child,
}

impl Proxy {
    pub fn start(spec: ProxySpec) -> Self {
        Self::start_prepared(spec, |_| {})
    }

    /// Writes the configuration, runs `prepare` in the configuration directory, then starts
    /// the proxy and waits until it is ready.
    pub fn start_prepared(spec: ProxySpec, prepare: impl FnOnce(&Path)) -> Self {
        let proxy = Self::start_listening(spec, prepare);
        proxy.wait_readyz();
        proxy
    }

    /// Starts the proxy and waits until its sockets listen, not until it is ready (for a proxy
    /// that must never become ready, such as one whose limiter cannot log in).
    pub fn start_unready(spec: ProxySpec) -> Self {
        Self::start_listening(spec, |_| {})
    }

    /// `/readyz`'s body.
    pub fn readyz_json(&self) -> serde_json::Value {
        let r = raw_request_to(
            self.admin_addr(),
            "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }

    /// `/readyz`'s status.
    pub fn readyz(&self) -> u16 {
        raw_request_to(
            self.admin_addr(),
            "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .map(|r| r.status)
        .unwrap_or(0)
    }

    fn start_listening(spec: ProxySpec, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        spec.write_in(dir.path());
        prepare(dir.path());

        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let ready_file = dir.path().join("ready.json");
        let mut command = match spec.command_prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(proxy_bin());
                c
            }
            None => Command::new(proxy_bin()),
        };
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("tenant-proxy.toml"))
            .arg("--ready-file")
            .arg(&ready_file)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Both streams go to proxy.log (one file offset), so tests can search all output.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ready = wait_ready_file(&ready_file, &mut child, dir.path());
        let port = |name: &str| {
            ready
                .port(name)
                .unwrap_or_else(|| panic!("every test proxy has listener `{name}`: {ready:?}"))
        };
        Proxy {
            sidecar_port: port(SIDECAR),
            shared_port: port(SHARED),
            admin_port: ready.admin.port(),
            ready,
            tenants: spec.tenants,
            dir,
            child,
        }
    }

    /// Waits for `/readyz` to answer 200 (audit directory writable, limiter connected).
    fn wait_readyz(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = raw_request_to(
                self.admin_addr(),
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

    /// The approvals API's port (the proxy was configured with `[approvals]`).
    pub fn approvals_port(&self) -> u16 {
        self.ready
            .approvals
            .unwrap_or_else(|| panic!("no approvals API: {:?}", self.ready))
            .port()
    }

    /// The port of listener `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.ready
            .port(name)
            .unwrap_or_else(|| panic!("no listener `{name}`: {:?}", self.ready))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The tenant file the proxy was started with.
    pub fn tenants(&self) -> &TenantFile {
        &self.tenants
    }

    /// Configuration reloads that succeeded so far.
    pub fn reloads_ok(&self) -> f64 {
        metric_sum(
            &self.metrics(),
            "tenant_proxy_config_reloads_total",
            "result",
            "ok",
        )
    }

    /// Waits (20 s at most) until more than `before` reloads succeeded.
    pub fn wait_reload_after(&self, before: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.reloads_ok() <= before {
            assert!(Instant::now() < deadline, "no reload");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the tenant file (the proxy reloads it).
    pub fn write_tenants(&self, tenants: &TenantFile) {
        tenants.write(&self.path("tenants.toml")).unwrap();
    }

    /// The proxy's log so far. The proxy writes its log from a thread of its own, a moment
    /// after the event: this reads until the file stops growing (100 ms without a new byte,
    /// at most 2 s), so a line logged before the call is in it.
    pub fn log(&self) -> String {
        let read = || std::fs::read_to_string(self.path("proxy.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = read();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = read();
            if now.len() == last.len() || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// `tenant-proxy ARGS --config <its config> --admin <its admin address>`: a command that
    /// calls this proxy's admin port (`run close`, `usage`). The configuration asks for port 0,
    /// so the bound address is given. The exit code and the output.
    pub fn admin_cli(&self, args: &[&str]) -> (i32, String) {
        let config = self.path("tenant-proxy.toml");
        let admin = self.admin_addr().to_string();
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().unwrap(), "--admin", &admin]);
        proxy_cli(self.dir.path(), &all, "")
    }

    /// Where the admin listener is reached (loopback when it listens on every interface).
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        let mut addr = self.ready.admin;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    }

    pub fn metrics(&self) -> String {
        raw_request_to(
            self.admin_addr(),
            "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .body_text()
    }

    /// Audit records of `tenant` (all days).
    pub fn audit_records(&self, tenant: &str) -> Vec<serde_json::Value> {
        super::records_in(&self.path("audit"), tenant)
    }

    /// Waits until `tenant` has at least `n` records, and returns them all.
    pub fn wait_audit_records(&self, tenant: &str, n: usize) -> Vec<serde_json::Value> {
        super::wait_records_in(&self.path("audit"), tenant, n)
    }

    /// Waits until `tenant` has a record with `request_id`, and returns it.
    pub fn audit_record(&self, tenant: &str, request_id: &str) -> serde_json::Value {
        super::wait_record_in(&self.path("audit"), tenant, request_id)
    }

    /// Asserts that acme's `GET url` on the sidecar listener is refused as this proxy itself (403
    /// `destination_forbidden`: one of its listeners or a service it uses), and audited so.
    pub fn assert_refused_as_itself(&self, url: &str) {
        let r = super::forward_get(self.sidecar_port, url, None, "");
        r.assert_refused(403, "destination_forbidden");
        assert!(
            r.body_text().contains("this proxy itself"),
            "{url}: {}",
            r.body_text()
        );
        let rec = self.audit_record("acme", &r.request_id());
        assert_eq!(rec["decision"], "deny", "{url}: {rec}");
        assert_eq!(rec["reason"], "destination_forbidden", "{url}: {rec}");
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

    /// Sends `SIGTERM`: the proxy drains and exits.
    pub fn sigterm(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (20 s at most) for the ready file `path` of `child`, whose configuration is in `dir`.
fn wait_ready_file(path: &Path, child: &mut Child, dir: &Path) -> Ready {
    let log = || std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(ready) = Ready::read(path).unwrap() {
            return ready;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "proxy exited ({status}) before it was ready; log:\n{}",
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "proxy wrote no ready file in 20 s; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

//! One tenant's trouble is its own: an unwritable audit partition refuses only its tenant (its
//! refused heads holding no records, and what it could not take by shutdown appending to it
//! once mended), one tenant's endless runs do not push another's off the run watch list, a repeated admin query
//! parameter cannot act on another tenant, two `Proxy-Authorization` headers are no
//! identity, one tenant's unanswered name lookups do not hold another's, and one tenant's kept
//! name answers never answer another's lookups. Each test checks what the recording origin received and what the audit trail says.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// curl inside `ns` through the proxy on `port` (`user` is `name:token@` or empty): the status
/// and, for a refusal, its code.
fn curl_in(ns: &Netns, port: u16, user: &str, url: &str) -> (String, String) {
    let out = ns.run(&[
        "curl",
        "-s",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "-x",
        &format!("http://{user}127.0.0.1:{port}"),
        url,
    ]);
    let (body, status) = out.rsplit_once('\n').unwrap();
    let code = serde_json::from_str::<Value>(body)
        .map(|v| v["error"]["code"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (status.to_string(), code)
}

fn admin(proxy: &Proxy, method: &str, path_and_query: &str) -> Response {
    raw_request(
        proxy.admin_port,
        &format!("{method} {path_and_query} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .unwrap()
}

/// Makes acme's partition for today `/dev/full` (every write fails with ENOSPC, as on a full
/// disk), then waits until acme is refused for it: its first request is admitted, its record
/// cannot be written, and acme is refused next. The file to remove to repair it, and that
/// first request's response.
fn fail_acmes_partition(proxy: &Proxy, origin: &Origin) -> (std::path::PathBuf, Response) {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y/%m/%d"])
        .output()
        .unwrap();
    let today = proxy.path(&format!(
        "audit/acme/{}.jsonl",
        String::from_utf8(date.stdout).unwrap().trim()
    ));
    std::fs::create_dir_all(today.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/full", &today).unwrap();
    let first = forward_get(proxy.sidecar_port, &url(origin, "/public/acme-1"), None, "");
    assert_eq!(first.status, 200, "{}", first.body_text());
    wait_for("acme's refusal", Duration::from_secs(10), || {
        let r = forward_get(proxy.sidecar_port, &url(origin, "/public/acme-2"), None, "");
        r.status == 503 && r.code() == "audit_unavailable"
    });
    (today, first)
}

#[test]
fn one_tenants_full_partition_refuses_that_tenant_only() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let globex = token_for("globex", "agent");
    // acme's first request is admitted; its record cannot be written, so acme is refused next.
    let (today, first) = fail_acmes_partition(&proxy, &origin);
    let acme_seen = origin.matching("/public/acme").len();

    // globex is served and audited all along.
    globex_is_served_and_audited(&proxy, &origin, &globex);
    assert_eq!(origin.matching("/public/globex-").len(), 5);
    // acme stays refused, and nothing of it reaches the origin.
    let refused = forward_get(
        proxy.sidecar_port,
        &url(&origin, "/public/acme-3"),
        None,
        "",
    );
    refused.assert_refused(503, "audit_unavailable");
    assert_eq!(origin.matching("/public/acme").len(), acme_seen);

    // Readiness and metrics say which part fails, without naming the tenant in readiness.
    let ready = admin(&proxy, "GET", "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body_text());
    assert_eq!(ready.json()["audit_writable"], true);
    assert_eq!(ready.json()["audit_partitions_failing"], 1);
    assert!(!ready.body_text().contains("acme"));
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("tenant_proxy_audit_partition_failing{tenant=\"acme\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("tenant_proxy_audit_partition_failing{tenant=\"globex\"} 1"));
    assert!(metrics.contains("tenant_proxy_audit_refusals_total{tenant=\"acme\"}"));
    assert!(!metrics.contains("tenant_proxy_audit_refusals_total{tenant=\"globex\"}"));

    // Space again: acme's held record is written (nothing lost), then acme is served again.
    std::fs::remove_file(&today).unwrap();
    wait_for("acme's recovery", Duration::from_secs(10), || {
        forward_get(
            proxy.sidecar_port,
            &url(&origin, "/public/acme-4"),
            None,
            "",
        )
        .status
            == 200
    });
    let acme = proxy.audit_records("acme");
    assert!(
        acme.iter()
            .any(|r| r["request_id"] == first.request_id().as_str()),
        "the held record was written: {acme:?}"
    );
    assert!(acme.iter().all(|r| r["tenant"] == "acme"));
    assert!(
        proxy
            .metrics()
            .contains("tenant_proxy_audit_partition_failing{tenant=\"acme\"} 0"),
        "recovered"
    );
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &["audit", "verify", proxy.path("audit").to_str().unwrap()],
        "",
    );
    assert_eq!(code, 0, "{out}");
}

/// Under a file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`), the write that takes one
/// tenant's audit file past it fails that tenant's partition, as a full disk does: the kernel's
/// `SIGXFSZ` ended the whole process there (every tenant's connections dropped, the record
/// torn, again at every restart). The other tenants are served and audited; what acme was
/// answered is on disk or held, and its trail verifies.
#[test]
fn a_tenants_audit_file_past_the_size_limit_refuses_that_tenant_only() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec {
        command_prefix: ["prlimit", "--fsize=65536", "--"]
            .map(String::from)
            .to_vec(),
        ..ProxySpec::default()
    });
    let globex = token_for("globex", "agent");
    let mut answered = 0;
    wait_for("acme's refusal", Duration::from_secs(60), || {
        let r = forward_get(proxy.sidecar_port, &url(&origin, "/public/acme"), None, "");
        if r.status == 200 {
            answered += 1;
            return false;
        }
        r.assert_refused(503, "audit_unavailable");
        true
    });
    assert!(
        answered > 20,
        "acme's file filled: {answered} answered first"
    );
    globex_is_served_and_audited(&proxy, &origin, &globex);
    assert_eq!(
        admin(&proxy, "GET", "/readyz").status,
        200,
        "the proxy lives"
    );
    let written = proxy
        .audit_records("acme")
        .iter()
        .filter(|r| r["decision"] == "allow")
        .count();
    assert_eq!(
        written as f64 + held_records(&proxy, "acme"),
        f64::from(answered),
        "every answer of acme's is written or held"
    );
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &["audit", "verify", proxy.path("audit").to_str().unwrap()],
        "",
    );
    assert_eq!(code, 0, "{out}");
}

/// Five requests of globex (its token `globex`) are served, and each has its `allow` record.
fn globex_is_served_and_audited(proxy: &Proxy, origin: &Origin, globex: &str) {
    for i in 0..5 {
        let r = forward_get(
            proxy.shared_port,
            &url(origin, &format!("/public/globex-{i}")),
            Some(globex),
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(
            proxy.audit_record("globex", &r.request_id())["decision"],
            "allow"
        );
    }
}

/// The value of the gauge `tenant_proxy_audit_held_records` for `tenant` (0 when absent).
fn held_records(proxy: &Proxy, tenant: &str) -> f64 {
    metric_sum(
        &proxy.metrics(),
        "tenant_proxy_audit_held_records",
        "tenant",
        tenant,
    )
}

/// A head refused before the pipeline (an ambiguous length) on `port`, with `token` when given.
fn malformed_head(port: u16, origin: &Origin, token: Option<&str>) -> Response {
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw_request(
        port,
        &format!(
            "GET http://127.0.0.1:{o}/public/malformed HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n{auth}Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
            o = origin.port
        ),
    )
    .unwrap()
}

/// Refusals of a tenant whose partition fails get no record, however early they are refused: a
/// malformed head on its bound listener, or with its valid token, reserves nothing for it, so a
/// flood of them leaves the records the writer holds for it as they were (they would grow
/// memory without bound, and keep the tenant refused once space is back), and the tenant is
/// served as soon as its partition recovers.
#[test]
fn a_failing_partitions_refused_heads_hold_no_records() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let acme_token = token_for("acme", "researcher");
    let (today, first) = fail_acmes_partition(&proxy, &origin);
    let held = held_records(&proxy, "acme");
    assert!(held >= 1.0, "acme's first record is held");

    for _ in 0..40 {
        malformed_head(proxy.sidecar_port, &origin, None).assert_refused(400, "bad_framing");
        malformed_head(proxy.shared_port, &origin, Some(&acme_token))
            .assert_refused(400, "bad_framing");
    }
    // (A record is handed to the writer after its response: give any a moment to arrive.)
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        held_records(&proxy, "acme"),
        held,
        "the refused heads hold nothing"
    );
    assert!(
        metric_sum(
            &proxy.metrics(),
            "tenant_proxy_audit_refusals_total",
            "tenant",
            "acme"
        ) >= 80.0,
        "each counted as an audit refusal"
    );

    // Space again: acme is served at once, and only what it held is written.
    std::fs::remove_file(&today).unwrap();
    wait_for("acme's recovery", Duration::from_secs(10), || {
        forward_get(
            proxy.sidecar_port,
            &url(&origin, "/public/acme-3"),
            None,
            "",
        )
        .status
            == 200
    });
    // Such a refusal is audited for acme again.
    let r = malformed_head(proxy.sidecar_port, &origin, None);
    r.assert_refused(400, "bad_framing");
    assert_eq!(
        proxy.audit_record("acme", &r.request_id())["reason"],
        "bad_framing"
    );
    let records = proxy.audit_records("acme");
    assert!(records
        .iter()
        .any(|r| r["request_id"] == first.request_id().as_str()));
    assert_eq!(
        records
            .iter()
            .filter(|r| r["reason"] == "bad_framing")
            .count(),
        1,
        "only the refusal made once the partition took writes again"
    );
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &["audit", "verify", proxy.path("audit").to_str().unwrap()],
        "",
    );
    assert_eq!(code, 0, "{out}");
}

/// A tmpfs mounted for one test (a small file system that fills up: a full disk), unmounted
/// on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes at `at` (created); why it cannot (it takes root).
    fn mount(at: &std::path::Path, size: u64) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("`mount`: {e}"))?;
        if out.status.success() {
            Ok(Self(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The `unwritten audit record` lines of `tenant` in a proxy's log, in order.
fn unwritten_lines(log: &str, tenant: &str) -> Vec<String> {
    let marker = format!("unwritten audit record tenant={tenant} line=");
    log.lines()
        .filter_map(|l| l.split_once(&marker).map(|(_, line)| line.to_string()))
        .collect()
}

/// A partition that fills up and stays full until the proxy stops: the records it could not
/// take are logged as `unwritten audit record` lines, and the failed appends left nothing
/// behind (a part of a record without its newline), so appending the logged lines to the
/// partition's newest file, as the README says, gives a partition `audit verify` accepts.
#[test]
fn records_unwritten_at_shutdown_append_to_a_partition_that_verifies() {
    let origin = Origin::start();
    let mut mounted = None;
    let mut proxy = Proxy::start_prepared(ProxySpec::default(), |dir| {
        mounted = Some(Tmpfs::mount(&dir.join("audit/acme"), 64 * 1024));
    });
    let _mount = match mounted.unwrap() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs: {why}");
            return;
        }
    };
    let acme = proxy.path("audit/acme");
    let get = |path: &str| forward_get(proxy.sidecar_port, &url(&origin, path), None, "");
    assert_eq!(get("/public/acme-1").status, 200);
    proxy.wait_audit_records("acme", 1);
    let file = walk(&acme)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "jsonl") && !f.ends_with("checkpoints.jsonl"))
        .unwrap();
    let written = std::fs::metadata(&file).unwrap().len();
    // The next record starts within the file's last page, which holds part of it, not all:
    // the failed append writes part of a record.
    assert_ne!(written % 4096, 0);
    // The partition fills up.
    {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(acme.join("filler")).unwrap();
        while filler.write_all(&[0u8; 1024]).is_ok() {}
    }
    wait_for("acme's refusal", Duration::from_secs(10), || {
        let r = get("/public/acme-2");
        r.status == 503 && r.code() == "audit_unavailable"
    });
    // Stopped while still full.
    proxy.sigterm();
    assert!(proxy.wait_exit(Duration::from_secs(30)).is_some());
    let log = proxy.log();
    let lines = unwritten_lines(&log, "acme");
    assert!(!lines.is_empty(), "{log}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        bytes.last(),
        Some(&b'\n'),
        "the partition ends with a whole record: {} bytes after the last newline",
        bytes.len() - bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
    );

    // Mended as the README says: the partition moved to a disk with room, the logged lines
    // appended to its newest file.
    let mended = tempfile::tempdir().unwrap();
    let audit = proxy.path("audit");
    for from in walk(&audit) {
        let rel = from.strip_prefix(&audit).unwrap();
        if rel.ends_with("filler") {
            continue;
        }
        let to = mended.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    let newest = mended.path().join(file.strip_prefix(&audit).unwrap());
    let mut appended = std::fs::read(&newest).unwrap();
    for line in &lines {
        appended.extend_from_slice(line.as_bytes());
        appended.push(b'\n');
    }
    std::fs::write(&newest, appended).unwrap();
    let (code, out) = proxy_cli(mended.path(), &["audit", "verify", "--dir", "."], "");
    assert_eq!(code, 0, "{out}");
    let records = records_in(mended.path(), "acme");
    assert!(records.len() > lines.len());
}

/// A signed run's token for `tenant`, living `ttl_secs`.
fn run_token(tenant: &'static str, workload: &'static str, run: &'static str, ttl: u64) -> String {
    token(TokenOpts {
        tenant,
        workload,
        run_id: Some(run),
        ttl_secs: ttl,
        ..Default::default()
    })
}

#[test]
fn a_tenant_starting_runs_without_end_leaves_room_for_anothers() {
    let origin = Origin::start();
    // A small bound so the test can reach it: 64 runs of one tenant at a time.
    let mut spec = ProxySpec::default();
    spec.config.limiter.watched_runs_per_tenant = Some(64);
    let proxy = Proxy::start(spec);
    // globex starts 300 runs that end soon (token expiry plus the 5 s leeway).
    let runs: Vec<&'static str> = (0..300)
        .map(|i| &*Box::leak(format!("noisy-{i}").into_boxed_str()))
        .collect();
    for run in &runs {
        let t = run_token("globex", "agent", run, 2);
        let r = forward_get(
            proxy.shared_port,
            &url(&origin, &format!("/public/{run}")),
            Some(&t),
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    // Then acme starts one.
    let acme = run_token("acme", "bot", "quiet", 2);
    let r = forward_get(
        proxy.shared_port,
        &url(&origin, "/public/quiet"),
        Some(&acme),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(origin.count(), 301);

    // acme's run is watched and summarized when it ends, whatever globex did.
    let summaries = |tenant: &str| -> Vec<Value> {
        proxy
            .audit_records(tenant)
            .into_iter()
            .filter(|r| r["event"] == "run_summary")
            .collect()
    };
    wait_for("acme's run summary", Duration::from_secs(30), || {
        !summaries("acme").is_empty()
    });
    let quiet = summaries("acme");
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!(quiet[0]["run_id"], "quiet");
    assert_eq!(quiet[0]["ended"], "expired");
    assert_eq!(quiet[0]["requests"], 1);
    // globex got at most its bound of summaries at expiry (the rest wait for a close). On a
    // slow machine its first runs may end while it is still starting others, and each that ends
    // frees a watch slot for a later one: the bound is 64 watched at once, so at most 64 plus
    // the runs started after the first summary was written.
    std::thread::sleep(Duration::from_secs(2));
    let noisy = summaries("globex");
    let at = |r: &Value| humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
    let first_end = noisy.iter().map(at).min().expect("no globex summary");
    let started_later = proxy
        .audit_records("globex")
        .iter()
        // A second of margin: a slot is freed just before its summary is stamped.
        .filter(|r| r["event"] == "run_started" && at(r) + Duration::from_secs(1) >= first_end)
        .count();
    assert!(
        noisy.len() <= 64 + started_later,
        "{} globex summaries, {started_later} runs started after the first",
        noisy.len()
    );
    assert_eq!(
        proxy
            .audit_records("globex")
            .iter()
            .filter(|r| r["event"] == "run_started")
            .count(),
        300
    );
}

#[test]
fn a_repeated_admin_parameter_is_refused_on_every_endpoint() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let acme = run_token("acme", "bot", "shared-id", 300);
    let r = forward_get(
        proxy.shared_port,
        &url(&origin, "/public/before"),
        Some(&acme),
        "",
    );
    assert_eq!(r.status, 200);

    for (method, query) in [
        (
            "POST",
            "/runs/close?tenant=globex&tenant=acme&run=shared-id",
        ),
        (
            "POST",
            "/runs/close?tenant=acme&run=shared-id&tenant=globex",
        ),
        (
            "POST",
            "/runs/close?tenant=globex&%74enant=acme&run=shared-id",
        ),
        ("POST", "/runs/close?tenant=acme&run=other&run=shared-id"),
        ("GET", "/usage?tenant=globex&tenant=acme"),
        ("GET", "/usage?tenant=acme&period=day&period=month"),
        ("GET", "/readyz?x=1&x=2"),
        ("GET", "/metrics?name=a&name=b"),
    ] {
        let r = admin(&proxy, method, query);
        let refusal = r.assert_refused(400, "bad_request");
        assert!(
            refusal["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than once"),
            "{query}: {refusal}"
        );
        assert_eq!(refusal["error"]["request_id"], r.request_id().as_str());
    }
    // Nothing was closed: acme's run goes on, and has no summary.
    let r = forward_get(
        proxy.shared_port,
        &url(&origin, "/public/after"),
        Some(&acme),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(origin.matching("/public/after").len(), 1);
    std::thread::sleep(Duration::from_millis(300));
    for tenant in ["acme", "globex"] {
        assert!(
            !proxy
                .audit_records(tenant)
                .iter()
                .any(|r| r["event"] == "run_summary"),
            "{tenant}"
        );
    }
    // Other refusals have the same shape.
    admin(&proxy, "POST", "/runs/close?tenant=nobody&run=x").assert_refused(404, "not_found");
    admin(&proxy, "GET", "/runs/close?tenant=acme&run=x").assert_refused(405, "method_not_allowed");
    admin(&proxy, "GET", "/nothing-here").assert_refused(404, "not_found");
    // A single, well-formed close still works, for the tenant it names only.
    let closed = admin(&proxy, "POST", "/runs/close?tenant=acme&run=shared-id");
    assert_eq!(closed.status, 200, "{}", closed.body_text());
    assert_eq!(closed.json()["tenant"], "acme");
    let r = forward_get(
        proxy.shared_port,
        &url(&origin, "/public/closed"),
        Some(&acme),
        "",
    );
    r.assert_refused(403, "run_closed");
    assert!(origin.matching("/public/closed").is_empty());
}

#[test]
fn two_proxy_authorization_headers_are_no_identity() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let acme = token_for("acme", "bot");
    let globex = token_for("globex", "agent");
    let target = url(&origin, "/public/two-identities");
    let authority = format!("127.0.0.1:{}", origin.port);
    let mut ids = Vec::new();
    for (first, second) in [(&globex, &acme), (&acme, &globex), (&acme, &acme)] {
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Bearer {first}\r\nProxy-Authorization: Bearer {second}\r\nConnection: close\r\n\r\n"
        );
        for port in [proxy.shared_port, proxy.sidecar_port] {
            let r = raw_request(port, &raw).unwrap();
            let refusal = r.assert_refused(407, "identity_invalid");
            assert!(
                refusal["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("more than one `Proxy-Authorization`"),
                "{refusal}"
            );
            ids.push(r.request_id());
        }
    }
    // A `CONNECT` presenting two is refused the same way.
    let raw = format!(
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Bearer {globex}\r\nProxy-Authorization: Bearer {acme}\r\n\r\n"
    );
    let r = raw_request(proxy.shared_port, &raw).unwrap();
    r.assert_refused(407, "identity_invalid");
    ids.push(r.request_id());

    assert_eq!(origin.count(), 0, "nothing was forwarded");
    // No tenant is known, so no partition got a record of these.
    std::thread::sleep(Duration::from_millis(300));
    for tenant in ["acme", "globex"] {
        let records = proxy.audit_records(tenant);
        assert!(
            records
                .iter()
                .all(|r| !ids.contains(&r["request_id"].as_str().unwrap_or("").to_string())),
            "{tenant}: {records:?}"
        );
    }
    // One header still works.
    let r = forward_get(proxy.shared_port, &target, Some(&globex), "");
    assert_eq!(r.status, 200);
    assert_eq!(
        proxy.audit_record("globex", &r.request_id())["tenant"],
        "globex"
    );
}

/// A tenant whose upstream names never resolve keeps only its own lookup places busy: a system
/// lookup outlives the request that gave up on it (`dns_timeout`), so without a share per
/// tenant its requests would fill the workers' blocking pools and every tenant's lookups would
/// wait. The proxy runs in a network namespace whose resolver drops every query.
#[test]
fn a_tenants_unanswered_name_lookups_hold_only_its_own_places() {
    let test = "tenant_trouble::a_tenants_unanswered_name_lookups_hold_only_its_own_places";
    let Some(ns) = Netns::create_or_skip(test) else {
        return;
    };
    ns.hosts(&[]);
    // A resolver that reads every query and answers none.
    let blackhole = std::net::UdpSocket::bind((ns.host_ip, 53)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while blackhole.recv_from(&mut buf).is_ok() {}
    });
    std::fs::write(
        format!("/etc/netns/{}/resolv.conf", ns.name),
        format!("nameserver {}\noptions timeout:4 attempts:1\n", ns.host_ip),
    )
    .unwrap();
    let mut spec = ProxySpec::default();
    spec.config.admin.listen = Some(std::net::SocketAddr::new(ns.ns_ip, 0));
    spec.config.egress.dns_timeout = Some(Duration::from_millis(300));
    spec.config.egress.max_dns_lookups_per_tenant = Some(1);
    spec.command_prefix = ["ip", "netns", "exec", &ns.name].map(String::from).to_vec();
    let proxy = Proxy::start(spec);
    let globex_token = token_for("globex", "agent");
    let ask = |port: u16, user: &str, url: &str| curl_in(&ns, port, user, url);
    let acme = |url: &str| ask(proxy.sidecar_port, "", url);
    let globex_user = format!("agent:{globex_token}@");

    // acme's first lookup: the request gives up at the timeout, the lookup runs on.
    assert_eq!(
        acme("http://slow-a.test/acme/1"),
        ("502".into(), "upstream_unreachable".into())
    );
    // acme's one place is still taken: its next request is refused at once.
    assert_eq!(
        acme("http://slow-b.test/acme/2"),
        ("429".into(), "dns_lookup_limit".into())
    );
    // globex's lookups are its own: it still gets to look its name up.
    assert_eq!(
        ask(
            proxy.shared_port,
            &globex_user,
            "http://slow-c.test/globex/1"
        ),
        ("502".into(), "upstream_unreachable".into())
    );
    // Once acme's lookup gives up in the system resolver, its place comes back.
    wait_for("acme's lookup place", Duration::from_secs(20), || {
        acme("http://slow-d.test/acme/3").1 != "dns_lookup_limit"
    });
    let records = proxy.audit_records("acme");
    assert!(
        records.iter().any(|r| r["reason"] == "dns_lookup_limit"),
        "{records:#?}"
    );
    assert!(proxy
        .audit_records("globex")
        .iter()
        .all(|r| r["reason"] != "dns_lookup_limit"));
}

/// A tenant's name lookups are answered from its own kept answers (`[egress] dns_cache_ttl`),
/// never from another tenant's. The proxy runs in a network namespace whose `/etc/hosts` moves
/// a name to a refused address: acme, which looked the name up before, still goes where its kept
/// answer says; globex, which had not, looks the name up itself and is refused. The kept answer
/// is the address that was checked and dialed, so nothing reaches an address no lookup gave.
#[test]
fn kept_name_answers_are_the_tenants_own() {
    let Some(ns) = Netns::create_or_skip("tenant_trouble::kept_name_answers_are_the_tenants_own")
    else {
        return;
    };
    let mock = start_mock_on(ns.host_ip);
    ns.hosts(&[("moving.test", ns.host_ip)]);
    let mut spec = ProxySpec::default();
    spec.config.admin.listen = Some(std::net::SocketAddr::new(ns.ns_ip, 0));
    spec.config.egress.allow = vec![format!("{}/32", ns.host_ip)];
    spec.config.egress.dns_cache_ttl = Some(Duration::from_secs(3600));
    spec.command_prefix = ["ip", "netns", "exec", &ns.name].map(String::from).to_vec();
    let proxy = Proxy::start(spec);
    let globex_user = format!("agent:{}@", token_for("globex", "agent"));
    let ask = |port: u16, user: &str, path: &str| {
        curl_in(&ns, port, user, &format!("http://moving.test:{mock}{path}"))
    };
    let served = ("200".to_string(), String::new());

    assert_eq!(ask(proxy.sidecar_port, "", "/acme/1"), served);
    // The name moves to an address the guard refuses (documentation range).
    ns.hosts(&[("moving.test", "192.0.2.1".parse().unwrap())]);
    assert_eq!(
        ask(proxy.sidecar_port, "", "/acme/2"),
        served,
        "acme's kept answer stands"
    );
    assert_eq!(
        ask(proxy.shared_port, &globex_user, "/globex/1"),
        ("403".to_string(), "destination_forbidden".to_string()),
        "globex looks the name up itself"
    );
    let globex = proxy.wait_audit_records("globex", 1);
    assert_eq!(globex[0]["reason"], "destination_forbidden", "{globex:#?}");
}

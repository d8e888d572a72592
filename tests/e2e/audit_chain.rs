//! The tamper-evident audit trail, end to end: the real proxy writes chained records and signed
//! checkpoints, `tenant-proxy audit verify` finds each kind of tampering with its reason,
//! restarts, size rotation and `kill -9` under load leave directories that verify, and
//! `audit export` of one tenant never opens another tenant's files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

use tenant_proxy::audit::chain::line_hash;
use tenant_proxy::audit::checkpoint::{Checkpoint, CheckpointLink, Signer};

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

/// Sends `n` requests as acme (sidecar listener) and `m` as globex (token).
fn traffic(proxy: &Proxy, origin: &Origin, n: usize, m: usize) {
    // The admin port answers first; the proxy listeners start right after it.
    for port in [proxy.sidecar_port, proxy.shared_port] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "port {port} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for i in 0..n {
        let r = forward_get(
            proxy.sidecar_port,
            &url(origin, &format!("/acme/{i}")),
            None,
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    let globex = token_for("globex", "agent");
    for i in 0..m {
        let r = forward_get(
            proxy.shared_port,
            &url(origin, &format!("/globex/{i}")),
            Some(&globex),
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
}

/// SIGTERM, then wait until the writer has drained and written its final checkpoints.
fn stop_cleanly(proxy: &Proxy) {
    Command::new("kill")
        .arg("-TERM")
        .arg(proxy.pid().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.log().contains("audit writer stopped") {
        assert!(
            Instant::now() < deadline,
            "proxy did not stop; log:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `tenant-proxy audit verify DIR --json ARGS`: (exit code, reports by tenant).
fn verify(dir: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["audit", "verify", dir.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let out = Command::new(proxy_bin()).args(&all).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no JSON: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let by_tenant = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tenant"].as_str().unwrap().to_string(), r.clone()))
        .collect::<serde_json::Map<_, _>>();
    (out.status.code().unwrap(), by_tenant.into())
}

/// The problem reason verify reports for `tenant`, or `None` when clean.
fn reason(report: &serde_json::Value, tenant: &str) -> Option<String> {
    report[tenant]["problem"]["reason"]
        .as_str()
        .map(str::to_string)
}

fn record_files(tenant_dir: &Path) -> Vec<PathBuf> {
    walk(tenant_dir)
        .into_iter()
        .filter(|f| {
            f.extension().is_some_and(|e| e == "jsonl") && !f.ends_with("checkpoints.jsonl")
        })
        .collect()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A proxy whose audit files rotate every few records and whose checkpoints are signed with a
/// configured key (made with `audit keygen`).
fn rotating_spec() -> ProxySpec {
    let mut spec = ProxySpec::default();
    spec.config.audit.max_file_bytes = Some(4096);
    spec.config.audit.signing_key = Some("keys/audit-signing-key.pem".into());
    spec
}

fn keygen(config_dir: &Path) -> PathBuf {
    // Under a umask that lets everyone in: the key's directory and file are the owner's alone.
    let made = std::process::Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" audit keygen --out keys"])
        .arg(proxy_bin())
        .current_dir(config_dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config_dir.join("keys")), 0o700);
    assert_eq!(mode(&config_dir.join("keys/audit-signing-key.pem")), 0o600);
    let public = walk(&config_dir.join("keys"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "pub"))
        .unwrap();
    public
}

#[test]
fn chains_survive_restart_and_rotation_and_every_tamper_is_detected() {
    let origin = Origin::start();
    let keys_home = tempfile::tempdir().unwrap();
    let public = keygen(keys_home.path());
    let copy_keys = |dir: &Path| copy_dir(&keys_home.path().join("keys"), &dir.join("keys"));

    // First run: acme's records rotate over several files; globex gets its own chain.
    let first = Proxy::start_prepared(rotating_spec(), copy_keys);
    traffic(&first, &origin, 12, 3);
    stop_cleanly(&first);
    // Second run on the same directory: both chains continue.
    let audit_of_first = first.path("audit");
    let second = Proxy::start_prepared(rotating_spec(), |dir| {
        copy_keys(dir);
        copy_dir(&audit_of_first, &dir.join("audit"));
    });
    traffic(&second, &origin, 8, 2);
    stop_cleanly(&second);
    let audit = second.path("audit");

    let (code, clean) = verify(&audit, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{clean:#}");
    assert_eq!(clean["acme"]["records"], 20, "{clean:#}");
    assert_eq!(clean["globex"]["records"], 5, "{clean:#}");
    // One checkpoint per tenant per clean stop.
    assert_eq!(clean["acme"]["checkpoints"], 2, "{clean:#}");
    assert_eq!(reason(&clean, "acme"), None);
    let acme_files = record_files(&audit.join("acme"));
    assert!(acme_files.len() >= 3, "rotation by size: {acme_files:?}");
    for f in &acme_files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= 4096, "{f:?} has {len} bytes");
    }
    let seqs: Vec<u64> = acme_files
        .iter()
        .flat_map(|f| lines_of(f))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(&l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<_>>(),
        "file order is chain order"
    );

    // Each tamper on a fresh copy: (name, tamper, expected reason, extra verify args).
    let newest = acme_files.last().unwrap().clone();
    let oldest = acme_files.first().unwrap().clone();
    let rel = |p: &Path| p.strip_prefix(&audit).unwrap().to_path_buf();
    let (newest, oldest) = (rel(&newest), rel(&oldest));
    let checkpoints = PathBuf::from("acme/checkpoints.jsonl");
    let other_key = Signer::generate().unwrap().0;
    type Tamper<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "edit a byte",
            Box::new(|d: &Path| {
                let path = d.join(&oldest);
                let mut bytes = std::fs::read(&path).unwrap();
                let i = bytes.windows(5).position(|w| w == b"/acme").unwrap();
                bytes[i + 1] = b'A';
                std::fs::write(path, bytes).unwrap();
            }),
            "modified",
        ),
        (
            "delete a line",
            Box::new(|d: &Path| {
                let path = d.join(&oldest);
                let mut lines = lines_of(&path);
                lines.remove(1);
                write_lines(&path, &lines);
            }),
            "deleted",
        ),
        (
            "swap two lines",
            Box::new(|d: &Path| {
                let path = d.join(&oldest);
                let mut lines = lines_of(&path);
                lines.swap(0, 1);
                write_lines(&path, &lines);
            }),
            "reordered",
        ),
        (
            "truncate a file",
            Box::new(|d: &Path| {
                let path = d.join(&newest);
                let lines = lines_of(&path);
                write_lines(&path, &lines[..lines.len() - 1]);
            }),
            "truncated",
        ),
        (
            "drop the newest file",
            Box::new(|d: &Path| std::fs::remove_file(d.join(&newest)).unwrap()),
            "truncated",
        ),
        (
            "forge a checkpoint with a changed hash",
            Box::new(|d: &Path| {
                let path = d.join(&checkpoints);
                let mut lines = lines_of(&path);
                let mut c: Checkpoint = serde_json::from_str(lines.last().unwrap()).unwrap();
                c.hash = "ab".repeat(32);
                *lines.last_mut().unwrap() = serde_json::to_string(&c).unwrap();
                write_lines(&path, &lines);
            }),
            "bad_signature",
        ),
        (
            "forge a checkpoint signed with another key",
            Box::new(|d: &Path| {
                // A checkpoint signed by a key the attacker holds and publishes next to the
                // real one (it could vouch for a truncated chain just as well), linked as the
                // writer would link it.
                let path = d.join(&checkpoints);
                let mut lines = lines_of(&path);
                let real: Checkpoint = serde_json::from_str(lines.last().unwrap()).unwrap();
                let forged = other_key.checkpoint(
                    "acme",
                    real.seq,
                    &hex::decode(&real.hash).unwrap().try_into().unwrap(),
                    real.file.clone(),
                    real.time.clone(),
                    CheckpointLink {
                        prev: line_hash(lines.last().unwrap().as_bytes()),
                        interval: Duration::from_millis(real.interval_ms.unwrap()),
                    },
                );
                other_key.publish(d).unwrap();
                lines.push(serde_json::to_string(&forged).unwrap());
                write_lines(&path, &lines);
            }),
            "bad_signature",
        ),
    ];
    for (name, tamper, expected) in &cases {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&audit, copy.path());
        tamper(copy.path());
        let (code, report) = verify(copy.path(), &["--key", public.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {report:#}");
        assert_eq!(
            reason(&report, "acme").as_deref(),
            Some(*expected),
            "{name}: {report:#}"
        );
        assert_eq!(
            reason(&report, "globex"),
            None,
            "{name}: globex is untouched"
        );
        // One tenant at a time, too.
        let (code, only) = verify(copy.path(), &["--tenant", "globex"]);
        assert_eq!(code, 0, "{name}: {only:#}");
        assert!(only.get("acme").is_none());
    }

    // Without a pinned key, a checkpoint forged with a published impostor key is accepted:
    // that is why `--key` exists. With a wrong key id it is refused either way.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&audit, copy.path());
    (cases[6].1)(copy.path());
    assert_eq!(verify(copy.path(), &[]).0, 0);
    let path = copy.path().join(&checkpoints);
    let mut lines = lines_of(&path);
    let mut c: Checkpoint = serde_json::from_str(lines.last().unwrap()).unwrap();
    c.key_id = "0123456789abcdef".into();
    *lines.last_mut().unwrap() = serde_json::to_string(&c).unwrap();
    write_lines(&path, &lines);
    let (code, report) = verify(copy.path(), &[]);
    assert_eq!(
        (code, reason(&report, "acme").as_deref()),
        (1, Some("bad_signature"))
    );

    // The table names the tenant and its problem.
    let out = Command::new(proxy_bin())
        .args(["audit", "verify", copy.path().to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("acme") && table.contains("bad_signature"),
        "{table}"
    );
}

/// The wall clock steps while the proxy runs (NTP, a resumed VM), with requests in flight: two hours back, then four forward, with records unsigned on both sides of each
/// step (checkpoints every ten minutes).
/// The writer signs what came before a step when it sees one, and verify reads an unsigned
/// record against the records after it, so the honest trail verifies after each step, without
/// waiting for the next checkpoint (it was `unsigned`: "checkpoints were removed").
#[test]
fn an_honest_trail_verifies_across_steps_of_the_wall_clock() {
    let origin = Origin::start();
    let clock = FakeClock::new();
    let mut spec = ProxySpec::default();
    spec.env.extend(clock.env());
    spec.config.audit.checkpoint_interval = Some(Duration::from_secs(600));
    let proxy = Proxy::start(spec);
    let mut written = 0;
    for step in [0, -7_200, 7_200] {
        // Requests in flight across the step, on eight connections: records stamped before it
        // are written after it is seen. (A token minted on the real clock is not valid yet on
        // a clock set back, so the sidecar's tenant sends them.)
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| traffic(&proxy, &origin, 10, 0));
            }
            std::thread::sleep(Duration::from_millis(30));
            clock.step_to(step);
        });
        written += 80;
        proxy.wait_audit_records("acme", written);
        let (code, report) = verify(&proxy.path("audit"), &[]);
        assert_eq!(
            (code, reason(&report, "acme")),
            (0, None),
            "after the step to {step:+} s: {report}"
        );
    }
    assert!(
        proxy.log().contains("the wall clock stepped"),
        "{}",
        proxy.log()
    );
}

/// `audit verify` on the trail of a proxy that is writing it: a checkpoint signed while verify
/// reads (every 50 ms here) is never taken for records cut short (`truncated`), since the
/// checkpoints are read before the records they cover.
#[test]
fn a_live_trail_verifies_while_it_is_written() {
    let origin = Origin::start();
    let mut spec = ProxySpec::default();
    spec.config.audit.checkpoint_interval = Some(Duration::from_millis(50));
    let proxy = Proxy::start(spec);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    traffic(&proxy, &origin, 5, 0);
                }
            });
        }
        // The traffic stops however this ends: a failed assertion must not leave the scope
        // waiting on it.
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&done);
        proxy.wait_audit_records("acme", 20);
        for round in 0..15 {
            let (code, report) = verify(&proxy.path("audit"), &[]);
            assert_eq!(
                (code, reason(&report, "acme")),
                (0, None),
                "round {round}: {report}"
            );
        }
    });
}

#[test]
fn kill_9_under_load_leaves_a_directory_that_verifies() {
    let origin = Origin::start();
    let spec = || {
        let mut spec = ProxySpec::default();
        spec.config.audit.max_file_bytes = Some(8192);
        spec.config.audit.checkpoint_interval = Some(Duration::from_millis(200));
        spec
    };
    let proxy = Proxy::start(spec());
    let running = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let running = running.clone();
            let port = proxy.sidecar_port;
            let target = url(&origin, &format!("/acme/load-{c}"));
            let authority = format!("127.0.0.1:{}", origin.port);
            std::thread::spawn(move || {
                let mut sent = 0u32;
                while running.load(Ordering::Relaxed) {
                    // Errors are expected once the proxy is killed.
                    let _ = raw_request(
                        port,
                        &format!(
                            "GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
                        ),
                    );
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    // Let records and some checkpoints accumulate, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(proxy.path("audit/acme/checkpoints.jsonl").exists()
        && record_files(&proxy.path("audit/acme")).len() >= 2)
    {
        assert!(
            Instant::now() < deadline,
            "no load reached the audit trail; log:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .arg("-9")
        .arg(proxy.pid().to_string())
        .status()
        .unwrap();
    running.store(false, Ordering::Relaxed);
    let sent: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(sent > 0);

    let audit = proxy.path("audit");
    let (code, report) = verify(&audit, &[]);
    assert_eq!(code, 0, "{report:#}");
    let records = report["acme"]["records"].as_u64().unwrap();
    assert!(records > 0 && report["acme"]["checkpoints"].as_u64().unwrap() > 0);

    // A restart cuts a torn last line, if any, and continues the chain.
    let after = Proxy::start_prepared(spec(), |dir| copy_dir(&audit, &dir.join("audit")));
    traffic(&after, &origin, 3, 0);
    stop_cleanly(&after);
    let (code, report) = verify(&after.path("audit"), &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["acme"]["records"].as_u64().unwrap(), records + 3);
    assert!(report["acme"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| !n.as_str().unwrap().contains("incomplete")));
}

/// Runs `audit export ARGS` bounded by `limit`: `None` when it did not finish in time.
fn export_within(dir: &Path, args: &[&str], limit: Duration) -> Option<(i32, String, String)> {
    let mut all = vec!["audit", "export", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(proxy_bin())
        .args(&all)
        .stdout(out_file.reopen().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            let out = std::fs::read_to_string(out_file.path()).unwrap();
            return Some((status.code().unwrap(), out, err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn export_of_one_tenant_never_opens_another_tenants_files() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    traffic(&proxy, &origin, 4, 3);
    stop_cleanly(&proxy);
    let audit = proxy.path("audit");

    // A FIFO named like a record file in globex's partition: opening it refuses the export.
    let globex_file = record_files(&audit.join("globex")).pop().unwrap();
    let fifo = globex_file.with_file_name("31_000001.jsonl");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());

    let (code, out, err) = export_within(&audit, &["--tenant", "acme"], Duration::from_secs(20))
        .expect("export of acme opened globex's files (it blocked on the FIFO)");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let records: Vec<_> = lines
        .iter()
        .filter(|l| l.get("signature").is_none())
        .collect();
    let checkpoints: Vec<_> = lines
        .iter()
        .filter(|l| l.get("signature").is_some())
        .collect();
    assert_eq!(records.len(), 4, "{out}");
    assert_eq!(checkpoints.len(), 1, "{out}");
    assert!(lines.iter().all(|l| l["tenant"] == "acme"), "{out}");
    assert!(!out.contains("globex"), "{out}");
    // Records are exported byte for byte, so their chain still links.
    let first_file = lines_of(&record_files(&audit.join("acme"))[0]);
    assert_eq!(out.lines().next().unwrap(), first_file[0]);

    // The FIFO is a real trap: exporting globex opens it, and refuses it at once (it once
    // blocked there for ever).
    let (code, _, err) = export_within(&audit, &["--tenant", "globex"], Duration::from_secs(20))
        .expect("export of globex blocked on the FIFO");
    assert!(
        code != 0 && err.contains("not a regular file"),
        "the FIFO would not have caught a read of globex's files: {code} {err}"
    );

    // A range that excludes everything, and tenant ids that would leave the partition.
    let (code, out, _) = export_within(
        &audit,
        &["--tenant", "acme", "--to", "2000-01-01"],
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!((code, out.as_str()), (0, ""));
    for bad in ["../globex", "acme/../globex", "/etc"] {
        let (code, out, err) =
            export_within(&audit, &["--tenant", bad], Duration::from_secs(20)).unwrap();
        assert_eq!(code, 1, "{bad}: {out}{err}");
        assert!(
            out.is_empty() && err.contains("not a valid tenant"),
            "{bad}: {err}"
        );
    }
}

/// The `record` fields of a Redis stream, oldest first.
fn stream_records(redis: &RedisServer, key: &str) -> Vec<String> {
    let out = redis.cli(&["XRANGE", key, "-", "+"]);
    let lines: Vec<&str> = out.lines().collect();
    // --raw prints each entry as: id, "record", value.
    lines
        .windows(2)
        .filter(|w| w[0] == "record")
        .map(|w| w[1].to_string())
        .collect()
}

/// All record lines of `tenant` in the proxy's files, in chain order.
fn file_lines(proxy: &Proxy, tenant: &str) -> Vec<String> {
    let mut files = record_files(&proxy.path("audit").join(tenant));
    files.sort();
    files.iter().flat_map(|f| lines_of(f)).collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_stream_gets_each_tenants_records_and_a_required_stream_fails_closed() {
    let origin = Origin::start();
    let mut redis = RedisServer::start();
    let mut spec = ProxySpec::default();
    spec.config.audit.redis_url = Some(redis.url().into());
    spec.config.audit.redis_required = Some(true);
    spec.config.audit.redis_maxlen = Some(1000);
    let proxy = Proxy::start(spec);
    traffic(&proxy, &origin, 3, 2);
    wait_until("both streams", || {
        stream_records(&redis, "tp:{acme}:audit").len() == 3
            && stream_records(&redis, "tp:{globex}:audit").len() == 2
    });
    // The stream holds each tenant's own lines exactly as in its files.
    assert_eq!(
        stream_records(&redis, "tp:{acme}:audit"),
        file_lines(&proxy, "acme")
    );
    assert_eq!(
        stream_records(&redis, "tp:{globex}:audit"),
        file_lines(&proxy, "globex")
    );

    // Redis goes away: the stream is required, so the sink refuses, and nothing is forwarded.
    redis.stop();
    let target = url(&origin, "/acme/while-down");
    wait_until("audit_unavailable refusals", || {
        let r = forward_get(proxy.sidecar_port, &target, None, "");
        r.status == 503 && r.code() == "audit_unavailable"
    });
    let served = origin.count();
    let refused = forward_get(proxy.sidecar_port, &target, None, "");
    refused.assert_refused(503, "audit_unavailable");
    assert_eq!(
        origin.count(),
        served,
        "no request served while the stream fails"
    );
    // The sidecar's listener says whose refusals these were, in the metrics and the log.
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("tenant_proxy_audit_refusals_total{tenant=\"acme\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tenant_proxy_audit_refusals_total{tenant=\"none\"}"),
        "{metrics}"
    );
    let log = proxy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("reason=\"audit_unavailable\"") && l.contains("tenant=\"acme\"")),
        "{log}"
    );

    // Redis is back (empty): the records held while it was down arrive, then service resumes.
    redis.restart();
    wait_until("recovery", || {
        forward_get(proxy.sidecar_port, &url(&origin, "/acme/after"), None, "").status == 200
    });
    wait_until("the record served after recovery", || {
        stream_records(&redis, "tp:{acme}:audit")
            .iter()
            .any(|l| l.contains("\"path\":\"/acme/after\""))
    });
    // The records written while Redis was down arrived first, then the new one, in chain order.
    let streamed = stream_records(&redis, "tp:{acme}:audit");
    let files = file_lines(&proxy, "acme");
    assert!(files.ends_with(&streamed), "{streamed:?}");
    assert!(streamed.len() >= 2, "{streamed:?}");
    assert!(streamed[0].contains("/acme/while-down"), "{streamed:?}");
    assert!(stream_records(&redis, "tp:{globex}:audit").is_empty());
}

/// At shutdown the stream's unsent lines are sent once more past the backoff, and what still
/// cannot be sent goes to the process log, line by line: where the stream is the durable copy
/// (a pod's files on an `emptyDir`), a single send inside the backoff lost them without a word.
#[test]
fn a_required_streams_unsent_records_are_sent_or_logged_at_shutdown() {
    let origin = Origin::start();
    for redis_back_before_exit in [true, false] {
        let mut redis = RedisServer::start();
        let mut spec = ProxySpec::default();
        spec.config.audit.redis_url = Some(redis.url().into());
        spec.config.audit.redis_required = Some(true);
        let mut proxy = Proxy::start(spec);
        traffic(&proxy, &origin, 1, 0);
        wait_until("the stream", || {
            stream_records(&redis, "tp:{acme}:audit").len() == 1
        });
        redis.stop();
        // Requests until the sink has failed: their records are in the files, not the stream.
        let target = url(&origin, "/acme/while-down");
        wait_until("audit_unavailable refusals", || {
            forward_get(proxy.sidecar_port, &target, None, "").code() == "audit_unavailable"
        });
        if redis_back_before_exit {
            redis.restart();
        }
        proxy.sigterm();
        assert!(proxy.wait_exit(Duration::from_secs(20)).is_some());
        let files = file_lines(&proxy, "acme");
        assert!(files.len() >= 2, "{files:?}");
        if redis_back_before_exit {
            // (The restarted Redis is empty: it holds what was unsent.)
            assert_eq!(stream_records(&redis, "tp:{acme}:audit"), files[1..]);
            assert!(!proxy.log().contains("unsent audit stream record"));
        } else {
            let marker = "unsent audit stream record tenant=acme line=";
            let unsent: Vec<String> = proxy
                .log()
                .lines()
                .filter_map(|l| l.split_once(marker).map(|(_, line)| line.to_string()))
                .collect();
            assert_eq!(unsent, files[1..], "{}", proxy.log());
        }
    }
}

/// A required stream's connection dies with the server it was made to while no record is
/// being sent. Once Redis is back, that dead connection must not cost a request: the first
/// send after the restart finds it dead and goes out on a new one at once.
#[test]
fn a_required_stream_does_not_refuse_for_a_connection_the_old_server_closed() {
    let origin = Origin::start();
    let mut redis = RedisServer::start();
    let mut spec = ProxySpec::default();
    spec.config.audit.redis_url = Some(redis.url().into());
    spec.config.audit.redis_required = Some(true);
    let proxy = Proxy::start(spec);
    traffic(&proxy, &origin, 2, 0);
    wait_until("the stream", || {
        stream_records(&redis, "tp:{acme}:audit").len() == 2
    });

    // Redis restarts while the stream is idle.
    redis.stop();
    std::thread::sleep(Duration::from_millis(300));
    redis.restart();
    let statuses: Vec<u16> = (0..10)
        .map(|i| {
            forward_get(
                proxy.sidecar_port,
                &url(&origin, &format!("/acme/back/{i}")),
                None,
                "",
            )
            .status
        })
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    wait_until("the records sent after the restart", || {
        stream_records(&redis, "tp:{acme}:audit").len() == 10
    });
}

#[test]
fn an_optional_stream_that_is_down_does_not_refuse() {
    let origin = Origin::start();
    let nothing_there = HeldPort::closed().unwrap();
    let mut spec = ProxySpec::default();
    spec.config.audit.redis_url = Some(format!("redis://127.0.0.1:{}", nothing_there.port).into());
    let proxy = Proxy::start(spec);
    traffic(&proxy, &origin, 3, 0);
    assert_eq!(proxy.wait_audit_records("acme", 3).len(), 3);
    wait_until("the stream failure in the log", || {
        proxy.log().contains("cannot write the audit stream")
    });
}

/// `audit verify --file F --key K ARGS`: (exit code, stdout, stderr).
fn verify_file(file: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(proxy_bin())
        .args(["audit", "verify", "--file", file.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_exported_file_verifies_on_its_own_and_one_changed_byte_fails_it() {
    let origin = Origin::start();
    let keys_home = tempfile::tempdir().unwrap();
    let public = keygen(keys_home.path());
    let proxy = Proxy::start_prepared(rotating_spec(), |dir| {
        copy_dir(&keys_home.path().join("keys"), &dir.join("keys"))
    });
    traffic(&proxy, &origin, 12, 3);
    stop_cleanly(&proxy);
    let audit = proxy.path("audit");
    // Both forms of the directory: `--dir` (as `audit export` takes it) and the positional one.
    for args in [
        vec!["audit", "verify", "--dir", audit.to_str().unwrap()],
        vec!["audit", "verify", audit.to_str().unwrap()],
    ] {
        let out = Command::new(proxy_bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }

    let (code, exported, err) =
        export_within(&audit, &["--tenant", "acme"], Duration::from_secs(20)).unwrap();
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme-export.jsonl");
    std::fs::write(&file, &exported).unwrap();

    // On its own, with the pinned key: ok, every record and checkpoint counted.
    let key = ["--key", public.to_str().unwrap(), "--json"];
    let (code, out, err) = verify_file(&file, &key);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["tenant"], "acme", "{out}");
    assert_eq!(report[0]["records"], 12, "{out}");
    assert!(report[0]["checkpoints"].as_u64().unwrap() >= 1, "{out}");
    assert!(report[0]["problem"].is_null(), "{out}");
    // The keys published in the directory serve too; no key at all is an error, not a pass.
    let (code, out, err) = verify_file(&file, &["--dir", audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = verify_file(&file, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--key"), "{err}");
    // It is acme's file, not globex's.
    let (code, _, err) = verify_file(
        &file,
        &["--key", public.to_str().unwrap(), "--tenant", "globex"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("acme"), "{err}");

    // One byte changed in a record (the first record's path), or in a checkpoint: exit 1 with
    // the reason and where.
    let first_line_end = exported.find('\n').unwrap();
    let at = exported[..first_line_end].find("/acme/0").unwrap() + "/acme/".len();
    let mut bytes = exported.clone().into_bytes();
    bytes[at] = b'9';
    std::fs::write(&file, &bytes).unwrap();
    let (code, out, err) = verify_file(&file, &key);
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["problem"]["reason"], "modified", "{out}");
    assert!(
        report[0]["problem"]["at"]
            .as_str()
            .unwrap()
            .ends_with("acme-export.jsonl:1"),
        "{out}"
    );
    let (code, table, _) = verify_file(&file, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(table.contains("modified at"), "{table}");

    let last = exported.trim_end().rfind('\n').unwrap() + 1;
    let sig = exported[last..].find("\"signature\":\"").unwrap() + last + "\"signature\":\"".len();
    let mut bytes = exported.clone().into_bytes();
    bytes[sig] = if bytes[sig] == b'0' { b'1' } else { b'0' };
    std::fs::write(&file, &bytes).unwrap();
    let (code, out, _) = verify_file(&file, &key);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["problem"]["reason"], "bad_signature", "{out}");

    // A record dropped from the middle: deleted.
    let mut lines: Vec<&str> = exported.lines().collect();
    lines.remove(3);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let (code, out, _) = verify_file(&file, &key);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["problem"]["reason"], "deleted", "{out}");
}

/// A proxy that signs every second with the key `audit keygen` made.
fn signing_every_second() -> ProxySpec {
    let mut spec = ProxySpec::default();
    spec.config.audit.checkpoint_interval = Some(Duration::from_secs(1));
    spec.config.audit.signing_key = Some("keys/audit-signing-key.pem".into());
    spec
}

/// `tenant`'s record lines in chain order, each with its file.
fn chain_lines(tenant_dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = record_files(tenant_dir);
    files.sort();
    files
        .iter()
        .flat_map(|f| lines_of(f).into_iter().map(move |l| (f.clone(), l)))
        .collect()
}

/// Writes `lines` back into the files they name; `files` (all of them) are rewritten, emptied
/// when no line is left.
fn write_chain(files: &[PathBuf], lines: &[(PathBuf, String)]) {
    for f in files {
        let mine: Vec<String> = lines
            .iter()
            .filter(|(p, _)| p == f)
            .map(|(_, l)| l.clone())
            .collect();
        write_lines(f, &mine);
    }
}

/// Deletes the record at `seq`, renumbers each later line to `seq - 1` and sets its `prev` to
/// the hash of the (new) line before it, keeping the rest of its bytes: the chain links again.
fn delete_and_rechain(tenant_dir: &Path, seq: usize) {
    let files = record_files(tenant_dir);
    let mut lines = chain_lines(tenant_dir);
    lines.remove(seq - 1);
    for i in seq - 1..lines.len() {
        let prev = hex::encode(line_hash(lines[i - 1].1.as_bytes()));
        let text = &lines[i].1;
        let tail = &text[text.find("\"prev\":\"").unwrap() + 8 + 64 + 1..];
        lines[i].1 = format!("{{\"seq\":{},\"prev\":\"{prev}\"{tail}", i + 1);
    }
    write_chain(&files, &lines);
}

/// Keeps the checkpoint lines `keep` accepts.
fn keep_checkpoints(path: &Path, keep: impl Fn(&Checkpoint) -> bool) {
    let lines: Vec<String> = lines_of(path)
        .into_iter()
        .filter(|l| keep(&serde_json::from_str(l).unwrap()))
        .collect();
    write_lines(path, &lines);
}

#[test]
fn removed_checkpoints_fail_verification_with_or_without_a_pinned_key() {
    let origin = Origin::start();
    let keys_home = tempfile::tempdir().unwrap();
    let public = keygen(keys_home.path());
    let copy_keys = |dir: &Path| copy_dir(&keys_home.path().join("keys"), &dir.join("keys"));

    // 40 records, a restart, 50 more, a pause longer than the interval and the grace, 36 more.
    let first = Proxy::start_prepared(signing_every_second(), copy_keys);
    traffic(&first, &origin, 40, 0);
    stop_cleanly(&first);
    let audit_of_first = first.path("audit");
    let second = Proxy::start_prepared(signing_every_second(), |dir| {
        copy_keys(dir);
        copy_dir(&audit_of_first, &dir.join("audit"));
    });
    traffic(&second, &origin, 50, 0);
    std::thread::sleep(Duration::from_millis(3500));
    traffic(&second, &origin, 36, 0);
    stop_cleanly(&second);
    let audit = second.path("audit");
    let checkpoints_of = |d: &Path| d.join("acme").join("checkpoints.jsonl");
    let checkpoints: Vec<Checkpoint> = lines_of(&checkpoints_of(&audit))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(checkpoints.len() >= 3, "{checkpoints:?}");
    assert!(checkpoints.iter().all(|c| c.interval_ms == Some(1000)));
    // The last checkpoint before record 50, as the attack keeps it.
    let kept = checkpoints
        .iter()
        .filter(|c| c.seq < 50)
        .map(|c| c.seq)
        .max()
        .unwrap();

    // A second of grace (the interval is as short); the interval itself when no checkpoint
    // is left to state it.
    let pinned = public.to_str().unwrap();
    let strict = ["--grace", "1s", "--checkpoint-interval", "1s"];
    let with_key = [&strict[..], &["--key", pinned]].concat();
    for args in [&strict[..], &with_key[..]] {
        let (code, clean) = verify(&audit, args);
        assert_eq!(code, 0, "{clean:#}");
        assert_eq!(clean["acme"]["records"], 126, "{clean:#}");
        assert!(
            clean["acme"]["notes"].as_array().unwrap().is_empty(),
            "{clean:#}"
        );
    }

    type Tamper<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Tamper, &str, String)> = vec![
        (
            "delete record 50, re-chain the rest, keep the checkpoints before it",
            Box::new(|d: &Path| {
                delete_and_rechain(&d.join("acme"), 50);
                keep_checkpoints(&checkpoints_of(d), |c| c.seq < 50);
            }),
            "unsigned",
            format!(
                "seq {} to 125 are covered by no checkpoint, yet seq {}",
                kept + 1,
                kept + 1
            ),
        ),
        (
            "delete a middle checkpoint",
            Box::new(|d: &Path| {
                let path = checkpoints_of(d);
                let mut lines = lines_of(&path);
                lines.remove(1);
                write_lines(&path, &lines);
            }),
            "checkpoint_gap",
            "checkpoint 2 (seq".to_string(),
        ),
        (
            "empty checkpoints.jsonl",
            Box::new(|d: &Path| std::fs::write(checkpoints_of(d), "").unwrap()),
            "unsigned",
            "seq 1 to 126 are covered by no checkpoint".to_string(),
        ),
        (
            "delete checkpoints.jsonl",
            Box::new(|d: &Path| std::fs::remove_file(checkpoints_of(d)).unwrap()),
            "unsigned",
            "the writer signs every 1s (as given)".to_string(),
        ),
    ];
    for (name, tamper, expected, detail) in &cases {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&audit, copy.path());
        tamper(copy.path());
        for args in [&strict[..], &with_key[..]] {
            let (code, report) = verify(copy.path(), args);
            assert_eq!(code, 1, "{name} {args:?}: {report:#}");
            assert_eq!(
                reason(&report, "acme").as_deref(),
                Some(*expected),
                "{name} {args:?}: {report:#}"
            );
            let text = report["acme"]["problem"]["detail"].as_str().unwrap();
            assert!(text.contains(detail.as_str()), "{name}: {text}");
        }
    }
    // The table names the range and the times.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&audit, copy.path());
    (cases[0].1)(copy.path());
    let out = Command::new(proxy_bin())
        .args([
            "audit",
            "verify",
            "--dir",
            copy.path().to_str().unwrap(),
            "--tenant",
            "acme",
        ])
        .args(strict)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table.contains("unsigned at") && table.contains("before the newest record (seq 125, 20"),
        "{table}"
    );

    // Cutting the records and their checkpoints after some point (the whole tail) cannot be
    // told from the files; a checkpoint kept elsewhere tells it.
    let anchor_home = tempfile::tempdir().unwrap();
    let anchor = anchor_home.path().join("acme-last-checkpoint.jsonl");
    std::fs::write(&anchor, lines_of(&checkpoints_of(&audit)).last().unwrap()).unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&audit, copy.path());
    let files = record_files(&copy.path().join("acme"));
    let lines = chain_lines(&copy.path().join("acme"));
    write_chain(&files, &lines[..kept as usize]);
    keep_checkpoints(&checkpoints_of(copy.path()), |c| c.seq <= kept);
    let (code, report) = verify(copy.path(), &with_key);
    assert_eq!(code, 0, "{report:#}");
    let anchored = [&with_key[..], &["--anchor", anchor.to_str().unwrap()]].concat();
    let (code, report) = verify(copy.path(), &anchored);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(reason(&report, "acme").as_deref(), Some("truncated"));
    let text = report["acme"]["problem"]["detail"].as_str().unwrap();
    assert!(
        text.contains(&format!("covers seq 126 but the records end at seq {kept}")),
        "{text}"
    );
    assert_eq!(verify(&audit, &anchored).0, 0);

    // An export on its own: intact it verifies; cut short with its checkpoints removed, not.
    let (code, exported, err) =
        export_within(&audit, &["--tenant", "acme"], Duration::from_secs(20)).unwrap();
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.jsonl");
    std::fs::write(&file, &exported).unwrap();
    let file_args = [&with_key[..], &["--json"]].concat();
    let (code, out, err) = verify_file(&file, &file_args);
    assert_eq!(code, 0, "{out}{err}");
    let cut: Vec<&str> = exported
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let seq = v["seq"].as_u64().unwrap();
            if v.get("signature").is_some() {
                seq < 50
            } else {
                seq <= 100
            }
        })
        .collect();
    std::fs::write(&file, cut.join("\n") + "\n").unwrap();
    let (code, out, _) = verify_file(&file, &file_args);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["problem"]["reason"], "unsigned", "{out}");
    let text = report[0]["problem"]["detail"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "seq {} to 100 are covered by no checkpoint",
            kept + 1
        )),
        "{text}"
    );
}

#[test]
fn a_crash_leaves_an_unsigned_tail_that_verifies_with_a_note() {
    let origin = Origin::start();
    // The default interval (60 s): nothing is signed before the crash.
    let proxy = Proxy::start(ProxySpec::default());
    traffic(&proxy, &origin, 5, 2);
    proxy.wait_audit_records("acme", 5);
    proxy.wait_audit_records("globex", 2);
    Command::new("kill")
        .arg("-9")
        .arg(proxy.pid().to_string())
        .status()
        .unwrap();
    let audit = proxy.path("audit");
    assert!(!audit.join("acme/checkpoints.jsonl").exists());
    let (code, report) = verify(&audit, &[]);
    assert_eq!(code, 0, "{report:#}");
    let notes = report["acme"]["notes"].to_string();
    assert!(
        notes.contains("seq 1 to 5 follow the last checkpoint (logged 20")
            && notes.contains("within the checkpoint interval (1m, the default"),
        "{notes}"
    );

    // The next start signs every chain the crash left unsigned before it writes anything
    // else, a tenant that sends nothing more (globex) included.
    let after = Proxy::start_prepared(ProxySpec::default(), |dir| {
        copy_dir(&audit, &dir.join("audit"))
    });
    let seqs = |tenant: &str| -> Vec<u64> {
        lines_of(&after.path(&format!("audit/{tenant}/checkpoints.jsonl")))
            .iter()
            .map(|l| serde_json::from_str::<Checkpoint>(l).unwrap().seq)
            .collect()
    };
    // Signed at start, before the proxy serves: the listeners answering, it is on disk.
    traffic(&after, &origin, 0, 0);
    assert_eq!(seqs("acme"), [5]);
    assert_eq!(seqs("globex"), [2]);
    traffic(&after, &origin, 1, 0);
    stop_cleanly(&after);
    assert_eq!(seqs("acme"), [5, 6]);
    assert_eq!(seqs("globex"), [2]);
    let (code, report) = verify(&after.path("audit"), &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["acme"]["checkpoints"], 2, "{report:#}");
    assert_eq!(report["globex"]["checkpoints"], 1, "{report:#}");
    assert_eq!(
        report["globex"]["notes"],
        serde_json::json!([]),
        "{report:#}"
    );
}

/// Without `[audit] signing_key` each start signs with a key of its own, published in
/// `_keys/`: `verify` pins them all with `--key` given once per key, and any one key left out
/// (or a stranger's) is still a bad signature.
#[test]
fn keys_of_several_starts_are_pinned_together() {
    let origin = Origin::start();
    let first = Proxy::start(ProxySpec::default());
    traffic(&first, &origin, 3, 1);
    stop_cleanly(&first);
    let audit_of_first = first.path("audit");
    let second = Proxy::start_prepared(ProxySpec::default(), |dir| {
        copy_dir(&audit_of_first, &dir.join("audit"));
    });
    traffic(&second, &origin, 2, 1);
    stop_cleanly(&second);
    let audit = second.path("audit");
    let published: Vec<PathBuf> = walk(&audit.join("_keys"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        .collect();
    assert_eq!(published.len(), 2, "one key per start: {published:?}");
    let (a, b) = (
        published[0].to_str().unwrap(),
        published[1].to_str().unwrap(),
    );

    let (code, both) = verify(&audit, &["--key", a, "--key", b]);
    assert_eq!(code, 0, "{both:#}");
    assert_eq!(both["acme"]["records"], 5, "{both:#}");
    assert_eq!(reason(&both, "acme"), None);
    for one in [a, b] {
        let (code, report) = verify(&audit, &["--key", one]);
        assert_eq!(code, 1, "{report:#}");
        assert_eq!(reason(&report, "acme").as_deref(), Some("bad_signature"));
    }
}

/// A second proxy given a running proxy's audit directory fails at start, naming the
/// directory and the process that holds it, and writes nothing there; `audit verify` (a
/// reader) still works while the first one runs, and the first one keeps serving.
#[test]
fn a_second_proxy_on_the_same_audit_directory_fails_to_start() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    traffic(&proxy, &origin, 2, 0);
    // The same configuration: its listeners ask for free ports, its audit directory is the
    // first proxy's.
    let mut second = Command::new(proxy_bin())
        .args(["run", "--config", "tenant-proxy.toml"])
        .current_dir(proxy.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second proxy started on the audit directory of a running one");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = second.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("audit directory `")
            && text.contains("is in use by another tenant-proxy")
            && text.contains(&format!("pid {} on host", proxy.pid())),
        "{text}"
    );

    traffic(&proxy, &origin, 2, 0);
    // A record is written after its response, by the writer's next batch: wait for it.
    proxy.wait_audit_records("acme", 4);
    let (code, report) = verify(&proxy.path("audit"), &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["acme"]["records"].as_u64().unwrap(), 4, "{report:#}");
    stop_cleanly(&proxy);
    let (code, report) = verify(&proxy.path("audit"), &[]);
    assert_eq!(code, 0, "{report:#}");
}

/// `audit verify` of a directory the proxy never wrote (empty, another directory, a path that is
/// none) fails instead of reporting each subdirectory as a tenant with nothing wrong.
#[test]
fn verifying_a_directory_that_is_no_audit_trail_fails() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("empty")).unwrap();
    for sub in ["config/ca", "config/keys"] {
        std::fs::create_dir_all(home.path().join(sub)).unwrap();
    }
    for (dir, says) in [
        ("empty", "is no audit directory"),
        ("config", "is no audit directory"),
        ("missing", "is not a directory"),
    ] {
        let (code, out) = proxy_cli(home.path(), &["audit", "verify", "--dir", dir], "");
        assert_eq!(code, 1, "{dir}: {out}");
        assert!(out.contains(says), "{dir}: {out}");
    }
}

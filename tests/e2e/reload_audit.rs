//! Reload, audit partitions, metrics and the cross-tenant checks on them; `check` on broken input.

use std::time::{Duration, Instant};

use crate::support::*;

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn policy_reload_good_then_bad_keeps_last_good() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let p = proxy.sidecar_port;
    assert_eq!(
        forward_get(p, &url(&origin, "/newpath/x"), None, "").status,
        403
    );

    // Good change: acme may now call /newpath/.
    std::fs::write(
        proxy.path("policies/tenants/acme/new.cedar"),
        r#"@id("acme-newpath") permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"http", resource) when { context.path like "/newpath/*" };"#,
    )
    .unwrap();
    wait_for("good reload", || {
        forward_get(p, &url(&origin, "/newpath/x"), None, "").status == 200
    });
    assert!(proxy.metrics().lines().any(|l| l
        .starts_with(r#"tenant_proxy_config_reloads_total{result="ok"}"#)
        && !l.ends_with(" 0")));

    // Bad change: a syntax error. The last good policy set stays enforced.
    std::fs::write(
        proxy.path("policies/tenants/acme/broken.cedar"),
        "permit (principal, action, resource) when {",
    )
    .unwrap();
    wait_for("rejected reload", || {
        proxy.metrics().lines().any(|l| {
            l.starts_with(r#"tenant_proxy_config_reloads_total{result="error"}"#)
                && !l.ends_with(" 0")
        })
    });
    assert!(
        proxy
            .metrics()
            .contains("\ntenant_proxy_config_last_reload_successful 0\n"),
        "the rejected reload shows until a good one"
    );
    assert_eq!(
        forward_get(p, &url(&origin, "/newpath/y"), None, "").status,
        200,
        "last good set still allows"
    );
    assert_eq!(
        forward_get(p, &url(&origin, "/globex/y"), None, "").status,
        403,
        "last good set still denies"
    );
    assert!(
        proxy.log().contains("broken.cedar"),
        "the log says why: {}",
        proxy.log()
    );
    // `/readyz` stays 200 (the last good set serves) and says the last reload was rejected,
    // when, and with how many problems; not what they are (it needs no token; the log says).
    let readyz = || {
        raw_request(
            proxy.admin_port,
            "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
    };
    let ready = readyz();
    assert_eq!(ready.status, 200, "{}", ready.body_text());
    let last = &ready.json()["last_reload"];
    assert_eq!(last["ok"], false, "{last}");
    assert!(last["at"].as_str().unwrap().ends_with('Z'), "{last}");
    assert_eq!(last["problems"], 1, "{last}");
    assert!(
        !ready.body_text().contains("broken.cedar") && !ready.body_text().contains("acme"),
        "no file, policy or tenant named: {}",
        ready.body_text()
    );

    // Fix it and remove the grant; then SIGHUP also reloads.
    std::fs::remove_file(proxy.path("policies/tenants/acme/broken.cedar")).unwrap();
    std::fs::remove_file(proxy.path("policies/tenants/acme/new.cedar")).unwrap();
    proxy.sighup();
    wait_for("reload after fix", || {
        forward_get(p, &url(&origin, "/newpath/z"), None, "").status == 403
    });
    assert!(proxy
        .metrics()
        .contains("\ntenant_proxy_config_last_reload_successful 1\n"));
    let last = &readyz().json()["last_reload"];
    assert_eq!(
        (&last["ok"], &last["problems"]),
        (&serde_json::json!(true), &serde_json::json!(0)),
        "{last}"
    );
}

/// A policy directory whose `global/` is missing (moved away for a moment: a directory swap, a
/// checkout in progress) is a problem, not a set without global policies: the reload is
/// rejected and the global forbids keep denying, `/readyz` shows it, `check` and `policy check`
/// fail naming the directory, and `run` refuses to start. The same for a missing `tenants/`.
#[test]
fn a_missing_global_or_tenants_directory_is_a_problem_not_an_empty_set() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let p = proxy.sidecar_port;
    // `forbidden-paths` (a global forbid) denies acme what its own permit would allow.
    let forbidden = || forward_get(p, &url(&origin, "/forbidden/x"), None, "");
    forbidden().assert_refused(403, "policy_denied");
    let errors = || {
        proxy
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix(r#"tenant_proxy_config_reloads_total{result="error"} "#))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let check = || {
        proxy_cli(
            proxy.dir.path(),
            &["check", "--config", "tenant-proxy.toml"],
            "",
        )
    };
    let policy_check = || {
        proxy_cli(
            proxy.dir.path(),
            &[
                "policy",
                "check",
                "policies",
                "--config",
                "tenant-proxy.toml",
            ],
            "",
        )
    };
    assert_eq!(check().0, 0, "{}", check().1);

    for moved in ["global", "tenants"] {
        let failed = errors();
        let from = proxy.path(&format!("policies/{moved}"));
        let away = proxy.path(&format!("policies/{moved}.next"));
        std::fs::rename(&from, &away).unwrap();
        wait_for(&format!("the reload without `{moved}/` rejected"), || {
            errors() > failed
        });
        let refused = forbidden();
        refused.assert_refused(403, "policy_denied");
        assert!(
            refused.body_text().contains("forbidden-paths"),
            "the last good set, global forbids included: {}",
            refused.body_text()
        );
        let ready = raw_request(
            proxy.admin_port,
            "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(ready.json()["last_reload"]["ok"], false, "{moved}");
        let missing = format!("policies/{moved}: ");
        assert!(proxy.log().contains(&missing), "{moved}: {}", proxy.log());
        for (what, (code, out)) in [("check", check()), ("policy check", policy_check())] {
            assert_eq!(code, 1, "{what} without `{moved}/`: {out}");
            assert!(
                out.contains(&missing) && out.contains("does not exist"),
                "{what} names the missing directory: {out}"
            );
        }
        // `run` refuses to start with it (in a directory of its own: the same configuration
        // would otherwise start a second proxy on the same audit trail).
        let fresh = tempfile::tempdir().unwrap();
        ProxySpec::default().write_in(fresh.path());
        std::fs::remove_dir_all(fresh.path().join(format!("policies/{moved}"))).unwrap();
        let (status, out) = run_briefly(fresh.path());
        assert!(status.is_some_and(|s| !s.success()), "{out}");
        assert!(out.contains(&missing), "{out}");

        std::fs::rename(&away, &from).unwrap();
        wait_for(&format!("`{moved}/` back"), || {
            proxy
                .metrics()
                .contains("\ntenant_proxy_config_last_reload_successful 1\n")
        });
        forbidden().assert_refused(403, "policy_denied");
    }
}

/// `tenant-proxy run` in `dir`, given 10 s to exit: its exit status (`None` if it was still
/// running, and was killed) and its output.
fn run_briefly(dir: &std::path::Path) -> (Option<std::process::ExitStatus>, String) {
    let log = dir.join("run.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(proxy_bin())
        .args(["run", "--config", "tenant-proxy.toml"])
        .current_dir(dir)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn tenant_file_reload_rejects_unknown_field() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let tok = token_for("globex", "agent");
    assert_eq!(
        forward_get(
            proxy.shared_port,
            &url(&origin, "/globex/a"),
            Some(&tok),
            ""
        )
        .status,
        200
    );
    // A key the tenant file does not have, which the typed file cannot write: patched in.
    let mut broken = proxy.tenants().to_table().unwrap();
    broken["tenants"]["globex"]
        .as_table_mut()
        .unwrap()
        .insert("unexpected".into(), 1.into());
    std::fs::write(proxy.path("tenants.toml"), broken.to_string()).unwrap();
    wait_for("rejected reload", || {
        proxy.metrics().lines().any(|l| {
            l.starts_with(r#"tenant_proxy_config_reloads_total{result="error"}"#)
                && !l.ends_with(" 0")
        })
    });
    assert_eq!(
        forward_get(
            proxy.shared_port,
            &url(&origin, "/globex/b"),
            Some(&tok),
            ""
        )
        .status,
        200
    );
    // Removing the tenant's workload (validly) takes effect: its tokens stop working.
    let mut tenants = proxy.tenants().clone();
    tenants.tenant("globex").workloads = vec!["other".into()];
    proxy.write_tenants(&tenants);
    wait_for("tenant change", || {
        forward_get(
            proxy.shared_port,
            &url(&origin, "/globex/c"),
            Some(&tok),
            "",
        )
        .status
            == 407
    });
}

#[test]
fn audit_partitions_and_metrics_are_per_tenant() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let acme = token_for("acme", "bot");
    let globex = token_for("globex", "agent");

    let a_ok = forward_get(
        proxy.shared_port,
        &url(&origin, "/acme/one"),
        Some(&acme),
        "",
    );
    let a_no = forward_get(
        proxy.shared_port,
        &url(&origin, "/globex/one"),
        Some(&acme),
        "",
    );
    assert_eq!((a_ok.status, a_no.status), (200, 403));
    proxy.audit_record("acme", &a_no.request_id());
    let recs = proxy.audit_records("acme");
    assert_eq!(recs.len(), 2);
    for r in &recs {
        for field in [
            "time",
            "tenant",
            "workload",
            "run_id",
            "request_id",
            "trace_id",
            "method",
            "scheme",
            "host",
            "port",
            "path",
            "decision",
            "reason",
            "policy_ids",
            "status",
            "latency_ms",
            "bytes_in",
            "bytes_out",
        ] {
            assert!(r.get(field).is_some(), "missing {field}: {r}");
        }
        assert_eq!(r["run_signed"], false);
    }
    // Partition layout: audit/<tenant>/<yyyy>/<mm>/<dd>.jsonl, and nothing for globex yet
    // (`_keys/` holds the checkpoint signers' public keys and `.tenant-proxy.lock` the running
    // writer's pid, no tenant's data).
    let files: Vec<_> = walk(&proxy.path("audit"))
        .into_iter()
        .filter(|f| {
            !f.starts_with(proxy.path("audit/_keys"))
                && *f != proxy.path("audit/.tenant-proxy.lock")
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let rel = files[0]
        .strip_prefix(proxy.path("audit"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        rel.starts_with("acme/") && rel.ends_with(".jsonl") && rel.split('/').count() == 4,
        "{rel}"
    );
    assert!(
        !proxy.path("audit/globex").exists(),
        "acme's traffic must not touch globex's partition"
    );

    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"tenant_proxy_requests_total{code="allowed",decision="allow",tenant="acme"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"tenant_proxy_requests_total{code="policy_denied",decision="deny",tenant="acme"} 1"#
    ));
    assert!(
        !metrics.contains(r#"tenant="globex""#),
        "no globex series before globex traffic"
    );

    let g = forward_get(
        proxy.shared_port,
        &url(&origin, "/globex/one"),
        Some(&globex),
        "",
    );
    assert_eq!(g.status, 200);
    let grec = proxy.audit_record("globex", &g.request_id());
    assert_eq!(grec["tenant"], "globex");
    assert_eq!(
        proxy.audit_records("acme").len(),
        2,
        "globex traffic leaves acme's partition untouched"
    );
    assert_eq!(proxy.audit_records("globex").len(), 1);
}

#[test]
fn cross_tenant_decisions_use_only_the_callers_policies() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    // acme's policy file allows /acme/*; globex's workload can never be decided under it, in
    // any spelling of its identity.
    let g = token_for("globex", "agent");
    for path in ["/acme/x", "/acme/", "/ACME/x"] {
        let r = forward_get(
            proxy.shared_port,
            &url(&origin, path),
            Some(&g),
            "X-Tenant-Id: acme\r\n",
        );
        assert_eq!(r.status, 403, "{path}");
        let rec = proxy.audit_record("globex", &r.request_id());
        assert_eq!(
            rec["policy_ids"],
            serde_json::json!([]),
            "no acme policy decided: {rec}"
        );
    }
    assert_eq!(origin.count(), 0);
    // And acme's workload is not affected by globex's grants.
    let a = token_for("acme", "bot");
    assert_eq!(
        forward_get(proxy.shared_port, &url(&origin, "/globex/x"), Some(&a), "").status,
        403
    );
}

/// With acme's partition broken (the caller broke it), the first request is admitted, then
/// requests are refused with `audit_unavailable` and nothing more reaches the origin (the
/// replica stays ready: only acme's partition fails); after `repair` the held record is written
/// and requests are served again.
fn refuses_while_unwritable_then_recovers(proxy: &Proxy, origin: &Origin, repair: impl FnOnce()) {
    let first = forward_get(proxy.sidecar_port, &url(origin, "/acme/1"), None, "");
    assert_eq!(first.status, 200, "admitted before the write failed");
    wait_for("audit refusal", || {
        let r = forward_get(proxy.sidecar_port, &url(origin, "/acme/2"), None, "");
        r.status == 503 && r.code() == "audit_unavailable"
    });
    let seen_before = origin.count();
    std::thread::sleep(Duration::from_millis(200));
    let r = forward_get(proxy.sidecar_port, &url(origin, "/acme/3"), None, "");
    assert_eq!((r.status, r.code().as_str()), (503, "audit_unavailable"));
    assert_eq!(origin.count(), seen_before, "no request served unaudited");
    let metrics = proxy.metrics();
    assert!(metrics.contains("tenant_proxy_audit_write_errors_total"));
    assert!(
        metrics.contains("tenant_proxy_audit_partition_failing{tenant=\"acme\"} 1"),
        "{metrics}"
    );
    // One tenant's partition failing does not take the replica out of service (other tenants
    // are served); readiness counts the failing partitions without naming them.
    // The sink as a whole (the directory) still writes: only acme's partition fails.
    assert!(
        metrics.contains("\ntenant_proxy_audit_healthy 1\n"),
        "{metrics}"
    );
    let ready = raw_request(
        proxy.admin_port,
        "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body_text());
    assert_eq!(ready.json()["audit_partitions_failing"], 1);
    assert!(!ready.body_text().contains("acme"));

    // Repair: the writer retries, writes the held record, and admits requests again.
    repair();
    wait_for("recovery", || {
        forward_get(proxy.sidecar_port, &url(origin, "/acme/4"), None, "").status == 200
    });
    let recs = proxy.audit_records("acme");
    assert!(
        recs.iter()
            .any(|r| r["request_id"] == first.request_id().as_str()),
        "the held record was written, not lost"
    );
    assert!(proxy.metrics().contains("\ntenant_proxy_audit_healthy 1\n"));
}

#[test]
fn cost_ceiling_gauges_follow_the_tenant_file_per_tenant() {
    let mut spec = ProxySpec::default().with_prices();
    let acme = spec.tenant("acme").limits();
    acme.cost_per_day_micros = Some(20_000_000);
    acme.cost_per_month_micros = Some(300_000_000);
    spec.tenant("globex").limits().cost_per_day_micros = Some(1_000_000);
    let proxy = Proxy::start(spec);
    let acme_day = r#"tenant_proxy_cost_ceiling_micros{period="day",tenant="acme"} "#;
    let acme_month = r#"tenant_proxy_cost_ceiling_micros{period="month",tenant="acme"} "#;
    let globex_day = r#"tenant_proxy_cost_ceiling_micros{period="day",tenant="globex"} "#;
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(&format!("{acme_day}20000000\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{acme_month}300000000\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{globex_day}1000000\n")),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"period="month",tenant="globex""#),
        "globex has no monthly ceiling: {metrics}"
    );
    assert!(
        !metrics.contains(r#"tenant_proxy_cost_ceiling_micros{period="day",tenant="evalerr"}"#),
        "a tenant without ceilings has no series"
    );

    // acme's daily ceiling is raised and its monthly one removed: globex's series is untouched
    // and nothing of acme's old values remains.
    let mut tenants = proxy.tenants().clone();
    let acme = tenants.tenant("acme").limits();
    acme.cost_per_day_micros = Some(25_000_000);
    acme.cost_per_month_micros = None;
    proxy.write_tenants(&tenants);
    wait_for("ceiling reload", || {
        proxy.metrics().contains(&format!("{acme_day}25000000\n"))
    });
    let metrics = proxy.metrics();
    assert!(!metrics.contains(acme_month), "{metrics}");
    assert!(
        metrics.contains(&format!("{globex_day}1000000\n")),
        "{metrics}"
    );
}

/// A tenant taken out of the tenant file leaves the metrics at the reload: none of its series
/// stays exported until a restart, while the tenants still served keep theirs.
#[test]
fn a_removed_tenants_series_leave_the_metrics() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let globex = token_for("globex", "agent");
    let shared = |path: &str| {
        forward_get(
            proxy.shared_port,
            &url(&origin, path),
            Some(&globex),
            "Connection: close\r\n",
        )
    };
    assert_eq!(shared("/globex/y").status, 200);
    assert_eq!(
        forward_get(proxy.sidecar_port, &url(&origin, "/acme/x"), None, "").status,
        200
    );
    let globex_series = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.contains(r#"tenant="globex""#))
            .map(str::to_owned)
            .collect()
    };
    // globex's connection has closed: its gauge is back at 0, so nothing of it stays open.
    wait_for("globex's connection closed", || {
        proxy
            .metrics()
            .contains("tenant_proxy_tenant_connections_open{tenant=\"globex\"} 0\n")
    });
    let before = proxy.metrics();
    assert!(
        globex_series(&before)
            .iter()
            .any(|l| l.starts_with("tenant_proxy_requests_total{")),
        "{before}"
    );

    let reloads = proxy.reloads_ok();
    let mut without_globex = proxy.tenants().clone();
    without_globex.tenants.remove("globex");
    proxy.write_tenants(&without_globex);
    proxy.wait_reload_after(reloads);
    let after = proxy.metrics();
    assert_eq!(globex_series(&after), Vec::<String>::new());
    assert!(
        after.lines().any(
            |l| l.starts_with("tenant_proxy_requests_total{") && l.contains(r#"tenant="acme""#)
        ),
        "{after}"
    );
    // Its token is refused now, and the refusal is counted without its name.
    assert_eq!(shared("/globex/z").status, 407);
    assert_eq!(globex_series(&proxy.metrics()), Vec::<String>::new());
}

/// Taking the workload a sidecar listener is bound to out of the tenant file cuts it off: the
/// reload applies (refusing it would keep serving the workload the operator removed), the
/// listener refuses every request with `identity_invalid`, on a kept-alive connection too, and
/// the workload put back is served again.
#[test]
fn removing_a_sidecars_workload_cuts_the_sidecar_off() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let sidecar = |path: &str| forward_get(proxy.sidecar_port, &url(&origin, path), None, "");
    assert_eq!(sidecar("/acme/before").status, 200);
    let mut kept_alive = std::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    kept_alive
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let get = |path: &str| {
        format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            url(&origin, path),
            origin.port
        )
    };
    let status_of = |conn: &mut std::net::TcpStream, path: &str| -> String {
        use std::io::{Read as _, Write as _};
        conn.write_all(get(path).as_bytes()).unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let n = conn.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(status_of(&mut kept_alive, "/acme/k0").starts_with("HTTP/1.1 200"));

    let original = proxy.tenants().clone();
    let mut without = original.clone();
    without.tenant("acme").workloads.retain(|w| w != "bot");
    proxy.write_tenants(&without);
    wait_for("the sidecar cut off", || {
        sidecar("/acme/wait").status == 407
    });
    let refused = sidecar("/acme/cut2");
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["error"]["code"], "identity_invalid", "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    let answer = status_of(&mut kept_alive, "/acme/k1");
    assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    // The reload applied, and the log says why the sidecar refuses.
    let ready: serde_json::Value = proxy.readyz_json();
    assert_eq!(ready["last_reload"]["ok"], true, "{ready}");
    assert!(proxy
        .log()
        .contains("the workload this listener is bound to is no longer in the tenant file"));
    // Nothing reached the origin while it was cut off.
    assert!(!origin
        .requests()
        .iter()
        .any(|r| r.target.contains("/acme/cut2") || r.target.contains("/acme/k1")));

    proxy.write_tenants(&original);
    wait_for("the sidecar served again", || {
        sidecar("/acme/after").status == 200
    });

    // The whole tenant taken out, its policy directory left behind: the same.
    let mut without_acme = original.clone();
    without_acme.tenants.remove("acme");
    proxy.write_tenants(&without_acme);
    wait_for("the tenant cut off", || {
        sidecar("/acme/wait2").status == 407
    });
    assert!(proxy
        .log()
        .contains("policies for tenant `acme`, which the configuration no longer defines"));
    proxy.write_tenants(&original);
    wait_for("the tenant served again", || {
        sidecar("/acme/after2").status == 200
    });
}

#[test]
fn audit_sink_failure_refuses_then_recovers() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    // Make acme's partition unwritable by putting a file where its directory goes (root
    // ignores permission bits, so chmod would not do).
    std::fs::create_dir_all(proxy.path("audit")).unwrap();
    std::fs::write(proxy.path("audit/acme"), b"not a directory").unwrap();
    refuses_while_unwritable_then_recovers(&proxy, &origin, || {
        std::fs::remove_file(proxy.path("audit/acme")).unwrap()
    });
}

#[test]
fn a_full_disk_refuses_with_audit_unavailable_and_serves_nothing_unaudited() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    // acme's partition for today is /dev/full: every write fails with ENOSPC, as on a full disk.
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y/%m/%d")
        .output()
        .unwrap();
    let today = proxy.path(&format!(
        "audit/acme/{}.jsonl",
        String::from_utf8(date.stdout).unwrap().trim()
    ));
    std::fs::create_dir_all(today.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/full", &today).unwrap();
    // Space again: the link goes, and the writer makes a real file.
    refuses_while_unwritable_then_recovers(&proxy, &origin, || {
        std::fs::remove_file(&today).unwrap()
    });
}

#[test]
fn check_reports_every_problem_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    copy_dir(
        &root.join("tests/fixtures/policies"),
        &dir.path().join("policies"),
    );
    std::fs::copy(
        root.join("policies/schema.cedarschema"),
        dir.path().join("policies/schema.cedarschema"),
    )
    .unwrap();
    std::fs::copy(root.join(TEST_JWKS), dir.path().join("jwks.json")).unwrap();
    // `check` binds nothing: any address will do.
    let mut static_file = config::StaticFile::new("tenants.toml", "audit");
    static_file.listeners.push(config::Listener {
        listen: "127.0.0.1:1".parse().unwrap(),
        ..config::Listener::token("l")
    });
    static_file
        .write(&dir.path().join("tenant-proxy.toml"))
        .unwrap();
    let mut tenants = standard_tenants();
    tenants.token = Some(config::Token::new("jwks.json"));
    tenants.write(&dir.path().join("tenants.toml")).unwrap();
    let check = |what: &str| {
        let out = std::process::Command::new(proxy_bin())
            .args(["check", "--config"])
            .arg(dir.path().join("tenant-proxy.toml"))
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            what.to_string(),
        )
    };
    let (code, out, _) = check("good");
    assert_eq!(code, Some(0), "{out}");

    // Unknown field in the static file: line and column.
    let mut broken = static_file.to_table().unwrap();
    broken.insert("colour".into(), 1.into());
    std::fs::write(dir.path().join("tenant-proxy.toml"), broken.to_string()).unwrap();
    let (code, out, _) = check("unknown field");
    assert_eq!(code, Some(1));
    assert!(
        out.contains("tenant-proxy.toml") && out.contains("unknown field `colour`"),
        "{out}"
    );
    static_file
        .write(&dir.path().join("tenant-proxy.toml"))
        .unwrap();

    // A policy syntax error and a schema violation, reported together with file and line.
    std::fs::write(
        dir.path().join("policies/tenants/acme/syntax.cedar"),
        "permit (principal, action, resource)\nwhen { context.path like };",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/tenants/globex/schema.cedar"),
        "permit (principal, action == TenantProxy::Action::\"http\", resource)\nwhen { context.no_such_field == 1 };",
    )
    .unwrap();
    let (code, out, _) = check("broken policies");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("syntax.cedar:2:"),
        "syntax error with file and line: {out}"
    );
    assert!(
        out.contains("schema.cedar:2:"),
        "validation error with file and line: {out}"
    );
    assert!(
        out.contains("2 problem(s)") || out.matches("cedar").count() >= 2,
        "both reported: {out}"
    );
}

/// Rewrites the proxy's JWKS without the Ed25519 test key, keeping the ES256 one (`test-es`).
fn pull_the_ed25519_key(proxy: &Proxy) {
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(proxy.path("jwks.json")).unwrap()).unwrap();
    let only_es: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kid"] == "test-es")
        .cloned()
        .collect();
    std::fs::write(
        proxy.path("jwks.json"),
        serde_json::json!({ "keys": only_es }).to_string(),
    )
    .unwrap();
}

#[test]
fn jwks_and_revocation_list_reload() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let ed = token(TokenOpts {
        jti: Some("to-revoke"),
        ..Default::default()
    });
    let es = token(TokenOpts {
        key: TEST_KEY_ES256,
        kid: Some("test-es"),
        ..Default::default()
    });
    assert_eq!(
        forward_get(proxy.shared_port, &url(&origin, "/acme/a"), Some(&ed), "").status,
        200
    );

    // Revoking a jti takes effect without restart.
    std::fs::write(proxy.path("revoked.txt"), "revoked-jti-1\nto-revoke\n").unwrap();
    wait_for("revocation", || {
        forward_get(proxy.shared_port, &url(&origin, "/acme/b"), Some(&ed), "").status == 407
    });

    // Rotating the key set: drop the Ed25519 key, keep the ES256 one.
    let fresh_ed = token(TokenOpts::default());
    assert_eq!(
        forward_get(
            proxy.shared_port,
            &url(&origin, "/acme/c"),
            Some(&fresh_ed),
            ""
        )
        .status,
        200
    );
    pull_the_ed25519_key(&proxy);
    wait_for("key rotation", || {
        forward_get(
            proxy.shared_port,
            &url(&origin, "/acme/d"),
            Some(&fresh_ed),
            "",
        )
        .status
            == 407
    });
    assert_eq!(
        forward_get(proxy.shared_port, &url(&origin, "/acme/e"), Some(&es), "").status,
        200
    );
}

/// A reload rejected for an unrelated problem (a broken policy) still applies the token
/// changes that only tighten: a revoked jti and a pulled key stop working at once, while the
/// rest of the last good configuration keeps serving; the fixed reload then takes it all.
#[test]
fn revocations_and_pulled_keys_apply_even_when_the_reload_is_rejected() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    // Signed by the key that stays, so only the revocation can refuse it.
    let revoked = token(TokenOpts {
        jti: Some("revoke-me-while-broken"),
        key: TEST_KEY_ES256,
        kid: Some("test-es"),
        ..Default::default()
    });
    let kept = token(TokenOpts {
        jti: Some("still-good"),
        key: TEST_KEY_ES256,
        kid: Some("test-es"),
        ..Default::default()
    });
    let pulled = token(TokenOpts {
        jti: Some("signed-by-the-pulled-key"),
        ..Default::default()
    });
    for (t, path) in [
        (&revoked, "/acme/r0"),
        (&kept, "/acme/k0"),
        (&pulled, "/acme/p0"),
    ] {
        assert_eq!(
            forward_get(proxy.shared_port, &url(&origin, path), Some(t), "").status,
            200
        );
    }
    // One edit breaks a policy; with it, a revocation and a key pulled from the JWKS.
    std::fs::write(
        proxy.path("policies/tenants/acme/broken.cedar"),
        "permit (principal, action, resource) when { nonsense };",
    )
    .unwrap();
    std::fs::write(proxy.path("revoked.txt"), "revoke-me-while-broken\n").unwrap();
    pull_the_ed25519_key(&proxy);
    wait_for("the revocation despite the broken policy", || {
        forward_get(
            proxy.shared_port,
            &url(&origin, "/acme/r1"),
            Some(&revoked),
            "",
        )
        .status
            == 407
    });
    assert_eq!(
        forward_get(
            proxy.shared_port,
            &url(&origin, "/acme/p1"),
            Some(&pulled),
            ""
        )
        .status,
        407
    );
    // The rest is the last good configuration: the reload itself was rejected.
    assert_eq!(
        forward_get(
            proxy.shared_port,
            &url(&origin, "/acme/k1"),
            Some(&kept),
            ""
        )
        .status,
        200
    );
    let ready: serde_json::Value = proxy.readyz_json();
    assert_eq!(ready["last_reload"]["ok"], false, "{ready}");
    assert!(proxy
        .log()
        .contains("reload rejected, but its new token revocations and key removals apply"));
}

/// A JWKS edit the proxy rejects (an entry it cannot use) still pulls the keys it no longer
/// names, and a revocation file with a byte that is not UTF-8 (a comment saved in Latin-1)
/// still revokes: neither waits for a reload that passes. A JWKS that holds an identity
/// provider's RSA keys beside its EC ones is taken, the RSA keys left out and warned about.
#[test]
fn a_jwks_or_revocation_edit_that_is_not_clean_still_tightens() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let es = |jti: &'static str| {
        token(TokenOpts {
            jti: Some(jti),
            key: TEST_KEY_ES256,
            kid: Some("test-es"),
            ..Default::default()
        })
    };
    let (kept, revoked) = (es("kept"), es("revoked-in-latin-1"));
    let pulled = token(TokenOpts::default());
    let status = |t: &str, path: &str| {
        forward_get(proxy.shared_port, &url(&origin, path), Some(t), "").status
    };
    for (t, path) in [
        (&kept, "/acme/k0"),
        (&revoked, "/acme/r0"),
        (&pulled, "/acme/p0"),
    ] {
        assert_eq!(status(t, path), 200, "{path}");
    }
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(proxy.path("jwks.json")).unwrap()).unwrap();
    let es_key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "test-es")
        .unwrap()
        .clone();
    let write_jwks = |keys: serde_json::Value| {
        std::fs::write(
            proxy.path("jwks.json"),
            serde_json::json!({ "keys": keys }).to_string(),
        )
        .unwrap();
    };
    // The Ed25519 key pulled, and a malformed EC key added in the same edit.
    let broken = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "idp-new", "x": "AAAA", "y": "AAAA"});
    write_jwks(serde_json::json!([es_key.clone(), broken]));
    wait_for("the pulled key refused despite the rejected JWKS", || {
        status(&pulled, "/acme/p1") == 407
    });
    assert_eq!(status(&kept, "/acme/k1"), 200);
    let ready = || proxy.readyz_json();
    assert_eq!(ready()["last_reload"]["ok"], false);
    // A revocation whose comment an editor saved in Latin-1, while the JWKS is still rejected.
    std::fs::write(
        proxy.path("revoked.txt"),
        b"revoked-in-latin-1  # laptop of J\xfcrgen (stolen)\n",
    )
    .unwrap();
    wait_for("the Latin-1 revocation", || {
        status(&revoked, "/acme/r1") == 407
    });
    assert_eq!(status(&kept, "/acme/k2"), 200);
    // An identity provider's JWKS: its RSA key left out, the reload taken.
    let rsa = serde_json::json!({"kty": "RSA", "kid": "idp-rsa", "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"});
    write_jwks(serde_json::json!([es_key, rsa]));
    wait_for("the JWKS with an RSA key taken", || {
        ready()["last_reload"]["ok"] == true
    });
    assert_eq!(status(&kept, "/acme/k3"), 200);
    assert_eq!(status(&revoked, "/acme/r2"), 407);
    assert_eq!(status(&pulled, "/acme/p2"), 407);
    assert!(proxy
        .log()
        .contains("left out: `idp-rsa` (not Ed25519 or P-256)"));
}

/// The decision cache (on by default) is per engine: a request allowed (and answered from the
/// cache on repeat) is refused as soon as a reload brings a policy that forbids it, and the
/// tenant's cache counts its hits and misses by opaque tenant id.
#[test]
fn a_cached_allow_is_refused_once_a_reload_forbids_it() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let p = proxy.sidecar_port;
    let cache = |result: &str| {
        let m = proxy.metrics();
        let lines: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("tenant_proxy_policy_decision_cache_total{"))
            .filter(|l| l.contains(r#"tenant="acme""#) && l.contains(r#"set="enforced""#))
            .filter(|l| l.contains(&format!(r#"result="{result}""#)))
            .collect();
        lines
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    for _ in 0..3 {
        assert_eq!(
            forward_get(p, &url(&origin, "/acme/cached"), None, "").status,
            200
        );
    }
    assert_eq!(origin.count(), 3);
    // The same question three times: asked of Cedar once, answered from the cache after (twice,
    // unless the tenant's hour turned in between, which is a new question).
    let (misses, hits) = (cache("miss"), cache("hit"));
    assert!(
        misses + hits == 3.0 && hits >= 1.0,
        "{misses} misses, {hits} hits"
    );

    std::fs::write(
        proxy.path("policies/tenants/acme/stop.cedar"),
        r#"@id("acme-stop-cached") forbid (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"http", resource) when { context.path == "/acme/cached" };"#,
    )
    .unwrap();
    wait_for("reload that forbids the cached request", || {
        forward_get(p, &url(&origin, "/acme/cached"), None, "").status == 403
    });
    // (Until the reload landed, the polling requests above were still allowed.)
    let reached = origin.count();
    let r = forward_get(p, &url(&origin, "/acme/cached"), None, "");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"]["code"],
        "policy_denied",
        "{}",
        r.body_text()
    );
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(
        rec["policy_ids"],
        serde_json::json!(["acme-stop-cached"]),
        "{rec}"
    );
    assert_eq!(
        origin.count(),
        reached,
        "the refused request reached nothing"
    );
    // Other requests of acme still go through under the new set.
    assert_eq!(
        forward_get(p, &url(&origin, "/acme/other"), None, "").status,
        200
    );
    // globex never asked: no series of its own.
    assert!(!proxy.metrics().lines().any(|l| l
        .starts_with("tenant_proxy_policy_decision_cache_total{")
        && l.contains(r#"tenant="globex""#)));
}

/// An edit of the static file is not reloaded (its settings need a restart): a reload says so
/// instead of looking as if it applied.
#[test]
fn a_reload_says_the_changed_static_file_needs_a_restart() {
    let proxy = Proxy::start(ProxySpec::default());
    proxy.sighup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !proxy.log().contains("tenant configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !proxy.log().contains("the static file changed"),
        "{}",
        proxy.log()
    );
    let path = proxy.path("tenant-proxy.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n# edited after start\n");
    std::fs::write(&path, text).unwrap();
    proxy.sighup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !proxy.log().contains("the static file changed since start") {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every decided record names the version of the policy set that decided it: the same for the
/// same files, another once the tenant's own files change (a reviewer's comment too), and the
/// other tenant's unchanged by it.
#[test]
fn a_record_names_the_version_of_the_policy_set_that_decided_it() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let globex = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        ..Default::default()
    });
    let acme_call = || forward_get(proxy.sidecar_port, &url(&origin, "/acme/v"), None, "");
    let globex_call = || {
        forward_get(
            proxy.shared_port,
            &url(&origin, "/globex/v"),
            Some(&globex),
            "",
        )
    };
    let version = |tenant: &str, r: &Response| -> String {
        let record = proxy.audit_record(tenant, &r.request_id());
        let v = record["policy_version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(v.len(), 16, "{record}");
        v
    };
    let (acme_before, globex_before) = (
        version("acme", &acme_call()),
        version("globex", &globex_call()),
    );
    assert_eq!(
        version("acme", &acme_call()),
        acme_before,
        "same files, same version"
    );
    assert_ne!(acme_before, globex_before);

    let own = std::fs::read_dir(proxy.path("policies/tenants/acme"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cedar"))
        .unwrap();
    let text = std::fs::read_to_string(&own).unwrap();
    std::fs::write(&own, format!("// reviewed\n{text}")).unwrap();
    let mut acme_after = acme_before.clone();
    wait_for("the reload", || {
        acme_after = version("acme", &acme_call());
        acme_after != acme_before
    });
    assert_eq!(version("globex", &globex_call()), globex_before);
}

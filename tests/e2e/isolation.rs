//! Isolation where a careless comparison would leak: tenants whose ids share a prefix (`acme`,
//! `acme2`, `acme-eu`) and a tenant whose policy files do not scope themselves. Every surface a
//! tenant id selects (credentials, limit counters, audit partitions, export, verify, metrics,
//! error bodies) is asked for one tenant and must answer with that tenant's only. Upstream
//! connections, which nothing selects by tenant unless the proxy makes it, are kept per tenant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The tenants sharing the prefix `acme`, with how many allowed requests each sends.
const PREFIXED: [(&str, usize); 3] = [("acme", 3), ("acme2", 2), ("acme-eu", 1)];

fn secret_of(tenant: &str) -> String {
    format!("sk-{tenant}-isolation-canary-5e1f")
}

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

fn token_of(tenant: &str) -> String {
    match tenant {
        "acme" => token_for("acme", "bot"),
        "acme2" => token_for("acme2", "bot"),
        "acme-eu" => token_for("acme-eu", "bot"),
        other => panic!("no token for {other}"),
    }
}

/// A proxy knowing acme (with a rate ceiling of 3 a minute), acme2 and acme-eu, each with a
/// vault credential `key` of its own bound to `127.0.0.1/public/`.
fn start_prefixed() -> Proxy {
    let mut spec = ProxySpec::default();
    for (tenant, _) in &PREFIXED[1..] {
        spec.tenants
            .tenants
            .insert((*tenant).into(), config::Tenant::new("pro", "eu", &["bot"]));
    }
    spec.tenant("acme").limits = Some(config::Ceilings {
        requests_per_minute: Some(3),
        ..Default::default()
    });
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        ..Default::default()
    });
    Proxy::start_prepared(spec, |dir| {
        let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
        assert_eq!(code, 0, "{out}");
        for (tenant, _) in PREFIXED {
            let (code, out) = proxy_cli(
                dir,
                &[
                    "cred",
                    "--config",
                    "tenant-proxy.toml",
                    "put",
                    "--tenant",
                    tenant,
                    "--name",
                    "key",
                    "--bind",
                    "127.0.0.1/public/",
                    "--in",
                    "header",
                ],
                &secret_of(tenant),
            );
            assert_eq!(code, 0, "cred put: {out}");
        }
    })
}

fn stop(proxy: &Proxy) {
    Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.log().contains("audit writer stopped") {
        assert!(Instant::now() < deadline, "proxy did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(proxy_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Tenants calling the same origin in turn never travel on one upstream connection (pingora
/// pools by address and TLS alone; a desync of a shared connection would hand one tenant's
/// bytes to the other), while each tenant's own requests still reuse its pooled connection.
#[test]
fn tenants_never_share_an_upstream_connection() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let turns = [
        ("acme", "bot"),
        ("globex", "agent"),
        ("acme", "researcher"),
        ("globex", "agent"),
        ("acme", "bot"),
    ];
    for (i, (tenant, workload)) in turns.iter().enumerate() {
        let r = forward_get(
            proxy.shared_port,
            &url(&origin, &format!("/public/pool/{tenant}/{i}")),
            Some(&token_for(tenant, workload)),
            "",
        );
        assert_eq!(r.status, 200, "{tenant} #{i}: {}", r.body_text());
        // The proxy puts the connection back in its pool once the response is read; give it
        // that moment, so that the next request finds it there.
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = origin.matching("/public/pool/");
    assert_eq!(seen.len(), turns.len(), "{seen:#?}");
    let tenant_of = |r: &Recorded| r.target.split('/').nth(3).unwrap().to_string();
    let mut carried: HashMap<usize, String> = HashMap::new();
    for r in &seen {
        let first = carried.entry(r.conn).or_insert_with(|| tenant_of(r));
        assert_eq!(
            *first,
            tenant_of(r),
            "upstream connection {} carried requests of {first} and {}",
            r.conn,
            tenant_of(r)
        );
    }
    for tenant in ["acme", "globex"] {
        let conns: HashSet<usize> = seen
            .iter()
            .filter(|r| tenant_of(r) == tenant)
            .map(|r| r.conn)
            .collect();
        assert_eq!(
            conns.len(),
            1,
            "{tenant}'s requests were not pooled: {conns:?}"
        );
    }
}

#[test]
fn tenants_whose_ids_share_a_prefix_reach_only_their_own() {
    let origin = Origin::start();
    let proxy = start_prefixed();
    let mut request_ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();

    // acme2 sends first and most: had its requests been counted as acme's (a key or a lookup by
    // prefix), acme's ceiling of 3 a minute would already be spent.
    for (tenant, n) in [("acme2", 2), ("acme-eu", 1), ("acme", 3)] {
        for i in 0..n {
            // Every request also claims to be another tenant of the family in a header.
            let r = forward_get(
                proxy.shared_port,
                &url(&origin, &format!("/public/echo/{tenant}/{i}")),
                Some(&token_of(tenant)),
                "Authorization: Bearer $CRED{key}\r\nX-Tenant-Id: acme\r\nX-Tenant-Id: acme2\r\n",
            );
            assert_eq!(r.status, 200, "{tenant} #{i}: {}", r.body_text());
            // The echoing origin reflects the secret; each tenant sees its own handle back, no
            // secret of its own or of its neighbours.
            let text = format!("{:?}{}", r.header("x-echo"), r.body_text());
            assert!(text.contains("$CRED{key}"), "{text}");
            for (other, _) in PREFIXED {
                assert!(
                    !text.contains(&secret_of(other)),
                    "{tenant} saw {other}'s secret"
                );
            }
            request_ids.entry(tenant).or_default().push(r.request_id());
        }
    }
    // Each tenant's secret reached the origin on its own requests only.
    for (tenant, n) in PREFIXED {
        let seen = origin.matching(&format!("/public/echo/{tenant}/"));
        assert_eq!(seen.len(), n, "{tenant}");
        for s in &seen {
            assert_eq!(
                s.headers.get("authorization").map(String::as_str),
                Some(format!("Bearer {}", secret_of(tenant)).as_str()),
                "{tenant}: {}",
                s.target
            );
            assert!(!s.headers.contains_key("x-tenant-id"));
        }
    }
    // acme's fourth request is over its own ceiling; the refusal names acme's request only.
    let over = forward_get(
        proxy.shared_port,
        &url(&origin, "/public/over"),
        Some(&token_of("acme")),
        "",
    );
    over.assert_refused(429, "rate_limited");
    let body = over.body_text();
    assert!(
        !body.contains("acme2") && !body.contains("acme-eu"),
        "{body}"
    );
    // acme2 and acme-eu still have allowance: acme's ceiling is acme's alone.
    for tenant in ["acme2", "acme-eu"] {
        let r = forward_get(
            proxy.shared_port,
            &url(&origin, &format!("/public/after/{tenant}")),
            Some(&token_of(tenant)),
            "",
        );
        assert_eq!(r.status, 200, "{tenant}");
        request_ids.get_mut(tenant).unwrap().push(r.request_id());
    }
    request_ids.get_mut("acme").unwrap().push(over.request_id());

    // Audit partitions: each holds exactly its tenant's records.
    for (tenant, ids) in &request_ids {
        let records = proxy.wait_audit_records(tenant, ids.len());
        assert_eq!(records.len(), ids.len(), "{tenant}: {records:#?}");
        for r in &records {
            assert_eq!(r["tenant"], *tenant);
            assert!(ids.contains(&r["request_id"].as_str().unwrap().to_string()));
        }
    }
    // Metrics: each tenant's series counts its own requests, under its own id (read after the
    // records: a request is counted just before its record is written).
    let metrics = proxy.metrics();
    for (tenant, ids) in &request_ids {
        assert_eq!(
            metric_sum(&metrics, "tenant_proxy_requests_total", "tenant", tenant),
            ids.len() as f64,
            "requests of {tenant}:\n{metrics}"
        );
        assert_eq!(
            metric_sum(
                &metrics,
                "tenant_proxy_credential_substitutions_total",
                "tenant",
                tenant
            ),
            PREFIXED.iter().find(|(t, _)| t == tenant).unwrap().1 as f64,
            "substitutions of {tenant}"
        );
    }
    assert_eq!(
        metric_sum(&metrics, "tenant_proxy_requests_total", "tenant", "bot"),
        0.0,
        "a workload id is not a tenant label"
    );

    stop(&proxy);
    let audit = proxy.path("audit");
    let dir = audit.to_str().unwrap();

    // Export of one tenant: its records and checkpoints, nothing of a tenant it prefixes.
    for (tenant, ids) in &request_ids {
        let (code, out, err) = cli(&["audit", "export", "--dir", dir, "--tenant", tenant]);
        assert_eq!(code, 0, "{err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let records: Vec<_> = lines
            .iter()
            .filter(|l| l.get("signature").is_none())
            .collect();
        assert_eq!(records.len(), ids.len(), "export of {tenant}: {out}");
        assert!(lines.iter().all(|l| l["tenant"] == *tenant), "{out}");
    }

    // Verify of one tenant checks that tenant's chain only and counts its records alone.
    for (tenant, ids) in &request_ids {
        let (code, out, err) = cli(&["audit", "verify", dir, "--tenant", tenant, "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(reports.len(), 1, "{out}");
        assert_eq!(reports[0]["tenant"], *tenant);
        assert_eq!(reports[0]["records"], ids.len(), "{out}");
    }
    // Breaking acme2's chain is acme2's problem, never acme's.
    break_first_record(&audit.join("acme2"));
    let (code, out, _) = cli(&["audit", "verify", dir, "--tenant", "acme", "--json"]);
    assert_eq!(code, 0, "acme's chain is intact: {out}");
    let (code, out, _) = cli(&["audit", "verify", dir, "--tenant", "acme2", "--json"]);
    assert_eq!(code, 1, "acme2's chain was modified: {out}");

    // The credential listing of one tenant shows its own credential only: one line each, and
    // three different values behind the three fingerprints.
    let mut listed = Vec::new();
    for (tenant, _) in PREFIXED {
        let (code, out) = proxy_cli(
            proxy.dir.path(),
            &[
                "cred",
                "--config",
                "tenant-proxy.toml",
                "list",
                "--tenant",
                tenant,
            ],
            "",
        );
        assert_eq!(code, 0, "{out}");
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("key\t")).collect();
        assert_eq!(lines.len(), 1, "{tenant}: {out}");
        assert!(!out.contains("acme2") && !out.contains("acme-eu"), "{out}");
        listed.push(lines[0].rsplit('\t').next().unwrap().to_string());
    }
    listed.sort();
    listed.dedup();
    assert_eq!(
        listed.len(),
        3,
        "each tenant lists its own secret: {listed:?}"
    );
}

/// Changes the decision of the first record of a partition (a modified record, as verify
/// names it). Records live in `YYYY/MM/DD.jsonl`; `checkpoints.jsonl` is not one of them.
fn break_first_record(partition: &Path) {
    fn record_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                record_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "jsonl")
                && !path.ends_with("checkpoints.jsonl")
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    record_files(partition, &mut files);
    files.sort();
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let broken = text.replacen("\"allow\"", "\"deny\"", 1);
    assert_ne!(
        text,
        broken,
        "no allow decision to change in {}",
        files[0].display()
    );
    std::fs::write(&files[0], broken).unwrap();
}

#[test]
fn a_tenants_unscoped_policies_never_reach_another_tenant() {
    let origin = Origin::start();
    // globex's own files say nothing about whom they apply to: an unscoped permit and an
    // unscoped forbid. Loaded for globex only, they may decide globex's requests alone.
    let proxy = Proxy::start_prepared(ProxySpec::default(), |dir| {
        std::fs::write(
            dir.join("policies/tenants/globex/unscoped.cedar"),
            r#"@id("unscoped-permit")
permit (principal, action == TenantProxy::Action::"http", resource)
when { context.path like "/loose/*" };

@id("unscoped-forbid")
forbid (principal, action == TenantProxy::Action::"http", resource)
when { context.path like "/public/blocked/*" || context.path like "/acme/blocked/*" };
"#,
        )
        .unwrap();
    });
    let globex = token_for("globex", "agent");
    let acme = token_for("acme", "bot");
    let get = |path: &str, token: &str| {
        forward_get(proxy.shared_port, &url(&origin, path), Some(token), "")
    };

    // The permit works for globex, and gives acme nothing.
    assert_eq!(get("/loose/g", &globex).status, 200);
    let r = get("/loose/a", &acme);
    r.assert_refused(403, "policy_denied");
    assert_eq!(origin.matching("/loose/a").len(), 0);
    assert_eq!(
        proxy.audit_record("acme", &r.request_id())["decision"],
        "deny"
    );

    // The forbid works for globex (over the global permit of /public/), and takes nothing
    // from acme: neither the global permit nor acme's own.
    get("/public/blocked/g", &globex).assert_refused(403, "policy_denied");
    assert_eq!(get("/public/blocked/a", &acme).status, 200);
    assert_eq!(get("/acme/blocked/a", &acme).status, 200);
    // The sidecar (acme's binding) is decided the same way.
    let r = forward_get(
        proxy.sidecar_port,
        &url(&origin, "/acme/blocked/sidecar"),
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(origin.matching("/public/blocked/g").len(), 0);
    assert_eq!(origin.matching("/public/blocked/a").len(), 1);

    // `policy explain` answers the same from the files.
    for (tenant, workload, path, want) in [
        ("acme", "bot", "/loose/a", "deny"),
        ("globex", "agent", "/loose/g", "allow"),
        ("acme", "bot", "/acme/blocked/a", "allow"),
    ] {
        let (code, out) = proxy_cli(
            proxy.dir.path(),
            &[
                "policy",
                "explain",
                "--config",
                "tenant-proxy.toml",
                "--tenant",
                tenant,
                "--workload",
                workload,
                "--url",
                &url(&origin, path),
                "--json",
            ],
            "",
        );
        assert_eq!(code, 0, "{out}");
        let explained: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(explained["decision"], want, "{tenant} {path}: {out}");
    }
}

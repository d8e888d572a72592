//! `examples/`: every example agent runs, unchanged, through a proxy in front of the loadtest
//! mock LLM, and leaves its audit record: the tenant it ran as, the credential the proxy
//! substituted for its `$CRED{openai}` handle, and the usage metered from the answer.

use std::process::Command;

use crate::support::*;

const ACME_SECRET: &str = "sk-acme-examples-3c9e";

#[test]
fn every_example_agent_runs_through_the_proxy_and_is_audited() {
    let mock = start_mock();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-open",
        ..Default::default()
    };
    // undici tunnels `http://` URLs: a plain tunnel reaches the mock's port by this exception.
    spec.config.egress.allow.push(format!("127.0.0.1:{mock}"));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials.files.push(config::FileCredential::header(
        "acme",
        "openai",
        &["127.0.0.1"],
    ));
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/openai"), ACME_SECRET).unwrap();
    });
    let examples = repo_root().join("examples");
    let proxy_url = format!("http://127.0.0.1:{}", proxy.sidecar_port);
    let base = format!("http://127.0.0.1:{mock}/v1");
    node_examples_dir();
    let cases: [(&str, &str, &[&str]); 5] = [
        ("openai", "python3", &["python/openai_chat.py"]),
        (
            "openai-stream",
            "python3",
            &["python/openai_chat.py", "--stream"],
        ),
        ("httpx", "python3", &["python/httpx_chat.py"]),
        ("undici", "node", &["node/undici_chat.js"]),
        ("curl", "sh", &["curl/chat.sh"]),
    ];
    for (name, program, args) in cases {
        // A model name per example, so each record is found by it.
        let model = format!("gpt-4o-mini-example-{name}");
        let out = Command::new(program)
            .args(args)
            .current_dir(&examples)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("OPENAI_BASE_URL", &base)
            .env("MODEL", &model)
            .output()
            .unwrap_or_else(|e| panic!("{name}: {program}: {e}"));
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{name} printed no answer");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let record = loop {
            let found = proxy
                .audit_records("acme")
                .into_iter()
                .find(|r| r["model"] == model.as_str());
            match found {
                Some(r) => break r,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                None => panic!("{name}: no audit record for {model}"),
            }
        };
        assert_eq!(record["tenant"], "acme", "{name}: {record}");
        assert_eq!(record["decision"], "allow", "{name}: {record}");
        assert_eq!(
            record["credentials"],
            serde_json::json!(["openai"]),
            "{name}: {record}"
        );
        let usage = &record["usage"];
        assert!(
            usage["input_tokens"].as_u64().unwrap_or(0) > 0
                && usage["output_tokens"].as_u64().unwrap_or(0) > 0,
            "{name}: no usage metered: {record}"
        );
        if name == "undici" {
            assert_eq!(record["tunnel"]["mode"], "plain", "{record}");
        }
    }
    let all = serde_json::to_string(&proxy.audit_records("acme")).unwrap();
    assert!(!all.contains(ACME_SECRET));
}

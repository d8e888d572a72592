//! MCP scoping has no side door: one real MCP server (the official Python SDK,
//! `tests/fixtures/mcp_server.py`, over HTTPS as `mcp.test`) marked only by its route, reached
//! through that route, through a second route to the same upstream, in forward mode (by its
//! name and by another name for its address) and through an intercepted `CONNECT` tunnel, by
//! two tenants with different policies (`tests/fixtures/policies-mcp-scope`): acme may use
//! `add`, `echo`, every public document and the `greet` prompt; globex only `add` and the
//! handbook. On every path each tenant's lists show exactly what it may use, and what it may
//! not use never reaches the server (the server's own log of calls, reads and gets says so).
//! A run's `tool_calls` budget counts the `tools/call`s of MCP requests.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tenant_proxy_loadtest::tls::TestCa;

use crate::support::*;

struct Env {
    proxy: Proxy,
    server: McpFixture,
    /// A recording origin, also an MCP server (route `recorder`): it shows what arrives.
    recorder: Origin,
    globex: String,
}

/// The proxy: route `tickets` (the MCP server, marked by this route only) and route `side`
/// (the same upstream, not marked) lead to the server; `mcp.test` and `alias.test` resolve to
/// it; tunnels to its port are allowed and intercepted with the proxy's CA. Route `recorder`
/// leads to a recording origin, marked as an MCP server too.
fn start() -> Env {
    let recorder = Origin::start();
    let origin_ca = TestCa::new("e2e MCP scope origin CA").unwrap();
    let server = McpFixture::start(
        true,
        Some((
            &origin_ca.server(&["mcp.test", "alias.test"]).unwrap(),
            "mcp.test,alias.test",
        )),
    );
    let port = server.port;
    let origin_ca_pem = origin_ca.cert_pem.clone();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-mcp-scope",
        ..Default::default()
    };
    let server_url = format!("https://mcp.test:{port}/");
    spec.tenants.routes = vec![
        config::Route::new("tickets", "/tickets/", server_url.clone()),
        config::Route::new("side", "/side/", server_url),
        config::Route::new(
            "recorder",
            "/recorder/",
            format!("http://127.0.0.1:{}/", recorder.port),
        ),
    ];
    spec.tenants.mcp = Some(config::Mcp {
        max_message_bytes: None,
        servers: vec![
            config::McpServer::by_route("tickets", "tickets"),
            config::McpServer::by_route("recorder", "recorder"),
        ],
        ..Default::default()
    });
    spec.config.egress.connect_ports = Some(vec![port]);
    for host in ["mcp.test", "alias.test"] {
        spec.config
            .egress
            .hosts
            .insert(host.into(), vec!["127.0.0.1".into()]);
    }
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(dir.join("origin-ca.pem"), &origin_ca_pem).unwrap();
        let (code, out) = proxy_cli(
            dir,
            &[
                "ca",
                "init",
                "--out",
                "ca",
                "--name",
                "e2e MCP scope CA",
                "--permit",
                "mcp.test",
            ],
            "",
        );
        assert_eq!(code, 0, "{out}");
    });
    Env {
        proxy,
        server,
        recorder,
        globex: token_for("globex", "agent"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    /// Through its sidecar listener.
    Acme,
    /// With a token on the shared listener.
    Globex,
}

impl Who {
    fn tenant(self) -> &'static str {
        match self {
            Who::Acme => "acme",
            Who::Globex => "globex",
        }
    }
}

/// Every way to reach the server.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    /// `/tickets/mcp`: the route the server is marked by.
    Route,
    /// `/side/mcp`: another route to the same upstream.
    SecondRoute,
    /// `POST https://mcp.test:PORT/mcp` to the proxy (forward mode).
    Forward,
    /// `POST https://alias.test:PORT/mcp`: another name for the server's address.
    ForwardAlias,
    /// `CONNECT mcp.test:PORT`, then the request inside the intercepted tunnel (curl).
    Tunnel,
}

const WAYS: [Way; 5] = [
    Way::Route,
    Way::SecondRoute,
    Way::Forward,
    Way::ForwardAlias,
    Way::Tunnel,
];

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    request_id: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.json()["error"]["code"], code, "{}", self.body);
    }

    /// The names (or URIs) of the list in a `result.<field>`.
    fn listed(&self, field: &str, key: &str) -> Vec<String> {
        assert_eq!(self.status, 200, "{}", self.body);
        let v = self.json();
        v["result"][field]
            .as_array()
            .unwrap_or_else(|| panic!("no `{field}` in {}", self.body))
            .iter()
            .map(|t| t[key].as_str().unwrap().to_string())
            .collect()
    }
}

fn send(env: &Env, who: Who, way: Way, body: &str) -> Reply {
    let port = env.server.port;
    let (listener, auth) = match who {
        Who::Acme => (env.proxy.sidecar_port, String::new()),
        Who::Globex => (
            env.proxy.shared_port,
            format!("Proxy-Authorization: Bearer {}\r\n", env.globex),
        ),
    };
    let (target, host) = match way {
        Way::Route => ("/tickets/mcp".to_string(), "proxy".to_string()),
        Way::SecondRoute => ("/side/mcp".to_string(), "proxy".to_string()),
        Way::Forward => (
            format!("https://mcp.test:{port}/mcp"),
            format!("mcp.test:{port}"),
        ),
        Way::ForwardAlias => (
            format!("https://alias.test:{port}/mcp"),
            format!("alias.test:{port}"),
        ),
        Way::Tunnel => return send_through_tunnel(env, listener, who, body),
    };
    let r = raw_request(
        listener,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    Reply {
        status: r.status,
        body: r.body_text(),
        request_id: r.request_id(),
    }
}

fn send_through_tunnel(env: &Env, listener: u16, who: Who, body: &str) -> Reply {
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "20".into(),
        "-x".into(),
        format!("http://127.0.0.1:{listener}"),
        "--cacert".into(),
        env.proxy.path("ca/ca.pem").display().to_string(),
        "-H".into(),
        "content-type: application/json".into(),
        "-H".into(),
        "accept: application/json, text/event-stream".into(),
        "--data-binary".into(),
        body.to_string(),
        "-w".into(),
        "\n%{http_code}\n%header{x-request-id}".into(),
        format!("https://mcp.test:{}/mcp", env.server.port),
    ];
    if who == Who::Globex {
        args.push("--proxy-header".into());
        args.push(format!("Proxy-Authorization: Bearer {}", env.globex));
    }
    let out = Command::new("curl")
        .args(&args)
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.rsplitn(3, '\n');
    let request_id = parts.next().unwrap_or("").trim().to_string();
    let status = parts.next().unwrap_or("0").trim().parse().unwrap_or(0);
    let body = parts.next().unwrap_or("").to_string();
    assert!(
        status != 0,
        "curl failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        env.proxy.log()
    );
    Reply {
        status,
        body,
        request_id,
    }
}

/// The request record (not the run's `run_started` line, which carries its first request's id).
fn request_record(proxy: &Proxy, tenant: &str, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = proxy
            .audit_records(tenant)
            .into_iter()
            .find(|r| r["request_id"] == request_id && r["event"] == "request")
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no request record {request_id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rpc(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

fn call(id: u64, tool: &str, args: Value) -> String {
    rpc(id, "tools/call", json!({"name": tool, "arguments": args}))
}

#[test]
fn every_way_to_the_server_is_scoped_for_each_tenant() {
    let env = start();
    for way in WAYS {
        for who in [Who::Acme, Who::Globex] {
            let tenant = who.tenant();
            let at = format!("{way:?}, {tenant}");
            let mark = format!("{way:?}-{tenant}");

            // Lists: each tenant sees exactly what it may use, on every path.
            let tools = send(&env, who, way, &rpc(1, "tools/list", json!({})));
            let want: &[&str] = match who {
                Who::Acme => &["add", "echo"],
                Who::Globex => &["add"],
            };
            assert_eq!(tools.listed("tools", "name"), want, "{at}");
            let record = env.proxy.audit_record(tenant, &tools.request_id);
            assert_eq!(record["mcp"]["server"], "tickets", "{at}: {record}");
            let hidden = if who == Who::Acme { 1 } else { 2 };
            assert_eq!(record["mcp"]["tools_hidden"], hidden, "{at}: {record}");
            if way == Way::Tunnel {
                assert_eq!(record["tunnel"]["mode"], "intercept", "{at}: {record}");
            }

            let resources = send(&env, who, way, &rpc(2, "resources/list", json!({})));
            let mut listed = resources.listed("resources", "uri");
            listed.sort();
            let want: &[&str] = match who {
                Who::Acme => &["docs://public/faq", "docs://public/handbook"],
                Who::Globex => &["docs://public/handbook"],
            };
            assert_eq!(listed, want, "{at}");
            let templates = send(
                &env,
                who,
                way,
                &rpc(3, "resources/templates/list", json!({})),
            );
            let want: &[&str] = match who {
                Who::Acme => &["docs://public/{page}"],
                Who::Globex => &[],
            };
            assert_eq!(
                templates.listed("resourceTemplates", "uriTemplate"),
                want,
                "{at}"
            );
            let prompts = send(&env, who, way, &rpc(4, "prompts/list", json!({})));
            let want: &[&str] = match who {
                Who::Acme => &["greet"],
                Who::Globex => &[],
            };
            assert_eq!(prompts.listed("prompts", "name"), want, "{at}");

            // `add` is both tenants'; `echo` acme's only; nobody's `wipe_disk`.
            let add = send(&env, who, way, &call(5, "add", json!({"a": 40, "b": 2})));
            assert_eq!(
                add.json()["result"]["structuredContent"]["result"],
                42,
                "{at}"
            );
            let echo = send(&env, who, way, &call(6, "echo", json!({"text": mark})));
            match who {
                Who::Acme => assert_eq!(
                    echo.json()["result"]["structuredContent"]["result"],
                    mark.as_str(),
                    "{at}"
                ),
                Who::Globex => {
                    echo.refused(403, "tool_denied");
                    let record = env.proxy.audit_record(tenant, &echo.request_id);
                    assert_eq!(record["reason"], "tool_denied", "{at}");
                    assert_eq!(record["mcp"]["server"], "tickets", "{at}");
                    assert_eq!(record["mcp"]["tools_called"], json!(["echo"]), "{at}");
                }
            }
            send(&env, who, way, &call(7, "wipe_disk", json!({}))).refused(403, "tool_denied");

            // Resources and prompts are decided like tools.
            let read = send(
                &env,
                who,
                way,
                &rpc(
                    8,
                    "resources/read",
                    json!({"uri": "docs://public/handbook"}),
                ),
            );
            assert_eq!(
                read.json()["result"]["contents"][0]["text"],
                "handbook text",
                "{at}"
            );
            let secret = send(
                &env,
                who,
                way,
                &rpc(
                    9,
                    "resources/read",
                    json!({"uri": "docs://private/salaries"}),
                ),
            );
            secret.refused(403, "resource_denied");
            let record = env.proxy.audit_record(tenant, &secret.request_id);
            assert_eq!(
                record["mcp"]["resources_read"],
                json!(["docs://private/salaries"]),
                "{at}"
            );
            assert_eq!(record["policy_ids"], json!(["no-private-docs"]), "{at}");
            let greet = send(
                &env,
                who,
                way,
                &rpc(
                    10,
                    "prompts/get",
                    json!({"name": "greet", "arguments": {"name": mark}}),
                ),
            );
            match who {
                Who::Acme => assert_eq!(greet.status, 200, "{at}: {}", greet.body),
                Who::Globex => greet.refused(403, "prompt_denied"),
            }
            send(
                &env,
                who,
                way,
                &rpc(11, "prompts/get", json!({"name": "leak_secrets"})),
            )
            .refused(403, "prompt_denied");
        }
    }

    // The server's own log: everything allowed arrived, nothing refused did.
    let log = env.server.log();
    let ran = |field: &str, value: &str| log.iter().filter(|l| l[field] == value).count();
    assert_eq!(ran("tool", "add"), 2 * WAYS.len(), "{log:?}");
    assert_eq!(ran("tool", "wipe_disk"), 0, "{log:?}");
    assert_eq!(ran("resource", "docs://private/salaries"), 0, "{log:?}");
    assert_eq!(ran("resource", "docs://public/handbook"), 2 * WAYS.len());
    assert_eq!(ran("prompt", "leak_secrets"), 0, "{log:?}");
    for way in WAYS {
        let acme = json!({"text": format!("{way:?}-acme")});
        let globex = json!({"text": format!("{way:?}-globex")});
        assert!(
            log.iter().any(|l| l["tool"] == "echo" && l["args"] == acme),
            "{way:?}"
        );
        assert!(!log.iter().any(|l| l["args"] == globex), "{way:?}: {log:?}");
        assert!(log
            .iter()
            .any(|l| l["prompt"] == "greet" && l["args"]["name"] == format!("{way:?}-acme")));
        assert!(!log
            .iter()
            .any(|l| l["prompt"] == "greet" && l["args"]["name"] == format!("{way:?}-globex")));
    }
    // Refusals are each tenant's own: acme's partition has none of globex's records.
    let globex_ids: Vec<Value> = env
        .proxy
        .audit_records("globex")
        .into_iter()
        .map(|r| r["request_id"].clone())
        .collect();
    assert!(env
        .proxy
        .audit_records("acme")
        .iter()
        .all(|r| !globex_ids.contains(&r["request_id"])));
}

#[test]
fn mcp_tool_calls_count_against_the_runs_tool_call_budget() {
    let env = start();
    let run = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        run_id: Some("mcp-run"),
        run_budget: Some(RunBudget {
            tool_calls: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    });
    let post = |route: &str, body: &str| {
        let r = raw_request(
            env.proxy.shared_port,
            &format!(
                "POST /{route}/mcp HTTP/1.1\r\nHost: proxy\r\nProxy-Authorization: Bearer {run}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap();
        (r.status, r.body_text(), r.request_id())
    };
    let batch = |n: u64| {
        let calls: Vec<Value> = (0..n)
            .map(|i| serde_json::from_str(&call(i, "add", json!({"a": i, "b": 100}))).unwrap())
            .collect();
        Value::Array(calls).to_string()
    };
    // Two calls in one request (a batch; the recording origin takes it) are two of the three.
    let (status, body, id) = post("recorder", &batch(2));
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.recorder.count(), 1);
    let record = request_record(&env.proxy, "globex", &id);
    assert_eq!(record["reserved"]["tool_calls"], 2, "{record}");
    assert_eq!(record["settled"]["tool_calls"], 2, "{record}");
    assert_eq!(record["mcp"]["tools_called"], json!(["add", "add"]));
    // Two more would be four: refused before anything is sent.
    let (status, body, id) = post("recorder", &batch(2));
    assert_eq!(status, 429, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["error"]["code"], "budget_exhausted");
    assert_eq!(refusal["error"]["ceiling"], "run");
    assert_eq!(
        request_record(&env.proxy, "globex", &id)["reason"],
        "budget_exhausted"
    );
    assert_eq!(env.recorder.count(), 1);
    // Listing tools calls none, on the real server, by any route to it; the last call fits.
    let (status, body, id) = post("side", &rpc(9, "tools/list", json!({})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        request_record(&env.proxy, "globex", &id)["reserved"]["tool_calls"],
        0
    );
    let (status, body, _) = post("side", &call(10, "add", json!({"a": 1, "b": 1})));
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = post("tickets", &call(11, "add", json!({"a": 2, "b": 2})));
    assert_eq!(status, 429, "{body}");
    let adds: Vec<Value> = env
        .server
        .log()
        .into_iter()
        .filter(|l| l["tool"] == "add")
        .collect();
    assert_eq!(adds, [json!({"tool": "add", "args": {"a": 1, "b": 1}})]);
}

#[test]
fn other_spellings_of_a_servers_address_are_the_same_server() {
    let env = start();
    let port = env.recorder.port;
    for host in ["localhost", "127.1", "2130706433", "[::ffff:127.0.0.1]"] {
        let post = |body: &str| {
            let r = raw_request(
                env.proxy.sidecar_port,
                &format!(
                    "POST http://{host}:{port}/x HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
            )
            .unwrap();
            (r.status, r.body_text(), r.request_id())
        };
        // Recognized by the address it resolves to: a body that is not JSON-RPC is refused…
        let (status, body, id) = post(r#"{"not":"json-rpc"}"#);
        if status == 403 && body.contains("destination_forbidden") {
            // `[::ffff:127.0.0.1]` is an IPv4-mapped address the egress guard refuses whole.
            assert!(host.contains("::ffff"), "{host}: {body}");
            continue;
        }
        assert_eq!(status, 400, "{host}: {body}");
        assert!(body.contains("mcp_malformed"), "{host}: {body}");
        assert_eq!(
            env.proxy.audit_record("acme", &id)["mcp"]["server"],
            "recorder"
        );
        // …and a forbidden tool is refused, as through the route.
        let (status, body, _) = post(&call(1, "wipe_disk", json!({})));
        assert_eq!(status, 403, "{host}: {body}");
        assert!(body.contains("tool_denied"), "{host}: {body}");
    }
    assert_eq!(env.recorder.count(), 0, "nothing reached the server");
}

/// A resource URI a URL parser rewrites before the server reads it (pydantic's `AnyUrl` behind
/// the Python SDK drops a TAB, strips spaces and controls at the ends, reads `\` as `/`) is
/// refused `mcp_malformed` before any policy decides the text: `docs://pri<TAB>vate/salaries`
/// is `docs://private/salaries` to the server, which `no-private-docs` forbids. Userinfo is
/// refused alike, and neither the refusal nor its record repeats the password.
#[test]
fn resource_uris_a_parser_rewrites_are_refused_and_audited() {
    let env = start();
    for (i, uri) in [
        "docs://pri\tvate/salaries",
        "docs://private/sal\naries",
        " docs://private/salaries",
        "docs://private/salaries\t",
        "docs://public/x\\..\\..\\private/salaries",
        "docs://alice:PW-SECRET@private/salaries",
    ]
    .into_iter()
    .enumerate()
    {
        for method in ["resources/read", "resources/subscribe"] {
            let r = send(
                &env,
                Who::Acme,
                Way::Route,
                &rpc(i as u64, method, json!({ "uri": uri })),
            );
            r.refused(400, "mcp_malformed");
            assert_eq!(r.json()["error"]["request_id"], r.request_id.as_str());
            assert!(!r.body.contains("PW-SECRET"), "{}", r.body);
            let record = env.proxy.audit_record("acme", &r.request_id);
            assert_eq!(record["reason"], "mcp_malformed", "{uri:?}: {record}");
            assert_eq!(record["mcp"]["server"], "tickets", "{uri:?}: {record}");
            assert!(!record.to_string().contains("PW-SECRET"), "{record}");
        }
    }
    let log = env.server.log();
    assert!(
        !log.iter()
            .any(|l| l["resource"] == "docs://private/salaries"),
        "{log:?}"
    );
}

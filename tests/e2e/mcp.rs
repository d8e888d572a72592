//! MCP tool scoping end to end, against a real MCP server (the official Python SDK over
//! Streamable HTTP, `tests/fixtures/mcp_server.py`) in both of its response modes, with httpx
//! and curl as clients: `tools/list` shows each tenant only the tools its policies allow, a
//! denied `tools/call` never reaches the server (the server records every call it runs), one
//! denied call refuses a whole batch, and malformed JSON-RPC is refused before anything is sent.
//!
//! Policies (`tests/fixtures/policies-mcp`): acme may call `add` and `echo`; globex only `add`;
//! nobody `wipe_disk` (a global forbid).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tenant_proxy_loadtest::tls::TestCa;

use crate::support::*;

/// A server that answers every request with a tool list the proxy cannot filter, chosen by path:
/// `/badjson/` a tool without a name, `/text/` a plain-text body, `/gzip/` a compressed body,
/// `/badsse/` one good event (listing `add` and `wipe_disk`) and then one that is not JSON,
/// `/caseresult/` the list under `Result` (read as `result` by Go's `encoding/json`),
/// `/manytools/` a list of more items than one answer may hold, `/dupkey/` a result repeating
/// a member whose name looks like a secret, `/good/` a list as JSON, `/bigtools/` a longer one.
fn start_broken_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer_broken(stream));
        }
    });
    port
}

fn answer_broken(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line.trim().is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let good = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add","inputSchema":{}},{"name":"wipe_disk","inputSchema":{}}]}}"#;
    let (ctype, extra, payload) = if head.contains("/badjson/") {
        (
            "application/json",
            "",
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"title":"wipe_disk"}]}}"#.to_string(),
        )
    } else if head.contains("/caseresult/") {
        (
            "application/json",
            "",
            good.replace("\"result\"", "\"Result\""),
        )
    } else if head.contains("/manytools/") {
        let tools: Vec<String> = (0..1100)
            .map(|i| format!(r#"{{"name":"wipe_disk{i}"}}"#))
            .collect();
        (
            "application/json",
            "",
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{}]}}}}"#,
                tools.join(",")
            ),
        )
    } else if head.contains("/good/") {
        ("application/json", "", good.to_string())
    } else if head.contains("/bigtools/") {
        // About 150 kB: within the filter's 256 KiB, past a 128 KiB body memory share.
        let tools: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"name":"wipe_disk{i}","description":"{}"}}"#,
                    "x".repeat(140)
                )
            })
            .collect();
        (
            "application/json",
            "",
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"add"}},{}]}}}}"#,
                tools.join(",")
            ),
        )
    } else if head.contains("/dupkey/") {
        (
            "application/json",
            "",
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"sk-SECRET-KEY":1,"sk-SECRET-KEY":2}}"#
                .to_string(),
        )
    } else if head.contains("/text/") {
        ("text/plain", "", "add, echo, wipe_disk".to_string())
    } else if head.contains("/gzip/") {
        (
            "application/json",
            "content-encoding: gzip\r\n",
            good.to_string(),
        )
    } else {
        (
            "text/event-stream",
            "",
            format!("event: message\r\ndata: {good}\r\n\r\nevent: message\r\ndata: {{\"tools\": [wipe_disk\r\n\r\n"),
        )
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
}

/// Both server modes behind one proxy: route `tools-sse` (event-stream answers) and route
/// `tools-json` (JSON answers) are MCP servers of the same names; the JSON server is also an MCP
/// server in forward mode (`fwd`, by host, port and path prefix), and a recording origin is one
/// too (`recorder`), to show what reaches an upstream.
struct Env {
    proxy: Proxy,
    sse: McpFixture,
    json: McpFixture,
    recorder: Origin,
    globex: String,
}

fn start() -> Env {
    start_with(None, |_| {})
}

/// As [`start`], with a shadow (report-only) policy set (the enforced one plus `shadow`), and
/// the configuration `tune` changes.
fn start_with(shadow: Option<&str>, tune: impl FnOnce(&mut ProxySpec)) -> Env {
    let sse = McpFixture::start(false, None);
    let json = McpFixture::start(true, None);
    let recorder = Origin::start();
    let broken = start_broken_server();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-mcp",
        ..Default::default()
    };
    let mut servers = Vec::new();
    for (name, port) in [
        ("tools-sse", sse.port),
        ("tools-json", json.port),
        ("recorder", recorder.port),
        ("broken", broken),
    ] {
        spec.tenants.routes.push(config::Route::new(
            name,
            &format!("/{name}/"),
            format!("http://127.0.0.1:{port}/"),
        ));
        servers.push(config::McpServer::by_route(name, name));
    }
    // The JSON server is also known by its address, for forward mode.
    servers.insert(
        2,
        config::McpServer {
            port: Some(json.port),
            path_prefix: Some("/mcp".into()),
            ..config::McpServer::by_host("fwd", "127.0.0.1")
        },
    );
    spec.tenants.mcp = Some(config::Mcp {
        max_message_bytes: Some(65536),
        servers,
        ..Default::default()
    });
    if shadow.is_some() {
        spec.tenants.shadow_policy_dir = Some("shadow".into());
    }
    tune(&mut spec);
    // The shadow set: the enforced policies plus `shadow`, a policy under rollout.
    let proxy = Proxy::start_prepared(spec, |dir| {
        if let Some(extra) = shadow {
            copy_dir(&dir.join("policies"), &dir.join("shadow"));
            std::fs::write(dir.join("shadow/global/rollout.cedar"), extra).unwrap();
        }
    });
    Env {
        proxy,
        sse,
        json,
        recorder,
        globex: token_for("globex", "agent"),
    }
}

/// Who is calling: acme through its sidecar listener, globex with a token on the shared one.
#[derive(Clone, Copy, PartialEq)]
enum Who {
    Acme,
    Globex,
}

/// What httpx got back: status, content type, the JSON-RPC messages (from a JSON body or every
/// event's data), and the raw body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    messages: Vec<Value>,
    body: String,
    request_id: String,
}

impl Reply {
    fn refusal(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v: Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(v["error"]["code"], code, "{}", self.body);
        assert!(v["error"]["message"].is_string());
        assert_eq!(v["error"]["request_id"], self.request_id.as_str());
        v
    }

    fn tool_names(&self) -> Vec<String> {
        assert_eq!(self.status, 200, "{}", self.body);
        let tools = self
            .messages
            .iter()
            .find_map(|m| m["result"]["tools"].as_array())
            .unwrap_or_else(|| panic!("no tool list in {}", self.body));
        tools
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }
}

/// POSTs `body` (sent as is, so malformed bodies can be sent) to `route`'s MCP endpoint through
/// the proxy, with httpx.
fn post(env: &Env, who: Who, route: &str, body: &str) -> Reply {
    let (port, auth) = match who {
        Who::Acme => (env.proxy.sidecar_port, String::new()),
        Who::Globex => (env.proxy.shared_port, format!("Bearer {}", env.globex)),
    };
    let out = python(
        r#"
import json, os, httpx
headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
if os.environ["AUTH"]:
    headers["proxy-authorization"] = os.environ["AUTH"]
r = httpx.post(os.environ["URL"], content=os.environ["BODY"].encode(), headers=headers, timeout=20)
ctype = r.headers.get("content-type", "")
messages = []
if ctype.startswith("text/event-stream"):
    for event in r.text.replace("\r\n", "\n").split("\n\n"):
        data = [l[5:].lstrip(" ") for l in event.split("\n") if l.startswith("data:")]
        if data:
            messages.append(json.loads("\n".join(data)))
elif ctype.startswith("application/json") and r.content:
    v = r.json()
    messages = v if isinstance(v, list) else [v]
print(json.dumps({"status": r.status_code, "content_type": ctype, "messages": messages,
                  "body": r.text, "request_id": r.headers.get("x-request-id", "")}))
"#,
        &[
            ("URL", format!("http://127.0.0.1:{port}/{route}/mcp")),
            ("AUTH", auth),
            ("BODY", body.to_string()),
        ],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    Reply {
        status: v["status"].as_u64().unwrap() as u16,
        content_type: v["content_type"].as_str().unwrap().to_string(),
        messages: v["messages"].as_array().unwrap().clone(),
        body: v["body"].as_str().unwrap().to_string(),
        request_id: v["request_id"].as_str().unwrap().to_string(),
    }
}

fn list(id: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}).to_string()
}

fn call(id: Value, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}})
}

fn tenant_of(who: Who) -> &'static str {
    match who {
        Who::Acme => "acme",
        Who::Globex => "globex",
    }
}

#[test]
fn tools_list_is_filtered_per_tenant_in_both_response_modes() {
    let env = start();
    for route in ["tools-sse", "tools-json"] {
        let want_type = if route == "tools-sse" {
            "text/event-stream"
        } else {
            "application/json"
        };
        for (who, want) in [(Who::Acme, vec!["add", "echo"]), (Who::Globex, vec!["add"])] {
            let reply = post(&env, who, route, &list(json!(1)));
            assert!(
                reply.content_type.starts_with(want_type),
                "{route}: {reply:?}"
            );
            assert_eq!(reply.tool_names(), want, "{route}, {}", tenant_of(who));
            // The rest of each tool's description is left as the server wrote it.
            let tools = reply.messages[0]["result"]["tools"].as_array().unwrap();
            assert_eq!(tools[0]["inputSchema"]["required"], json!(["a", "b"]));
            let record = env.proxy.audit_record(tenant_of(who), &reply.request_id);
            assert_eq!(record["decision"], "allow");
            assert_eq!(record["mcp"]["server"], route);
            let hidden = if who == Who::Acme { 1 } else { 2 };
            assert_eq!(record["mcp"]["tools_hidden"], hidden, "{record}");
        }
        // A string id is answered and filtered the same way.
        let reply = post(&env, Who::Globex, route, &list(json!("list-ü")));
        assert_eq!(reply.tool_names(), ["add"]);
        assert_eq!(reply.messages[0]["id"], "list-ü");
    }
    assert!(env.sse.calls().is_empty() && env.json.calls().is_empty());
}

#[test]
fn the_same_tool_is_allowed_for_acme_and_denied_for_globex() {
    let env = start();
    for (route, server) in [("tools-sse", &env.sse), ("tools-json", &env.json)] {
        let acme = post(
            &env,
            Who::Acme,
            route,
            &call(json!(1), "echo", json!({"text": "from-acme"})).to_string(),
        );
        assert_eq!(acme.status, 200, "{}", acme.body);
        assert_eq!(
            acme.messages[0]["result"]["structuredContent"]["result"],
            "from-acme"
        );

        let globex = post(
            &env,
            Who::Globex,
            route,
            &call(json!(2), "echo", json!({"text": "from-globex"})).to_string(),
        );
        let refusal = globex.refusal(403, "tool_denied");
        assert!(refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`echo`"));

        // globex's own tool works on the same server.
        let add = post(
            &env,
            Who::Globex,
            route,
            &call(json!(3), "add", json!({"a": 2, "b": 40})).to_string(),
        );
        assert_eq!(
            add.messages[0]["result"]["structuredContent"]["result"], 42,
            "{}",
            add.body
        );

        // The server ran acme's echo and globex's add, never globex's echo.
        let calls = server.calls();
        assert!(
            calls.contains(&("echo".into(), json!({"text": "from-acme"}))),
            "{calls:?}"
        );
        assert!(
            calls.contains(&("add".into(), json!({"a": 2, "b": 40}))),
            "{calls:?}"
        );
        assert!(
            !calls
                .iter()
                .any(|(_, a)| a == &json!({"text": "from-globex"})),
            "{calls:?}"
        );

        // The refusal is audited in globex's partition only, naming the tool.
        let record = env.proxy.audit_record("globex", &globex.request_id);
        assert_eq!(record["decision"], "deny");
        assert_eq!(record["reason"], "tool_denied");
        assert_eq!(record["mcp"]["tools_called"], json!(["echo"]));
        assert_eq!(record["status"], 403);
        let acme_record = env.proxy.audit_record("acme", &acme.request_id);
        assert_eq!(acme_record["mcp"]["tools_called"], json!(["echo"]));
        assert_eq!(acme_record["decision"], "allow");
        assert!(acme_record["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("acme-tools")));
        assert!(!env
            .proxy
            .audit_records("acme")
            .iter()
            .any(|r| r["request_id"] == globex.request_id.as_str()));
    }
    // Metrics count decisions per tenant, never by tool name: globex's refusals are its own.
    let metrics = env.proxy.metrics();
    let series = |line: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .map(String::from)
    };
    assert_eq!(
        series(r#"tenant_proxy_mcp_tool_calls_total{decision="deny",tenant="globex"}"#).as_deref(),
        Some("2"),
        "{metrics}"
    );
    assert_eq!(
        series(r#"tenant_proxy_mcp_tool_calls_total{decision="allow",tenant="acme"}"#).as_deref(),
        Some("2")
    );
    assert_eq!(
        series(r#"tenant_proxy_mcp_tool_calls_total{decision="allow",tenant="globex"}"#).as_deref(),
        Some("2")
    );
    assert_eq!(
        series(r#"tenant_proxy_mcp_tool_calls_total{decision="deny",tenant="acme"}"#),
        None
    );
    assert!(
        !metrics.contains("echo") && !metrics.contains("tool=\""),
        "{metrics}"
    );
}

#[test]
fn a_forbidden_tool_is_refused_even_where_a_tenant_permits_it() {
    let env = start();
    let reply = post(
        &env,
        Who::Acme,
        "tools-sse",
        &call(json!(1), "wipe_disk", json!({})).to_string(),
    );
    reply.refusal(403, "tool_denied");
    let record = env.proxy.audit_record("acme", &reply.request_id);
    assert_eq!(record["policy_ids"], json!(["mcp-forbid-wipe-disk"]));
    assert_eq!(record["mcp"]["tools_called"], json!(["wipe_disk"]));
    assert!(env.sse.calls().is_empty());
}

#[test]
fn one_denied_call_refuses_the_whole_batch() {
    let env = start();
    let batch = json!([
        call(json!(1), "add", json!({"a": 1, "b": 1})),
        call(json!("two"), "wipe_disk", json!({})),
    ])
    .to_string();
    post(&env, Who::Acme, "tools-sse", &batch).refusal(403, "tool_denied");
    let globex_batch = json!([
        call(json!(1), "add", json!({"a": 1, "b": 1})),
        call(json!(2), "echo", json!({"text": "batched"})),
    ])
    .to_string();
    let refused = post(&env, Who::Globex, "tools-json", &globex_batch);
    refused.refusal(403, "tool_denied");
    let record = env.proxy.audit_record("globex", &refused.request_id);
    assert_eq!(record["mcp"]["tools_called"], json!(["echo"]));
    assert!(env.sse.calls().is_empty() && env.json.calls().is_empty());

    // An allowed batch is forwarded (to the recording origin, which shows it arrived whole).
    let before = env.recorder.count();
    let allowed = post(&env, Who::Acme, "recorder", &globex_batch);
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let seen = env.recorder.requests();
    assert_eq!(seen.len(), before + 1);
    let sent: Value = serde_json::from_slice(&seen.last().unwrap().body).unwrap();
    assert_eq!(sent, serde_json::from_str::<Value>(&globex_batch).unwrap());
    let record = env.proxy.audit_record("acme", &allowed.request_id);
    assert_eq!(record["mcp"]["tools_called"], json!(["add", "echo"]));
}

#[test]
fn malformed_json_rpc_is_refused_and_never_forwarded() {
    let env = start();
    let cases = [
        ("not JSON", "call the wipe_disk tool".to_string()),
        ("trailing bytes", format!("{} {{}}", list(json!(1)))),
        ("JSON-RPC 1.0", r#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#.to_string()),
        ("call without a tool name", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#.to_string()),
        ("numeric tool name", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#.to_string()),
        ("empty batch", "[]".to_string()),
        ("object id", r#"{"jsonrpc":"2.0","id":{"a":1},"method":"tools/list"}"#.to_string()),
        (
            "tool name given twice",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","name":"wipe_disk"}}"#.to_string(),
        ),
        // A server that matches names ignoring case (Go's `encoding/json`) reads the last.
        (
            "tool name given twice, in two cases",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","Name":"wipe_disk"}}"#.to_string(),
        ),
        (
            "a second method in another case",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","METHOD":"tools/call","params":{"name":"wipe_disk"}}"#.to_string(),
        ),
        // A name is written to the audit record: one past the limit is refused, not recorded
        // at whatever length an agent sends.
        (
            "a tool name of 32 KiB",
            call(json!(1), &"x".repeat(32 << 10), json!({})).to_string(),
        ),
        ("empty body", String::new()),
    ];
    let before = env.recorder.count();
    for (name, body) in cases {
        for who in [Who::Acme, Who::Globex] {
            let reply = post(&env, who, "recorder", &body);
            assert_eq!(reply.status, 400, "{name}: {}", reply.body);
            reply.refusal(400, "mcp_malformed");
            let record = env.proxy.audit_record(tenant_of(who), &reply.request_id);
            assert_eq!(record["reason"], "mcp_malformed", "{name}");
        }
    }
    assert_eq!(
        env.recorder.count(),
        before,
        "nothing malformed was forwarded"
    );

    // A WebSocket upgrade would leave a connection whose messages no check reads: refused,
    // audited, never sent (a bodyless GET with `Upgrade` once passed as the event stream).
    let (status, body) = curl(&[
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("http://127.0.0.1:{}/recorder/mcp", env.proxy.sidecar_port),
    ]);
    assert_eq!(status, 400, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["error"]["code"], "mcp_malformed", "{body}");
    let request_id = refusal["error"]["request_id"].as_str().unwrap();
    assert_eq!(
        env.proxy.audit_record("acme", request_id)["reason"],
        "mcp_malformed"
    );
    assert_eq!(
        env.recorder.count(),
        before,
        "the upgrade was not forwarded"
    );

    // A GET (the server's event stream) carries no JSON-RPC and is not refused for it.
    let (status, body) = curl(&[&format!(
        "http://127.0.0.1:{}/recorder/mcp",
        env.proxy.sidecar_port
    )]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.recorder.count(), before + 1);
}

#[test]
fn forward_mode_with_curl_is_scoped_the_same_way() {
    let env = start();
    let url = format!("http://127.0.0.1:{}/mcp", env.json.port);
    let proxy = format!("http://127.0.0.1:{}", env.proxy.shared_port);
    let auth = format!("Proxy-Authorization: Bearer {}", env.globex);
    let send = |body: &str| {
        curl(&[
            "-x",
            &proxy,
            "--proxy-header",
            &auth,
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "--data-binary",
            body,
            &url,
        ])
    };
    let (status, body) = send(&list(json!(5)));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    // The JSON server is one destination however it is reached: in forward mode it is still
    // the server its route names (`tools-json`, the first `[[mcp.servers]]` entry at this host,
    // port and path; `fwd` names the same place later), so globex sees and may call `add`, the
    // one tool its `tools-*` permit gives it, and nothing else.
    assert_eq!(names, ["add"], "{body}");
    let (status, body) = send(&call(json!(6), "add", json!({"a": 1, "b": 2})).to_string());
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(&call(json!(7), "echo", json!({"text": "fwd-globex"})).to_string());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tool_denied"), "{body}");
    assert_eq!(
        env.json.calls(),
        [("add".to_string(), json!({"a": 1, "b": 2}))]
    );
}

#[test]
fn an_answer_that_cannot_be_filtered_is_withheld() {
    let env = start();
    // Refused before anything is sent: the answer's type or encoding cannot be read, whether
    // or not the request asked for a list (a client may read any successful body as the answer
    // it waits for: the TypeScript SDK reads a GET stream as SSE whatever its type).
    let call_add = call(json!(1), "add", json!({"a": 1, "b": 2})).to_string();
    for (path, body) in [
        ("broken/text", list(json!(1))),
        ("broken/gzip", list(json!(1))),
        ("broken/text", call_add),
    ] {
        let reply = post(&env, Who::Acme, path, &body);
        reply.refusal(502, "mcp_response_unfiltered");
        assert!(!reply.body.contains("wipe_disk"), "{path}: {}", reply.body);
        let record = env.proxy.audit_record("acme", &reply.request_id);
        assert_eq!(record["reason"], "mcp_response_unfiltered", "{path}");
    }
    // Found unreadable once the body was read: if the header had not left yet, the whole answer
    // is refused as above; if it had, the rest is replaced by a JSON-RPC error for the list.
    // Either way the unfiltered list never arrives.
    // (A list under `Result`, or past the items one answer may hold, and a refusal that would
    // quote a member name the server wrote, are withheld the same way.)
    for (path, filtered_first) in [
        ("broken/badjson", false),
        ("broken/badsse", true),
        ("broken/caseresult", false),
        ("broken/manytools", false),
        ("broken/dupkey", false),
    ] {
        let reply = post(&env, Who::Acme, path, &list(json!(1)));
        assert!(!reply.body.contains("wipe_disk"), "{path}: {}", reply.body);
        assert!(!reply.body.contains("SECRET"), "{path}: {}", reply.body);
        if reply.status == 502 {
            reply.refusal(502, "mcp_response_unfiltered");
        } else {
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            let last = reply.messages.last().unwrap();
            assert_eq!(last["id"], 1, "{path}: {}", reply.body);
            assert_eq!(last["error"]["code"], -32603, "{path}: {}", reply.body);
            if filtered_first && reply.messages.len() == 2 {
                let tools = &reply.messages[0]["result"]["tools"];
                assert_eq!(tools, &json!([{"name": "add", "inputSchema": {}}]));
            }
        }
        let record = env.proxy.audit_record("acme", &reply.request_id);
        assert_eq!(record["reason"], "mcp_response_unfiltered", "{path}");
        assert_eq!(record["decision"], "deny", "{path}");
    }
}

/// An answer is held whole to be filtered, and what it holds counts against the tenant's body
/// memory share: one past it is withheld (the unfiltered list never arrives) and recorded as
/// the body memory limit; one within it is filtered as always.
#[test]
fn an_answer_past_the_body_memory_share_is_withheld() {
    let env = start_with(None, |spec| {
        spec.config.limits.max_body_bytes = Some(65_536);
        spec.config.limits.max_buffered_body_bytes_per_tenant = Some(131_072);
        if let Some(mcp) = spec.tenants.mcp.as_mut() {
            mcp.max_message_bytes = Some(262_144);
        }
    });
    let reply = post(&env, Who::Acme, "broken/bigtools", &list(json!(1)));
    assert!(!reply.body.contains("wipe_disk"), "{}", reply.body);
    if reply.status == 429 {
        reply.refusal(429, "body_memory_limit");
    } else {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let last = reply.messages.last().unwrap();
        assert_eq!(last["id"], 1, "{}", reply.body);
        assert_eq!(last["error"]["code"], -32603, "{}", reply.body);
        assert!(
            last["error"]["message"]
                .as_str()
                .unwrap()
                .contains("body memory"),
            "{}",
            reply.body
        );
    }
    let record = env.proxy.audit_record("acme", &reply.request_id);
    assert_eq!(record["reason"], "body_memory_limit", "{record}");
    assert_eq!(record["decision"], "deny", "{record}");
    assert!(env
        .proxy
        .metrics()
        .contains("tenant_proxy_overload_refusals_total{reason=\"tenant_body_memory\"} 1"));
    // A smaller answer, held and given back as before, is filtered.
    let reply = post(&env, Who::Acme, "broken/good", &list(json!(1)));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.tool_names(), ["add"]);
}

#[test]
fn the_mcp_sdk_client_works_through_the_proxy() {
    let env = start();
    let out = python(
        r#"
import asyncio, json, os
url = os.environ["URL"]

async def main():
    from mcp import Client
    async with Client(url) as client:
        listed = await client.list_tools()
        added = await client.call_tool("add", {"a": 20, "b": 22})
        try:
            await client.call_tool("wipe_disk", {})
            wiped = "called"
        except Exception as e:
            wiped = "refused: " + type(e).__name__
    print(json.dumps({
        "tools": sorted(t.name for t in listed.tools),
        "sum": added.structured_content,
        "wipe": wiped,
    }))

asyncio.run(main())
"#,
        &[(
            "URL",
            format!("http://127.0.0.1:{}/tools-sse/mcp", env.proxy.sidecar_port),
        )],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["tools"], json!(["add", "echo"]));
    assert_eq!(v["sum"], json!({"result": 42}));
    assert!(v["wipe"].as_str().unwrap().starts_with("refused"), "{v}");
    assert_eq!(
        env.sse.calls(),
        [("add".to_string(), json!({"a": 20, "b": 22}))]
    );
}

#[test]
fn intercepted_tunnels_to_an_https_mcp_server_are_scoped_too() {
    // The server speaks HTTPS as `mcp.test` (resolved to loopback by `[egress] hosts`, with a
    // certificate from a test CA the proxy trusts); clients reach it through `CONNECT`, and
    // the proxy intercepts with its own CA, which curl is told to trust.
    let origin_ca = TestCa::new("e2e MCP origin CA").unwrap();
    let server = McpFixture::start(
        false,
        Some((&origin_ca.server(&["mcp.test"]).unwrap(), "mcp.test")),
    );
    let port = server.port;
    let origin_ca_pem = origin_ca.cert_pem.clone();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-mcp",
        ..Default::default()
    };
    spec.config.egress.connect_ports = Some(vec![port]);
    spec.config
        .egress
        .hosts
        .insert("mcp.test".into(), vec!["127.0.0.1".into()]);
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    spec.tenants.mcp = Some(config::Mcp {
        max_message_bytes: None,
        servers: vec![config::McpServer {
            path_prefix: Some("/mcp".into()),
            ..config::McpServer::by_host("tls-mcp", "mcp.test")
        }],
        ..Default::default()
    });
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
                "e2e MCP interception CA",
                "--permit",
                "mcp.test",
            ],
            "",
        );
        assert_eq!(code, 0, "{out}");
    });
    let ca = proxy.path("ca/ca.pem");
    let send = |token: &str, body: &str| {
        curl(&[
            "-x",
            &format!("http://127.0.0.1:{}", proxy.shared_port),
            "--proxy-header",
            &format!("Proxy-Authorization: Bearer {token}"),
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "--data-binary",
            body,
            &format!("https://mcp.test:{port}/mcp"),
        ])
    };
    let sse_names = |body: &str| -> Vec<String> {
        let data = body
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("{body}"));
        let v: Value = serde_json::from_str(data).unwrap();
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let acme = token_for("acme", "bot");
    let globex = token_for("globex", "agent");

    let (status, body) = send(&acme, &list(json!(1)));
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    assert_eq!(sse_names(&body), ["add", "echo"]);
    // globex's `add` permit names `tools-*` servers, so this one shows it nothing.
    let (status, body) = send(&globex, &list(json!(1)));
    assert_eq!(status, 200, "{body}");
    assert!(sse_names(&body).is_empty(), "{body}");

    let (status, body) = send(
        &acme,
        &call(json!(2), "echo", json!({"text": "tunnelled"})).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        &globex,
        &call(json!(3), "echo", json!({"text": "globex-tunnelled"})).to_string(),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tool_denied"), "{body}");
    let (status, body) = send(&acme, "not json-rpc");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("mcp_malformed"), "{body}");
    assert_eq!(
        server.calls(),
        [("echo".to_string(), json!({"text": "tunnelled"}))]
    );
    // Records are written off the request path: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tunnelled = loop {
        if let Some(r) = proxy
            .audit_records("globex")
            .into_iter()
            .find(|r| r["reason"] == "tool_denied")
        {
            break r;
        }
        assert!(Instant::now() < deadline, "no tool_denied record");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(tunnelled["mcp"]["server"], "tls-mcp");
    // `connect_opaque` permits this host, but a tunnel to an MCP server is intercepted anyway.
    assert_eq!(tunnelled["tunnel"]["mode"], "intercept", "{tunnelled}");
}

#[test]
fn policy_explain_decides_tool_calls_as_the_running_proxy() {
    let env = start();
    let explain = |tenant: &str, workload: &str, body: &str| {
        let file = env.proxy.path(&format!("body-{tenant}.json"));
        std::fs::write(&file, body).unwrap();
        let config = env.proxy.path("tenant-proxy.toml");
        let (code, out) = proxy_cli(
            env.proxy.dir.path(),
            &[
                "policy",
                "explain",
                "--config",
                config.to_str().unwrap(),
                "--json",
                "--tenant",
                tenant,
                "--workload",
                workload,
                "--method",
                "POST",
                "--url",
                "/tools-sse/mcp",
                "--body",
                file.to_str().unwrap(),
            ],
            "",
        );
        assert_eq!(code, 0, "{out}");
        serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let echo = call(json!(1), "echo", json!({"text": "explained"})).to_string();

    let acme = explain("acme", "bot", &echo);
    assert_eq!(acme["decision"], "allow", "{acme}");
    assert_eq!(
        acme["mcp_tools"],
        json!([{"server": "tools-sse", "tool": "echo", "decision": "allow", "policy_ids": ["acme-tools"], "errors": []}])
    );
    assert_eq!(post(&env, Who::Acme, "tools-sse", &echo).status, 200);

    let globex = explain("globex", "agent", &echo);
    assert_eq!(
        (globex["decision"].as_str(), globex["reason"].as_str()),
        (Some("deny"), Some("tool_denied")),
        "{globex}"
    );
    assert_eq!(globex["mcp_tools"][0]["decision"], "deny");
    post(&env, Who::Globex, "tools-sse", &echo).refusal(403, "tool_denied");

    let malformed = explain("acme", "bot", "[]");
    assert_eq!(malformed["reason"], "mcp_malformed", "{malformed}");
    assert!(malformed.get("mcp_tools").is_none());
    // Explaining calls nothing.
    assert_eq!(env.sse.calls().len(), 1);
}

#[test]
fn a_shadow_policy_on_tool_calls_changes_no_response_and_is_audited() {
    // Rolling out "nobody may call `echo`": report-only first.
    let env = start_with(Some(
        "@id(\"rollout-no-echo\")\nforbid (principal, action == TenantProxy::Action::\"mcp_tool_call\", resource == TenantProxy::McpTool::\"echo\");\n",
    ), |_| {});
    let echo = post(
        &env,
        Who::Acme,
        "tools-json",
        &call(json!(1), "echo", json!({"text": "still-served"})).to_string(),
    );
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert_eq!(
        echo.messages[0]["result"]["structuredContent"]["result"],
        "still-served"
    );
    let rec = env.proxy.audit_record("acme", &echo.request_id);
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["shadow"]["decision"], "deny", "{rec}");
    assert_eq!(rec["shadow"]["outcome"], "would_deny");
    assert_eq!(rec["shadow"]["policy_ids"], json!(["rollout-no-echo"]));

    // A tool the rollout does not touch: both sets agree.
    let add = post(
        &env,
        Who::Acme,
        "tools-json",
        &call(json!(2), "add", json!({"a": 1, "b": 2})).to_string(),
    );
    assert_eq!(add.status, 200, "{}", add.body);
    let rec = env.proxy.audit_record("acme", &add.request_id);
    assert_eq!(rec["shadow"]["outcome"], "agree", "{rec}");
    assert_eq!(rec["shadow"]["decision"], "allow");

    // globex's echo is refused by the enforced set, and the shadow set refuses it too.
    let refused = post(
        &env,
        Who::Globex,
        "tools-json",
        &call(json!(3), "echo", json!({"text": "x"})).to_string(),
    );
    refused.refusal(403, "tool_denied");
    let rec = env.proxy.audit_record("globex", &refused.request_id);
    assert_eq!(rec["shadow"]["outcome"], "agree", "{rec}");

    // Counted once per request, per tenant.
    let metrics = env.proxy.metrics();
    let would_deny = |tenant: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("tenant_proxy_shadow_decisions_total{")
                    && l.contains("outcome=\"would_deny\"")
                    && l.contains(&format!("tenant=\"{tenant}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    };
    assert_eq!(would_deny("acme").as_deref(), Some("1"), "{metrics}");
    assert_eq!(would_deny("globex"), None, "{metrics}");
}

/// The legacy HTTP+SSE transport (a `GET /sse` stream whose `endpoint` event names where the
/// client posts): the SDK's `sse_client` works through the proxy in forward mode, its list is
/// filtered and a forbidden call refused; the `endpoint` event passes because its path is the
/// server's.
#[test]
fn the_legacy_sse_transport_is_scoped_too() {
    let legacy = McpFixture::start_legacy_sse();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-mcp",
        ..Default::default()
    };
    spec.tenants.mcp = Some(config::Mcp {
        max_message_bytes: Some(65536),
        servers: vec![config::McpServer {
            port: Some(legacy.port),
            ..config::McpServer::by_host("tools-legacy", "127.0.0.1")
        }],
        ..Default::default()
    });
    let proxy = Proxy::start(spec);
    let out = python(
        r#"
import asyncio, json, os

async def main():
    from mcp import ClientSession
    from mcp.client.sse import sse_client
    async with sse_client(os.environ["URL"]) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            added = await session.call_tool("add", {"a": 2, "b": 3})
    # The legacy client raises when a POST is refused: the forbidden call in a session of its own.
    try:
        async with sse_client(os.environ["URL"]) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await asyncio.wait_for(session.call_tool("wipe_disk", {}), 3)
        wiped = "called"
    except BaseException as e:
        wiped = "refused: " + repr(e)[:300]
    # The session the `endpoint` event names is acme's alone: sealed, it works for acme; the
    # server's raw id, or acme's URL from globex, is refused.
    import httpx
    INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}
    url = os.environ["URL"]
    base = url[: url.index("/sse")]
    with httpx.Client(proxy=os.environ["HTTP_PROXY"], timeout=20) as acme, \
         httpx.Client(proxy=os.environ["GLOBEX_PROXY"], timeout=20) as globex:
        with acme.stream("GET", url, headers={"accept": "text/event-stream"}) as stream:
            # (Kept: a line iterator dropped here would close the stream, and the session.)
            lines = stream.iter_lines()
            endpoint = next(l[5:].strip() for l in lines if l.startswith("data:"))
            path, sealed = endpoint.split("session_id=", 1)
            raw = sealed.split(".", 2)[2]
            posts = {
                "own": acme.post(base + endpoint, json=INIT).status_code,
                "raw": acme.post(base + path + "session_id=" + raw, json=INIT),
                "stolen": globex.post(base + endpoint, json=INIT),
            }
    posts = {k: v if isinstance(v, int) else [v.status_code, v.json()["error"]["code"]]
             for k, v in posts.items()}
    print(json.dumps({
        "tools": sorted(t.name for t in listed.tools),
        "sum": added.structured_content,
        "wipe": wiped,
        "sealed": sealed,
        "posts": posts,
    }))

asyncio.run(main())
"#,
        &[
            ("URL", format!("http://127.0.0.1:{}/sse", legacy.port)),
            (
                "HTTP_PROXY",
                format!("http://127.0.0.1:{}", proxy.sidecar_port),
            ),
            (
                "GLOBEX_PROXY",
                format!(
                    "http://agent:{}@127.0.0.1:{}",
                    token_for("globex", "agent"),
                    proxy.shared_port
                ),
            ),
        ],
    );
    let v: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert!(v["sealed"].as_str().unwrap().starts_with("tp1."), "{out}");
    assert_eq!(
        v["posts"],
        json!({"own": 202, "raw": [404, "mcp_session_unknown"], "stolen": [404, "mcp_session_unknown"]}),
        "{out}"
    );
    assert_eq!(v["tools"], json!(["add", "echo"]), "{out}");
    assert_eq!(v["sum"], json!({"result": 5}), "{out}");
    let wipe = v["wipe"].as_str().unwrap();
    // (The client reports the refused POST as an error or, depending on timing, a timeout.)
    assert!(wipe.starts_with("refused"), "{out}");
    let denied: Vec<Value> = proxy
        .wait_audit_records("acme", 1)
        .into_iter()
        .filter(|r| r["reason"] == "tool_denied")
        .collect();
    assert_eq!(denied.len(), 1, "{out}");
    assert_eq!(denied[0]["mcp"]["tools_called"], json!(["wipe_disk"]));
    assert_eq!(
        legacy.calls(),
        [("add".to_string(), json!({"a": 2, "b": 3}))]
    );
}

/// MCP sessions belong to the workload that opened them: the server's `Mcp-Session-Id` reaches
/// the agent sealed for its workload, goes back to the server as the server's own, and another
/// tenant presenting it (or the agent presenting the server's raw id) is refused with
/// `mcp_session_unknown`, audited, and nothing reaches the server. The SDK's client works
/// through it unchanged.
#[test]
fn sessions_are_bound_to_the_workload_that_opened_them() {
    let stateful = McpFixture::start_stateful();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-mcp",
        ..Default::default()
    };
    spec.tenants.routes.push(config::Route::new(
        "tools-stateful",
        "/tools-stateful/",
        format!("http://127.0.0.1:{}/", stateful.port),
    ));
    spec.tenants.mcp = Some(config::Mcp {
        max_message_bytes: Some(65536),
        servers: vec![config::McpServer::by_route(
            "tools-stateful",
            "tools-stateful",
        )],
        ..Default::default()
    });
    let proxy = Proxy::start(spec);
    let out = python(
        r#"
import asyncio, json, os, httpx
H = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}

def post(url, body, auth=None, sid=None):
    h = dict(H)
    if auth:
        h["proxy-authorization"] = auth
    if sid:
        h["mcp-session-id"] = sid
    r = httpx.post(url, json=body, headers=h, timeout=20)
    return {"status": r.status_code, "sid": r.headers.get("mcp-session-id"), "body": r.text,
            "request_id": r.headers.get("x-request-id", "")}

def add(i, a, b):
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": a, "b": b}}}

acme, globex, auth = os.environ["ACME"], os.environ["GLOBEX"], os.environ["AUTH"]
out = {}
out["init"] = post(acme, INIT)
sid = out["init"]["sid"]
post(acme, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid=sid)
out["own"] = post(acme, add(2, 1, 2), sid=sid)
g = post(globex, INIT, auth=auth)["sid"]
post(globex, {"jsonrpc": "2.0", "method": "notifications/initialized"}, auth=auth, sid=g)
out["globex_own"] = post(globex, add(2, 3, 4), auth=auth, sid=g)
out["stolen"] = post(globex, add(3, 5, 5), auth=auth, sid=sid)
out["raw"] = post(acme, add(4, 7, 7), sid=sid.split(".", 2)[2])
out["twice"] = httpx.post(acme, json=add(5, 8, 8), timeout=20,
    headers=[*H.items(), ("mcp-session-id", sid), ("mcp-session-id", sid)]).status_code

async def sdk():
    from mcp import Client
    async with Client(acme) as client:
        listed = await client.list_tools()
        added = await client.call_tool("add", {"a": 20, "b": 22})
    return sorted(t.name for t in listed.tools), added.structured_content
out["sdk"] = asyncio.run(sdk())
print(json.dumps(out))
"#,
        &[
            (
                "ACME",
                format!("http://127.0.0.1:{}/tools-stateful/mcp", proxy.sidecar_port),
            ),
            (
                "GLOBEX",
                format!("http://127.0.0.1:{}/tools-stateful/mcp", proxy.shared_port),
            ),
            ("AUTH", format!("Bearer {}", token_for("globex", "agent"))),
        ],
    );
    let v: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    let sealed = v["init"]["sid"].as_str().unwrap();
    assert!(sealed.starts_with("tp1."), "{out}");
    // Its own session works: the server got its own id back (it refuses ids it never issued).
    assert_eq!(v["own"]["status"], 200, "{out}");
    let own: Value = serde_json::from_str(v["own"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        own["result"]["structuredContent"],
        json!({"result": 3}),
        "{out}"
    );
    assert_eq!(v["globex_own"]["status"], 200, "{out}");
    // Another tenant with acme's sealed id, acme with the server's raw one, the id sent twice.
    for (case, tenant) in [("stolen", "globex"), ("raw", "acme")] {
        let reply = &v[case];
        assert_eq!(reply["status"], 404, "{case}: {out}");
        let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body["error"]["code"], "mcp_session_unknown",
            "{case}: {out}"
        );
        assert!(!reply["body"].as_str().unwrap().contains(sealed), "{case}");
        let record = proxy.audit_record(tenant, reply["request_id"].as_str().unwrap());
        assert_eq!(record["reason"], "mcp_session_unknown", "{case}");
        assert_eq!(record["decision"], "deny", "{case}");
        assert_eq!(record["mcp"]["server"], "tools-stateful", "{case}");
    }
    assert_eq!(v["twice"], 404, "{out}");
    assert_eq!(v["sdk"], json!([["add", "echo"], {"result": 42}]), "{out}");
    // Only the calls made in each workload's own session reached the server.
    assert_eq!(
        stateful.calls(),
        [
            ("add".to_string(), json!({"a": 1, "b": 2})),
            ("add".to_string(), json!({"a": 3, "b": 4})),
            ("add".to_string(), json!({"a": 20, "b": 22})),
        ]
    );
}

/// A request to an MCP server whose query names a session (the older transport's `endpoint`
/// URL) and carries a credential handle gets both: the server's own session id and the
/// substituted secret, never the literal `$CRED{}` handle (the opened session path was once
/// written over the substituted one).
#[test]
fn a_session_parameter_opens_in_the_substituted_query() {
    let recorder = Origin::start();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-mcp",
        ..Default::default()
    };
    spec.tenants.routes.push(config::Route::new(
        "recorder",
        "/recorder/",
        format!("http://127.0.0.1:{}/", recorder.port),
    ));
    spec.tenants.mcp = Some(config::Mcp {
        max_message_bytes: Some(65536),
        servers: vec![config::McpServer::by_route("recorder", "recorder")],
        session_key_file: Some("mcp-session.key".into()),
    });
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials.files.push(config::FileCredential {
        positions: vec![config::CredentialPosition::Query],
        ..config::FileCredential::header("acme", "search_key", &["127.0.0.1/"])
    });
    let key = "k".repeat(48);
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(dir.join("mcp-session.key"), &key).unwrap();
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/search_key"), "sk-query-secret").unwrap();
        std::fs::write(
            dir.join("policies/global/credentials.cedar"),
            "permit (principal, action == TenantProxy::Action::\"use_credential\", resource);\n",
        )
        .unwrap();
    });
    let session_key =
        tenant_proxy::mcp::session::SessionKey::read(&proxy.path("mcp-session.key")).unwrap();
    let sealed = session_key.binding("acme", "bot", "recorder").seal("s-1");
    let body = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST /recorder/messages?session_id={sealed}&key=$CRED{{search_key}} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let got = recorder.matching("/messages");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].target, "/messages?session_id=s-1&key=sk-query-secret",
        "the server's own session id and the substituted secret"
    );
}

//! MCP scoping for servers reached over Streamable HTTP (JSON-RPC 2.0 bodies).
//!
//! Only destinations that `[mcp]` marks as MCP servers ([`config`]) get this
//! handling, after the request's `http` decision allowed it. A server is a destination (host,
//! port, path prefix), recognized however it is reached: through its route, another route to
//! the same upstream, forward mode, an intercepted tunnel, or another spelling of its address.
//!
//! 1. a request with a body (and every POST) must be JSON-RPC 2.0, one message or a non-empty
//!    batch ([`jsonrpc`]); anything else is refused (`mcp_malformed`) and never forwarded;
//! 2. every `tools/call` in it is decided as Cedar action `mcp_tool_call`, every
//!    `resources/read` (and `resources/subscribe`, `resources/unsubscribe`) as
//!    `mcp_resource`, every `prompts/get` as `mcp_prompt` ([`authorize`]); one denial refuses the whole request (`tool_denied`,
//!    `resource_denied`, `prompt_denied`), so nothing of a batch reaches the server;
//! 3. the response's `tools/list`, `resources/list`, `resources/templates/list` and
//!    `prompts/list` results keep only what this workload may use ([`list_filter`]); a response
//!    that cannot be filtered is cut, never passed unfiltered.

/// Implements the visits of a number, a string, a boolean and null for a visitor of the
/// children's JSON readers whose value is `$other` (a finite number checked as [`jsonrpc`]'s
/// skipping does).
macro_rules! not_an_object {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            super::jsonrpc::SkipVisitor::<true>
                .visit_f64(v)
                .map(|_| $other)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

pub mod answer;
pub mod config;
pub mod jsonrpc;
pub mod list_filter;
pub mod session;
pub mod uri;

use pingora::http::ResponseHeader;
use serde_json::Value;

use crate::policy::Decision;
use jsonrpc::{ItemKind, ListKind};
use list_filter::{Framing, ListFilter};

/// What the request phase learned about an MCP exchange, for the response and the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct McpExchange {
    /// The configured server's name (`context.server`).
    pub server: String,
    /// Tools called, in body order.
    pub tools_called: Vec<String>,
    /// Resources read (URIs), in body order.
    pub resources_read: Vec<String>,
    /// Prompts got, in body order.
    pub prompts_got: Vec<String>,
    /// The kinds of list the request asks for, so its response must carry filterable lists.
    pub lists: Vec<ListKind>,
    /// The list request ids with their kind, matched against response ids.
    pub list_ids: Vec<(Value, ListKind)>,
    /// The server's own session ids, opened from what the agent sent ([`session`]).
    pub session: session::Opened,
    /// The request posted messages (a `202` to it acknowledges them; no client reads its body).
    pub posted: bool,
}

impl McpExchange {
    /// An exchange that names only its server (a refused request's record).
    pub fn refused(server: &str) -> Self {
        Self {
            server: server.to_string(),
            tools_called: Vec::new(),
            resources_read: Vec::new(),
            prompts_got: Vec::new(),
            lists: Vec::new(),
            list_ids: Vec::new(),
            session: session::Opened::default(),
            posted: false,
        }
    }
}

/// Why an MCP request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpRefusal {
    /// The body is not JSON-RPC 2.0 the proxy can decide on.
    Malformed(String),
    /// A tool call, resource read or prompt get was denied; the decision names the deciding
    /// policies.
    Denied {
        /// A tool, a resource or a prompt.
        item: ItemKind,
        /// Its name (a resource's URI).
        name: String,
        /// The decision.
        decision: Decision,
    },
}

/// Most tools, resources, prompts and lists one message (a JSON-RPC batch) may use. MCP clients send
/// one call per message (batches left the protocol in 2025-06-18); a few hundred is already
/// more than any client batches.
pub const MAX_ITEMS_PER_MESSAGE: usize = 256;

/// Why a request to an MCP server that asks for a protocol upgrade is refused (and a WebSocket
/// whose destination became an MCP server ends, see `pipeline::lapse`).
pub const NEVER_UPGRADED: &str = "an MCP server is reached with HTTP requests (a JSON-RPC POST, a GET event stream), never a protocol upgrade such as WebSocket, whose messages the proxy could not check";

/// Reads the body sent to MCP server `server` and decides every tool, resource and prompt it
/// uses: tools first, then resources, then prompts, each in body order and each asked once.
///
/// `body` is `None` when the request has none: fine for `GET` (the server's event stream) and
/// `DELETE` (end of session), refused for `POST`; a request asking for a protocol `upgrade` is
/// refused. `decide` answers one question.
/// Returns the exchange and the allow decisions (for the audit record's policy ids).
pub fn admit(
    server: &str,
    method: &http::Method,
    upgrade: bool,
    body: Option<&[u8]>,
    decide: &mut dyn FnMut(ItemKind, &str) -> Decision,
) -> Result<(McpExchange, Vec<Decision>), McpRefusal> {
    // SECURITY: a protocol switch would leave a connection whose bytes no JSON-RPC check reads:
    // a WebSocket transport to the server would run any tool, unfiltered and unaudited.
    if upgrade {
        return Err(McpRefusal::Malformed(NEVER_UPGRADED.into()));
    }
    let request = match body {
        Some(b) => jsonrpc::parse_request(b).map_err(|m| McpRefusal::Malformed(m.0))?,
        None if method == http::Method::POST => {
            return Err(McpRefusal::Malformed(
                "a POST to an MCP server must carry a JSON-RPC 2.0 body".into(),
            ))
        }
        None => jsonrpc::McpRequest::default(),
    };
    // SECURITY: each item is a policy evaluation on the worker that serves every tenant of
    // the listener; a batch of tens of thousands would hold it for seconds.
    // Lists count too: each answer is matched to its request's id, and filtered.
    let items = request.tool_calls.len()
        + request.resource_reads.len()
        + request.prompt_gets.len()
        + request.list_ids.len().max(request.lists.len());
    if items > MAX_ITEMS_PER_MESSAGE {
        return Err(McpRefusal::Malformed(format!(
            "a message may use at most {MAX_ITEMS_PER_MESSAGE} tools, resources, prompts and lists; this one uses {items}"
        )));
    }
    let mut decisions: Vec<Decision> = Vec::new();
    let mut decided: std::collections::HashSet<(ItemKind, &str)> =
        std::collections::HashSet::with_capacity(items);
    let asked = request
        .tool_calls
        .iter()
        .map(|t| (ItemKind::Tool, t))
        .chain(
            request
                .resource_reads
                .iter()
                .map(|r| (ItemKind::Resource, r)),
        )
        .chain(request.prompt_gets.iter().map(|p| (ItemKind::Prompt, p)));
    for (item, name) in asked {
        if !decided.insert((item, name.as_str())) {
            continue;
        }
        let decision = decide(item, name);
        if !decision.allowed {
            return Err(McpRefusal::Denied {
                item,
                name: name.clone(),
                decision,
            });
        }
        decisions.push(decision);
    }
    let exchange = McpExchange {
        server: server.to_string(),
        tools_called: request.tool_calls,
        resources_read: request.resource_reads,
        prompts_got: request.prompt_gets,
        lists: request.lists,
        list_ids: request.list_ids,
        session: session::Opened::default(),
        posted: body.is_some(),
    };
    Ok((exchange, decisions))
}

/// The audit record's `mcp` fields for an exchange and its response's filter.
pub fn audit_fields(
    exchange: &McpExchange,
    filter: Option<&ListFilter>,
) -> crate::audit::McpFields {
    let hidden = filter.map(|f| f.hidden).unwrap_or_default();
    crate::audit::McpFields {
        server: exchange.server.clone(),
        tools_called: exchange.tools_called.clone(),
        tools_hidden: hidden.tools,
        // URIs may carry secrets in their userinfo and query, like targets: neither is kept
        // (userinfo is refused on the way in; this holds whatever reaches a record).
        resources_read: exchange
            .resources_read
            .iter()
            .map(|uri| uri::audit(uri))
            .collect(),
        prompts_got: exchange.prompts_got.clone(),
        resources_hidden: hidden.resources,
        prompts_hidden: hidden.prompts,
    }
}

/// Counts what a response's filter removed from lists, by tenant.
pub fn observe_hidden(tenant_label: &str, filter: Option<&ListFilter>) {
    let Some(hidden) = filter.map(|f| f.hidden) else {
        return;
    };
    if hidden.tools > 0 {
        crate::metrics::METRICS
            .mcp_tools_hidden
            .with_label_values(&[tenant_label])
            .inc_by(hidden.tools);
    }
    for (kind, n) in [("resource", hidden.resources), ("prompt", hidden.prompts)] {
        if n > 0 {
            crate::metrics::METRICS
                .mcp_hidden
                .with_label_values(&[tenant_label, kind])
                .inc_by(n);
        }
    }
}

/// Seals the session ids a response hands out in `Mcp-Session-Id`.
fn seal_session_header(
    sealer: &session::Sealer,
    response: &mut ResponseHeader,
) -> Result<(), Unfilterable> {
    let issued: Vec<http::HeaderValue> = response
        .headers
        .get_all(session::MCP_SESSION_ID)
        .iter()
        .cloned()
        .collect();
    if issued.is_empty() {
        return Ok(());
    }
    response.remove_header(&session::MCP_SESSION_ID);
    let binding = sealer.binding();
    for id in issued {
        let id = id
            .to_str()
            .map_err(|_| Unfilterable("the server's session id is not visible ASCII"))?;
        let sealed = http::HeaderValue::try_from(binding.seal(id))
            .map_err(|_| Unfilterable("the server's session id cannot be sealed"))?;
        response
            .append_header(session::MCP_SESSION_ID, sealed)
            .map_err(|_| Unfilterable("the server's session id cannot be sealed"))?;
    }
    Ok(())
}

/// A response that must be filtered cannot be (the reason); it is withheld, never passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unfilterable(pub &'static str);

/// The filter for an MCP server's response: every JSON or event-stream response is read for
/// list results (its `Content-Length` is dropped, since filtering changes the length).
/// SECURITY: a successful response owed a list that the filter cannot read (another content
/// type, or compressed) is refused before anything of it is sent.
///
/// Every session id the server hands out (`Mcp-Session-Id`, or the `endpoint` event's URL) is
/// sealed for the workload by `sealer` ([`session`]).
pub fn response_filter(
    exchange: &McpExchange,
    cap: usize,
    endpoint_prefix: Option<&str>,
    sealer: &session::Sealer,
    response: &mut ResponseHeader,
) -> Result<Option<ListFilter>, Unfilterable> {
    seal_session_header(sealer, response)?;
    // One type, or none the filter can rely on (two lines are two readings of the body).
    let content_type = crate::header_names::sole(&response.headers, http::header::CONTENT_TYPE)
        .ok()
        .flatten();
    let framing = content_type.and_then(|v| Framing::for_content_type(v.as_bytes()));
    if framing.is_some()
        && !content_type
            .is_some_and(|v| crate::charset::names_none_but(v.as_bytes(), crate::charset::UTF8))
    {
        return Err(Unfilterable("the response's charset is not UTF-8"));
    }
    let encoded = crate::header_names::content_coded(&response.headers);
    // SECURITY: after a protocol switch the connection carries bytes no check reads (a
    // WebSocket transport would run any tool). Such a request is refused before it is sent;
    // a server that switches anyway is not passed on.
    if response.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(Unfilterable(
            "the server switched protocols, and nothing the proxy checks would be left",
        ));
    }
    // SECURITY: a client may read any successful body as the answer it waits for, a list
    // included, whatever its type says (the TypeScript SDK reads a GET stream as SSE whatever
    // its type; Python's reads any type that starts with `application/json`, and trims
    // Unicode spaces off `text/event-stream`; a server may answer a list on the GET stream
    // before it answers the POST that asked): a successful body the filter cannot read is
    // withheld whether or not this request asked for a list. Only one with nothing in it (a
    // `204`, a declared length of 0) passes unread, and a `202` acknowledging posted messages
    // (clients never read its body; the SDKs' servers write `Accepted` in it).
    let bodyless = response.status == http::StatusCode::NO_CONTENT
        || crate::header_names::sole(&response.headers, http::header::CONTENT_LENGTH)
            .ok()
            .flatten()
            .is_some_and(|v| v.as_bytes() == b"0");
    let acknowledged = response.status == http::StatusCode::ACCEPTED && exchange.posted;
    let must_read = response.status.is_success() && !bodyless && !acknowledged;
    match framing {
        Some(_) if encoded => Err(Unfilterable("the response is compressed")),
        Some(framing) => {
            response.remove_header(&http::header::CONTENT_LENGTH);
            let filter = ListFilter::new(framing, exchange.list_ids.clone(), cap);
            Ok(Some(match endpoint_prefix {
                Some(prefix) => filter.with_endpoint(prefix, sealer.clone()),
                None => filter,
            }))
        }
        None if must_read => Err(Unfilterable(
            "the response is neither JSON nor an event stream",
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sealer() -> session::Sealer {
        session::Sealer::new(session::SessionKey::process(), "acme", "bot", "s")
    }

    fn decision(allowed: bool, id: &str) -> Decision {
        Decision {
            allowed,
            policy_ids: vec![id.to_string()],
            errors: Vec::new(),
        }
    }

    #[test]
    fn one_denied_call_refuses_the_batch_and_each_tool_is_asked_once() {
        let body = br#"[
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add"}},
            {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"wipe"}}
        ]"#;
        let mut asked = Vec::new();
        let mut decide = |_: ItemKind, t: &str| {
            asked.push(t.to_string());
            decision(t != "wipe", if t == "wipe" { "no-wipe" } else { "ok" })
        };
        let refusal = admit("s", &http::Method::POST, false, Some(body), &mut decide).unwrap_err();
        assert_eq!(asked, ["add", "wipe"]);
        match refusal {
            McpRefusal::Denied {
                item,
                name,
                decision,
            } => {
                assert_eq!((item, name.as_str()), (ItemKind::Tool, "wipe"));
                assert_eq!(decision.policy_ids, ["no-wipe"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allowed_exchange() {
        let body = br#"[{"jsonrpc":"2.0","id":"l","method":"tools/list"},{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}]"#;
        let (exchange, decisions) = admit(
            "docs",
            &http::Method::POST,
            false,
            Some(body),
            &mut |_, _| decision(true, "ok"),
        )
        .unwrap();
        assert_eq!(exchange.server, "docs");
        assert_eq!(exchange.tools_called, ["add"]);
        assert_eq!(exchange.lists, [ListKind::Tools]);
        assert_eq!(exchange.list_ids, [(Value::from("l"), ListKind::Tools)]);
        assert_eq!(decisions.len(), 1);
    }

    /// (case, request lists tools, status, content type, content encoding, the filter's framing
    /// or the refusal's reason).
    type ResponseCase = (
        &'static str,
        bool,
        u16,
        Option<&'static str>,
        Option<&'static str>,
        Result<Option<Framing>, &'static str>,
    );

    #[test]
    fn a_message_using_more_items_than_allowed_is_refused_before_any_is_decided() {
        let calls: Vec<String> = (0..=MAX_ITEMS_PER_MESSAGE)
            .map(|i| {
                format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"t{i}"}}}}"#)
            })
            .collect();
        let body = format!("[{}]", calls.join(","));
        let mut asked = 0;
        let mut decide = |_: ItemKind, _: &str| {
            asked += 1;
            decision(false, "p")
        };
        let refusal = admit(
            "s",
            &http::Method::POST,
            false,
            Some(body.as_bytes()),
            &mut decide,
        );
        assert!(
            matches!(&refusal, Err(McpRefusal::Malformed(m)) if m.contains("at most 256")),
            "{refusal:?}"
        );
        assert_eq!(asked, 0);
        // At the limit, each distinct item is asked once.
        // Lists count toward it as well.
        let lists: Vec<String> = (0..=MAX_ITEMS_PER_MESSAGE)
            .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/list"}}"#))
            .collect();
        let body = format!("[{}]", lists.join(","));
        let refusal = admit(
            "s",
            &http::Method::POST,
            false,
            Some(body.as_bytes()),
            &mut |_, _| decision(true, "p"),
        );
        assert!(
            matches!(refusal, Err(McpRefusal::Malformed(_))),
            "{refusal:?}"
        );
        let body = format!("[{}]", calls[..MAX_ITEMS_PER_MESSAGE].join(","));
        let mut asked = 0;
        let mut allow = |_: ItemKind, _: &str| {
            asked += 1;
            decision(true, "p")
        };
        assert!(admit(
            "s",
            &http::Method::POST,
            false,
            Some(body.as_bytes()),
            &mut allow
        )
        .is_ok());
        assert_eq!(asked, MAX_ITEMS_PER_MESSAGE);
    }

    #[test]
    fn response_filters() {
        let exchange = |lists_tools: bool| McpExchange {
            lists: if lists_tools {
                vec![ListKind::Tools]
            } else {
                Vec::new()
            },
            list_ids: vec![(Value::from(1), ListKind::Tools)],
            posted: lists_tools,
            ..McpExchange::refused("s")
        };
        #[rustfmt::skip]
        let cases: [ResponseCase; 17] = [
            ("json list", true, 200, Some("application/json"), None, Ok(Some(Framing::Json))),
            ("sse list", true, 200, Some("text/event-stream"), None, Ok(Some(Framing::Sse))),
            ("json call result is read too", false, 200, Some("application/json"), None, Ok(Some(Framing::Json))),
            ("identity encoding", true, 200, Some("application/json"), Some("identity"), Ok(Some(Framing::Json))),
            ("compressed", false, 200, Some("application/json"), Some("gzip"), Err("compressed")),
            ("list as plain text", true, 200, Some("text/plain"), None, Err("neither JSON")),
            ("error page for a list", true, 404, Some("text/html"), None, Ok(None)),
            // A client may read any successful body, a list's answer included (the GET
            // stream's, whatever its type: the TypeScript SDK).
            ("a body of no type", false, 200, None, None, Err("neither JSON")),
            ("a stream typed as text", false, 200, Some("text/plain"), None, Err("neither JSON")),
            ("a 202 acknowledging a post", true, 202, Some("text/plain"), None, Ok(None)),
            ("a 202 to a GET, with a body", false, 202, Some("text/plain"), None, Err("neither JSON")),
            ("JSON, nearly", false, 200, Some("application/json-rpc"), None, Err("neither JSON")),
            ("an event stream and a Unicode space", false, 200, Some("text/event-stream\u{a0}"), None, Err("neither JSON")),
            ("a protocol switch", false, 101, None, None, Err("switched protocols")),
            ("an event stream in UTF-16", false, 200, Some("text/event-stream; charset=utf-16"), None, Err("not UTF-8")),
            ("JSON in UTF-8, named", true, 200, Some("application/json; charset=utf-8"), None, Ok(Some(Framing::Json))),
            ("a protocol switch naming JSON", true, 101, Some("application/json"), None, Err("switched protocols")),
        ];
        for (name, lists_tools, status, ctype, encoding, want) in cases {
            let mut resp = ResponseHeader::build(status, None).unwrap();
            resp.insert_header("content-length", "10").unwrap();
            if let Some(c) = ctype {
                resp.insert_header("content-type", c).unwrap();
            }
            if let Some(e) = encoding {
                resp.insert_header("content-encoding", e).unwrap();
            }
            let got = response_filter(&exchange(lists_tools), 1024, None, &sealer(), &mut resp);
            match (got, want) {
                (Ok(filter), Ok(framing)) => {
                    assert_eq!(filter.as_ref().map(|f| f.framing()), framing, "{name}");
                    assert_eq!(
                        resp.headers.contains_key("content-length"),
                        framing.is_none(),
                        "{name}: length dropped only when filtering"
                    );
                }
                (Err(Unfilterable(why)), Err(needle)) => {
                    assert!(why.contains(needle), "{name}: {why}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        // A successful answer with nothing in it passes unread: a 204, a 202 to a notification.
        for (status, length) in [(204, None), (202, Some("0")), (200, Some("0"))] {
            let mut resp = ResponseHeader::build(status, None).unwrap();
            if let Some(length) = length {
                resp.insert_header("content-length", length).unwrap();
            }
            resp.insert_header("content-type", "text/plain").unwrap();
            let got = response_filter(&exchange(true), 1024, None, &sealer(), &mut resp);
            assert!(matches!(got, Ok(None)), "{status}: {got:?}");
        }
        // A header read by its value is read on every line (a coding) or by its one line (a
        // type): the second line of either is no way past the filter.
        type Lines<'a> = &'a [(&'a str, &'a str)];
        #[rustfmt::skip]
        let repeated: [(&str, Lines<'_>, &str); 4] = [
            ("identity, then gzip", &[("content-type", "application/json"), ("content-encoding", "identity"), ("content-encoding", "gzip")], "compressed"),
            // A transfer coding reaches the filter as sent (curl decodes it).
            ("a transfer coding", &[("content-type", "text/event-stream"), ("transfer-encoding", "gzip, chunked")], "compressed"),
            ("text, then JSON", &[("content-type", "text/plain"), ("content-type", "application/json")], "neither JSON"),
            ("JSON, then text", &[("content-type", "application/json"), ("content-type", "text/plain")], "neither JSON"),
        ];
        for (name, headers, needle) in repeated {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            for (k, v) in headers {
                resp.append_header(k.to_string(), *v).unwrap();
            }
            match response_filter(&exchange(true), 1024, None, &sealer(), &mut resp) {
                Err(Unfilterable(why)) => assert!(why.contains(needle), "{name}: {why}"),
                Ok(f) => panic!("{name}: filtered as {:?}", f.map(|f| f.framing())),
            }
        }
    }

    /// The record keeps no userinfo, query value or fragment of a resource URI.
    #[test]
    fn audited_resource_uris_hold_no_secret() {
        let exchange = McpExchange {
            resources_read: vec!["https://alice:PW@example.com/doc?token=Q#t=F".into()],
            ..McpExchange::refused("s")
        };
        assert_eq!(
            audit_fields(&exchange, None).resources_read,
            ["https://example.com/doc?token#"]
        );
    }

    #[test]
    fn bodyless_requests() {
        let mut never = |_: ItemKind, _: &str| -> Decision { panic!("nothing to decide") };
        assert!(matches!(
            admit("s", &http::Method::POST, false, None, &mut never),
            Err(McpRefusal::Malformed(_))
        ));
        for method in [http::Method::GET, http::Method::DELETE] {
            let (exchange, _) = admit("s", &method, false, None, &mut never).unwrap();
            assert!(exchange.tools_called.is_empty() && exchange.lists.is_empty());
        }
        // A body on any method is read.
        assert!(matches!(
            admit("s", &http::Method::GET, false, Some(b"nope"), &mut never),
            Err(McpRefusal::Malformed(_))
        ));
    }

    #[test]
    fn resources_and_prompts_are_decided_like_tools() {
        let body = br#"[
            {"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"docs://public/a"}},
            {"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"summarize"}},
            {"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"docs://secret/b"}}
        ]"#;
        let mut asked = Vec::new();
        let mut decide = |item: ItemKind, name: &str| {
            asked.push((item, name.to_string()));
            decision(!name.contains("secret"), "p")
        };
        let refusal =
            admit("docs", &http::Method::POST, false, Some(body), &mut decide).unwrap_err();
        assert_eq!(
            asked,
            [
                (ItemKind::Resource, "docs://public/a".to_string()),
                (ItemKind::Resource, "docs://secret/b".to_string())
            ]
        );
        assert!(
            matches!(&refusal, McpRefusal::Denied { item: ItemKind::Resource, name, .. } if name == "docs://secret/b"),
            "{refusal:?}"
        );
        let (exchange, decisions) = admit(
            "docs",
            &http::Method::POST,
            false,
            Some(
                br#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"summarize"}}"#,
            ),
            &mut |_, _| decision(true, "p"),
        )
        .unwrap();
        assert_eq!(exchange.prompts_got, ["summarize"]);
        assert_eq!(decisions.len(), 1);
        let refusal = admit(
            "docs",
            &http::Method::POST,
            false,
            Some(br#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"leak"}}"#),
            &mut |_, _| decision(false, "no"),
        )
        .unwrap_err();
        assert!(
            matches!(&refusal, McpRefusal::Denied { item: ItemKind::Prompt, name, .. } if name == "leak"),
            "{refusal:?}"
        );
    }

    #[test]
    fn session_ids_a_server_hands_out_are_sealed_for_the_workload() {
        let exchange = McpExchange::refused("s");
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/json")
            .unwrap();
        resp.insert_header("mcp-session-id", "server-1").unwrap();
        response_filter(&exchange, 1024, None, &sealer(), &mut resp).unwrap();
        let sent: Vec<&str> = resp
            .headers
            .get_all("mcp-session-id")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(sent.len(), 1);
        assert_ne!(sent[0], "server-1");
        assert_eq!(sealer().binding().open(sent[0]), Some("server-1"));
        // An id that is not text is withheld rather than passed unsealed.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header(
            "mcp-session-id",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .unwrap();
        assert!(response_filter(&exchange, 1024, None, &sealer(), &mut resp).is_err());
    }
}

//! MCP tool scoping for servers reached over Streamable HTTP (JSON-RPC 2.0 bodies).
//!
//! Only destinations that `[mcp]` marks as MCP servers ([`crate::config::mcp`]) get this
//! handling, after the request's `http` decision allowed it:
//!
//! 1. a request with a body (and every POST) must be JSON-RPC 2.0, one message or a non-empty
//!    batch ([`jsonrpc`]); anything else is refused (`mcp_malformed`) and never forwarded;
//! 2. every `tools/call` in it is decided as Cedar action `mcp_tool_call` with resource
//!    `TenantProxy::McpTool::"<tool name>"`; one denied call refuses the whole request
//!    (`tool_denied`), so nothing of a batch reaches the server;
//! 3. the response's `tools/list` results keep only the tools this workload may call
//!    ([`list_filter`]); a response that cannot be filtered is cut, never passed unfiltered.

pub mod jsonrpc;
pub mod list_filter;

use pingora::http::ResponseHeader;
use serde_json::Value;

use crate::error::Deny;
use crate::policy::Decision;
use list_filter::{Framing, ToolListFilter};

/// What the request phase learned about an MCP exchange, for the response and the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct McpExchange {
    /// The configured server's name (`context.server`).
    pub server: String,
    /// Tools called, in body order.
    pub tools_called: Vec<String>,
    /// Whether the request lists tools, so its response must carry filterable lists.
    pub lists_tools: bool,
    /// The `tools/list` request ids, matched against response ids.
    pub list_ids: Vec<Value>,
}

/// Why an MCP request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpRefusal {
    /// The body is not JSON-RPC 2.0 the proxy can decide on.
    Malformed(String),
    /// A `tools/call` was denied; the decision names the deciding policies.
    ToolDenied {
        /// The tool.
        tool: String,
        /// The `mcp_tool_call` decision.
        decision: Decision,
    },
}

/// Reads the body sent to MCP server `server` and decides every tool it calls.
///
/// `body` is `None` when the request has none: fine for `GET` (the server's event stream) and
/// `DELETE` (end of session), refused for `POST`. `decide` answers `mcp_tool_call` for one tool.
/// Returns the exchange and the allow decisions (for the audit record's policy ids).
pub fn admit(
    server: &str,
    method: &http::Method,
    body: Option<&[u8]>,
    decide: &mut dyn FnMut(&str) -> Decision,
) -> Result<(McpExchange, Vec<Decision>), McpRefusal> {
    let request = match body {
        Some(b) => jsonrpc::parse_request(b).map_err(|m| McpRefusal::Malformed(m.0))?,
        None if method == http::Method::POST => {
            return Err(McpRefusal::Malformed(
                "a POST to an MCP server must carry a JSON-RPC 2.0 body".into(),
            ))
        }
        None => jsonrpc::McpRequest::default(),
    };
    let mut decisions: Vec<Decision> = Vec::new();
    let mut decided: Vec<&str> = Vec::new();
    for tool in &request.tool_calls {
        if decided.contains(&tool.as_str()) {
            continue;
        }
        decided.push(tool);
        let decision = decide(tool);
        if !decision.allowed {
            return Err(McpRefusal::ToolDenied {
                tool: tool.clone(),
                decision,
            });
        }
        decisions.push(decision);
    }
    let exchange = McpExchange {
        server: server.to_string(),
        tools_called: request.tool_calls,
        lists_tools: request.lists_tools,
        list_ids: request.list_ids,
    };
    Ok((exchange, decisions))
}

/// The filter for an MCP server's response: every JSON or event-stream response is read for
/// `tools/list` results (its `Content-Length` is dropped, since filtering changes the length).
/// SECURITY: a successful response owed a tool list that the filter cannot read (another
/// content type, or compressed) is refused before anything of it is sent.
pub fn response_filter(
    exchange: &McpExchange,
    cap: usize,
    response: &mut ResponseHeader,
) -> Result<Option<ToolListFilter>, Deny> {
    let framing = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| Framing::for_content_type(v.as_bytes()));
    let encoded = response
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    // A 202 answers a message that needs no reply; it has no body to hold a list.
    let owed_list = exchange.lists_tools
        && response.status.is_success()
        && response.status != http::StatusCode::ACCEPTED;
    match framing {
        Some(_) if encoded => Err(Deny::McpResponseUnfiltered(
            "the response is compressed".into(),
        )),
        Some(framing) => {
            response.remove_header(&http::header::CONTENT_LENGTH);
            Ok(Some(ToolListFilter::new(
                framing,
                exchange.list_ids.clone(),
                cap,
            )))
        }
        None if owed_list => Err(Deny::McpResponseUnfiltered(
            "the response is neither JSON nor an event stream".into(),
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
        let mut decide = |t: &str| {
            asked.push(t.to_string());
            decision(t != "wipe", if t == "wipe" { "no-wipe" } else { "ok" })
        };
        let refusal = admit("s", &http::Method::POST, Some(body), &mut decide).unwrap_err();
        assert_eq!(asked, ["add", "wipe"]);
        match refusal {
            McpRefusal::ToolDenied { tool, decision } => {
                assert_eq!(tool, "wipe");
                assert_eq!(decision.policy_ids, ["no-wipe"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allowed_exchange() {
        let body = br#"[{"jsonrpc":"2.0","id":"l","method":"tools/list"},{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}]"#;
        let (exchange, decisions) = admit("docs", &http::Method::POST, Some(body), &mut |_| {
            decision(true, "ok")
        })
        .unwrap();
        assert_eq!(exchange.server, "docs");
        assert_eq!(exchange.tools_called, ["add"]);
        assert!(exchange.lists_tools);
        assert_eq!(exchange.list_ids, [Value::from("l")]);
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
    fn response_filters() {
        let exchange = |lists_tools: bool| McpExchange {
            server: "s".into(),
            tools_called: Vec::new(),
            lists_tools,
            list_ids: vec![Value::from(1)],
        };
        #[rustfmt::skip]
        let cases: [ResponseCase; 8] = [
            ("json list", true, 200, Some("application/json"), None, Ok(Some(Framing::Json))),
            ("sse list", true, 200, Some("text/event-stream"), None, Ok(Some(Framing::Sse))),
            ("json call result is read too", false, 200, Some("application/json"), None, Ok(Some(Framing::Json))),
            ("identity encoding", true, 200, Some("application/json"), Some("identity"), Ok(Some(Framing::Json))),
            ("compressed", false, 200, Some("application/json"), Some("gzip"), Err("compressed")),
            ("list as plain text", true, 200, Some("text/plain"), None, Err("neither JSON")),
            ("error page for a list", true, 404, Some("text/html"), None, Ok(None)),
            ("202 to a notification", true, 202, None, None, Ok(None)),
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
            let got = response_filter(&exchange(lists_tools), 1024, &mut resp);
            match (got, want) {
                (Ok(filter), Ok(framing)) => {
                    assert_eq!(filter.as_ref().map(|f| f.framing()), framing, "{name}");
                    assert_eq!(
                        resp.headers.contains_key("content-length"),
                        framing.is_none(),
                        "{name}: length dropped only when filtering"
                    );
                }
                (Err(Deny::McpResponseUnfiltered(why)), Err(needle)) => {
                    assert!(why.contains(needle), "{name}: {why}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bodyless_requests() {
        let mut never = |_: &str| -> Decision { panic!("no tool to decide") };
        assert!(matches!(
            admit("s", &http::Method::POST, None, &mut never),
            Err(McpRefusal::Malformed(_))
        ));
        for method in [http::Method::GET, http::Method::DELETE] {
            let (exchange, _) = admit("s", &method, None, &mut never).unwrap();
            assert!(exchange.tools_called.is_empty() && !exchange.lists_tools);
        }
        // A body on any method is read.
        assert!(matches!(
            admit("s", &http::Method::GET, Some(b"nope"), &mut never),
            Err(McpRefusal::Malformed(_))
        ));
    }
}

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

use serde_json::Value;

use crate::policy::Decision;

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

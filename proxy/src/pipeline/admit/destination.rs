//! Where a request goes: its own checks and its destination, what it is for metering, and
//! the provider and egress exceptions that apply.

use super::*;

/// The request's own checks, then where it goes: a refused request never reaches the target
/// parser with an ambiguity in it.
pub(super) fn http_destination(
    req: &RequestHeader,
    (tunnel, captured, bound): (Option<&Tunnel>, Option<SocketAddr>, bool),
    snapshot: &Snapshot,
    config: &StaticConfig,
    trail: &mut Trail,
) -> Result<Destination, Deny> {
    if req.method == http::Method::CONNECT {
        return Err(Deny::ConnectUnsupported);
    }
    // SECURITY: methods are case-sensitive, and an upstream that upper-cases the method it gets
    // (Werkzeug, hence Flask tool servers, does) would run `DELETE` for `delete`, which a policy
    // written against "DELETE" never matched. Every registered method is upper case.
    if !is_canonical_method(req.method.as_str()) {
        return Err(Deny::BadRequest(
            "the method has characters other than upper-case letters, digits, `-` and `_` \
             (methods are case-sensitive; send it in upper case)"
                .into(),
        ));
    }
    if header_bytes(req) > config.limits.max_header_bytes {
        return Err(Deny::HeadersTooLarge);
    }
    // The front counts an HTTP/1 head's fields; an HTTP/2 stream's are counted here (HPACK
    // makes a repeated field about one byte, so the byte cap alone lets thousands through).
    if req.headers.len() > config.limits.max_headers {
        return Err(Deny::TooManyHeaders(config.limits.max_headers));
    }
    // SECURITY: the decision is on the request line; see `front::misleading_header`.
    if let Some(why) = crate::front::misleading_header(req.headers.keys().map(|n| n.as_str())) {
        return Err(Deny::BadRequest(why));
    }
    if req
        .uri
        .path_and_query()
        .is_some_and(|p| crate::front::method_override_in_query(p.as_str()))
    {
        return Err(Deny::BadRequest(format!(
            "the query's `{}` asks the upstream for another method than the request line's, \
             which is what the proxy decides on; send the request with that method",
            crate::front::METHOD_PARAMETER
        )));
    }
    // One reading of the hold id, as of every header the proxy itself acts on.
    if crate::identity::sole_header(&req.headers, crate::approvals::HOLD_HEADER).is_err() {
        return Err(Deny::BadRequest(format!(
            "`{}` is given more than once",
            crate::approvals::HOLD_HEADER
        )));
    }
    // SECURITY: the authority, the body's type and its length are decided on by one value
    // each; a second line (or a type with two readings) could be the one the upstream reads,
    // past the credential, `_method` and model checks that read the first.
    if let Some(why) = crate::header_names::ambiguity(&req.headers) {
        return Err(Deny::BadRequest(why));
    }
    // SECURITY: a header nominated in `Connection` is removed hop by hop on the way upstream,
    // after the decision; none the decision or the substitution rests on may be.
    let nominated = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .map(|v| v.as_bytes());
    if let Some(name) = crate::front::nominated_protected(nominated) {
        return Err(Deny::ProtectedHopHeader(name));
    }
    // HTTP/2 (inside tunnels) names the authority in `:authority`, not `Host`.
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes())
        .or_else(|| {
            (req.version == http::Version::HTTP_2)
                .then(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
                .flatten()
        });
    // SECURITY: a handle in the authority is a position error whatever the target's form (and
    // before anything else reads the authority).
    if let Some(refusal) = crate::credentials::apply::handle_in_authority(
        req.raw_path(),
        req.uri.authority().map(|a| a.as_str()),
        req.headers.get(http::header::HOST).map(|v| v.as_bytes()),
    ) {
        trail.credentials = refusal.credential().map(String::from).into_iter().collect();
        return Err(Deny::Credential(refusal));
    }
    Ok(match (tunnel, captured) {
        (Some(t), _) => {
            crate::target::tunneled_as(t.scheme, req.raw_path(), host, &t.host, t.port)?
        }
        (None, Some(original)) => crate::target::captured(req.raw_path(), host, original)?,
        (None, None) => {
            // A path alone names the proxy itself as the server (a route): a browser's page
            // can send that to a listener on its host, which then acts as the listener's
            // workload. A browser proxying through us sends absolute targets, never refused
            // here. See `front::browser_marker`.
            if req.raw_path().starts_with(b"/") {
                if let Some(marker) = crate::front::browser_marker(&req.headers) {
                    return Err(Deny::BrowserRequest(BrowserSign::Marked(marker)));
                }
                // A page whose name was rebound to this address sends its own name as `Host`
                // and, over plain HTTP, neither marker (browsers send `Sec-Fetch-*` to secure
                // origins only, and `Origin` not with a same-origin GET). The listener acts as
                // its workload for whoever reaches it, so it answers only to names no page can
                // rebind. (A token or a certificate is not a page's to send.)
                if bound && host.is_some_and(|h| !crate::front::unrebindable_host(h)) {
                    return Err(Deny::BrowserRequest(BrowserSign::RebindableHost));
                }
            }
            crate::target::resolve(req.raw_path(), host, &snapshot.tenants.routes)?
        }
    })
}

/// Whether `method` is spelled the way every registered method is: upper-case letters, digits,
/// `-` and `_`, starting with a letter.
fn is_canonical_method(method: &str) -> bool {
    method
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_uppercase)
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
/// What a request is for metering ([`registry::work`]; `call_api`: its path's provider, looked
/// up already), a call whose body asks for work whose spend no response shows (`unmetered`:
/// run in the background, answering at once; a hosted tool billed per image, container or
/// grounded prompt) being unmetered work.
pub(super) fn call_work(
    destination: &Destination,
    method: &http::Method,
    upgrade: bool,
    call_api: Option<&'static dyn Provider>,
    unmetered: Option<&'static str>,
) -> Work {
    match (
        registry::work(destination, method, upgrade, call_api.is_some()),
        unmetered,
    ) {
        // A request the proxy does not know that names a model is a call too (see `plan`).
        (Work::Call | Work::Unrecognized(_), Some(why)) => Work::Unmetered(why),
        (work, _) => work,
    }
}

/// A host the tenant file declares an LLM provider's (`[[llm_provider]]`) is priced and named
/// as that provider, unless its route names one.
pub(in crate::pipeline) fn declared_provider(destination: &mut Destination, snapshot: &Snapshot) {
    if destination.provider.is_none() {
        let declared = snapshot.tenants.llm_providers.for_host(&destination.host);
        destination.provider = declared.map(|p| p.name.clone());
    }
}
/// The tenant's own egress exceptions (added to the global ones by the guard).
pub(in crate::pipeline) fn egress_exceptions<'a>(
    snapshot: &'a Snapshot,
    tenant: &TenantId,
) -> &'a [EgressException] {
    snapshot
        .tenants
        .tenants
        .get(tenant)
        .map(|e| e.egress_allow.as_slice())
        .unwrap_or(&[])
}

/// Where a request's body goes, as far as reading it is concerned: an MCP server's JSON-RPC is
/// judged by the MCP check after `http`; toward an LLM destination the body is classified or
/// refused.
pub(super) fn body_destination(
    snapshot: &Snapshot,
    destination: &Destination,
    static_hosts: &std::collections::HashMap<String, Vec<std::net::IpAddr>>,
) -> body::BodyDestination {
    if snapshot
        .tenants
        .mcp
        .server_for(destination, None, static_hosts)
        .is_some()
    {
        body::BodyDestination::Mcp
    } else if registry::is_llm_destination(destination) {
        body::BodyDestination::Llm
    } else {
        body::BodyDestination::Other
    }
}

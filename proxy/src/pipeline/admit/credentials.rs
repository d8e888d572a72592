//! Credentials decided and substituted: every `$CRED{}` handle and agent-supplied key of an
//! allowed request, a token credential's access token fetched once.

use super::*;

/// Watches the `use_credential` questions for the permits that allowed them (an approval may
/// be asked for there), passing every question on to `inner`.
pub(super) struct CredentialPermits<'a> {
    inner: &'a mut dyn Observer,
    ids: Vec<String>,
}

impl<'a> CredentialPermits<'a> {
    pub(super) fn new(inner: &'a mut dyn Observer) -> Self {
        Self {
            inner,
            ids: Vec::new(),
        }
    }

    /// The permits that allowed a credential's use.
    pub(super) fn into_ids(self) -> Vec<String> {
        self.ids
    }
}

impl Observer for CredentialPermits<'_> {
    fn facts(&mut self, facts: &crate::policy::HttpRequestFacts<'_>) {
        self.inner.facts(facts);
    }
    fn credential_use(
        &mut self,
        name: &str,
        position: crate::credentials::binding::Position,
        decision: &Decision,
    ) {
        if decision.allowed {
            self.ids.extend(decision.policy_ids.iter().cloned());
        }
        self.inner.credential_use(name, position, decision);
    }
    fn mcp_item(&mut self, server: &str, item: ItemKind, name: &str, decision: &Decision) {
        self.inner.mcp_item(server, item, name, decision);
    }
}

/// Decides every `$CRED{}` handle and agent-supplied key of the request: what would be
/// substituted, or the refusal (its credential named in `named`, the trail's list). A token
/// credential whose use was allowed gets its access token (cached, or one grant through the
/// egress guard) and the request is decided again with it; the questions already asked are not
/// passed on to `observer` twice.
pub(super) async fn decide_credentials(
    fx: &dyn Effects,
    asking: &Asking<'_>,
    header: &RequestHeader,
    grant: &HttpGrant,
    named: &mut Vec<String>,
    observer: &mut dyn Observer,
) -> Result<Applied, Deny> {
    let body = grant.body.as_ref().map(|b| &b.0);
    let mut tokens = AccessTokens::default();
    let mut asked = 0;
    let refusal = loop {
        let mut replay = Replayed {
            inner: &mut *observer,
            skip: asked,
            seen: 0,
        };
        let decided = asking.credentials(header, body, grant.body_decoded, &tokens, &mut replay);
        asked = asked.max(replay.seen);
        match decided {
            Ok(mut applied) => {
                applied.tokens = tokens;
                return Ok(applied);
            }
            // Each token is obtained once: a second ask for one is a refusal, never a loop.
            Err(CredentialDeny::TokenNeeded(name)) if tokens.get(&name).is_none() => {
                match access_token(fx, asking, &name).await {
                    Ok(token) => tokens.insert(name, token),
                    Err(refusal) => break refusal,
                }
            }
            Err(refusal) => break refusal,
        }
    };
    *named = refusal.credential().map(String::from).into_iter().collect();
    Err(Deny::Credential(refusal))
}

/// The access token of the caller's token credential `name`.
async fn access_token(
    fx: &dyn Effects,
    asking: &Asking<'_>,
    name: &str,
) -> Result<SecretValue, CredentialDeny> {
    let (snapshot, tenant) = (asking.snapshot, asking.tenant);
    let cred = snapshot
        .credentials
        .get(&tenant.tenant, name)
        .ok_or_else(|| CredentialDeny::Unknown(name.to_string()))?;
    let Kind::Token(source) = &cred.kind else {
        return Err(CredentialDeny::Unknown(name.to_string()));
    };
    let exceptions = egress_exceptions(snapshot, &tenant.tenant);
    let timeout = snapshot.tenants.credential_settings.token_timeout;
    fx.access_token(tenant, cred, source, exceptions, timeout)
        .await
        .map_err(|why| CredentialDeny::Unavailable(name.to_string(), why.0))
}

/// Passes on the credential questions of a repeated decision that the earlier ones did not
/// ask (a decision is repeated with one more token; its first questions are the same).
struct Replayed<'a> {
    inner: &'a mut dyn Observer,
    skip: usize,
    seen: usize,
}

impl Observer for Replayed<'_> {
    fn facts(&mut self, facts: &crate::policy::HttpRequestFacts<'_>) {
        self.inner.facts(facts);
    }
    fn credential_use(
        &mut self,
        name: &str,
        position: crate::credentials::binding::Position,
        decision: &Decision,
    ) {
        self.seen += 1;
        if self.seen > self.skip {
            self.inner.credential_use(name, position, decision);
        }
    }
    fn mcp_item(&mut self, server: &str, item: ItemKind, name: &str, decision: &Decision) {
        self.inner.mcp_item(server, item, name, decision);
    }
}

/// Puts the decided substitutions into the request (counted, named in the trail).
pub(super) fn substitute(
    mut applied: Applied,
    grant: &mut HttpGrant,
    trail: &mut Trail,
    tenant: &TenantContext,
) {
    trail.credentials = applied.used.iter().map(|c| c.name.clone()).collect();
    if !applied.used.is_empty() {
        crate::metrics::METRICS
            .credential_substitutions
            .with_label_values(&[tenant.tenant.as_str()])
            .inc_by(applied.used.len() as u64);
    }
    if let Some(body) = applied.body.take() {
        grant.body = Some(BufferedBody(body));
    }
    grant.applied = Some(applied);
    trail.mark("credentials");
}

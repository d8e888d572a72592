//! What a response from a host can echo back to a tenant: every secret the tenant's credentials
//! bound to that host hold now (static values, a signing or token credential's secret parts, the
//! access tokens the token cache holds for them) and held lately (values rotated, rebound or
//! removed at a reload, and access tokens a refresh, a rotation or a removal replaced), compiled
//! once per tenant and host into the scrubber's [`Patterns`].
//!
//! An upstream that keeps what it is sent (a request log, a cache, a debug page) shows it to a
//! later request, which need not carry a secret itself: so a response is scrubbed of all of
//! them, and of a value for a while after the credential stopped using it (the upstream still
//! has it). How long and how many are bounded ([`RETIRED_FOR`], [`MAX_RETIRED_PER_CREDENTIAL`],
//! [`MAX_RETIRED_PER_TENANT`]): each retired value costs every scrubbed response a few patterns.
//!
//! Everything here is per tenant: a tenant's responses are scrubbed with its own secrets only,
//! so no handle name (nor the fact that a text is a secret) of another tenant is ever shown.
//!
//! The compiled set of a (tenant, host) is kept until what it was built from changes: the
//! configuration snapshot (a reload), the tenant's access tokens (a grant, a refresh, a dropped
//! token), the tenant's retired values (one added, or one lapsing). A request looks it up once;
//! the hot path is one map lookup and an `Arc` clone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::oauth::cache::TokenCache;
use super::scrub::{echoable, Patterns};
use super::secret::SecretValue;
use super::{Credential, CredentialSet};
use crate::ids::TenantId;

/// How long a retired value (a rotated, rebound or removed credential's secrets) is still looked
/// for in responses. A replaced access token is looked for until it expires, at most as long.
pub const RETIRED_FOR: Duration = Duration::from_secs(24 * 3600);

/// How often [`Echoes::sweep`] runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Most retired values kept per credential name (the oldest goes first). A token credential
/// rebound retires two (its stored secret and its token), so this keeps four rebinds' worth.
pub const MAX_RETIRED_PER_CREDENTIAL: usize = 8;

/// Most retired values kept per tenant (the oldest goes first).
pub const MAX_RETIRED_PER_TENANT: usize = 32;

/// Most hosts whose compiled set is kept per tenant (a binding to `*.domain` matches hosts
/// without end); past it the tenant's sets are built again as they are asked for.
const MAX_HOSTS_PER_TENANT: usize = 256;

/// Stamps that mark a change: unique and increasing across the process, so a tenant's stamp
/// never comes back to a value a compiled set was built at. 0 is "never changed".
static STAMPS: AtomicU64 = AtomicU64::new(1);

/// A new change stamp (see [`STAMPS`]).
pub(crate) fn next_stamp() -> u64 {
    STAMPS.fetch_add(1, Ordering::AcqRel)
}

/// One retired value: a credential's secrets as they were (`token` none), or an access token
/// minted from it. The credential says which hosts could have been sent it.
struct Entry {
    cred: Arc<Credential>,
    token: Option<SecretValue>,
    until: Instant,
}

#[derive(Default)]
struct TenantRetired {
    entries: VecDeque<Entry>,
    stamp: u64,
}

/// Values the tenants' credentials held lately, per tenant. `Debug` shows counts only.
#[derive(Default)]
pub struct Retired {
    tenants: DashMap<TenantId, TenantRetired>,
}

impl std::fmt::Debug for Retired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retired")
            .field("tenants", &self.tenants.len())
            .finish()
    }
}

impl Retired {
    /// `cred`'s secrets as they were, looked for until [`RETIRED_FOR`] from `now`.
    pub fn credential(&self, cred: Arc<Credential>, now: Instant) {
        let until = now.checked_add(RETIRED_FOR).unwrap_or(now);
        self.push(
            Entry {
                cred,
                token: None,
                until,
            },
            now,
        );
    }

    /// An access token minted from `cred` that is no longer served, looked for until it
    /// `expires` (at most [`RETIRED_FOR`] from `now`): after that it opens nothing.
    pub fn token(&self, cred: Arc<Credential>, token: SecretValue, expires: Instant, now: Instant) {
        let until = expires.min(now.checked_add(RETIRED_FOR).unwrap_or(now));
        if until <= now {
            return;
        }
        self.push(
            Entry {
                cred,
                token: Some(token),
                until,
            },
            now,
        );
    }

    fn push(&self, entry: Entry, now: Instant) {
        let mut tenant = self.tenants.entry(entry.cred.tenant.clone()).or_default();
        let list = &mut tenant.entries;
        list.retain(|e| e.until > now);
        let name = &entry.cred.name;
        if list.iter().filter(|e| e.cred.name == *name).count() >= MAX_RETIRED_PER_CREDENTIAL {
            if let Some(oldest) = list.iter().position(|e| e.cred.name == *name) {
                list.remove(oldest);
            }
        }
        if list.len() >= MAX_RETIRED_PER_TENANT {
            list.pop_front();
        }
        list.push_back(entry);
        tenant.stamp = next_stamp();
    }

    /// Drops every value whose window has passed at `now`: its buffers are zeroized as its last
    /// reference goes. Without it a lapsed value stayed in memory until its tenant's next
    /// rotation, however long after.
    pub fn sweep(&self, now: Instant) {
        self.tenants.retain(|_, tenant| {
            let before = tenant.entries.len();
            tenant.entries.retain(|e| e.until > now);
            if tenant.entries.len() != before {
                tenant.stamp = next_stamp();
            }
            !tenant.entries.is_empty()
        });
    }

    /// When `tenant`'s retired values last changed (0: never).
    fn stamp(&self, tenant: &TenantId) -> u64 {
        self.tenants.get(tenant).map_or(0, |t| t.stamp)
    }

    /// `tenant`'s retired values whose credential was bound to `host`, still looked for at
    /// `now`, into `out` (name, value); returns when the first of them lapses.
    fn for_host(
        &self,
        tenant: &TenantId,
        host: &str,
        now: Instant,
        out: &mut Vec<(String, SecretValue)>,
    ) -> Option<Instant> {
        let retired = self.tenants.get(tenant)?;
        let mut lapses: Option<Instant> = None;
        for e in retired.entries.iter().filter(|e| e.until > now) {
            if !e.cred.bindings.iter().any(|b| b.matches_host(host)) {
                continue;
            }
            match &e.token {
                Some(token) => out.push((e.cred.name.clone(), token.clone())),
                None => out.extend(
                    echoable(&e.cred)
                        .into_iter()
                        .map(|v| (e.cred.name.clone(), SecretValue::new(v.to_vec()))),
                ),
            }
            lapses = Some(lapses.map_or(e.until, |l| l.min(e.until)));
        }
        lapses
    }

    /// Retires every credential of `old` that `new` no longer has as it was (removed, another
    /// value, kind or binding): an upstream it was sent to may still show it.
    pub fn changed(&self, old: &CredentialSet, new: &CredentialSet, now: Instant) {
        for c in old.iter() {
            let same = new.get(&c.tenant, &c.name).is_some_and(|n| {
                n.value.expose() == c.value.expose()
                    && n.bindings == c.bindings
                    && n.kind.name() == c.kind.name()
            });
            if !same {
                self.credential(c.clone(), now);
            }
        }
    }
}

/// A compiled set, and what it was built from.
struct Compiled {
    generation: u64,
    stamps: (u64, u64),
    /// When the first retired value in it lapses.
    lapses: Option<Instant>,
    patterns: Arc<Patterns>,
}

/// The compiled echo sets per tenant and host, and the retired values they include.
pub struct Echoes {
    retired: Arc<Retired>,
    sets: DashMap<TenantId, HashMap<Box<str>, Compiled>>,
}

impl std::fmt::Debug for Echoes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echoes")
            .field("retired", &self.retired)
            .field("tenants", &self.sets.len())
            .finish()
    }
}

impl Echoes {
    /// Echo sets that include the values retired into `retired` (the token cache retires into
    /// the same).
    pub fn new(retired: Arc<Retired>) -> Self {
        Self {
            retired,
            sets: DashMap::new(),
        }
    }

    /// Where retired values go.
    pub fn retired(&self) -> &Arc<Retired> {
        &self.retired
    }

    /// Drops what is no longer looked for at `now`: retired values past their window, and the
    /// compiled sets holding one (built again, without it, when next asked for). Called every
    /// [`SWEEP_EVERY`], so that a rotated-out secret leaves memory at most that long after its
    /// window, whether or not its hosts are asked for again.
    pub fn sweep(&self, now: Instant) {
        self.retired.sweep(now);
        self.sets.retain(|_, sets| {
            sets.retain(|_, c| c.lapses.is_none_or(|l| now < l));
            !sets.is_empty()
        });
    }

    /// What a response from `host` to `tenant` is scrubbed of, under the snapshot whose
    /// credentials are `set` (its `generation`): `None` when there is nothing (no credential of
    /// the tenant is, or lately was, bound to `host`).
    pub fn for_host(
        &self,
        set: &CredentialSet,
        generation: u64,
        tokens: &TokenCache,
        tenant: &TenantId,
        host: &str,
    ) -> Option<Arc<Patterns>> {
        let now = Instant::now();
        // Read before what they stamp, so a change while building is seen at the next ask.
        let stamps = (self.retired.stamp(tenant), tokens.stamp(tenant));
        if let Some(sets) = self.sets.get(tenant) {
            if let Some(c) = sets.get(host) {
                if c.generation == generation
                    && c.stamps == stamps
                    && c.lapses.is_none_or(|l| now < l)
                {
                    return Some(c.patterns.clone());
                }
            }
        }
        let mut named: Vec<(String, SecretValue)> = Vec::new();
        for c in set.bound_to_host(tenant, host) {
            named.extend(
                echoable(&c)
                    .into_iter()
                    .map(|v| (c.name.clone(), SecretValue::new(v.to_vec()))),
            );
            if matches!(c.kind, super::kind::Kind::Token(_)) {
                if let Some(token) = tokens.current(tenant, &c.name) {
                    named.push((c.name.clone(), token));
                }
            }
        }
        let lapses = self.retired.for_host(tenant, host, now, &mut named);
        if named.is_empty() {
            return None;
        }
        let patterns = Arc::new(Patterns::compile(
            named.iter().map(|(n, v)| (n.as_str(), v.expose())),
        ));
        let mut sets = self.sets.entry(tenant.clone()).or_default();
        if sets.len() >= MAX_HOSTS_PER_TENANT && !sets.contains_key(host) {
            sets.clear();
        }
        sets.insert(
            host.into(),
            Compiled {
                generation,
                stamps,
                lapses,
                patterns: patterns.clone(),
            },
        );
        Some(patterns)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::credentials::binding::{Binding, Position};
    use crate::credentials::kind::Kind;
    use crate::credentials::oauth::AccessToken;
    use crate::credentials::scrub::Scrubber;
    use bytes::Bytes;
    use std::collections::HashMap as Map;

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn cred(tenant: &str, name: &str, host: &str, value: &str, kind: Kind) -> Arc<Credential> {
        Arc::new(Credential {
            tenant: tid(tenant),
            name: name.into(),
            value: SecretValue::new(value.as_bytes().to_vec()),
            bindings: vec![Binding::host(host)],
            positions: vec![Position::Header],
            expires_at: None,
            kind,
        })
    }

    fn token_kind(secret: &str) -> Kind {
        let v = serde_json::json!({
            "token_url": "https://auth.example.com/t",
            "client_id": "c",
            "client_secret": secret,
        });
        Kind::parse(
            crate::credentials::kind::KindName::Oauth2ClientCredentials,
            &SecretValue::new(v.to_string().into_bytes()),
        )
        .unwrap()
    }

    fn set(creds: &[&Arc<Credential>]) -> CredentialSet {
        let mut by: Map<TenantId, Map<String, Arc<Credential>>> = Map::new();
        for c in creds {
            by.entry(c.tenant.clone())
                .or_default()
                .insert(c.name.clone(), (*c).clone());
        }
        let mut s = CredentialSet::default();
        for (t, c) in by {
            s.insert_tenant(t, c);
        }
        s
    }

    /// What `patterns` make of `text` (a whole body).
    fn scrubbed(patterns: &Option<Arc<Patterns>>, text: &str) -> String {
        let Some(p) = patterns else {
            return text.to_string();
        };
        let mut s = Scrubber::new(p.clone());
        let out = s.scrub_chunk(Some(Bytes::from(text.to_string())), true);
        String::from_utf8(out.unwrap_or_default().to_vec()).unwrap()
    }

    async fn grant(cache: &TokenCache, c: &Arc<Credential>, token: &str, secs: u64) {
        let token = token.to_string();
        cache
            .get(c, [7; 32], Duration::from_secs(5), || async move {
                Ok(AccessToken {
                    value: SecretValue::new(token.into_bytes()),
                    lifetime: Duration::from_secs(secs),
                })
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_host_is_scrubbed_of_its_current_tokens_and_every_value_it_lately_had() {
        let retired = Arc::new(Retired::default());
        let tokens = TokenCache::new(retired.clone());
        let echoes = Echoes::new(retired.clone());
        let acme = tid("acme");
        let tok = cred(
            "acme",
            "tok",
            "api.test",
            "",
            token_kind("cs-acme-secret-1"),
        );
        let key = cred("acme", "key", "api.test", "sk-acme-key-old-1", Kind::Static);
        let elsewhere = cred("acme", "far", "far.test", "sk-acme-far-1", Kind::Static);
        let first = set(&[&tok, &key, &elsewhere]);
        // Before any grant: the client secret and the static key; nothing of other hosts'.
        let p = echoes.for_host(&first, 1, &tokens, &acme, "api.test");
        assert_eq!(
            scrubbed(&p, "cs-acme-secret-1 sk-acme-key-old-1 sk-acme-far-1"),
            "$CRED{tok} $CRED{key} sk-acme-far-1"
        );
        // A grant: its token is in the set at the next ask (the same generation).
        grant(&tokens, &tok, "tok-acme-access-1", 3600).await;
        let p = echoes.for_host(&first, 1, &tokens, &acme, "api.test");
        assert_eq!(scrubbed(&p, "tok-acme-access-1"), "$CRED{tok}");
        // Asked again with nothing changed: the same compiled set.
        let again = echoes.for_host(&first, 1, &tokens, &acme, "api.test");
        assert!(Arc::ptr_eq(p.as_ref().unwrap(), again.as_ref().unwrap()));
        // A refresh: the new token, and the replaced one while it lives.
        let now = Instant::now();
        tokens.make_due(&acme, "tok");
        grant(&tokens, &tok, "tok-acme-access-2", 0).await;
        grant(&tokens, &tok, "tok-acme-access-3", 3600).await;
        let p = echoes.for_host(&first, 1, &tokens, &acme, "api.test");
        assert_eq!(
            scrubbed(&p, "tok-acme-access-1 tok-acme-access-3"),
            "$CRED{tok} $CRED{tok}"
        );
        // (A token that had expired when it was replaced opens nothing: not kept.)
        assert_eq!(scrubbed(&p, "tok-acme-access-2"), "tok-acme-access-2");
        // A reload that rotates `key` and removes `tok`: both old values are still looked for
        // at their host, though no credential there has them (or is there) any more.
        let rotated = cred("acme", "key", "api.test", "sk-acme-key-new-2", Kind::Static);
        let second = set(&[&rotated, &elsewhere]);
        retired.changed(&first, &second, now);
        tokens.keep_only(&second);
        let p = echoes.for_host(&second, 2, &tokens, &acme, "api.test");
        assert_eq!(
            scrubbed(
                &p,
                "sk-acme-key-old-1 sk-acme-key-new-2 cs-acme-secret-1 tok-acme-access-3 tok-acme-access-1"
            ),
            "$CRED{key} $CRED{key} $CRED{tok} $CRED{tok} $CRED{tok}"
        );
        // The host where only a removed credential was bound is still scrubbed of it.
        let gone = set(&[&elsewhere]);
        retired.changed(&second, &gone, now);
        let p = echoes.for_host(&gone, 3, &tokens, &acme, "api.test");
        assert_eq!(scrubbed(&p, "sk-acme-key-new-2"), "$CRED{key}");
        // A host none of the tenant's credentials ever was bound to has nothing to scrub.
        assert!(echoes
            .for_host(&gone, 3, &tokens, &acme, "other.test")
            .is_none());
    }

    /// A token credential bound elsewhere by a reload (its value unchanged): its live token was
    /// kept in its slot and looked for at the new host only, so the old host (which may have
    /// kept it) showed it to whoever asked. The rebind retires the token where it went, and the
    /// new host gets a token of its own.
    #[tokio::test]
    async fn a_rebound_token_is_still_looked_for_where_it_went() {
        let retired = Arc::new(Retired::default());
        let tokens = TokenCache::new(retired.clone());
        let echoes = Echoes::new(retired.clone());
        let acme = tid("acme");
        let at_api = cred(
            "acme",
            "tok",
            "api.test",
            "",
            token_kind("cs-acme-secret-1"),
        );
        let first = set(&[&at_api]);
        grant(&tokens, &at_api, "tok-acme-access-1", 3600).await;
        let at_other = cred(
            "acme",
            "tok",
            "other.test",
            "",
            token_kind("cs-acme-secret-1"),
        );
        let second = set(&[&at_other]);
        // The reload's two steps, as `SnapshotHandle::reload` takes them.
        retired.changed(&first, &second, Instant::now());
        tokens.keep_only(&second);
        let p = echoes.for_host(&second, 2, &tokens, &acme, "api.test");
        assert_eq!(
            scrubbed(&p, "tok-acme-access-1 cs-acme-secret-1"),
            "$CRED{tok} $CRED{tok}"
        );
        // The new host is served a token minted for it, never the one the old host saw.
        assert!(tokens.current(&acme, "tok").is_none());
        grant(&tokens, &at_other, "tok-acme-access-2", 3600).await;
        assert_eq!(
            tokens.current(&acme, "tok").map(|t| t.expose().to_vec()),
            Some(b"tok-acme-access-2".to_vec())
        );
        // A request still under the old binding gets its own slot back, and retires the other.
        grant(&tokens, &at_api, "tok-acme-access-3", 3600).await;
        let p = echoes.for_host(&second, 2, &tokens, &acme, "other.test");
        assert_eq!(scrubbed(&p, "tok-acme-access-2"), "$CRED{tok}");
    }

    /// A reload that rebinds, rotates or removes a token credential while a grant for it is on
    /// its way drops the slot (retired empty); the token the grant brings is still sent to the
    /// request that waited, so it is looked for where it went all the same.
    #[tokio::test]
    async fn a_token_granted_while_a_reload_drops_its_credential_is_still_looked_for() {
        let retired = Arc::new(Retired::default());
        let tokens = Arc::new(TokenCache::new(retired.clone()));
        let echoes = Echoes::new(retired.clone());
        let acme = tid("acme");
        let tok = cred(
            "acme",
            "tok",
            "api.test",
            "",
            token_kind("cs-acme-secret-1"),
        );
        let first = set(&[&tok]);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let granting = {
            let (tokens, tok) = (tokens.clone(), tok.clone());
            tokio::spawn(async move {
                tokens
                    .get(&tok, [7; 32], Duration::from_secs(5), || async move {
                        let _ = wait.await;
                        Ok(AccessToken {
                            value: SecretValue::new(b"tok-acme-midgrant-1".to_vec()),
                            lifetime: Duration::from_secs(3600),
                        })
                    })
                    .await
                    .unwrap()
            })
        };
        tokio::task::yield_now().await;
        let second = set(&[]);
        retired.changed(&first, &second, Instant::now());
        tokens.keep_only(&second);
        release.send(()).unwrap();
        let sent = granting.await.unwrap();
        assert_eq!(sent.expose(), b"tok-acme-midgrant-1");
        let p = echoes.for_host(&second, 2, &tokens, &acme, "api.test");
        assert_eq!(scrubbed(&p, "tok-acme-midgrant-1"), "$CRED{tok}");
    }

    #[tokio::test]
    async fn each_tenant_is_scrubbed_of_its_own_secrets_only() {
        let retired = Arc::new(Retired::default());
        let tokens = TokenCache::new(retired.clone());
        let echoes = Echoes::new(retired.clone());
        let acme = cred("acme", "k", "api.test", "sk-acme-canary-1", Kind::Static);
        let globex = cred(
            "globex",
            "k",
            "api.test",
            "sk-globex-canary-1",
            Kind::Static,
        );
        let gtok = cred(
            "globex",
            "t",
            "api.test",
            "",
            token_kind("cs-globex-secret"),
        );
        let both = set(&[&acme, &globex, &gtok]);
        grant(&tokens, &gtok, "tok-globex-access-1", 3600).await;
        // globex rotates its key: its old value is retired, for globex.
        let rotated = cred(
            "globex",
            "k",
            "api.test",
            "sk-globex-canary-2",
            Kind::Static,
        );
        let next = set(&[&acme, &rotated, &gtok]);
        retired.changed(&both, &next, Instant::now());
        let text = "sk-acme-canary-1 sk-globex-canary-1 sk-globex-canary-2 tok-globex-access-1 cs-globex-secret";
        let for_acme = echoes.for_host(&next, 2, &tokens, &tid("acme"), "api.test");
        assert_eq!(
            scrubbed(&for_acme, text),
            "$CRED{k} sk-globex-canary-1 sk-globex-canary-2 tok-globex-access-1 cs-globex-secret"
        );
        let for_globex = echoes.for_host(&next, 2, &tokens, &tid("globex"), "api.test");
        assert_eq!(
            scrubbed(&for_globex, text),
            "sk-acme-canary-1 $CRED{k} $CRED{k} $CRED{t} $CRED{t}"
        );
    }

    /// A value past its window is dropped by the sweep (its last reference gone, so zeroized),
    /// with the compiled set holding it, though no response from its hosts asked again.
    #[test]
    fn the_sweep_drops_what_is_no_longer_looked_for() {
        let echoes = Echoes::new(Arc::new(Retired::default()));
        let acme = tid("acme");
        let now = Instant::now();
        let old = cred("acme", "k", "api.test", "sk-acme-old-value", Kind::Static);
        echoes.retired().credential(old.clone(), now);
        let set = CredentialSet::default();
        let tokens = TokenCache::default();
        assert!(echoes
            .for_host(&set, 1, &tokens, &acme, "api.test")
            .is_some());
        assert_eq!(Arc::strong_count(&old), 2, "kept while looked for");
        echoes.sweep(now + Duration::from_secs(60));
        assert_eq!(Arc::strong_count(&old), 2, "still in its window");
        echoes.sweep(now + RETIRED_FOR + Duration::from_secs(1));
        assert_eq!(Arc::strong_count(&old), 1, "dropped once its window passed");
        assert_eq!(echoes.retired().stamp(&acme), 0);
        assert!(echoes.sets.is_empty(), "no compiled set holds it");
    }

    #[test]
    fn retired_values_are_bounded_in_time_and_number() {
        let retired = Retired::default();
        let acme = tid("acme");
        let now = Instant::now();
        // Per credential: the last few values.
        for i in 0..MAX_RETIRED_PER_CREDENTIAL + 2 {
            let c = cred(
                "acme",
                "k",
                "api.test",
                &format!("sk-acme-value-{i:02}"),
                Kind::Static,
            );
            retired.credential(c, now);
        }
        let mut out = Vec::new();
        retired.for_host(&acme, "api.test", now, &mut out);
        let values: Vec<String> = out
            .iter()
            .map(|(_, v)| String::from_utf8(v.expose().to_vec()).unwrap())
            .collect();
        assert_eq!(values.len(), MAX_RETIRED_PER_CREDENTIAL);
        assert_eq!(values[0], "sk-acme-value-02");
        // Per tenant: the last ones of all its credentials.
        for i in 0..MAX_RETIRED_PER_TENANT + 5 {
            let c = cred(
                "acme",
                &format!("k{i}"),
                "api.test",
                &format!("sk-{i:04}-value"),
                Kind::Static,
            );
            retired.credential(c, now);
        }
        let mut out = Vec::new();
        retired.for_host(&acme, "api.test", now, &mut out);
        assert_eq!(out.len(), MAX_RETIRED_PER_TENANT);
        // In time: none is looked for past its window; a token past its expiry is not kept.
        let later = now + RETIRED_FOR + Duration::from_secs(1);
        let mut out = Vec::new();
        assert!(retired
            .for_host(&acme, "api.test", later, &mut out)
            .is_none());
        assert!(out.is_empty());
        let t = cred("acme", "t", "api.test", "", token_kind("cs-x-secret"));
        let other = Retired::default();
        other.token(
            t.clone(),
            SecretValue::new(b"tok-expired".to_vec()),
            now,
            now,
        );
        assert_eq!(other.stamp(&acme), 0);
        other.token(
            t,
            SecretValue::new(b"tok-live".to_vec()),
            now + Duration::from_secs(60),
            now,
        );
        let mut out = Vec::new();
        let lapses = other.for_host(&acme, "api.test", now, &mut out);
        assert_eq!(lapses, Some(now + Duration::from_secs(60)));
        assert_eq!(out.len(), 1);
    }
}

//! Access tokens per tenant and credential: served from memory until shortly before they
//! expire, then refreshed by exactly one grant however many requests wait for it.
//!
//! Each (tenant, credential) has its own slot: a fresh token is read without waiting; a refresh
//! holds only that slot's lock, so one tenant's slow or failing token endpoint delays nobody
//! else. Every grant (and every wait for one) is bounded by a timeout. Requests that queued
//! behind a grant that failed share its failure instead of each trying again in turn.
//!
//! A slot remembers the fingerprint of the stored value its token was minted from: after a
//! rotation the next request finds another fingerprint, and the slot (with the old value's
//! token) is replaced, so a token derived from a rotated secret is never served.
//!
//! A token no longer served (replaced by a refresh, or dropped with its slot) may still be in an
//! upstream's request log: it is handed to [`Retired`] until it expires, so responses from its
//! credential's hosts are still scrubbed of it (see [`crate::credentials::echoes`]). Every change
//! of a tenant's tokens moves its stamp, so the compiled echo sets that hold them are rebuilt.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::AccessToken;
use crate::credentials::echoes::{next_stamp, Retired};
use crate::credentials::kind::Kind;
use crate::credentials::secret::SecretValue;
use crate::credentials::{Credential, CredentialSet};
use crate::ids::TenantId;
use crate::metrics::METRICS;

/// How long before its expiry a token is refreshed: a quarter of its lifetime, at most a minute
/// (so a token is never sent upstream in its last seconds).
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 4).min(Duration::from_secs(60))
}

struct Cached {
    value: SecretValue,
    refresh_at: Instant,
    /// When the endpoint said it expires (bounded, see [`super::MAX_LIFETIME`]).
    expires: Instant,
}

/// What the last grant left behind (held by the one request granting).
#[derive(Default)]
struct State {
    /// The last grant's failure, if the last grant failed.
    failure: Option<String>,
}

struct Slot {
    /// The credential its tokens are minted for (its bindings say where they go).
    cred: Arc<Credential>,
    fingerprint: [u8; 32],
    current: Mutex<Option<Arc<Cached>>>,
    /// Incremented (under `refresh`) by every finished grant, success or failure.
    generation: AtomicU64,
    refresh: tokio::sync::Mutex<State>,
}

impl Slot {
    fn new(cred: Arc<Credential>, fingerprint: [u8; 32]) -> Self {
        Self {
            cred,
            fingerprint,
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(State::default()),
        }
    }

    fn fresh(&self, now: Instant) -> Option<SecretValue> {
        let current = self.current.lock().ok()?;
        current
            .as_ref()
            .filter(|c| now < c.refresh_at)
            .map(|c| c.value.clone())
    }

    /// Whether this slot's tokens are the ones `cred` (its stored value `fingerprint`) is
    /// served: minted from that value, for those bindings.
    fn serves(&self, cred: &Credential, fingerprint: [u8; 32]) -> bool {
        self.fingerprint == fingerprint && self.cred.bindings == cred.bindings
    }

    /// The token, fresh or not (what an upstream may have been sent last).
    fn token(&self) -> Option<SecretValue> {
        let current = self.current.lock().ok()?;
        current.as_ref().map(|c| c.value.clone())
    }
}

/// The process's access tokens, by tenant and credential name. `Debug` shows the number of
/// slots only.
pub struct TokenCache {
    slots: DashMap<(TenantId, String), Arc<Slot>>,
    /// Where tokens no longer served go.
    retired: Arc<Retired>,
    /// When each tenant's tokens last changed (absent: never).
    stamps: DashMap<TenantId, u64>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(Arc::new(Retired::default()))
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// Why no token could be had (never carries a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenUnavailable(pub String);

impl TokenCache {
    /// An empty cache whose tokens, once no longer served, go to `retired`.
    pub fn new(retired: Arc<Retired>) -> Self {
        Self {
            slots: DashMap::new(),
            retired,
            stamps: DashMap::new(),
        }
    }

    /// When `tenant`'s tokens last changed (0: never): a compiled echo set built at another
    /// stamp is out of date.
    pub fn stamp(&self, tenant: &TenantId) -> u64 {
        self.stamps.get(tenant).map_or(0, |s| *s)
    }

    /// The token of `tenant`'s credential `name` last obtained (fresh or not), if any.
    pub fn current(&self, tenant: &TenantId, name: &str) -> Option<SecretValue> {
        self.slots
            .get(&(tenant.clone(), name.to_string()))
            .and_then(|slot| slot.token())
    }

    fn touched(&self, tenant: &TenantId) {
        self.stamps.insert(tenant.clone(), next_stamp());
    }

    /// Hands a slot's token, no longer served, to the retired values until it expires.
    fn retire(&self, slot: &Slot) {
        let taken = slot.current.lock().ok().and_then(|mut c| c.take());
        if let Some(old) = taken {
            let now = Instant::now();
            self.retired
                .token(slot.cred.clone(), old.value.clone(), old.expires, now);
        }
        self.touched(&slot.cred.tenant);
    }

    /// The slot of `cred`, replaced when the stored value changed (`fingerprint`) or the
    /// credential was bound elsewhere.
    fn slot(&self, cred: &Arc<Credential>, fingerprint: [u8; 32]) -> Arc<Slot> {
        let key = (cred.tenant.clone(), cred.name.clone());
        let serves = |slot: &Slot| slot.serves(cred, fingerprint);
        if let Some(slot) = self.slots.get(&key) {
            if serves(&slot) {
                return slot.clone();
            }
        }
        // SECURITY: a rotated or rebound value's slot starts empty; the old token is never
        // served again, and is looked for in the responses of the hosts it was bound to (which
        // may have kept it) until it expires. A rebound token kept in its slot was looked for
        // at the new hosts only, and the old ones showed it to whoever asked.
        let mut entry = self
            .slots
            .entry(key)
            .or_insert_with(|| Arc::new(Slot::new(cred.clone(), fingerprint)));
        if !serves(&entry) {
            let old =
                std::mem::replace(&mut *entry, Arc::new(Slot::new(cred.clone(), fingerprint)));
            self.retire(&old);
        }
        entry.clone()
    }

    /// Keeps only the slots a credential of `set` is still served by (the same stored value, the
    /// same bindings), so a deleted, rotated or rebound credential's tokens are not served after
    /// the reload that changed it (and are looked for where they went).
    pub fn keep_only(&self, set: &CredentialSet) {
        self.retain(|slot| {
            set.get(&slot.cred.tenant, &slot.cred.name)
                .is_some_and(|c| match &c.kind {
                    Kind::Token(t) => slot.serves(c, t.fingerprint()),
                    _ => false,
                })
        });
    }

    /// Drops (and retires) the slots `keep` refuses.
    fn retain(&self, keep: impl Fn(&Slot) -> bool) {
        self.slots.retain(|_, slot| {
            let kept = keep(slot);
            if !kept {
                self.retire(slot);
            }
            kept
        });
    }

    /// The token of `cred` (stored value `fingerprint`): the cached one while fresh, else one
    /// grant (`grant`), bounded by `timeout`, shared by every request waiting.
    pub async fn get<F, Fut>(
        &self,
        cred: &Arc<Credential>,
        fingerprint: [u8; 32],
        timeout: Duration,
        grant: F,
    ) -> Result<SecretValue, TokenUnavailable>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, String>>,
    {
        let tenant = &cred.tenant;
        let slot = self.slot(cred, fingerprint);
        if let Some(token) = slot.fresh(Instant::now()) {
            return Ok(token);
        }
        let seen = slot.generation.load(Ordering::Acquire);
        let mut state = match tokio::time::timeout(timeout, slot.refresh.lock()).await {
            Ok(state) => state,
            Err(_) => {
                return Err(TokenUnavailable(
                    "a grant for it is still waiting on the token endpoint".into(),
                ))
            }
        };
        // Another request refreshed it while this one waited.
        if let Some(token) = slot.fresh(Instant::now()) {
            return Ok(token);
        }
        // A grant finished (and failed) while this one waited: share its answer rather than
        // queue one more grant per waiting request.
        if let Some(failure) = &state.failure {
            if slot.generation.load(Ordering::Acquire) != seen {
                return Err(TokenUnavailable(failure.clone()));
            }
        }
        let outcome = tokio::time::timeout(timeout, grant()).await;
        slot.generation.fetch_add(1, Ordering::AcqRel);
        let label = [tenant.as_str(), "ok"];
        match outcome {
            Ok(Ok(token)) => {
                state.failure = None;
                METRICS
                    .credential_token_grants
                    .with_label_values(&label)
                    .inc();
                let now = Instant::now();
                // SECURITY: a lifetime is the token endpoint's number; however a grant read it,
                // the expiry is bounded before it is added to the clock (never a panic).
                let lifetime = token.lifetime.min(super::MAX_LIFETIME);
                let refresh_at = now
                    .checked_add(lifetime.saturating_sub(refresh_margin(lifetime)))
                    .unwrap_or(now);
                let cached = Arc::new(Cached {
                    value: token.value,
                    refresh_at,
                    expires: now.checked_add(lifetime).unwrap_or(now),
                });
                let (value, expires) = (cached.value.clone(), cached.expires);
                let replaced = slot
                    .current
                    .lock()
                    .ok()
                    .and_then(|mut current| current.replace(cached));
                // The token it replaces may still be in an upstream's log: looked for in
                // responses until it expires.
                if let Some(old) = replaced.filter(|old| old.value.expose() != value.expose()) {
                    self.retired
                        .token(slot.cred.clone(), old.value.clone(), old.expires, now);
                }
                // SECURITY: a reload that rebound, rotated or removed the credential during the
                // grant dropped this slot (retiring it empty): the token this request is about
                // to send is looked for where it goes all the same, as a retired one.
                let key = (tenant.clone(), cred.name.clone());
                if !self
                    .slots
                    .get(&key)
                    .is_some_and(|held| Arc::ptr_eq(&held, &slot))
                {
                    self.retired
                        .token(slot.cred.clone(), value.clone(), expires, now);
                }
                self.touched(tenant);
                Ok(value)
            }
            Ok(Err(why)) => self.failed(&mut state, tenant, why),
            Err(_) => self.failed(
                &mut state,
                tenant,
                format!("the token endpoint did not answer within {timeout:?}"),
            ),
        }
    }

    fn failed(
        &self,
        state: &mut State,
        tenant: &TenantId,
        why: String,
    ) -> Result<SecretValue, TokenUnavailable> {
        METRICS
            .credential_token_grants
            .with_label_values(&[tenant.as_str(), "failed"])
            .inc();
        state.failure = Some(why.clone());
        Err(TokenUnavailable(why))
    }

    /// Makes `tenant`'s token of `name` due for refresh (tests: a refresh without waiting).
    #[cfg(test)]
    pub(crate) fn make_due(&self, tenant: &TenantId, name: &str) {
        if let Some(slot) = self.slots.get(&(tenant.clone(), name.to_string())) {
            if let Ok(mut current) = slot.current.lock() {
                if let Some(c) = current.take() {
                    *current = Some(Arc::new(Cached {
                        value: c.value.clone(),
                        refresh_at: Instant::now(),
                        expires: c.expires,
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).expect("tenant id")
    }

    /// Credential `g` of `tenant` (the cache reads its tenant, name and bindings).
    fn cred(tenant: &str) -> Arc<Credential> {
        Arc::new(Credential {
            tenant: tid(tenant),
            name: "g".into(),
            value: SecretValue::new(b"{}".to_vec()),
            bindings: vec![crate::credentials::binding::Binding::host("api.test")],
            positions: vec![],
            expires_at: None,
            kind: crate::credentials::kind::Kind::Static,
        })
    }

    fn token(v: &str, secs: u64) -> AccessToken {
        AccessToken {
            value: SecretValue::new(v.as_bytes().to_vec()),
            lifetime: Duration::from_secs(secs),
        }
    }

    /// `waiters` concurrent requests for acme's credential `g` whose grant (50 ms long) ends
    /// with `outcome` (a token with an hour to live, or that failure): what each got, and how
    /// many grants were made.
    async fn concurrent_gets(
        cache: &Arc<TokenCache>,
        waiters: usize,
        outcome: Result<&'static str, &'static str>,
    ) -> (Vec<Result<SecretValue, TokenUnavailable>>, usize) {
        let grants = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..waiters {
            let (cache, grants) = (cache.clone(), grants.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&cred("acme"), [1; 32], Duration::from_secs(5), || async {
                        grants.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        outcome.map(|v| token(v, 3600)).map_err(String::from)
                    })
                    .await
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.expect("task"));
        }
        (got, grants.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn one_grant_for_many_waiters_and_per_tenant_slots() {
        let cache = Arc::new(TokenCache::default());
        let (got, grants) = concurrent_gets(&cache, 50, Ok("tok-acme")).await;
        for t in got {
            assert_eq!(t.expect("token").expose(), b"tok-acme");
        }
        assert_eq!(grants, 1);
        // Another tenant's credential of the same name has its own grant and token.
        let other = cache
            .get(&cred("globex"), [1; 32], Duration::from_secs(5), || async {
                Ok(token("tok-globex", 3600))
            })
            .await
            .expect("token");
        assert_eq!(other.expose(), b"tok-globex");
    }

    #[tokio::test]
    async fn rotation_drops_the_old_token_and_expiry_refreshes() {
        let cache = TokenCache::default();
        let t = Duration::from_secs(5);
        let a = cache
            .get(&cred("acme"), [1; 32], t, || async {
                Ok(token("old", 3600))
            })
            .await
            .expect("token");
        assert_eq!(a.expose(), b"old");
        let b = cache
            .get(&cred("acme"), [2; 32], t, || async { Ok(token("new", 0)) })
            .await
            .expect("token");
        assert_eq!(
            b.expose(),
            b"new",
            "a rotated value never serves the old token"
        );
        // A zero-lifetime token is never served from the cache.
        let c = cache
            .get(&cred("acme"), [2; 32], t, || async {
                Ok(token("newer", 3600))
            })
            .await
            .expect("token");
        assert_eq!(c.expose(), b"newer");
        cache.retain(|slot| slot.fingerprint == [9; 32]);
        assert_eq!(cache.slots.len(), 0);
    }

    #[tokio::test]
    async fn a_token_of_any_lifetime_is_cached_without_overflowing_the_clock() {
        // A grant that did not bound its lifetime (the endpoint's `2^64-1` seconds): served,
        // cached for at most a day, never a panic.
        let cache = TokenCache::default();
        let t = Duration::from_secs(5);
        let huge = || async {
            Ok(AccessToken {
                value: SecretValue::new(b"forever".to_vec()),
                lifetime: Duration::from_secs(u64::MAX),
            })
        };
        let got = cache.get(&cred("acme"), [1; 32], t, huge).await;
        assert_eq!(got.expect("token").expose(), b"forever");
        let again = cache
            .get(&cred("acme"), [1; 32], t, || async {
                Err("no second grant while the first is fresh".to_string())
            })
            .await;
        assert_eq!(again.expect("cached").expose(), b"forever");
    }

    #[tokio::test]
    async fn requests_that_waited_on_a_failed_grant_share_its_failure() {
        let cache = Arc::new(TokenCache::default());
        let (got, grants) =
            concurrent_gets(&cache, 20, Err("the token endpoint answered 503")).await;
        for t in got {
            let err = t.expect_err("refused");
            assert_eq!(err.0, "the token endpoint answered 503");
        }
        assert_eq!(grants, 1, "one grant, one shared failure");
        // The next request tries again.
        let ok = cache
            .get(&cred("acme"), [1; 32], Duration::from_secs(5), || async {
                Ok(token("back", 3600))
            })
            .await
            .expect("token");
        assert_eq!(ok.expose(), b"back");
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_reported_without_blocking_others() {
        let cache = Arc::new(TokenCache::default());
        let t = Duration::from_millis(100);
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get(&cred("acme"), [1; 32], t, || async {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Ok(token("late", 3600))
                    })
                    .await
            })
        };
        // While acme's grant hangs, globex's is served.
        let other = cache
            .get(&cred("globex"), [1; 32], t, || async {
                Ok(token("g", 3600))
            })
            .await
            .expect("globex unaffected");
        assert_eq!(other.expose(), b"g");
        let err = slow.await.expect("task").expect_err("timed out");
        assert!(err.0.contains("did not answer"), "{err}");
        let err = cache
            .get(&cred("acme"), [1; 32], t, || async {
                Err("the token endpoint answered 401".to_string())
            })
            .await
            .expect_err("refused");
        assert_eq!(err.0, "the token endpoint answered 401");
    }
}

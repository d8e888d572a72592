//! A per-tenant cache of Cedar decisions.
//!
//! Agents ask the same question thousands of times (same workload, host, method, path, model),
//! and Cedar's answer depends on nothing but the question and the tenant's compiled policies and
//! entities. So each tenant's entry in a [`super::PolicyEngine`] may keep a bounded cache of the
//! answers its policies gave:
//!
//! - the key is the whole question ([`Asked`]): the workload, the action (by the variant of
//!   [`Question`] and the item or connect question it carries) and every field of the facts
//!   struct, normalized host included. The key types are the facts structs themselves, with
//!   derived `Hash` and `Eq`, and the owned copies are built by exhaustive destructuring, so a
//!   new context field is part of the key or does not compile. The engine also builds the Cedar
//!   request from the key itself, so what is evaluated is what is keyed;
//! - the tenant is not in the key because the cache lives in the tenant's own compiled entry:
//!   one tenant's answers are never looked up for another, and one tenant filling its cache
//!   with distinct paths evicts only its own entries;
//! - a reload builds a new engine, and with it new, empty caches;
//! - only clean answers are kept: a decision with an evaluation error is asked again every
//!   time (it denies anyway).
//!
//! The cache is sharded (quick_cache): no global lock on the hot path, and a hit hashes and
//! compares the borrowed question, allocating nothing for the key.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use prometheus::IntCounter;
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, Equivalent, OptionsBuilder, UnitWeighter};

use super::{
    ConnectFacts, ConnectQuestion, CredentialFacts, Decision, HttpRequestFacts, ItemKind, McpFacts,
};
use crate::ids::TenantId;
use crate::metrics::METRICS;

/// Decisions kept per tenant unless `[policy] decision_cache_entries` says otherwise.
pub const DEFAULT_ENTRIES: usize = 4096;

/// One question as the engine is asked it, borrowed from the caller's facts (with the host
/// already normalized). Hashed and compared field by field: it is the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Question<'a> {
    /// Action `http`.
    Http(HttpRequestFacts<'a>),
    /// Action `use_credential`.
    Credential {
        name: &'a str,
        position: &'a str,
        http: HttpRequestFacts<'a>,
    },
    /// Action `connect` or `connect_opaque`.
    Connect(ConnectQuestion, ConnectFacts<'a>),
    /// Action `mcp_tool_call`, `mcp_resource` or `mcp_prompt` (by `item`).
    Mcp {
        server: &'a str,
        item: ItemKind,
        name: &'a str,
        http: HttpRequestFacts<'a>,
    },
}

impl<'a> Question<'a> {
    /// The `use_credential` question; every field of `facts` is taken (no `..`: a new field
    /// must be added here, and so to the key).
    pub(super) fn credential(facts: &CredentialFacts<'a>, http: HttpRequestFacts<'a>) -> Self {
        let CredentialFacts {
            name,
            position,
            http: _,
        } = *facts;
        Question::Credential {
            name,
            position,
            http,
        }
    }

    /// An MCP question; every field of `facts` is taken.
    pub(super) fn mcp(facts: &McpFacts<'a>, http: HttpRequestFacts<'a>) -> Self {
        let McpFacts {
            server,
            item,
            name,
            http: _,
        } = *facts;
        Question::Mcp {
            server,
            item,
            name,
            http,
        }
    }
}

/// The most bytes of text (host, path, model, scopes, names, …) a question may have to be kept.
pub(super) const MAX_KEPT_QUESTION_BYTES: usize = 1024;

/// A question of one workload: what the cache is looked up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Asked<'a> {
    /// The workload's id (the principal; the tenant is the cache's own).
    pub(super) workload: &'a str,
    /// The action, the resource and the context.
    pub(super) question: Question<'a>,
}

impl Asked<'_> {
    /// The bytes of text an owned copy of it holds (what it costs to keep, besides a fixed
    /// size).
    fn text_bytes(&self) -> usize {
        fn opt(s: Option<&str>) -> usize {
            s.map_or(0, str::len)
        }
        fn http(f: &HttpRequestFacts<'_>) -> usize {
            let HttpRequestFacts {
                scheme,
                host,
                port: _,
                method,
                path,
                model,
                provider,
                run_signed: _,
                scopes,
                route,
                destination_region,
                hour: _,
                weekday,
            } = *f;
            scheme.len()
                + host.len()
                + method.len()
                + path.len()
                + opt(model)
                + opt(provider)
                + scopes.iter().map(String::len).sum::<usize>()
                + opt(route)
                + opt(destination_region)
                + weekday.len()
        }
        let question = match &self.question {
            Question::Http(f) => http(f),
            Question::Credential {
                name,
                position,
                http: f,
            } => name.len() + position.len() + http(f),
            Question::Connect(_, f) => {
                let ConnectFacts {
                    host,
                    port: _,
                    run_signed: _,
                    scopes,
                    destination_region,
                    hour: _,
                    weekday,
                } = *f;
                host.len()
                    + scopes.iter().map(String::len).sum::<usize>()
                    + opt(destination_region)
                    + weekday.len()
            }
            Question::Mcp {
                server,
                item: _,
                name,
                http: f,
            } => server.len() + name.len() + http(f),
        };
        self.workload.len() + question
    }
}

/// [`Asked`] owned: what an entry is stored under. It hashes and compares through
/// [`Self::borrowed`], so an owned key and the borrowed question it was made from are equal
/// and hash alike.
#[derive(Debug)]
pub(super) struct DecisionKey {
    workload: Box<str>,
    question: OwnedQuestion,
}

#[derive(Debug)]
enum OwnedQuestion {
    Http(OwnedHttp),
    Credential {
        name: Box<str>,
        position: Box<str>,
        http: OwnedHttp,
    },
    Connect(ConnectQuestion, OwnedConnect),
    Mcp {
        server: Box<str>,
        item: ItemKind,
        name: Box<str>,
        http: OwnedHttp,
    },
}

/// [`HttpRequestFacts`] owned.
#[derive(Debug)]
struct OwnedHttp {
    scheme: Box<str>,
    host: Box<str>,
    port: u16,
    method: Box<str>,
    path: Box<str>,
    model: Option<Box<str>>,
    provider: Option<Box<str>>,
    run_signed: bool,
    scopes: Box<[String]>,
    route: Option<Box<str>>,
    destination_region: Option<Box<str>>,
    hour: u8,
    weekday: Box<str>,
}

/// [`ConnectFacts`] owned.
#[derive(Debug)]
struct OwnedConnect {
    host: Box<str>,
    port: u16,
    run_signed: bool,
    scopes: Box<[String]>,
    destination_region: Option<Box<str>>,
    hour: u8,
    weekday: Box<str>,
}

impl OwnedHttp {
    fn new(facts: &HttpRequestFacts<'_>) -> Self {
        // No `..`: a field added to the facts must be added here.
        let HttpRequestFacts {
            scheme,
            host,
            port,
            method,
            path,
            model,
            provider,
            run_signed,
            scopes,
            route,
            destination_region,
            hour,
            weekday,
        } = *facts;
        Self {
            scheme: scheme.into(),
            host: host.into(),
            port,
            method: method.into(),
            path: path.into(),
            model: model.map(Into::into),
            provider: provider.map(Into::into),
            run_signed,
            scopes: scopes.into(),
            route: route.map(Into::into),
            destination_region: destination_region.map(Into::into),
            hour,
            weekday: weekday.into(),
        }
    }

    fn borrowed(&self) -> HttpRequestFacts<'_> {
        HttpRequestFacts {
            scheme: &self.scheme,
            host: &self.host,
            port: self.port,
            method: &self.method,
            path: &self.path,
            model: self.model.as_deref(),
            provider: self.provider.as_deref(),
            run_signed: self.run_signed,
            scopes: &self.scopes,
            route: self.route.as_deref(),
            destination_region: self.destination_region.as_deref(),
            hour: self.hour,
            weekday: &self.weekday,
        }
    }
}

impl OwnedConnect {
    fn new(facts: &ConnectFacts<'_>) -> Self {
        // No `..`: a field added to the facts must be added here.
        let ConnectFacts {
            host,
            port,
            run_signed,
            scopes,
            destination_region,
            hour,
            weekday,
        } = *facts;
        Self {
            host: host.into(),
            port,
            run_signed,
            scopes: scopes.into(),
            destination_region: destination_region.map(Into::into),
            hour,
            weekday: weekday.into(),
        }
    }

    fn borrowed(&self) -> ConnectFacts<'_> {
        ConnectFacts {
            host: &self.host,
            port: self.port,
            run_signed: self.run_signed,
            scopes: &self.scopes,
            destination_region: self.destination_region.as_deref(),
            hour: self.hour,
            weekday: &self.weekday,
        }
    }
}

impl DecisionKey {
    fn new(asked: &Asked<'_>) -> Self {
        let question = match asked.question {
            Question::Http(http) => OwnedQuestion::Http(OwnedHttp::new(&http)),
            Question::Credential {
                name,
                position,
                http,
            } => OwnedQuestion::Credential {
                name: name.into(),
                position: position.into(),
                http: OwnedHttp::new(&http),
            },
            Question::Connect(q, facts) => OwnedQuestion::Connect(q, OwnedConnect::new(&facts)),
            Question::Mcp {
                server,
                item,
                name,
                http,
            } => OwnedQuestion::Mcp {
                server: server.into(),
                item,
                name: name.into(),
                http: OwnedHttp::new(&http),
            },
        };
        Self {
            workload: asked.workload.into(),
            question,
        }
    }

    fn borrowed(&self) -> Asked<'_> {
        let question = match &self.question {
            OwnedQuestion::Http(http) => Question::Http(http.borrowed()),
            OwnedQuestion::Credential {
                name,
                position,
                http,
            } => Question::Credential {
                name,
                position,
                http: http.borrowed(),
            },
            OwnedQuestion::Connect(q, facts) => Question::Connect(*q, facts.borrowed()),
            OwnedQuestion::Mcp {
                server,
                item,
                name,
                http,
            } => Question::Mcp {
                server,
                item: *item,
                name,
                http: http.borrowed(),
            },
        };
        Asked {
            workload: &self.workload,
            question,
        }
    }
}

impl Hash for DecisionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.borrowed().hash(state);
    }
}

impl PartialEq for DecisionKey {
    fn eq(&self, other: &Self) -> bool {
        self.borrowed() == other.borrowed()
    }
}

impl Eq for DecisionKey {}

impl Equivalent<DecisionKey> for Asked<'_> {
    fn equivalent(&self, key: &DecisionKey) -> bool {
        *self == key.borrowed()
    }
}

type Entries = Cache<
    DecisionKey,
    Decision,
    UnitWeighter,
    DefaultHashBuilder,
    DefaultLifecycle<DecisionKey, Decision>,
>;

/// One tenant's cache of decisions, with its hit and miss counters.
pub(super) struct DecisionCache {
    entries: Entries,
    /// The most entries it may hold.
    limit: usize,
    tenant: TenantId,
    /// Which policy set it belongs to, for the metric (`enforced`, `shadow`).
    set: &'static str,
    /// The tenant's hit and miss counters, resolved on first use (a tenant that never asks
    /// gets no series).
    counters: OnceLock<(IntCounter, IntCounter)>,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("tenant", &self.tenant)
            .field("set", &self.set)
            .field("limit", &self.limit)
            .field("len", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl DecisionCache {
    /// A cache of at most `limit` decisions (`limit` > 0) of `tenant`'s policy set `set`.
    pub(super) fn new(limit: usize, tenant: TenantId, set: &'static str) -> Option<Self> {
        // Each shard holds its share of the weight and never more, so the total is at most
        // `shards * (limit / shards) <= limit`. quick_cache would round each share up (and so
        // let the total pass `limit` by up to `shards - 1`) and halves the shard count while a
        // shard would hold fewer than 32; pick a power of two that needs neither.
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wanted = (parallel * 4).next_power_of_two();
        let most_for_size = prev_power_of_two((limit / 32).max(1));
        let shards = wanted.min(most_for_size).max(1);
        let per_shard = limit / shards;
        let capacity = per_shard * shards;
        // The options are valid whenever a capacity is given; if they ever were not, the tenant
        // would simply go without a cache.
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .build()
            .ok()?;
        let entries = Cache::with_options(
            options,
            UnitWeighter,
            DefaultHashBuilder::default(),
            DefaultLifecycle::default(),
        );
        Some(Self {
            entries,
            limit,
            tenant,
            set,
            counters: OnceLock::new(),
        })
    }

    fn counters(&self) -> &(IntCounter, IntCounter) {
        self.counters.get_or_init(|| {
            let counter = |result| {
                METRICS.policy_decision_cache.with_label_values(&[
                    self.tenant.as_str(),
                    self.set,
                    result,
                ])
            };
            (counter("hit"), counter("miss"))
        })
    }

    /// The decision kept for `asked`, counting a hit or a miss.
    pub(super) fn get(&self, asked: &Asked<'_>) -> Option<Decision> {
        let found = self.entries.get(asked);
        let (hits, misses) = self.counters();
        match found {
            Some(_) => hits.inc(),
            None => misses.inc(),
        }
        found
    }

    /// Keeps `decision` for `asked` when Cedar decided it cleanly.
    pub(super) fn keep(&self, asked: &Asked<'_>, decision: &Decision) {
        // An erroring decision is asked again every time: it denies anyway, and keeping it would
        // hide a transient cause (none exists today, but nothing here should rely on that).
        // A question with long strings (a long path or resource URI, say) is rarely asked
        // twice and would make one entry cost kilobytes: it is answered, not kept, so a tenant's
        // cache stays within about `limit` × (MAX_KEPT_QUESTION_BYTES + a few hundred bytes).
        if decision.errors.is_empty() && asked.text_bytes() <= MAX_KEPT_QUESTION_BYTES {
            self.entries
                .insert(DecisionKey::new(asked), decision.clone());
        }
    }

    /// How many decisions it holds now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The most it may hold.
    #[cfg(test)]
    pub(super) fn limit(&self) -> usize {
        self.limit
    }
}

/// The largest power of two not above `n` (`n` >= 1).
fn prev_power_of_two(n: usize) -> usize {
    if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    }
}

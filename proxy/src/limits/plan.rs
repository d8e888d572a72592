//! What one request is counted as: which ceilings apply, what it reserves before it is
//! forwarded, and what it is settled at afterwards.
//!
//! An LLM call reserves its worst case: one token per request-body byte (an upper bound for
//! text: every token spans at least one byte, and the JSON around the messages outweighs the
//! per-message tokens a chat template adds) plus its output ceiling, and the most those tokens
//! can cost. With `max_tokens` set, a ceiling therefore cannot be crossed; without it, the
//! configured assumption is reserved and a stream that outruns it is extended or cut
//! ([`super::stream`]). A request to an MCP server counts as many tool calls as the `tools/call`
//! messages in its body (a batch of three is three; `tools/list`, `initialize`, resource reads
//! and the like are none); any other call counts as one.

use crate::context::TenantContext;
use crate::limits::stream::StreamPlan;
use crate::pricing::Prices;
use crate::target::Destination;
use crate::usage::providers::registry::{self, Work};
use crate::usage::{HostedCalls, Usage};

use super::{keys_for, CallKind, Charge, LimitConfig, LimitKey, MidStream, Subject};

/// Output tokens reserved for an LLM call that sets no output ceiling, unless configured.
pub const DEFAULT_ASSUMED_MAX_TOKENS: u64 = 1024;

/// Why a request cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A priced call to a model the price table does not list (and it refuses unlisted ones);
    /// `None`: a call that names no model (the server picks one).
    #[error("the model has no price in the price table")]
    ModelNotPriced(Option<String>),
    /// LLM work the proxy cannot meter, while a token or cost ceiling applies to the caller and
    /// nothing allows it (`unmetered_calls`).
    #[error("{0} cannot be metered")]
    Unmetered(&'static str),
    /// The tenant is not in the configuration (admission checked it; a bug if seen).
    #[error("the tenant is not configured")]
    UnknownTenant,
}

/// The request facts that decide its charge.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    /// The model the JSON body names (an LLM call), if any.
    pub model: Option<&'a str>,
    /// Models a gateway may answer with instead (OpenRouter's `models`, LiteLLM's
    /// `fallbacks`): the call is priced at the dearest of these and `model`.
    pub fallback_models: &'a [String],
    /// The body's output ceiling (`max_tokens` and its synonyms), if any.
    pub max_output_tokens: Option<u64>,
    /// How many completions the body asks for (`n` and its synonyms), if it says.
    pub choices: Option<u64>,
    /// Request body size.
    pub body_bytes: u64,
    /// For a request to an MCP server: the `tools/call`s in its body. `None` for any other
    /// request, which counts as one call when it is not an LLM call.
    pub mcp_tool_calls: Option<u64>,
    /// What the request is to an LLM API ([`registry::work`]).
    pub work: Work,
}

/// How one request is counted.
#[derive(Debug)]
pub struct Plan {
    /// Ceilings to check.
    pub keys: Vec<LimitKey>,
    /// What to reserve on them.
    pub charge: Charge,
    /// The model's prices, when a price table is configured.
    pub prices: Option<Prices>,
    /// How a streaming response may extend its reservation (`None`: it is not cut).
    pub stream: Option<StreamPlan>,
    /// What it is counted as: an LLM call's response is metered and settles its reservation.
    pub kind: CallKind,
}

/// The request-rate ceilings every request of `tenant` is counted against, whatever it asks
/// (for the cheap "already over" check before the request is read).
pub fn rate_keys(config: &dyn LimitConfig, tenant: &TenantContext, now: i64) -> Vec<LimitKey> {
    let Some(entry) = config.tenant_limits(&tenant.tenant) else {
        return Vec::new();
    };
    let who = Subject {
        tenant: &tenant.tenant,
        workload: &tenant.workload,
        run: None,
    };
    let workload = entry.workload_ceilings.get(&tenant.workload);
    let mut keys = keys_for(
        who,
        entry.ceilings,
        workload,
        entry.calendar,
        now,
        CallKind::Tool,
    );
    keys.retain(|k| matches!(k.kind, super::LimitKind::Rate { .. }));
    keys
}

/// Plans `call` for `tenant` toward `destination` at unix second `now`.
pub fn plan(
    config: &dyn LimitConfig,
    tenant: &TenantContext,
    destination: &Destination,
    call: CallFacts<'_>,
    now: i64,
) -> Result<Plan, PlanError> {
    let Some(entry) = config.tenant_limits(&tenant.tenant) else {
        return Err(PlanError::UnknownTenant);
    };
    let workload = entry.workload_ceilings.get(&tenant.workload);
    let who = subject(tenant);
    let run = who.run;
    // SECURITY: work whose spend no response shows would pass every token and cost ceiling
    // unseen, so while one applies it is refused unless the tenant or workload allows it.
    // An LLM API's request the proxy does not know (see `Work::Unrecognized`) is an LLM call
    // when its body names a model, and otherwise work it cannot meter.
    let work = match call.work {
        Work::Unrecognized(_) if call.model.is_some() => Work::Other,
        Work::Unrecognized(what) => Work::Unmetered(what),
        work => work,
    };
    if let Work::Unmetered(what) = work {
        if refuses_unmetered(entry.ceilings, workload, run.map(|(_, b)| b)) {
            return Err(PlanError::Unmetered(what));
        }
    }
    // A provider's call is an LLM call even when its body names no model (a server with a
    // default one): its tokens are reserved and metered, and it is priced as an unknown model.
    // A request known to be free is never priced, whatever model its body names.
    let kind = if (call.model.is_some() && work != Work::Free) || work == Work::Call {
        CallKind::Llm
    } else {
        CallKind::Tool
    };
    let prices = match (kind, config.prices()) {
        (CallKind::Llm, Some(table)) => {
            let provider = registry::price_key(destination);
            let mut prices = table
                .lookup(provider, call.model.unwrap_or(""))
                .ok_or_else(|| PlanError::ModelNotPriced(call.model.map(String::from)))?;
            // SECURITY: a gateway may answer with any model of its fallback list, so the call
            // is reserved and settled at the dearest of their prices (each must be priced):
            // naming a cheap model first cannot buy a dear one at its price.
            for fallback in call.fallback_models {
                let theirs = table
                    .lookup(provider, fallback)
                    .ok_or_else(|| PlanError::ModelNotPriced(Some(fallback.clone())))?;
                prices = prices.dearest(theirs);
            }
            Some(prices)
        }
        _ => None,
    };
    let keys = keys_for(who, entry.ceilings, workload, entry.calendar, now, kind);
    if kind == CallKind::Tool {
        return Ok(Plan {
            keys,
            charge: Charge {
                tool_calls: call.mcp_tool_calls.unwrap_or(1),
                ..Charge::default()
            },
            prices: None,
            stream: None,
            kind,
        });
    }
    let assumed = workload
        .and_then(|c| c.assumed_max_tokens)
        .or(entry.ceilings.assumed_max_tokens)
        .unwrap_or(DEFAULT_ASSUMED_MAX_TOKENS);
    // Each completion asked for is generated up to the ceiling.
    let output = call
        .max_output_tokens
        .unwrap_or(assumed)
        .saturating_mul(call.choices.unwrap_or(1).max(1));
    let charge = Charge {
        tokens: call.body_bytes.saturating_add(output),
        cost_micros: prices.map_or(0, |p| p.worst_case_micros(call.body_bytes, output)),
        tool_calls: 0,
    };
    let mode = workload
        .and_then(|c| c.mid_stream)
        .or(entry.ceilings.mid_stream)
        .unwrap_or_default();
    // SECURITY (budgets): a ceiling field is the agent's word, and a server may not read it
    // (Ollama's OpenAI API ignores `max_completion_tokens` and takes `max_tokens: 0` for no
    // limit): trusted, one such stream spent twice a day's ceiling. So a capped stream is
    // guarded too, from four times what its reservation covers (the output estimate may run
    // that far over the true count, on separators or indentation, and an honest stream must
    // neither be cut nor hold more than it reserved): a server that stops at the ceiling never
    // reaches the guard, one that does not is extended or cut past it.
    let stream = (mode == MidStream::Cut).then(|| {
        // A capped stream past its guard is one whose server ignores the ceiling: its steps are
        // what a call without one reserves, not a ceiling of a few tokens (each step may be a
        // wait for the limiter's answer).
        let step_tokens = output.max(assumed).max(1);
        let (covered_output, ask_ahead_from) = match call.max_output_tokens {
            Some(_) => {
                let trusted = output
                    .saturating_mul(CAPPED_GUARD_FACTOR)
                    .saturating_add(CAPPED_GUARD_SLACK);
                (trusted, trusted)
            }
            None => (output, 0),
        };
        StreamPlan {
            covered_output,
            ask_ahead_from,
            step_tokens,
            step: Charge {
                tokens: step_tokens,
                cost_micros: prices.map_or(0, |p| p.worst_case_micros(0, step_tokens)),
                tool_calls: 0,
            },
        }
    });
    Ok(Plan {
        keys,
        charge,
        prices,
        stream,
        kind,
    })
}

/// How many times its ceiling a capped stream's output estimate may reach before its guard asks
/// for more: the estimate (about four bytes a token) runs up to four times over on tokens of
/// sixteen characters (separators, indentation).
const CAPPED_GUARD_FACTOR: u64 = 4;

/// Output tokens a capped stream's guard allows beyond that (a ceiling of a few tokens against
/// an estimate of at least one a delta).
const CAPPED_GUARD_SLACK: u64 = 16;

/// Whether LLM work the proxy cannot meter is refused for a caller under `tenant` and
/// `workload` ceilings and a signed run's `run` budget: a token or cost ceiling applies to it,
/// and its workload's `unmetered_calls` (else its tenant's) does not allow it.
fn refuses_unmetered(
    tenant: &super::Ceilings,
    workload: Option<&super::Ceilings>,
    run: Option<&crate::identity::token::RunBudget>,
) -> bool {
    let metered = tenant.meters_spend()
        || workload.is_some_and(super::Ceilings::meters_spend)
        || run.is_some_and(|b| b.tokens.is_some() || b.cost_micros.is_some());
    let setting = workload
        .and_then(|c| c.unmetered_calls)
        .or(tenant.unmetered_calls)
        .unwrap_or_default();
    metered && setting == super::Unmetered::Refuse
}

/// Whether `tenant`'s caller may not open a tunnel to an LLM host that nothing inside is read
/// from (opaque): as for other work the proxy cannot meter ([`refuses_unmetered`]).
pub fn refuses_unmetered_for(config: &dyn LimitConfig, tenant: &TenantContext) -> bool {
    let Some(entry) = config.tenant_limits(&tenant.tenant) else {
        return false;
    };
    refuses_unmetered(
        entry.ceilings,
        entry.workload_ceilings.get(&tenant.workload),
        subject(tenant).run.map(|(_, budget)| budget),
    )
}

/// Who `tenant`'s request is counted against. Only a signed run id carries a budget, so an
/// agent cannot start a fresh one.
fn subject(tenant: &TenantContext) -> Subject<'_> {
    let run = match (&tenant.budget, tenant.run.signed) {
        (Some(budget), true) => Some((tenant.run.id.as_str(), budget)),
        _ => None,
    };
    Subject {
        tenant: &tenant.tenant,
        workload: &tenant.workload,
        run,
    }
}

/// `keys` (a stream's quota keys, fixed at its admission) with the ceilings `config` gives
/// them at unix second `now`: a reload that lowers (or raises) a day, month or run ceiling
/// governs the extensions a stream still asks for, as it does a fresh call. Keys are neither
/// added nor dropped, since the admission settles exactly the counters it reserved on: a
/// ceiling the reload removed is unbounded, one it added is not this stream's. A tenant no
/// longer configured keeps its keys (its identity ends the stream).
pub fn ceilings_now(
    config: &dyn LimitConfig,
    tenant: &TenantContext,
    keys: &[LimitKey],
    now: i64,
) -> Vec<LimitKey> {
    use super::LimitKind::Quota;
    let Some(entry) = config.tenant_limits(&tenant.tenant) else {
        return keys.to_vec();
    };
    let workload = entry.workload_ceilings.get(&tenant.workload);
    let current = keys_for(
        subject(tenant),
        entry.ceilings,
        workload,
        entry.calendar,
        now,
        CallKind::Llm,
    );
    let same_window = |a: super::Window, b: super::Window| {
        std::mem::discriminant(&a) == std::mem::discriminant(&b)
    };
    keys.iter()
        .map(|key| {
            let Quota {
                measure, window, ..
            } = key.kind
            else {
                return key.clone();
            };
            let ceiling = current
                .iter()
                .find_map(|c| match c.kind {
                    Quota {
                        measure: m,
                        window: w,
                        ceiling,
                    } if c.scope == key.scope && m == measure && same_window(w, window) => {
                        Some(ceiling)
                    }
                    _ => None,
                })
                .unwrap_or(u64::MAX);
            LimitKey {
                scope: key.scope.clone(),
                kind: Quota {
                    measure,
                    window,
                    ceiling,
                },
            }
        })
        .collect()
}

/// The tokens and cost of the usage an LLM response reported (cost 0 without prices).
pub fn usage_charge(u: Usage, prices: Option<Prices>) -> Charge {
    Charge {
        tokens: u.input_tokens.saturating_add(u.output_tokens),
        cost_micros: prices.map_or(0, |p| p.cost_micros(&u)),
        tool_calls: 0,
    }
}

/// How a forwarded call ended, for settlement.
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    /// The usage the response reported.
    pub usage: Option<Usage>,
    /// The upstream may have served the call: it answered with a success status (however the
    /// client's side ended), or it was sent the request and did not answer.
    pub served: bool,
    /// The stream was cut at its reservation.
    pub cut: bool,
    /// Output tokens the proxy saw streamed (its estimate; 0 for a response that is no stream).
    pub streamed_output: u64,
    /// Output tokens the reservation covered, its extensions included.
    pub covered_output: u64,
    /// Hosted tool calls the proxy saw the stream start (none for a response that is no
    /// stream).
    pub streamed_hosted_calls: HostedCalls,
}

/// What a call that reserved `reserved` is settled at. Reported usage is the truth; without
/// it, a call the upstream may have served (or that was cut at its cover) keeps its whole
/// reservation, so spend is never under-counted, and only a call that never reached the
/// upstream, or that the upstream refused, gives its tokens and cost back. A tool call counts
/// whether or not its upstream answered.
pub fn settlement(reserved: Charge, prices: Option<Prices>, ending: Ending) -> Charge {
    match ending.usage {
        Some(u) if !ending.cut => Charge {
            tool_calls: reserved.tool_calls,
            ..usage_charge(u, prices)
        },
        // No report: the reservation, the output seen streamed past what it covered (a stream
        // let finish past its reservation whose client left before its usage arrived), and the
        // hosted tool calls seen started (no reservation covers them).
        _ if ending.served || ending.cut => {
            let beyond = ending.streamed_output.saturating_sub(ending.covered_output);
            let extra = usage_charge(
                Usage {
                    output_tokens: beyond,
                    hosted_calls: ending.streamed_hosted_calls,
                    ..Usage::default()
                },
                prices,
            );
            Charge {
                tokens: reserved.tokens.saturating_add(extra.tokens),
                cost_micros: reserved.cost_micros.saturating_add(extra.cost_micros),
                tool_calls: reserved.tool_calls,
            }
        }
        _ => Charge {
            tool_calls: reserved.tool_calls,
            ..Charge::default()
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::limits::{LimitKind, Measure, Scope};
    use crate::target::Scheme;

    fn prices() -> Prices {
        Prices {
            cached_input: 500_000,
            ..Prices::flat(1_000_000, 2_000_000)
        }
    }

    #[test]
    fn settlement_follows_usage_or_keeps_the_reservation() {
        let reserved = Charge {
            tokens: 1_000,
            cost_micros: 2_000,
            tool_calls: 0,
        };
        let usage = Usage {
            input_tokens: 100,
            cached_input_tokens: 40,
            output_tokens: 10,
            ..Usage::default()
        };
        let end = |usage, served, cut| Ending {
            usage,
            served,
            cut,
            streamed_output: 0,
            covered_output: 0,
            streamed_hosted_calls: HostedCalls::default(),
        };
        assert_eq!(
            settlement(reserved, Some(prices()), end(Some(usage), true, false)),
            Charge {
                tokens: 110,
                // 60 × 1 + 40 × 0.5 + 10 × 2 micro-units
                cost_micros: 100,
                tool_calls: 0
            }
        );
        assert_eq!(
            settlement(reserved, Some(prices()), end(None, true, false)),
            reserved
        );
        assert_eq!(
            settlement(reserved, Some(prices()), end(Some(usage), false, true)),
            reserved,
            "a cut stream used its whole cover"
        );
        assert_eq!(
            settlement(reserved, None, end(None, false, false)),
            Charge::default()
        );
        // No report after a stream that ran past its cover (let finish, its client gone before
        // the usage): the reservation and the output seen past the cover.
        let past = Ending {
            streamed_output: 48_000,
            covered_output: 1_000,
            ..end(None, true, false)
        };
        assert_eq!(
            settlement(reserved, Some(prices()), past),
            Charge {
                tokens: 1_000 + 47_000,
                cost_micros: 2_000 + 2 * 47_000,
                tool_calls: 0
            }
        );
        // Within its cover, or with a report, the stream's estimate changes nothing.
        let within = Ending {
            streamed_output: 900,
            covered_output: 1_000,
            ..end(None, true, false)
        };
        assert_eq!(settlement(reserved, Some(prices()), within), reserved);
        let reported = Ending {
            streamed_output: 48_000,
            covered_output: 1_000,
            ..end(Some(usage), true, false)
        };
        assert_eq!(settlement(reserved, Some(prices()), reported).tokens, 110);
        // No report after a stream that showed searches starting: each is charged, on top of
        // the reservation (none covers them); a cut stream's too.
        let searched = Prices {
            web_search: 10_000,
            file_search: 2_500,
            ..prices()
        };
        for (served, cut) in [(true, false), (false, true)] {
            let ending = Ending {
                streamed_hosted_calls: HostedCalls {
                    web_searches: 3,
                    file_searches: 2,
                },
                ..end(None, served, cut)
            };
            assert_eq!(
                settlement(reserved, Some(searched), ending),
                Charge {
                    tokens: 1_000,
                    cost_micros: 2_000 + 30_000 + 5_000,
                    tool_calls: 0
                }
            );
        }
        let tool = Charge {
            tool_calls: 1,
            ..Charge::default()
        };
        assert_eq!(settlement(tool, None, end(None, false, false)), tool);
    }

    /// acme with no ceilings of its own and no price table.
    #[derive(Default)]
    struct OneTenant {
        ceilings: crate::limits::Ceilings,
        workloads: std::collections::HashMap<crate::ids::WorkloadId, crate::limits::Ceilings>,
        names: Vec<crate::ids::WorkloadId>,
    }

    impl LimitConfig for OneTenant {
        fn tenant_limits(
            &self,
            tenant: &crate::ids::TenantId,
        ) -> Option<super::super::TenantLimits<'_>> {
            static UTC: std::sync::LazyLock<crate::limits::calendar::TenantCalendar> =
                std::sync::LazyLock::new(crate::limits::calendar::TenantCalendar::utc);
            (tenant.as_str() == "acme").then(|| super::super::TenantLimits {
                ceilings: &self.ceilings,
                workload_ceilings: &self.workloads,
                workloads: &self.names,
                calendar: &UTC,
            })
        }

        fn prices(&self) -> Option<&crate::pricing::PriceTable> {
            None
        }
    }

    fn run_context() -> TenantContext {
        TenantContext {
            tenant: crate::ids::TenantId::new("acme").unwrap(),
            workload: crate::ids::WorkloadId::new("bot").unwrap(),
            principal_kind: crate::context::PrincipalKind::Workload,
            identity_source: crate::identity::IdentitySourceKind::Token,
            run: crate::context::Run {
                id: "run-1".into(),
                signed: true,
                expires_at: Some(2_000_000_000),
            },
            budget: Some(crate::identity::token::RunBudget {
                tool_calls: Some(10),
                ..Default::default()
            }),
            scopes: Vec::new(),
            initiator: None,
            correlation_id: None,
            token_id: None,
            request_id: "req-1".into(),
            trace: crate::trace::TraceContext::continue_or_start(None),
        }
    }

    #[test]
    fn mcp_tool_calls_count_against_the_runs_tool_call_budget() {
        let config = OneTenant::default();
        let tenant = run_context();
        let destination = Destination {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port: 9,
            upstream_path: "/mcp".into(),
            audit_path: "/mcp".into(),
            route: None,
            internal: false,
            provider: None,
        };
        let charge = |mcp_tool_calls| {
            let call = CallFacts {
                model: None,
                fallback_models: &[],
                max_output_tokens: None,
                choices: None,
                body_bytes: 100,
                mcp_tool_calls,
                work: Work::Other,
            };
            let plan = plan(&config, &tenant, &destination, call, 1_700_000_000).unwrap();
            assert!(
                plan.keys.iter().any(|k| matches!(
                    k.kind,
                    LimitKind::Quota {
                        measure: Measure::ToolCalls,
                        ceiling: 10,
                        ..
                    }
                )),
                "the run's tool-call budget applies"
            );
            plan.charge.tool_calls
        };
        // A batch of three `tools/call`s is three; a `tools/list` is none; any other call one.
        assert_eq!(charge(Some(3)), 3);
        assert_eq!(charge(Some(0)), 0);
        assert_eq!(charge(None), 1);
    }

    /// A stream's quota keys take the ceilings of now: lowered, raised, removed (unbounded);
    /// never a key more or less (the admission settles exactly what it reserved on).
    #[test]
    fn a_streams_keys_take_the_ceilings_of_now() {
        let quota = |keys: &[LimitKey]| -> Vec<(Scope, Measure, u64)> {
            keys.iter()
                .filter_map(|k| match k.kind {
                    LimitKind::Quota {
                        measure, ceiling, ..
                    } => Some((k.scope.clone(), measure, ceiling)),
                    _ => None,
                })
                .collect()
        };
        let tenant = run_context();
        let now = 1_700_000_000;
        let mut config = OneTenant::default();
        config.ceilings.cost_per_day_micros = Some(1_000);
        config.ceilings.cost_per_month_micros = Some(5_000);
        let admitted = {
            let who = Subject {
                tenant: &tenant.tenant,
                workload: &tenant.workload,
                run: None,
            };
            let entry = config.tenant_limits(&tenant.tenant).unwrap();
            keys_for(
                who,
                entry.ceilings,
                None,
                entry.calendar,
                now,
                CallKind::Llm,
            )
        };
        let acme = Scope::Tenant(tenant.tenant.clone());
        // Lowered and removed.
        config.ceilings.cost_per_day_micros = Some(10);
        config.ceilings.cost_per_month_micros = None;
        let keys = ceilings_now(&config, &tenant, &admitted, now);
        assert_eq!(keys.len(), admitted.len());
        assert_eq!(
            quota(&keys),
            [
                (acme.clone(), Measure::Cost, 10),
                (acme.clone(), Measure::Cost, u64::MAX)
            ]
        );
        // Raised; a ceiling added since (tokens a run) is not the stream's.
        config.ceilings.cost_per_day_micros = Some(9_000);
        config.ceilings.cost_per_month_micros = Some(90_000);
        let keys = ceilings_now(&config, &tenant, &admitted, now);
        assert_eq!(
            quota(&keys),
            [
                (acme.clone(), Measure::Cost, 9_000),
                (acme, Measure::Cost, 90_000)
            ]
        );
        // A tenant no longer configured keeps its keys.
        let mut other = run_context();
        other.tenant = crate::ids::TenantId::new("gone").unwrap();
        assert_eq!(ceilings_now(&config, &other, &admitted, now), admitted);
    }

    #[test]
    fn every_completion_asked_for_is_reserved_up_to_the_ceiling() {
        let config = OneTenant::default();
        let tenant = run_context();
        let destination = Destination {
            scheme: Scheme::Https,
            host: "api.openai.com".into(),
            port: 443,
            upstream_path: "/v1/chat/completions".into(),
            audit_path: "/v1/chat/completions".into(),
            route: None,
            internal: false,
            provider: None,
        };
        let reserved = |max_output_tokens, choices| {
            let call = CallFacts {
                model: Some("gpt-4o"),
                fallback_models: &[],
                max_output_tokens,
                choices,
                body_bytes: 100,
                mcp_tool_calls: None,
                work: Work::Call,
            };
            let plan = plan(&config, &tenant, &destination, call, 1_700_000_000).unwrap();
            plan.charge.tokens
        };
        assert_eq!(reserved(Some(450), None), 550);
        assert_eq!(reserved(Some(450), Some(1)), 550);
        assert_eq!(reserved(Some(450), Some(20)), 100 + 450 * 20);
        assert_eq!(reserved(Some(450), Some(0)), 550, "n = 0 is still one");
        assert_eq!(
            reserved(None, Some(3)),
            100 + 3 * DEFAULT_ASSUMED_MAX_TOKENS
        );
    }

    /// A price table that lists one model and refuses the rest, over `OneTenant`'s ceilings.
    struct Priced(OneTenant, crate::pricing::PriceTable);

    impl LimitConfig for Priced {
        fn tenant_limits(
            &self,
            tenant: &crate::ids::TenantId,
        ) -> Option<super::super::TenantLimits<'_>> {
            self.0.tenant_limits(tenant)
        }

        fn prices(&self) -> Option<&crate::pricing::PriceTable> {
            Some(&self.1)
        }
    }

    fn facts(model: Option<&str>, work: Work) -> CallFacts<'_> {
        CallFacts {
            model,
            fallback_models: &[],
            max_output_tokens: None,
            choices: None,
            body_bytes: 100,
            mcp_tool_calls: None,
            work,
        }
    }

    /// A request known to be free (`count_tokens`, `moderations`, an assistant's creation) is
    /// never priced, whatever model its body names: neither charged a reservation nor refused
    /// as a model the table does not price.
    #[test]
    fn a_free_request_naming_a_model_is_not_priced() {
        let destination = Destination::https_for_test("api.openai.com", "/v1/moderations", None);
        let table = crate::pricing::PriceTable::parse(
            "currency = \"USD\"\n[providers.openai]\n\"gpt-4o\" = { input = 1_000_000, output = 2_000_000 }\n",
            "test",
        )
        .unwrap();
        let config = Priced(OneTenant::default(), table);
        let (tenant, now) = (run_context(), 1_700_000_000);
        let free = plan(
            &config,
            &tenant,
            &destination,
            facts(Some("omni-moderation-latest"), Work::Free),
            now,
        )
        .unwrap();
        assert_eq!((free.kind, free.prices.is_none()), (CallKind::Tool, true));
        let unrecognized = plan(
            &config,
            &tenant,
            &destination,
            facts(Some("omni-moderation-latest"), Work::Unrecognized("x")),
            now,
        );
        assert!(
            matches!(unrecognized, Err(PlanError::ModelNotPriced(_))),
            "{unrecognized:?}"
        );
    }

    /// A gateway may answer with any model of its fallback list: the call is reserved (and so
    /// settled) at the dearest prices among them, and one the table does not price refuses.
    #[test]
    fn a_call_is_priced_at_the_dearest_of_its_fallback_models() {
        let destination =
            Destination::https_for_test("openrouter.ai", "/api/v1/chat/completions", None);
        let table = crate::pricing::PriceTable::parse(
            "currency = \"USD\"\n[providers.openrouter]\n\"mini\" = { input = 1_000_000, output = 2_000_000 }\n\"big\" = { input = 10_000_000, output = 40_000_000 }\n",
            "test",
        )
        .unwrap();
        let config = Priced(OneTenant::default(), table);
        let now = 1_700_000_000;
        let tenant = run_context();
        let alone = plan(
            &config,
            &tenant,
            &destination,
            facts(Some("mini"), Work::Call),
            now,
        )
        .unwrap();
        assert_eq!(
            alone.prices.map(|p| (p.input, p.output)),
            Some((1_000_000, 2_000_000))
        );
        let big = ["big".to_string()];
        let with_fallback = plan(
            &config,
            &tenant,
            &destination,
            CallFacts {
                fallback_models: &big,
                ..facts(Some("mini"), Work::Call)
            },
            now,
        )
        .unwrap();
        assert_eq!(
            with_fallback.prices.map(|p| (p.input, p.output)),
            Some((10_000_000, 40_000_000))
        );
        assert!(with_fallback.charge.cost_micros > alone.charge.cost_micros);
        let unpriced = ["unlisted".to_string()];
        assert_eq!(
            plan(
                &config,
                &tenant,
                &destination,
                CallFacts {
                    fallback_models: &unpriced,
                    ..facts(Some("mini"), Work::Call)
                },
                now,
            )
            .unwrap_err(),
            PlanError::ModelNotPriced(Some("unlisted".into()))
        );
    }

    #[test]
    fn work_the_proxy_cannot_meter_is_refused_while_spend_is_capped() {
        let destination = Destination::https_for_test("api.openai.com", "/v1/batches", None);
        let batch = facts(None, Work::Unmetered("a batch job"));
        let now = 1_700_000_000;
        let mut unsigned = run_context();
        unsigned.run.signed = false;
        // No ceiling on tokens or cost (the run's budget caps tool calls only): nothing is
        // skipped, so it is a call like any other.
        let open = OneTenant::default();
        let counted = plan(&open, &run_context(), &destination, batch, now).unwrap();
        assert_eq!(
            (counted.kind, counted.charge.tool_calls),
            (CallKind::Tool, 1)
        );

        // Each place a token or cost ceiling can come from refuses it.
        let capped = crate::limits::Ceilings {
            tokens_per_minute: Some(1_000),
            ..Default::default()
        };
        let tenant_capped = OneTenant {
            ceilings: capped,
            ..Default::default()
        };
        let mut workload_capped = OneTenant::default();
        workload_capped
            .workloads
            .insert(crate::ids::WorkloadId::new("bot").unwrap(), capped);
        for (name, config) in [("tenant", &tenant_capped), ("workload", &workload_capped)] {
            assert_eq!(
                plan(config, &unsigned, &destination, batch, now).unwrap_err(),
                PlanError::Unmetered("a batch job"),
                "{name}"
            );
        }
        let mut run_capped = run_context();
        run_capped.budget = Some(crate::identity::token::RunBudget {
            cost_micros: Some(5),
            ..Default::default()
        });
        assert_eq!(
            plan(&open, &run_capped, &destination, batch, now).unwrap_err(),
            PlanError::Unmetered("a batch job")
        );
        // A run budget that is not signed is no budget.
        run_capped.run.signed = false;
        assert!(plan(&open, &run_capped, &destination, batch, now).is_ok());

        // `unmetered_calls = "allow"`: the workload's setting wins over its tenant's.
        let allow = |c: crate::limits::Ceilings, setting| crate::limits::Ceilings {
            unmetered_calls: Some(setting),
            ..c
        };
        let tenant_allows = OneTenant {
            ceilings: allow(capped, crate::limits::Unmetered::Allow),
            ..Default::default()
        };
        let plan_allowed = plan(&tenant_allows, &unsigned, &destination, batch, now).unwrap();
        assert_eq!(plan_allowed.kind, CallKind::Tool);
        let mut workload_refuses = OneTenant {
            ceilings: allow(capped, crate::limits::Unmetered::Allow),
            ..Default::default()
        };
        workload_refuses.workloads.insert(
            crate::ids::WorkloadId::new("bot").unwrap(),
            allow(Default::default(), crate::limits::Unmetered::Refuse),
        );
        assert_eq!(
            plan(&workload_refuses, &unsigned, &destination, batch, now).unwrap_err(),
            PlanError::Unmetered("a batch job")
        );
        // Only the unmetered kind is refused: a read of the same path passes.
        let read = facts(None, Work::Other);
        assert!(plan(&tenant_capped, &unsigned, &destination, read, now).is_ok());

        // A request to an LLM API the proxy does not know: unmetered work when its body names
        // no model, an LLM call (reserved and metered) when it names one.
        let unknown = Work::Unrecognized(registry::UNRECOGNIZED);
        assert_eq!(
            plan(
                &tenant_capped,
                &unsigned,
                &destination,
                facts(None, unknown),
                now
            )
            .unwrap_err(),
            PlanError::Unmetered(registry::UNRECOGNIZED)
        );
        let named = plan(
            &tenant_capped,
            &unsigned,
            &destination,
            facts(Some("m"), unknown),
            now,
        )
        .unwrap();
        assert_eq!(named.kind, CallKind::Llm);
        assert!(named.charge.tokens > 0);
    }

    #[test]
    fn a_providers_call_that_names_no_model_is_an_llm_call() {
        let destination =
            Destination::https_for_test("llm.internal", "/v1/chat/completions", Some("vllm"));
        let now = 1_700_000_000;
        let tenant = run_context();
        // Without prices: tokens are reserved (body and assumed output) and the response metered.
        let plan_open = plan(
            &OneTenant::default(),
            &tenant,
            &destination,
            facts(None, Work::Call),
            now,
        )
        .unwrap();
        assert_eq!(plan_open.kind, CallKind::Llm);
        assert_eq!(plan_open.charge.tokens, 100 + DEFAULT_ASSUMED_MAX_TOKENS);
        assert_eq!(plan_open.charge.tool_calls, 0);

        // With prices: an unnamed model is an unknown one (refused, or the default prices).
        let table = |text: &str| crate::pricing::PriceTable::parse(text, "test").unwrap();
        let refuses = Priced(
            OneTenant::default(),
            table("currency = \"USD\"\n[providers.vllm]\n\"m\" = { input = 1, output = 2 }\n"),
        );
        assert_eq!(
            plan(
                &refuses,
                &tenant,
                &destination,
                facts(None, Work::Call),
                now
            )
            .unwrap_err(),
            PlanError::ModelNotPriced(None)
        );
        assert!(plan(
            &refuses,
            &tenant,
            &destination,
            facts(Some("m"), Work::Call),
            now
        )
        .is_ok());
        let defaults = Priced(
            OneTenant::default(),
            table("currency = \"USD\"\nunknown_model = \"default\"\n[default]\ninput = 1_000_000\noutput = 1_000_000\n"),
        );
        let priced = plan(
            &defaults,
            &tenant,
            &destination,
            facts(None, Work::Call),
            now,
        )
        .unwrap();
        assert_eq!(priced.prices.map(|p| p.output), Some(1_000_000));
        assert_eq!(priced.charge.cost_micros, 100 + DEFAULT_ASSUMED_MAX_TOKENS);

        // Any other request without a model stays a call counted once.
        let other = plan(
            &OneTenant::default(),
            &tenant,
            &destination,
            facts(None, Work::Other),
            now,
        )
        .unwrap();
        assert_eq!((other.kind, other.charge.tokens), (CallKind::Tool, 0));
    }
}

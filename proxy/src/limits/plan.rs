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
use crate::usage::providers::registry;
use crate::usage::Usage;

use super::{keys_for, CallKind, Charge, LimitConfig, LimitKey, MidStream, Subject};

/// Output tokens reserved for an LLM call that sets no output ceiling, unless configured.
pub const DEFAULT_ASSUMED_MAX_TOKENS: u64 = 1024;

/// Why a request cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A priced call to a model the price table does not list (and it refuses unlisted ones).
    #[error("model `{0}` has no price in the price table")]
    ModelNotPriced(String),
    /// The tenant is not in the configuration (admission checked it; a bug if seen).
    #[error("the tenant is not configured")]
    UnknownTenant,
}

/// The request facts that decide its charge.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    /// The model the JSON body names (an LLM call), if any.
    pub model: Option<&'a str>,
    /// The body's output ceiling (`max_tokens` and its synonyms), if any.
    pub max_output_tokens: Option<u64>,
    /// How many completions the body asks for (`n` and its synonyms), if it says.
    pub choices: Option<u64>,
    /// Request body size.
    pub body_bytes: u64,
    /// For a request to an MCP server: the `tools/call`s in its body. `None` for any other
    /// request, which counts as one call when it is not an LLM call.
    pub mcp_tool_calls: Option<u64>,
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
    let prices = match (call.model, config.prices()) {
        (Some(model), Some(table)) => Some(
            table
                .lookup(registry::price_key(destination), model)
                .ok_or_else(|| PlanError::ModelNotPriced(model.to_string()))?,
        ),
        _ => None,
    };
    // Only a signed run id carries a budget, so an agent cannot start a fresh one.
    let run = match (&tenant.budget, tenant.run.signed) {
        (Some(budget), true) => Some((tenant.run.id.as_str(), budget)),
        _ => None,
    };
    let who = Subject {
        tenant: &tenant.tenant,
        workload: &tenant.workload,
        run,
    };
    let kind = if call.model.is_some() {
        CallKind::Llm
    } else {
        CallKind::Tool
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
    // With `max_tokens` the reservation already covers the whole response (providers stop
    // there), so only a call without one needs guarding as it streams.
    let stream = (mode == MidStream::Cut && call.max_output_tokens.is_none()).then(|| {
        let step_tokens = output.max(1);
        StreamPlan {
            covered_output: output,
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
    })
}

/// The tokens and cost of the usage an LLM response reported (cost 0 without prices).
pub fn usage_charge(u: Usage, prices: Option<Prices>) -> Charge {
    Charge {
        tokens: u.input_tokens.saturating_add(u.output_tokens),
        cost_micros: prices.map_or(0, |p| {
            p.cost_micros(u.input_tokens, u.cached_input_tokens, u.output_tokens)
        }),
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
        _ if ending.served || ending.cut => reserved,
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
    use crate::limits::{LimitKind, Measure};
    use crate::target::Scheme;

    fn prices() -> Prices {
        Prices {
            input: 1_000_000,
            cached_input: 500_000,
            output: 2_000_000,
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
        };
        let end = |usage, served, cut| Ending { usage, served, cut };
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
                max_output_tokens: None,
                choices: None,
                body_bytes: 100,
                mcp_tool_calls,
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
                max_output_tokens,
                choices,
                body_bytes: 100,
                mcp_tool_calls: None,
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
}

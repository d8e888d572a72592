//! The price table: what a model's tokens cost, per provider, in integer micro-units of the
//! deployment's currency per million tokens (and what a hosted tool call costs, per call). Money is
//! never a float: a price such as `0.15` USD per million is written `150_000`, and every cost is
//! computed in `u128` and rounded up, so a ceiling is never crossed by rounding.
//!
//! ```toml
//! currency = "USD"
//! unknown_model = "refuse"          # or "default", which then needs [default]
//!
//! [providers.openai]
//! "gpt-4o-mini" = { input = 150_000, cached_input = 75_000, output = 600_000 }
//!
//! [providers.anthropic]
//! "claude-sonnet-4" = { input = 3_000_000, cached_input = 300_000, cache_write = 3_750_000,
//!                       cache_write_long = 6_000_000, output = 15_000_000,
//!                       web_search = 10_000 }   # micro-units per call, not per million
//!
//! [default]
//! input = 5_000_000
//! output = 15_000_000
//! ```
//!
//! A model is found by its exact name, or by the name with a dated snapshot suffix removed
//! (`gpt-4o-mini-2024-07-18`, `claude-3-5-sonnet-20241022`), never by a looser prefix: `gpt-4o`
//! must not price `gpt-4o-mini`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::usage::Usage;

/// Micro-units per million tokens, for each kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    /// Uncached input (prompt) tokens.
    pub input: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: u64,
    /// Input tokens written to the provider's prompt cache (default: `input`).
    pub cache_write: u64,
    /// Input tokens written for the longer cache lifetime (default: `cache_write`).
    pub cache_write_long: u64,
    /// Output (completion) tokens, reasoning included.
    pub output: u64,
    /// Micro-units per web search the provider ran for the call (not per million: 10.00 per
    /// 1,000 searches is `10_000`); 0 when the table gives none.
    pub web_search: u64,
    /// Micro-units per file search (vector store search) the provider ran for the call, as
    /// `web_search`.
    pub file_search: u64,
}

impl Prices {
    /// Prices with no cache discount or surcharge.
    pub fn flat(input: u64, output: u64) -> Self {
        Self {
            input,
            cached_input: input,
            cache_write: input,
            cache_write_long: input,
            output,
            web_search: 0,
            file_search: 0,
        }
    }

    /// Each price the larger of `self`'s and `other`'s.
    pub fn dearest(self, other: Self) -> Self {
        Self {
            input: self.input.max(other.input),
            cached_input: self.cached_input.max(other.cached_input),
            cache_write: self.cache_write.max(other.cache_write),
            cache_write_long: self.cache_write_long.max(other.cache_write_long),
            output: self.output.max(other.output),
            web_search: self.web_search.max(other.web_search),
            file_search: self.file_search.max(other.file_search),
        }
    }

    /// What a call that used `u` cost, rounded up to the next micro-unit. The input tokens are
    /// priced by kind: cache reads, cache writes (the long-lived ones apart), and the rest; a
    /// kind reported larger than what is left of the input is cut to it. Hosted tool calls are
    /// priced each.
    pub fn cost_micros(&self, u: &Usage) -> u64 {
        let cached = u.cached_input_tokens.min(u.input_tokens);
        let written = u.cache_write_input_tokens.min(u.input_tokens - cached);
        let long = u.cache_write_long_input_tokens.min(written);
        let plain = u.input_tokens - cached - written;
        // Each product fits in u128 (u64 × u64); only their sum can overflow.
        let total = (u128::from(plain) * u128::from(self.input))
            .saturating_add(u128::from(cached) * u128::from(self.cached_input))
            .saturating_add(u128::from(written - long) * u128::from(self.cache_write))
            .saturating_add(u128::from(long) * u128::from(self.cache_write_long))
            .saturating_add(u128::from(u.output_tokens) * u128::from(self.output));
        let calls = u.hosted_calls;
        let per_call = (u128::from(calls.web_searches) * u128::from(self.web_search))
            .saturating_add(u128::from(calls.file_searches) * u128::from(self.file_search));
        per_million(total).saturating_add(u64::try_from(per_call).unwrap_or(u64::MAX))
    }

    /// The most a call with `input` prompt tokens and at most `output` output tokens can cost,
    /// whatever the cache does (the agent decides what is written to it).
    pub fn worst_case_micros(&self, input: u64, output: u64) -> u64 {
        let per_input = self
            .input
            .max(self.cached_input)
            .max(self.cache_write)
            .max(self.cache_write_long);
        let total = (u128::from(input) * u128::from(per_input))
            .saturating_add(u128::from(output) * u128::from(self.output));
        per_million(total)
    }
}

fn per_million(total: u128) -> u64 {
    u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// What happens to a call whose model the table does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownModel {
    /// Price it with the table's `[default]` prices.
    Default,
    /// Refuse it (`model_not_priced`): the safe choice when cost ceilings matter.
    Refuse,
}

/// A loaded, validated price table.
#[derive(Debug, Clone)]
pub struct PriceTable {
    currency: String,
    unknown_model: UnknownModel,
    default: Option<Prices>,
    providers: BTreeMap<String, BTreeMap<String, Prices>>,
}

impl PriceTable {
    /// Reads and validates a price table file.
    pub fn load(path: &Path) -> Result<Self, Vec<String>> {
        let text = crate::whole_file::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates a price table; every problem is reported, prefixed with `origin`.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Vec<String>> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| vec![format!("{origin}: {e}")])?;
        let mut problems = Vec::new();
        let mut problem = |what: String| problems.push(format!("{origin}: {what}"));

        let currency = match doc.get("currency") {
            Some(toml::Value::String(c))
                if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                c.clone()
            }
            Some(other) => {
                problem(format!(
                    "currency must be a 3-letter ISO 4217 code such as \"USD\", not {other}"
                ));
                String::new()
            }
            None => {
                problem("currency is missing (a 3-letter ISO 4217 code such as \"USD\")".into());
                String::new()
            }
        };
        let unknown_model = match doc.get("unknown_model") {
            None => UnknownModel::Refuse,
            Some(toml::Value::String(s)) if s == "refuse" => UnknownModel::Refuse,
            Some(toml::Value::String(s)) if s == "default" => UnknownModel::Default,
            Some(other) => {
                problem(format!(
                    "unknown_model must be \"refuse\" or \"default\", not {other}"
                ));
                UnknownModel::Refuse
            }
        };
        let default = doc
            .get("default")
            .and_then(|v| prices(v, "default", &mut problem));
        if unknown_model == UnknownModel::Default && default.is_none() {
            problem("unknown_model = \"default\" needs a [default] table of prices".into());
        }
        let mut providers = BTreeMap::new();
        match doc.get("providers") {
            None => {}
            Some(toml::Value::Table(table)) => {
                for (provider, models) in table {
                    let Some(models) = models.as_table() else {
                        problem(format!(
                            "providers.{provider} must be a table of model = {{ input, output }}"
                        ));
                        continue;
                    };
                    let mut priced = BTreeMap::new();
                    for (model, v) in models {
                        let at = format!("providers.{provider}.\"{model}\"");
                        if let Some(p) = prices(v, &at, &mut problem) {
                            priced.insert(model.clone(), p);
                        }
                    }
                    providers.insert(provider.clone(), priced);
                }
            }
            Some(_) => problem("providers must be a table of [providers.NAME]".into()),
        }
        for key in doc.keys() {
            if !matches!(
                key.as_str(),
                "currency" | "unknown_model" | "default" | "providers"
            ) {
                problem(format!(
                    "unknown key `{key}` (expected currency, unknown_model, default, providers)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(Self {
                currency,
                unknown_model,
                default,
                providers,
            })
        } else {
            Err(problems)
        }
    }

    /// The ISO 4217 code every price and ceiling is in.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// What happens to a model the table does not list.
    pub fn unknown_model(&self) -> UnknownModel {
        self.unknown_model
    }

    /// Prices for `model` called through `provider` (from the route or the destination host),
    /// or `None` when the call must be refused as unpriced.
    ///
    /// A provider the table lists is searched alone. Without one (or one the table does not
    /// list), every provider is searched, and when several list the model at different prices
    /// each kind of token (and a search) takes the dearest of them, so an unknown route can
    /// never make a call cheaper than any listing of its model would.
    pub fn lookup(&self, provider: Option<&str>, model: &str) -> Option<Prices> {
        let found = match provider.and_then(|p| self.providers.get(p)) {
            Some(models) => find(models, model),
            None => self
                .providers
                .values()
                .filter_map(|models| find(models, model))
                .reduce(Prices::dearest),
        };
        found.or(match self.unknown_model {
            UnknownModel::Default => self.default,
            UnknownModel::Refuse => None,
        })
    }
}

/// The prices of `model` by exact name, else of its name without a dated snapshot suffix.
fn find(models: &BTreeMap<String, Prices>, model: &str) -> Option<Prices> {
    models
        .get(model)
        .or_else(|| models.get(without_snapshot(model)?))
        .copied()
}

/// `gpt-4o-2024-08-06` → `gpt-4o`, `claude-3-5-sonnet-20241022` → `claude-3-5-sonnet`,
/// `gpt-4-0613` → `gpt-4`, `claude-sonnet-4@20250514` → `claude-sonnet-4`; `None` when the name
/// ends in no such date.
fn without_snapshot(model: &str) -> Option<&str> {
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // -YYYY-MM-DD
    if let Some(base) = model.len().checked_sub(11).and_then(|i| {
        let (base, tail) = model.split_at_checked(i)?;
        let parts: Vec<&str> = tail.strip_prefix('-')?.split('-').collect();
        (matches!(parts.as_slice(), [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2
            && is_digits(y) && is_digits(m) && is_digits(d)))
        .then_some(base)
    }) {
        return (!base.is_empty()).then_some(base);
    }
    // @YYYYMMDD (Vertex AI's spelling: `claude-sonnet-4@20250514`)
    if let Some((base, tail)) = model.rsplit_once('@') {
        if tail.len() == 8 && is_digits(tail) {
            return (!base.is_empty()).then_some(base);
        }
    }
    // -YYYYMMDD or -MMDD
    let (base, tail) = model.rsplit_once('-')?;
    ((tail.len() == 8 || tail.len() == 4) && is_digits(tail) && !base.is_empty()).then_some(base)
}

/// What a price field's figure is per.
fn unit(field: &str) -> &'static str {
    if PER_CALL.contains(&field) {
        "per call"
    } else {
        "per million tokens"
    }
}

/// The price fields that are per hosted tool call, not per million tokens.
const PER_CALL: [&str; 2] = ["web_search", "file_search"];

/// Reads `{ input, cached_input?, cache_write?, cache_write_long?, output, web_search?,
/// file_search? }`; `cached_input` and `cache_write` default to `input`, `cache_write_long` to
/// `cache_write`, the per-call prices to 0.
fn prices(v: &toml::Value, at: &str, problem: &mut impl FnMut(String)) -> Option<Prices> {
    let Some(table) = v.as_table() else {
        problem(format!(
            "{at} must be {{ input = N, cached_input = N, output = N }}"
        ));
        return None;
    };
    let mut field = |name: &str| -> Option<Option<u64>> {
        match table.get(name) {
            None => Some(None),
            Some(toml::Value::Integer(n)) if *n >= 0 => Some(Some(*n as u64)),
            Some(toml::Value::Float(f)) => {
                let hint = if f.is_finite() && *f >= 0.0 {
                    format!(" (write {} for {f})", (f * 1_000_000.0).round() as u64)
                } else {
                    String::new()
                };
                problem(format!(
                    "{at}.{name} is a float; prices are integer micro-units of currency {}{hint}",
                    unit(name)
                ));
                None
            }
            Some(other) => {
                problem(format!(
                    "{at}.{name} must be a non-negative integer (micro-units {}), not {other}",
                    unit(name)
                ));
                None
            }
        }
    };
    let input = field("input");
    let cached_input = field("cached_input");
    let cache_write = field("cache_write");
    let cache_write_long = field("cache_write_long");
    let output = field("output");
    let web_search = field("web_search");
    let file_search = field("file_search");
    for key in table.keys() {
        if !matches!(
            key.as_str(),
            "input" | "cached_input" | "cache_write" | "cache_write_long" | "output"
        ) && !PER_CALL.contains(&key.as_str())
        {
            problem(format!(
                "{at}: unknown key `{key}` (expected input, cached_input, cache_write, \
                 cache_write_long, output, web_search, file_search)"
            ));
        }
    }
    // A field that was present but wrong has been reported already.
    let (
        Some(input),
        Some(cached_input),
        Some(cache_write),
        Some(cache_write_long),
        Some(output),
        Some(web_search),
        Some(file_search),
    ) = (
        input,
        cached_input,
        cache_write,
        cache_write_long,
        output,
        web_search,
        file_search,
    )
    else {
        return None;
    };
    match (input, output) {
        (Some(input), Some(output)) => {
            let cache_write = cache_write.unwrap_or(input);
            Some(Prices {
                input,
                cached_input: cached_input.unwrap_or(input),
                cache_write,
                cache_write_long: cache_write_long.unwrap_or(cache_write),
                output,
                web_search: web_search.unwrap_or(0),
                file_search: file_search.unwrap_or(0),
            })
        }
        (input, output) => {
            let missing: Vec<&str> = [("input", input), ("output", output)]
                .into_iter()
                .filter_map(|(name, v)| v.is_none().then_some(name))
                .collect();
            problem(format!("{at} is missing {}", missing.join(" and ")));
            None
        }
    }
}

/// Micro-units as a decimal amount with at least two decimals: `1_500_000` → `1.50`,
/// `1_234_567` → `1.234567`, `10` → `0.00001`.
pub fn format_micros(micros: u64) -> String {
    let fraction = format!("{:06}", micros % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    format!("{}.{fraction:0<2}", micros / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::HostedCalls;

    const TABLE: &str = r#"
currency = "USD"
unknown_model = "refuse"

[providers.openai]
"gpt-4o" = { input = 2_500_000, cached_input = 1_250_000, output = 10_000_000 }
"gpt-4o-mini" = { input = 150_000, cached_input = 75_000, output = 600_000 }
"gpt-4" = { input = 30_000_000, output = 60_000_000 }

[providers.anthropic]
"claude-3-5-sonnet" = { input = 3_000_000, cached_input = 300_000, output = 15_000_000 }

[providers.together]
"gpt-4o-mini" = { input = 200_000, output = 800_000 }
"#;

    fn table() -> PriceTable {
        PriceTable::parse(TABLE, "prices.toml").expect("valid table")
    }

    #[test]
    fn lookup_by_name_snapshot_and_provider() {
        let t = table();
        let mini = t.lookup(Some("openai"), "gpt-4o-mini").unwrap();
        assert_eq!(mini.output, 600_000);
        // Dated snapshots price as their model, never as a shorter model's prefix.
        assert_eq!(
            t.lookup(Some("openai"), "gpt-4o-mini-2024-07-18"),
            Some(mini)
        );
        assert_eq!(
            t.lookup(Some("openai"), "gpt-4o-2024-08-06")
                .unwrap()
                .output,
            10_000_000
        );
        assert_eq!(
            t.lookup(Some("openai"), "gpt-4-0613").unwrap().input,
            30_000_000
        );
        assert_eq!(
            t.lookup(Some("anthropic"), "claude-3-5-sonnet-20241022")
                .unwrap()
                .cached_input,
            300_000
        );
        assert_eq!(t.lookup(Some("openai"), "gpt-4o-mini-audio"), None);
        assert_eq!(t.lookup(Some("openai"), "gpt-4o-mini-tts"), None);
        // A listed provider is searched alone.
        assert_eq!(t.lookup(Some("anthropic"), "gpt-4o-mini"), None);
        // Unknown or absent provider: every provider, dearest on disagreement.
        assert_eq!(t.lookup(None, "gpt-4o-mini").unwrap().output, 800_000);
        assert_eq!(
            t.lookup(Some("azure"), "gpt-4o-mini").unwrap().output,
            800_000
        );
        // cached_input defaults to input.
        assert_eq!(t.lookup(None, "gpt-4").unwrap().cached_input, 30_000_000);
        assert_eq!(t.lookup(None, "llama-3"), None);
        assert_eq!(t.unknown_model(), UnknownModel::Refuse);
        assert_eq!(t.currency(), "USD");
    }

    /// Two providers list a model, one dearer for output, the other for cache writes and
    /// searches: a call on an unknown route pays the dearer of each, whatever it used.
    #[test]
    fn an_unknown_route_pays_the_dearest_of_every_price() {
        let t = PriceTable::parse(
            "currency = \"USD\"\n[providers.a]\n\"m\" = { input = 1, output = 9 }\n[providers.b]\n\"m\" = { input = 2, cached_input = 1, cache_write = 7, cache_write_long = 8, output = 3, web_search = 5, file_search = 4 }\n[providers.c]\n\"m\" = { input = 1, output = 1, file_search = 6 }\n",
            "p",
        )
        .unwrap();
        let p = t.lookup(None, "m").unwrap();
        assert_eq!(
            p,
            Prices {
                input: 2,
                cached_input: 1,
                cache_write: 7,
                cache_write_long: 8,
                output: 9,
                web_search: 5,
                file_search: 6,
            }
        );
        for listed in ["a", "b", "c"] {
            let q = t.lookup(Some(listed), "m").unwrap();
            let u = Usage {
                hosted_calls: HostedCalls {
                    web_searches: 2,
                    file_searches: 3,
                },
                ..used(1_000_000, 0, 500_000, 100_000, 1_000_000)
            };
            assert!(p.cost_micros(&u) >= q.cost_micros(&u), "{listed}");
        }
    }

    #[test]
    fn unknown_models_use_the_default_when_configured() {
        let t = PriceTable::parse(
            "currency = \"EUR\"\nunknown_model = \"default\"\n[default]\ninput = 1\noutput = 2\n",
            "p",
        )
        .unwrap();
        assert_eq!(
            t.lookup(Some("openai"), "anything"),
            Some(Prices::flat(1, 2))
        );
    }

    /// `input` input tokens of which `cached` read and `written` (`long` of them for the longer
    /// lifetime) written to the cache, and `output` output tokens.
    fn used(input: u64, cached: u64, written: u64, long: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            cached_input_tokens: cached,
            cache_write_input_tokens: written,
            cache_write_long_input_tokens: long,
            output_tokens: output,
            hosted_calls: HostedCalls::default(),
        }
    }

    #[test]
    fn costs_are_integer_and_round_up() {
        let p = Prices {
            cached_input: 75_000,
            ..Prices::flat(150_000, 600_000)
        };
        // 1000 input (400 cached), 100 output: 600*0.15 + 400*0.075 + 100*0.6 = 180 micros.
        assert_eq!(p.cost_micros(&used(1000, 400, 0, 0, 100)), 180);
        // One token at 0.15 micros rounds up to 1.
        assert_eq!(p.cost_micros(&used(1, 0, 0, 0, 0)), 1);
        assert_eq!(p.cost_micros(&used(0, 0, 0, 0, 0)), 0);
        // More cached than input is clamped, never underflows.
        assert_eq!(p.cost_micros(&used(10, 50, 0, 0, 0)), 1);
        // Worst case prices every input token as uncached.
        assert_eq!(p.worst_case_micros(1000, 100), 210);
        assert!(p.worst_case_micros(1000, 100) >= p.cost_micros(&used(1000, 400, 0, 0, 100)));
        let huge = Prices::flat(u64::MAX, u64::MAX);
        assert_eq!(huge.worst_case_micros(u64::MAX, u64::MAX), u64::MAX);
    }

    /// Anthropic's cache: writes cost 1.25× the input (2× for the one-hour cache), reads 0.1×.
    #[test]
    fn cache_writes_are_priced_as_writes_and_reads_as_reads() {
        let t = PriceTable::parse(
            "currency = \"USD\"\n[providers.anthropic]\n\"claude-sonnet-4\" = { input = 3_000_000, cached_input = 300_000, cache_write = 3_750_000, cache_write_long = 6_000_000, output = 15_000_000 }\n\"plain\" = { input = 2, output = 3 }\n\"writes\" = { input = 2, cache_write = 5, output = 3 }\n",
            "p",
        )
        .unwrap();
        let p = t.lookup(Some("anthropic"), "claude-sonnet-4").unwrap();
        // 8 plain + 27,000 written + 50 output: 8*3 + 27000*3.75 + 50*15 = 102,024 micros.
        assert_eq!(p.cost_micros(&used(27_008, 0, 27_000, 0, 50)), 102_024);
        // 1,000 of the writes for an hour: 2.25 more each.
        assert_eq!(p.cost_micros(&used(27_008, 0, 27_000, 1_000, 50)), 104_274);
        // Reads and writes together, the rest plain: 1000*0.3 + 2000*3.75 + 100*3 = 8,100.
        assert_eq!(p.cost_micros(&used(3_100, 1_000, 2_000, 0, 0)), 8_100);
        // Writes reported beyond the input are cut to what is left of it.
        assert_eq!(
            p.cost_micros(&used(100, 40, 500, 900, 0)),
            p.cost_micros(&used(100, 40, 60, 60, 0))
        );
        // The worst case prices every input token at the dearest input kind.
        assert_eq!(p.worst_case_micros(1_000, 0), 6_000);
        // Unlisted cache prices are the input price.
        assert_eq!(t.lookup(None, "plain").unwrap(), Prices::flat(2, 3));
        let w = t.lookup(None, "writes").unwrap();
        assert_eq!((w.cache_write, w.cache_write_long), (5, 5));
    }

    /// A hosted tool call is priced each, on top of the tokens (whose price is per million); a
    /// model the table gives no price for a tool has free calls to it, and a float or negative
    /// one is an error that says what the figure is per.
    #[test]
    fn hosted_tool_calls_are_priced_per_call() {
        let t = PriceTable::parse(
            "currency = \"USD\"\n[providers.openai]\n\"gpt-4o\" = { input = 3_000_000, output = 15_000_000, web_search = 10_000, file_search = 2_500 }\n\"plain\" = { input = 2, output = 3 }\n",
            "p",
        )
        .unwrap();
        let p = t.lookup(Some("openai"), "gpt-4o").unwrap();
        assert_eq!((p.web_search, p.file_search), (10_000, 2_500));
        let searched = Usage {
            hosted_calls: HostedCalls {
                web_searches: 3,
                file_searches: 2,
            },
            ..used(1_000, 0, 0, 0, 100)
        };
        // 1000 × 3 + 100 × 15 = 4,500 for the tokens, 3 × 10,000 for the web searches and
        // 2 × 2,500 for the file searches.
        assert_eq!(p.cost_micros(&searched), 39_500);
        let plain = t.lookup(None, "plain").unwrap();
        assert_eq!((plain.web_search, plain.file_search), (0, 0));
        let huge = Prices {
            web_search: u64::MAX,
            file_search: u64::MAX,
            ..Prices::flat(u64::MAX, u64::MAX)
        };
        let all = Usage {
            hosted_calls: HostedCalls {
                web_searches: u64::MAX,
                file_searches: u64::MAX,
            },
            ..used(u64::MAX, 0, 0, 0, u64::MAX)
        };
        assert_eq!(huge.cost_micros(&all), u64::MAX);
        let only_files = Usage {
            hosted_calls: HostedCalls {
                web_searches: 0,
                file_searches: u64::MAX,
            },
            ..used(0, 0, 0, 0, 0)
        };
        assert_eq!(huge.cost_micros(&only_files), u64::MAX);
        for (entry, says) in [
            (
                "web_search = 0.01",
                "integer micro-units of currency per call (write 10000",
            ),
            ("web_search = -1", "micro-units per call"),
            ("file_search = 2.5", "per call (write 2500000"),
            ("file_search = \"2500\"", "micro-units per call"),
            ("file_searches = 1", "unknown key `file_searches`"),
        ] {
            let problems = PriceTable::parse(
                &format!("currency = \"USD\"\n[providers.openai]\n\"m\" = {{ input = 1, output = 1, {entry} }}\n"),
                "p",
            )
            .unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains(says)),
                "{entry}: {problems:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        #[test]
        fn fuzz_settled_cost_never_exceeds_the_worst_case(
            input in 0u64..10_000_000, cached in 0u64..10_000_000, output in 0u64..1_000_000,
            written in 0u64..10_000_000, long in 0u64..10_000_000, extra in 0u64..1_000_000,
            pi in 0u64..100_000_000, pc in 0u64..100_000_000, po in 0u64..100_000_000,
            pw in 0u64..100_000_000, pl in 0u64..100_000_000,
        ) {
            let p = Prices {
                input: pi,
                cached_input: pc,
                cache_write: pw,
                cache_write_long: pl,
                output: po,
                web_search: 0,
                file_search: 0,
            };
            let u = used(input, cached, written, long, output);
            proptest::prop_assert!(p.cost_micros(&u) <= p.worst_case_micros(input, output + extra));
        }
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            (
                "currency = \"USD\"\n[providers.openai]\n\"m\" = { input = 0.15, output = 1 }\n",
                "write 150000 for 0.15",
            ),
            (
                "currency = \"USD\"\n[providers.openai]\n\"m\" = { input = -1, output = 1 }\n",
                "non-negative integer",
            ),
            (
                "currency = \"usd\"\n",
                "3-letter ISO 4217",
            ),
            ("unknown_model = \"refuse\"\n", "currency is missing"),
            (
                "currency = \"USD\"\nunknown_model = \"default\"\n",
                "needs a [default]",
            ),
            (
                "currency = \"USD\"\nunknown_model = \"allow\"\n",
                "\"refuse\" or \"default\"",
            ),
            (
                "currency = \"USD\"\n[providers.openai]\n\"m\" = { input = 1 }\n",
                "is missing output",
            ),
            (
                "currency = \"USD\"\n[providers.openai]\n\"m\" = { input = 1, output = 1, ouput = 2 }\n",
                "unknown key `ouput`",
            ),
            ("currency = \"USD\"\nprice = 3\n", "unknown key `price`"),
            ("currency = \"USD\"\n[providers]\nopenai = 3\n", "providers.openai must be"),
            ("currency = ", "prices.toml"),
        ];
        for (text, want) in cases {
            let problems = PriceTable::parse(text, "prices.toml").expect_err(text);
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(want) && p.starts_with("prices.toml")),
                "{text:?}: {problems:?}"
            );
        }
        assert!(
            PriceTable::load(Path::new("/nonexistent/prices.toml")).unwrap_err()[0]
                .contains("cannot read /nonexistent/prices.toml")
        );
    }

    #[test]
    fn snapshot_suffixes() {
        assert_eq!(without_snapshot("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            without_snapshot("claude-3-5-sonnet-20241022"),
            Some("claude-3-5-sonnet")
        );
        assert_eq!(without_snapshot("gpt-4-0613"), Some("gpt-4"));
        assert_eq!(
            without_snapshot("claude-sonnet-4@20250514"),
            Some("claude-sonnet-4")
        );
        assert_eq!(without_snapshot("claude@latest"), None);
        assert_eq!(without_snapshot("@20250514"), None);
        assert_eq!(without_snapshot("gpt-4o"), None);
        assert_eq!(without_snapshot("llama-3-70b"), None);
        assert_eq!(without_snapshot("2024-08-06"), None);
        assert_eq!(without_snapshot("-2024-08-06"), None);
        assert_eq!(without_snapshot("o1-2024-12-17"), Some("o1"));
        assert_eq!(
            without_snapshot("gpt-3.5-turbo-0125"),
            Some("gpt-3.5-turbo")
        );
        assert_eq!(without_snapshot("model-123"), None);
    }

    #[test]
    fn money_formats_with_two_decimals_at_least() {
        assert_eq!(format_micros(1_500_000), "1.50");
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(10), "0.00001");
        assert_eq!(format_micros(0), "0.00");
        assert_eq!(format_micros(42_000_000), "42.00");
    }
}

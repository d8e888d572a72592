//! Reading what a request body names (the model and the output ceiling) in every provider's
//! spelling at once.
//!
//! SECURITY: the fields feed policy (`context.model`) and token budgets, and the proxy cannot
//! be sure which provider's reader an upstream uses (a gateway may take any of them), so the
//! fields of every provider in [`super::registry::PROVIDERS`] are read from every body, and a
//! body is refused when any of them is ambiguous: given twice in one object (upstream parsers
//! keep the last copy, a check of the first would be worthless) or of the wrong type. Field
//! names are compared exactly, as providers' JSON parsers do; form fields ignoring ASCII case.

use std::fmt;
use std::sync::LazyLock;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;

use super::registry::PROVIDERS;
use super::{Field, Provider};
use crate::json_scalar::Scalar;

/// What a JSON request body names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    /// The model (the first model field present, in precedence order).
    pub model: Option<String>,
    /// The other models the call uses beside it (a Bedrock inline agent's collaborators, a
    /// Realtime session's transcription model), each once, never `model` itself: each is put to
    /// the policy as `model` is.
    pub other_models: Vec<String>,
    /// Of `other_models`, those a gateway may answer with instead of `model` (its fallback
    /// lists, see [`MODEL_LIST_FIELDS`]): the call is priced at the dearest of them all.
    pub fallback_models: Vec<String>,
    /// The output ceiling: the largest of the ceiling fields present. SECURITY: which one an
    /// upstream reads is its choice (`max_tokens` or `max_completion_tokens`, say), so the
    /// reservation covers the largest.
    pub max_output_tokens: Option<u64>,
    /// Which ceiling fields the body set: whether the call's own API reads any of them.
    pub ceiling_fields: CeilingFields,
    /// How many completions the call asks for (`n`, `best_of`, Gemini's `candidateCount`): the
    /// largest present. Each is generated up to the output ceiling.
    pub choices: Option<u64>,
    /// It asks to run in the background (the Responses API's `"background": true`): the call
    /// returns at once, and what it spends shows only in a later response.
    pub background: bool,
    /// A hosted tool it offers the model that is billed other than by the tokens a response
    /// reports (per image, container or grounded prompt): what the tool spends, no response
    /// shows ([`BILLED_TOOLS`]).
    pub billed_tool: Option<&'static str>,
}

/// The fields that ask for several completions in one call, in every provider's spelling.
const CHOICE_FIELDS: [Field; 6] = [
    &["n"],
    &["best_of"],
    // Gemini's JSON front ends take proto field names as well as their JSON names.
    &["generationConfig", "candidateCount"],
    &["generationConfig", "candidate_count"],
    &["generation_config", "candidateCount"],
    &["generation_config", "candidate_count"],
];

/// Fields in which a gateway takes more models for one call, beside its `model`: models it may
/// route the call to instead (OpenRouter's `models` fallback list; LiteLLM's `fallbacks`,
/// `context_window_fallback_dict` and `content_policy_fallbacks`). SECURITY: the upstream may
/// answer with any of them, so each is decided as the call's model is; a string, an array of
/// strings or objects, or an object whose keys and values name models (every string in it is
/// taken for a model: a shape the proxy misreads refuses rather than passes).
///
/// LiteLLM merges `extra_body` into the body it sends on (so each of these, and a `model`
/// there, is read in it too), and builds a router for the one call from `user_config`'s
/// `model_list`, whose entries name the models it runs.
const MODEL_LIST_FIELDS: [Field; 10] = [
    &["models"],
    &["fallbacks"],
    &["context_window_fallback_dict"],
    &["content_policy_fallbacks"],
    &["extra_body", "model"],
    &["extra_body", "models"],
    &["extra_body", "fallbacks"],
    &["extra_body", "context_window_fallback_dict"],
    &["extra_body", "content_policy_fallbacks"],
    &["user_config", "model_list", EACH, "litellm_params", "model"],
];

/// The field that asks a call to run in the background (the Responses API's).
const BACKGROUND_FIELD: Field = &["background"];

/// The object a gateway (LiteLLM) merges into the body it sends on.
const GATEWAY_MERGED: &str = "extra_body";

/// Hosted tools billed other than by the tokens a response reports, by the `type` a tool's
/// object names (the Responses API's, Anthropic's: a prefix, their versions are dated). The
/// hosted tools whose calls the proxy reads and prices (web and file search) are not here.
const BILLED_TOOL_TYPES: [(&str, &str); 5] = [
    (
        "image_generation",
        "the image generation tool (billed per image)",
    ),
    (
        "code_interpreter",
        "the code interpreter tool (billed per container)",
    ),
    (
        "code_execution_",
        "the code execution tool (billed per container hour)",
    ),
    // xAI's server-side tools, billed per call.
    (
        "code_execution",
        "the code execution tool (billed per call)",
    ),
    ("x_search", "xAI's X search tool (billed per call)"),
];

/// Gemini's and Vertex AI's grounding tools (billed per grounded prompt or query), by the key
/// of a tool's object, in JSON and proto spelling; the chat search models' search (billed per
/// call, never reported); xAI's Live Search and OpenRouter's plugins.
const BILLED_TOOLS: [(Field, &str, Offered); 12] = [
    (
        &["tools", EACH, "googleSearch"],
        GROUNDING,
        Offered::NotNull,
    ),
    (
        &["tools", EACH, "google_search"],
        GROUNDING,
        Offered::NotNull,
    ),
    (
        &["tools", EACH, "googleSearchRetrieval"],
        GROUNDING,
        Offered::NotNull,
    ),
    (
        &["tools", EACH, "google_search_retrieval"],
        GROUNDING,
        Offered::NotNull,
    ),
    (&["tools", EACH, "googleMaps"], GROUNDING, Offered::NotNull),
    (&["tools", EACH, "google_maps"], GROUNDING, Offered::NotNull),
    (
        &["tools", EACH, "enterpriseWebSearch"],
        GROUNDING,
        Offered::NotNull,
    ),
    (
        &["tools", EACH, "enterprise_web_search"],
        GROUNDING,
        Offered::NotNull,
    ),
    // Vertex AI's grounding with Vertex AI Search or a RAG corpus.
    (&["tools", EACH, "retrieval"], GROUNDING, Offered::NotNull),
    (
        &["web_search_options"],
        "a chat search model's web search (billed per call)",
        Offered::NotNull,
    ),
    // Billed per source searched; per web result and per parsed page.
    (
        &["search_parameters"],
        "xAI's Live Search (billed per source)",
        Offered::ModeNotOff,
    ),
    (
        &["plugins"],
        "OpenRouter's plugins (web search and file parsing, billed per use)",
        Offered::NotEmptyList,
    ),
];

const GROUNDING: &str =
    "grounding with Google Search, Maps or a search index (billed per grounded prompt)";

/// Models that search (or run tools) on every call, billed per search beside their tokens,
/// by a part of their name: OpenAI's chat search models, OpenRouter's `:online` variants,
/// Groq's compound systems.
pub fn billed_model(model: &str) -> Option<&'static str> {
    // Asked of every call's models: compared in place, ignoring ASCII case, nothing copied.
    let m = model.as_bytes();
    let has = |part: &[u8]| m.windows(part.len()).any(|w| w.eq_ignore_ascii_case(part));
    // A gateway's prefixes (`openrouter/perplexity/…`, LiteLLM's `groq/groq/…`) before it.
    let name = m.rsplit(|b| *b == b'/').next().unwrap_or(m);
    let starts = |part: &[u8]| {
        name.get(..part.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(part))
    };
    if has(b"-search-preview") || has(b"-search-api") {
        return Some("a chat search model (billed per search)");
    }
    if has(b"deep-research") {
        return Some("a deep research model (its searches billed per call)");
    }
    // OpenRouter's variants stack (`…:online:nitro`).
    if has(b":online") {
        return Some("an `:online` model (web search billed per result)");
    }
    if starts(b"compound") {
        return Some("a compound model (its tools billed per use)");
    }
    // Perplexity's, under any prefix (its older `llama-3.1-sonar-…-online` too).
    if has(b"sonar") {
        return Some("a Sonar model (billed per request for its searches)");
    }
    None
}

/// The `type` of a tool's object.
const TOOL_TYPE: Field = &["tools", EACH, "type"];

/// xAI's `search_parameters`, as far as whether it searches: its `mode`.
#[derive(serde::Deserialize)]
struct ModeOnly {
    mode: Option<String>,
}

/// When a billed tool's field offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Whenever it is not `null` (an empty object turns Google Search on).
    NotNull,
    /// Unless `null` or an empty list (OpenRouter's `plugins: []`).
    NotEmptyList,
    /// Unless `null` or `{"mode": "off"}` (xAI's `search_parameters`).
    ModeNotOff,
}

impl Offered {
    /// Reads the field's value from `map` and tells whether it offers the tool. (Rare fields:
    /// read whole.) `search_parameters` is read as the fields it is, so a `mode` given twice
    /// is refused as any field is (servers disagree on which copy wins).
    fn read<'de, A: MapAccess<'de>>(self, map: &mut A) -> Result<bool, A::Error> {
        Ok(match self {
            Offered::ModeNotOff => map
                .next_value::<Option<ModeOnly>>()?
                .is_some_and(|p| p.mode.as_deref() != Some("off")),
            Offered::NotNull => !map.next_value::<serde_json::Value>()?.is_null(),
            Offered::NotEmptyList => map
                .next_value::<Option<serde_json::Value>>()?
                .is_some_and(|v| v.as_array().is_none_or(|list| !list.is_empty())),
        })
    }
}

/// In a field's path: each element of an array (`["collaborators", EACH, "foundationModel"]`).
pub const EACH: &str = "*";

/// Most distinct models one body may name: each is a policy decision.
pub const MAX_MODELS: usize = 16;

/// Reads the model and ceiling fields of every provider from a JSON object. Allocates only the
/// model name it returns.
pub fn read_json(body: &[u8]) -> Result<Named, serde_json::Error> {
    read(&FIELDS, body)
}

/// What a form field (a URL-encoded pair, a multipart part) is, by its name compared ignoring
/// ASCII case: a model field or a ceiling field (with its precedence rank), or neither. Forms
/// are flat, so only top-level fields are form fields.
pub fn form_field(name: &str) -> Option<Slot> {
    FIELDS
        .root
        .iter()
        .find(|n| n.key.eq_ignore_ascii_case(name))
        .and_then(|n| n.slot)
}

/// What a field holds, with its rank in precedence order (0 first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A model name.
    Model(usize),
    /// A second model the call uses beside its own (a Realtime session's transcription model):
    /// the call's model only when no field names its own, else one of its other models.
    SecondaryModel(usize),
    /// A model inside an array (a Bedrock inline agent's collaborators): one of the call's
    /// other models.
    OtherModel,
    /// Models a gateway may route the call to instead (see [`MODEL_LIST_FIELDS`]): each one of
    /// the call's other models.
    ModelList,
    /// An output ceiling.
    Ceiling(usize),
    /// A number of completions.
    Choices(usize),
    /// Whether the call runs in the background (only JSON `true` says so: other APIs use the
    /// name for other things, such as an image's `"background": "transparent"`).
    Background,
    /// A tool's `type`: one of [`BILLED_TOOL_TYPES`] or not.
    ToolType,
    /// A billed hosted tool, offered when present and not free by its [`Offered`] rule.
    BilledTool(&'static str, Offered),
}

/// The ceiling fields a body set, by their rank among every provider's ceiling fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CeilingFields(u64);

impl CeilingFields {
    /// Notes the ceiling field of `rank` as set.
    pub fn set(&mut self, rank: usize) {
        self.0 |= u32::try_from(rank)
            .ok()
            .and_then(|r| 1u64.checked_shl(r))
            .unwrap_or(0);
    }

    /// Whether `provider`'s API reads one of these fields. SECURITY: only such a field caps what
    /// the call generates; a field of another API's spelling (`max_output_tokens` in a chat
    /// completion, which chat servers ignore) caps nothing, and a call that sets no other is
    /// reserved and guarded as one that sets no ceiling.
    pub fn read_by(self, provider: &dyn Provider) -> bool {
        provider
            .request_fields()
            .ceilings
            .iter()
            .filter_map(|field| FIELDS.slot(field))
            .any(|slot| match slot {
                Slot::Ceiling(rank) => {
                    let bit = u32::try_from(rank).ok().and_then(|r| 1u64.checked_shl(r));
                    bit.is_some_and(|bit| self.0 & bit != 0)
                }
                _ => false,
            })
    }
}

/// Every provider's fields, as a tree of object keys, built once.
static FIELDS: LazyLock<Tree> = LazyLock::new(|| Tree::build(PROVIDERS));

#[derive(Debug, Default)]
struct Tree {
    root: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    key: &'static str,
    /// A leaf: what it holds.
    slot: Option<Slot>,
    /// An object: the fields inside it.
    children: Vec<Node>,
}

impl Tree {
    /// The union of `providers`' fields; a field two providers share is one field, ranked where
    /// it first appears.
    fn build(providers: &[&dyn Provider]) -> Self {
        let mut tree = Tree::default();
        let (mut models, mut ceilings) = (0, 0);
        for p in providers {
            let fields = p.request_fields();
            for field in fields.model {
                // A transcription's model (a Realtime session's) is the call's second model,
                // beside its own; one inside an array is one of several the call uses; any other
                // is the model the call runs.
                let slot = if field.contains(&EACH) {
                    Slot::OtherModel
                } else if field.iter().any(|k| k.contains("transcription")) {
                    Slot::SecondaryModel(models)
                } else {
                    Slot::Model(models)
                };
                // Other models have no rank: each is decided, none chosen.
                if tree.insert(field, slot) && slot != Slot::OtherModel {
                    models += 1;
                }
            }
            for field in fields.ceilings {
                if tree.insert(field, Slot::Ceiling(ceilings)) {
                    ceilings += 1;
                }
            }
        }
        for (rank, field) in CHOICE_FIELDS.into_iter().enumerate() {
            tree.insert(field, Slot::Choices(rank));
        }
        for field in MODEL_LIST_FIELDS {
            tree.insert(field, Slot::ModelList);
        }
        tree.insert(BACKGROUND_FIELD, Slot::Background);
        tree.insert(TOOL_TYPE, Slot::ToolType);
        for (field, what, offered) in BILLED_TOOLS {
            tree.insert(field, Slot::BilledTool(what, offered));
        }
        // SECURITY: LiteLLM merges `extra_body` into the body it sends on, so a ceiling, a
        // number of completions or `background` there is the call's too. A ceiling there counts
        // toward the largest (the reservation covers it) under a rank of its own, which no
        // provider's API reads: alone, it caps nothing (see `CeilingFields::read_by`).
        let top: Vec<(&'static str, Slot)> = tree
            .root
            .iter()
            .filter(|n| n.children.is_empty())
            .filter_map(|n| n.slot.map(|slot| (n.key, slot)))
            .filter(|(_, slot)| {
                matches!(slot, Slot::Ceiling(_) | Slot::Choices(_) | Slot::Background)
            })
            .collect();
        for (key, slot) in top {
            let slot = match slot {
                Slot::Ceiling(_) => Slot::Ceiling(ceilings),
                other => other,
            };
            if tree.insert(&[GATEWAY_MERGED, key], slot) && matches!(slot, Slot::Ceiling(_)) {
                ceilings += 1;
            }
        }
        // And the hosted tools it offers (their models, the billed ones).
        tree.insert(&[GATEWAY_MERGED, "tools", EACH, "model"], Slot::OtherModel);
        tree.insert(&[GATEWAY_MERGED, "tools", EACH, "type"], Slot::ToolType);
        for (field, what, offered) in BILLED_TOOLS {
            let merged: Vec<&'static str> = std::iter::once(GATEWAY_MERGED)
                .chain(field.iter().copied())
                .collect();
            tree.insert(&merged, Slot::BilledTool(what, offered));
        }
        tree
    }

    /// What `field` holds, if it is one of the tree's.
    fn slot(&self, field: Field) -> Option<Slot> {
        let (last, path) = field.split_last()?;
        let mut level = &self.root;
        for key in path {
            level = &level.iter().find(|n| n.key == *key)?.children;
        }
        level.iter().find(|n| n.key == *last)?.slot
    }

    /// Adds `field` holding `slot`; false when it is there already.
    fn insert(&mut self, field: &[&'static str], slot: Slot) -> bool {
        let mut level = &mut self.root;
        for (depth, key) in field.iter().enumerate() {
            let at = match level.iter().position(|n| n.key == *key) {
                Some(at) => at,
                None => {
                    level.push(Node {
                        key,
                        slot: None,
                        children: Vec::new(),
                    });
                    level.len() - 1
                }
            };
            let node = &mut level[at];
            if depth + 1 == field.len() {
                if node.slot.is_some() {
                    return false;
                }
                node.slot = Some(slot);
                return true;
            }
            level = &mut node.children;
        }
        false
    }
}

/// Reads `providers`' fields only (a provider's own tests).
#[cfg(test)]
pub(crate) fn read_json_with(
    providers: &[&dyn Provider],
    body: &[u8],
) -> Result<Named, serde_json::Error> {
    read(&Tree::build(providers), body)
}

fn read(tree: &Tree, body: &[u8]) -> Result<Named, serde_json::Error> {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(Level {
        nodes: &tree.root,
        found: &mut found,
    })?;
    de.end()?;
    // Every secondary model is one of the call's other models, but for the best-ranked one
    // when no field names the call's own (a transcription session's model is its model).
    let mut secondary = found.secondary_models;
    secondary.sort_by_key(|(rank, _)| *rank);
    let mut secondary = secondary.into_iter().map(|(_, m)| m);
    let model = match found.model {
        Some((_, model)) => Some(model),
        None => secondary.next(),
    };
    let mut other_models: Vec<String> = secondary.chain(found.others).collect();
    other_models.sort_unstable();
    other_models.dedup();
    other_models.retain(|m| Some(m) != model.as_ref());
    let mut fallback_models = found.fallbacks;
    fallback_models.retain(|m| Some(m) != model.as_ref());
    Ok(Named {
        model,
        other_models,
        fallback_models,
        max_output_tokens: found.ceiling,
        ceiling_fields: found.ceiling_fields,
        choices: found.choices,
        background: found.background,
        billed_tool: found.billed_tool,
    })
}

/// The best-ranked model and the largest numbers found so far.
#[derive(Default)]
struct Found {
    model: Option<(usize, String)>,
    /// Every secondary model named (a body may carry the beta and the GA spelling both).
    secondary_models: Vec<(usize, String)>,
    /// Models inside arrays, each once.
    others: Vec<String>,
    /// Models of a gateway's fallback lists, each once (also in `others`).
    fallbacks: Vec<String>,
    ceiling: Option<u64>,
    ceiling_fields: CeilingFields,
    choices: Option<u64>,
    background: bool,
    billed_tool: Option<&'static str>,
}

/// Keeps the larger of `best` and `value`.
fn largest(best: &mut Option<u64>, value: Option<u64>) {
    if let Some(v) = value {
        *best = Some(best.map_or(v, |b| b.max(v)));
    }
}

fn keep<T>(best: &mut Option<(usize, T)>, rank: usize, value: Option<T>) {
    if let Some(v) = value {
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            *best = Some((rank, v));
        }
    }
}

/// A tool's `type` (a string or `null`): what it is billed as when it is one of
/// [`BILLED_TOOL_TYPES`]. Read in place (every tool of every call has one), nothing copied.
struct BilledType;

impl<'de> DeserializeSeed<'de> for BilledType {
    type Value = Option<&'static str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BilledType {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tool's type, a string")
    }

    fn visit_str<E: de::Error>(self, t: &str) -> Result<Self::Value, E> {
        Ok(BILLED_TOOL_TYPES
            .iter()
            .find(|(name, _)| match name.strip_suffix('_') {
                Some(_) => t.starts_with(name),
                None => t == *name,
            })
            .map(|(_, what)| *what))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// One JSON object: the fields of `nodes` in it, each at most once.
struct Level<'t, 'f> {
    nodes: &'t [Node],
    found: &'f mut Found,
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Levels hold a handful of fields; one past 64 could not be told twice, so it refuses.
        let mut seen = 0u64;
        while let Some(key) = map.next_key_seed(Key(self.nodes))? {
            let Some(at) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let node = &self.nodes[at];
            let bit = u32::try_from(at)
                .ok()
                .and_then(|at| 1u64.checked_shl(at))
                .ok_or_else(|| de::Error::custom("too many request fields to check"))?;
            if seen & bit != 0 {
                return Err(de::Error::duplicate_field(node.key));
            }
            seen |= bit;
            match node.slot {
                Some(Slot::Model(rank)) => {
                    let v: Option<String> = map.next_value()?;
                    // SECURITY: two fields that name different models (a decoy `model` beside
                    // Bedrock's `targetModelId`) leave the choice to the upstream's reader.
                    if let (Some((_, kept)), Some(v)) = (&self.found.model, &v) {
                        if kept != v {
                            return Err(de::Error::custom(format!(
                                "the body names two models, `{kept}` and `{v}` (in `{}`); which \
                                 one a server uses is its choice",
                                node.key
                            )));
                        }
                    }
                    keep(&mut self.found.model, rank, v);
                }
                Some(Slot::SecondaryModel(rank)) => {
                    let v: Option<String> = map.next_value()?;
                    self.found.secondary_models.extend(v.map(|v| (rank, v)));
                }
                Some(Slot::OtherModel) => {
                    let v: Option<String> = map.next_value()?;
                    if let Some(v) = v.filter(|v| !self.found.others.contains(v)) {
                        if self.found.others.len() == MAX_MODELS {
                            return Err(de::Error::custom(format!(
                                "the body names more than {MAX_MODELS} models"
                            )));
                        }
                        self.found.others.push(v);
                    }
                }
                Some(Slot::ModelList) => map.next_value_seed(ModelList(self.found))?,
                Some(Slot::Ceiling(rank)) => {
                    let v: Option<u64> = map.next_value()?;
                    if v.is_some() {
                        self.found.ceiling_fields.set(rank);
                    }
                    largest(&mut self.found.ceiling, v);
                }
                Some(Slot::Choices(_)) => {
                    let Count(v) = map.next_value()?;
                    largest(&mut self.found.choices, v);
                }
                Some(Slot::Background) => {
                    let v: Scalar = map.next_value()?;
                    self.found.background |= truthy(&v);
                }
                Some(Slot::ToolType) => {
                    let billed = map.next_value_seed(BilledType)?;
                    self.found.billed_tool = self.found.billed_tool.or(billed);
                }
                Some(Slot::BilledTool(what, offered)) => {
                    if offered.read(&mut map)? {
                        self.found.billed_tool = self.found.billed_tool.or(Some(what));
                    }
                }
                None => map.next_value_seed(Nested {
                    nodes: &node.children,
                    found: self.found,
                })?,
            }
        }
        Ok(())
    }
}

/// A gateway's model list (a list, a map, or lists of maps: every string in it, object keys
/// too, is a model a gateway may use), each model added to the fallbacks and the other models
/// as it is read. SECURITY: no tree of the value is built (8 MiB of `[1,1,…]` made one of
/// 600 MB before the policy was asked), and past [`MAX_MODELS`] distinct models the body is
/// refused as it is read.
struct ModelList<'f>(&'f mut Found);

impl<'de> DeserializeSeed<'de> for ModelList<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl ModelList<'_> {
    fn name<E: de::Error>(&mut self, model: &str) -> Result<(), E> {
        if !self.0.fallbacks.iter().any(|m| m == model) {
            self.0.fallbacks.push(model.to_owned());
        }
        if self.0.others.iter().any(|m| m == model) {
            return Ok(());
        }
        if self.0.others.len() == MAX_MODELS {
            return Err(E::custom(format!(
                "the body names more than {MAX_MODELS} models"
            )));
        }
        self.0.others.push(model.to_owned());
        Ok(())
    }
}

impl<'de> Visitor<'de> for ModelList<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of models")
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.name(v)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ModelList(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            self.name(&key)?;
            map.next_value_seed(ModelList(&mut *self.0))?;
        }
        Ok(())
    }

    // Anything else names no model.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Whether a flag is set, read as leniently as any upstream would read it: lax validators
/// (pydantic's, behind vLLM and many gateways) take `1`, `"true"`, `"yes"` and their like as
/// true, so an agent cannot ask for background work in a spelling only the proxy reads as no.
fn truthy(v: &Scalar) -> bool {
    match &v.0 {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(serde_json::Value::String(s)) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on" | "t" | "y"
        ),
        _ => false,
    }
}

/// A number of completions, read as leniently as any upstream would read it: `n` is a common
/// name outside LLM APIs (a tool's body is read too), so a value no upstream takes as a count
/// counts as none rather than refusing the body, while every spelling some upstream does take
/// (`3`, `3.0`, `"3"`, as lax validators coerce them) counts, rounded up.
struct Count(Option<u64>);

impl<'de> de::Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let number = match Scalar::deserialize(d)?.0 {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        // `as` saturates: a count past u64 is u64::MAX, which the reservation saturates too.
        Ok(Count(
            number
                .filter(|n| n.is_finite() && *n > 0.0)
                .map(|n| n.ceil() as u64),
        ))
    }
}

/// An object inside the body that holds fields (or `null`); or, when its fields are those of
/// each element of an array ([`EACH`]), that array (or `null`).
struct Nested<'t, 'f> {
    nodes: &'t [Node],
    found: &'f mut Found,
}

impl<'t> Nested<'t, '_> {
    /// The fields of each element, when this is an array's place.
    fn elements(&self) -> Option<&'t [Node]> {
        match self.nodes {
            [each] if each.key == EACH => Some(&each.children),
            _ => None,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Nested<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.elements() {
            Some(_) => f.write_str("a JSON array of objects, or null"),
            None => f.write_str("a JSON object or null"),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.elements() {
            Some(nodes) => d.deserialize_any(Each {
                nodes,
                found: self.found,
                element: false,
            }),
            None => d.deserialize_map(Level {
                nodes: self.nodes,
                found: self.found,
            }),
        }
    }
}

/// An array whose object elements may hold `nodes` (`element: false`), or one element of it
/// (`element: true`). Only the elements that are objects are read, and anything else in the
/// array's place is passed over: the array's name is the provider's (Bedrock's
/// `collaborators`), but every body is read with every provider's fields, and an unrelated API
/// may use the name for anything. An upstream that reads the field reads objects there, so
/// nothing it would use is passed over.
struct Each<'t, 'f> {
    nodes: &'t [Node],
    found: &'f mut Found,
    element: bool,
}

impl<'de> DeserializeSeed<'de> for Each<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Each<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.element {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        while seq
            .next_element_seed(Each {
                nodes: self.nodes,
                found: &mut *self.found,
                element: true,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.element {
            return Level {
                nodes: self.nodes,
                found: self.found,
            }
            .visit_map(map);
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key: which of `nodes` it is, compared without allocating.
struct Key<'t>(&'t [Node]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        // SECURITY: `Model` or `MAX_TOKENS` is the field to servers that match names ignoring
        // case (Go's `encoding/json`: Ollama, LocalAI, one-api), so it is read as the field, and
        // given with the exact spelling too it is the field given twice, refused (which copy a
        // server keeps is its choice; see `crate::json_names`). The exact name is compared
        // first: most keys are no field, and most fields are spelt exactly.
        Ok(self.0.iter().position(|n| n.key == v).or_else(|| {
            self.0
                .iter()
                .position(|n| crate::json_names::same_folded(n.key, v))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::providers::{CallPath, Generated, KeyPositions, RequestFields};
    use crate::usage::Usage;
    use serde_json::Value;

    #[test]
    fn a_ceiling_caps_a_call_only_in_a_field_its_own_api_reads() {
        use crate::usage::providers::{
            anthropic::Anthropic, gemini::Gemini, openai_chat::OpenAiChat,
            openai_responses::OpenAiResponses,
        };
        let read_by = |body: &str, api: &dyn Provider| {
            read_json(body.as_bytes())
                .expect("read")
                .ceiling_fields
                .read_by(api)
        };
        // The Responses API's spelling in a chat completion: chat servers ignore it.
        let responses = r#"{"model":"m","max_output_tokens":1}"#;
        assert!(!read_by(responses, &OpenAiChat));
        assert!(read_by(responses, &OpenAiResponses));
        // Gemini's, nested, anywhere else.
        let gemini = r#"{"model":"m","generationConfig":{"maxOutputTokens":1}}"#;
        assert!(!read_by(gemini, &OpenAiChat) && !read_by(gemini, &Anthropic));
        assert!(read_by(gemini, &Gemini));
        // `max_tokens` is chat's and Anthropic's; both spellings of chat's count.
        assert!(read_by(r#"{"max_tokens":5}"#, &OpenAiChat));
        assert!(read_by(r#"{"max_tokens":5}"#, &Anthropic));
        assert!(read_by(r#"{"max_completion_tokens":5}"#, &OpenAiChat));
        assert!(!read_by(r#"{"max_completion_tokens":5}"#, &Anthropic));
        // A null field sets nothing.
        assert!(!read_by(r#"{"max_tokens":null}"#, &OpenAiChat));
        assert!(!read_by(r#"{"model":"m"}"#, &OpenAiChat));
    }

    /// A provider with nested fields, as the next providers have (Gemini's
    /// `generationConfig.maxOutputTokens`).
    #[derive(Debug)]
    struct Nesting;

    impl Provider for Nesting {
        fn name(&self) -> &'static str {
            "nesting"
        }
        fn default_hosts(&self) -> &'static [&'static str] {
            &[]
        }
        fn is_call(&self, _: &CallPath<'_>) -> bool {
            false
        }
        fn request_fields(&self) -> &'static RequestFields {
            &RequestFields {
                model: &[&["model"]],
                ceilings: &[
                    &["generationConfig", "maxOutputTokens"],
                    &["inferenceConfig", "maxTokens"],
                    &["max_tokens"],
                ],
            }
        }
        fn key_positions(&self) -> &'static KeyPositions {
            &KeyPositions::NONE
        }
        fn usage_from_json(&self, _: &Value, _: &mut Option<Usage>) {}
        fn usage_members(&self) -> &'static [&'static str] {
            &[]
        }
        fn usage_from_event(&self, _: &Value, _: &mut Option<Usage>) {}
        fn count_generated(&self, _: &Value, _: &mut Generated) {}
    }

    /// A gateway may answer with any model of its fallback list (OpenRouter's `models`,
    /// LiteLLM's `fallbacks` and fallback maps): each is one of the call's other models, decided
    /// as its model is, in every shape the lists take.
    #[test]
    fn a_gateways_fallback_models_are_the_calls_other_models() {
        for (body, want) in [
            (
                &br#"{"model":"gpt-4o-mini","models":["gpt-4o-mini","gpt-4o"]}"#[..],
                vec!["gpt-4o"],
            ),
            (
                br#"{"model":"gpt-4o-mini","models":["openai/gpt-4o"],"route":"fallback"}"#,
                vec!["openai/gpt-4o"],
            ),
            (br#"{"model":"m","fallbacks":["gpt-4o"]}"#, vec!["gpt-4o"]),
            (
                br#"{"model":"m","fallbacks":[{"m":["gpt-4o","o1"]}]}"#,
                vec!["gpt-4o", "o1"],
            ),
            (
                br#"{"model":"m","context_window_fallback_dict":{"m":"gpt-4o-128k"}}"#,
                vec!["gpt-4o-128k"],
            ),
            (
                br#"{"model":"m","content_policy_fallbacks":[{"m":["claude-opus"]}]}"#,
                vec!["claude-opus"],
            ),
            (br#"{"model":"m","models":"gpt-4o"}"#, vec!["gpt-4o"]),
            (br#"{"model":"m","models":null,"fallbacks":[]}"#, vec![]),
            // LiteLLM's `extra_body` (merged into the body it sends on) and per-call router.
            (
                br#"{"model":"m","extra_body":{"models":["gpt-4o"]}}"#,
                vec!["gpt-4o"],
            ),
            (br#"{"model":"m","extra_body":{"model":"gpt-4o"}}"#, vec!["gpt-4o"]),
            (
                br#"{"model":"m","user_config":{"model_list":[{"model_name":"m","litellm_params":{"model":"openai/gpt-4o"}}]}}"#,
                vec!["openai/gpt-4o"],
            ),
        ] {
            let read = read_json(body).expect("read");
            assert!(read.model.is_some());
            assert_eq!(read.other_models, want, "{}", String::from_utf8_lossy(body));
            assert_eq!(
                read.fallback_models,
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // More than the models one body may name is refused.
        let many: Vec<String> = (0..=MAX_MODELS).map(|k| format!("\"m{k}\"")).collect();
        let body = format!(r#"{{"model":"m","models":[{}]}}"#, many.join(","));
        assert!(read_json(body.as_bytes()).is_err());
    }

    #[test]
    fn every_providers_fields_in_precedence_order() {
        // The union, in registry order: what the proxy read before the registry.
        let slots: Vec<(&str, Slot)> = [
            "model",
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
        ]
        .into_iter()
        .map(|n| (n, form_field(n).expect(n)))
        .collect();
        assert_eq!(
            slots,
            [
                ("model", Slot::Model(0)),
                ("max_tokens", Slot::Ceiling(0)),
                ("max_completion_tokens", Slot::Ceiling(1)),
                ("max_output_tokens", Slot::Ceiling(2)),
            ]
        );
        assert_eq!(form_field("MAX_Tokens"), Some(Slot::Ceiling(0)));
        assert_eq!(form_field("messages"), None);
        assert_eq!(form_field("foundationModel"), Some(Slot::Model(6)));
        // Two fields naming different models are refused (a decoy `model` beside the one a
        // Bedrock agent runs); the same model twice is one model; a transcription's model is a
        // second model, the call's only when nothing names its own.
        for body in [
            &br#"{"model":"gpt-4o-mini","targetModelId":"anthropic.claude-3-opus"}"#[..],
            br#"{"foundationModel":"anthropic.claude-3-opus","model":"gpt-4o-mini"}"#,
            br#"{"model":"a","session":{"model":"b"}}"#,
        ] {
            assert!(
                read_json(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let same = read_json(br#"{"model":"m","foundationModel":"m"}"#).expect("read");
        assert_eq!(same.model.as_deref(), Some("m"));
        let realtime = read_json(
            br#"{"model":"gpt-realtime","input_audio_transcription":{"model":"whisper-1"}}"#,
        )
        .expect("read");
        assert_eq!(realtime.model.as_deref(), Some("gpt-realtime"));
        assert_eq!(form_field("targetModelId"), Some(Slot::Model(7)));
        let read =
            read_json(br#"{"foundationModel":"anthropic.claude-3-haiku","instruction":"x"}"#)
                .expect("read");
        assert_eq!(read.model.as_deref(), Some("anthropic.claude-3-haiku"));
        // Plus the nested `inferenceConfig.maxTokens` (Bedrock) and `generationConfig.maxOutputTokens`
        // (Gemini), not form fields: forms are flat.
        // And the numbers of completions: `n`, `best_of` (the nested `candidateCount` sits in
        // `generationConfig`).
        // And `background`. (Gemini's `generation_config`, its proto spelling, is the tenth, and
        // then the Realtime API's nested models (`session`, `input_audio_transcription`,
        // `audio`) and Bedrock Agents' (`foundationModel`, `collaborators`,
        // `promptOverrideConfiguration`, `targetModelId`, `retrieveAndGenerateConfiguration`),
        // and the Responses API's hosted tools (`tools`).)
        // And the gateways' model lists (`models`, `fallbacks`, `context_window_fallback_dict`,
        // `content_policy_fallbacks`, and LiteLLM's `extra_body` and `user_config`), and the
        // chat search models' `web_search_options`, xAI's `search_parameters`, OpenRouter's
        // `plugins`. And Anthropic's Message Batches (`requests`).
        assert_eq!(FIELDS.root.len(), 29, "{:?}", FIELDS.root);
        // Each model of a Message Batch is one of the call's models.
        let read = read_json(
            br#"{"requests":[{"custom_id":"a","params":{"model":"claude-3-opus-20240229"}},{"custom_id":"b","params":{"model":"claude-3-haiku"}}]}"#,
        )
        .expect("read");
        assert_eq!(read.model, None);
        assert_eq!(
            read.other_models,
            ["claude-3-haiku", "claude-3-opus-20240229"]
        );
        assert_eq!(form_field("n"), Some(Slot::Choices(0)));
        assert_eq!(form_field("inferenceConfig"), None);
        let read = read_json(br#"{"inferenceConfig":{"maxTokens":64}}"#).expect("read");
        assert_eq!(read.max_output_tokens, Some(64));
        // Several ceilings: the largest, whichever the upstream reads.
        let read = read_json(br#"{"max_output_tokens":3,"max_completion_tokens":2,"model":"m"}"#)
            .expect("read");
        assert_eq!(
            read,
            Named {
                model: Some("m".into()),
                other_models: Vec::new(),
                fallback_models: Vec::new(),
                max_output_tokens: Some(3),
                // Both are set: the Responses API's and chat's (checked in
                // `a_ceiling_caps_a_call_only_in_a_field_its_own_api_reads`).
                ceiling_fields: read.ceiling_fields,
                choices: None,
                background: false,
                billed_tool: None,
            }
        );
        assert!(read
            .ceiling_fields
            .read_by(&crate::usage::providers::openai_chat::OpenAiChat));
        assert!(read
            .ceiling_fields
            .read_by(&crate::usage::providers::openai_responses::OpenAiResponses));
        let read = read_json(br#"{"max_tokens":1,"max_completion_tokens":5000}"#).expect("read");
        assert_eq!(read.max_output_tokens, Some(5000));
        // Completions asked for, in every spelling: the largest.
        let read = read_json(br#"{"n":20,"best_of":3}"#).expect("read");
        assert_eq!(read.choices, Some(20));
        let read = read_json(br#"{"generationConfig":{"candidateCount":4,"maxOutputTokens":9}}"#)
            .expect("read");
        assert_eq!((read.choices, read.max_output_tokens), (Some(4), Some(9)));
        // Gemini's proto spellings, each level apart, next to the JSON ones: the largest.
        let read = read_json(
            br#"{"generation_config":{"candidate_count":4,"max_output_tokens":5000},"generationConfig":{"maxOutputTokens":1,"candidate_count":2}}"#,
        )
        .expect("read");
        assert_eq!(
            (read.choices, read.max_output_tokens),
            (Some(4), Some(5000))
        );
        assert!(read_json(br#"{"n":1,"n":20}"#).is_err(), "given twice");
        // Names spelt in another case are the field to servers that match names ignoring case
        // (Go's `encoding/json`, where `K` is `k`): read as the field, refused beside it.
        for (body, model, ceiling) in [
            (
                &br#"{"Model":"gpt-4o","MAX_TOKENS":9}"#[..],
                Some("gpt-4o"),
                Some(9),
            ),
            (
                "{\"model\":\"m\",\"max_to\u{212a}ens\":7}".as_bytes(),
                Some("m"),
                Some(7),
            ),
            (
                br#"{"GenerationConfig":{"MaxOutputTokens":5}}"#,
                None,
                Some(5),
            ),
        ] {
            let read = read_json(body).expect("read");
            assert_eq!(
                (read.model.as_deref(), read.max_output_tokens),
                (model, ceiling),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &br#"{"model":"gpt-4o-mini","Model":"gpt-4o"}"#[..],
            br#"{"max_tokens":1,"Max_Tokens":100000}"#,
            br#"{"generationConfig":{"maxOutputTokens":1},"GENERATIONCONFIG":{"maxOutputTokens":100000}}"#,
        ] {
            assert!(read_json(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        // `background` in every spelling a lax validator takes as true.
        for (v, background) in [
            ("true", true),
            ("\"true\"", true),
            ("\"True\"", true),
            ("1", true),
            ("\"1\"", true),
            ("\"yes\"", true),
            ("false", false),
            ("0", false),
            ("\"false\"", false),
            ("null", false),
            ("{}", false),
        ] {
            let body = format!(r#"{{"model":"m","background":{v}}}"#);
            assert_eq!(
                read_json(body.as_bytes()).expect("read").background,
                background,
                "{v}"
            );
        }
        // Every spelling some upstream takes as a count counts; anything else is no count and
        // refuses nothing (`n` is a common name in tools' bodies too).
        for (body, choices) in [
            (r#"{"n":"20"}"#, Some(20)),
            (r#"{"n":2.5}"#, Some(3)),
            (r#"{"n":1e3}"#, Some(1000)),
            (r#"{"n":"x"}"#, None),
            (r#"{"n":-4}"#, None),
            (r#"{"n":[1]}"#, None),
            (r#"{"n":null}"#, None),
        ] {
            assert_eq!(
                read_json(body.as_bytes()).expect(body).choices,
                choices,
                "{body}"
            );
        }
        // Only JSON `true` runs a call in the background; the name means other things elsewhere
        // (an image's `"background": "transparent"`) and refuses nothing, unless given twice.
        for (body, background) in [
            (r#"{"background":true}"#, true),
            (r#"{"background":false}"#, false),
            (r#"{"background":"transparent"}"#, false),
            (r#"{"background":null}"#, false),
            (r#"{"tools":{"background":true}}"#, false),
        ] {
            assert_eq!(
                read_json(body.as_bytes()).expect(body).background,
                background,
                "{body}"
            );
        }
        assert!(read_json(br#"{"background":false,"background":true}"#).is_err());
        // What a gateway merges into the call it makes is the call's: `extra_body`'s
        // `background`, completions and ceilings too (its ceiling alone caps nothing).
        let merged = read_json(
            br#"{"model":"m","max_tokens":10,"extra_body":{"background":true,"n":8,"max_tokens":5000}}"#,
        )
        .expect("read");
        assert!(merged.background);
        assert_eq!(
            (merged.choices, merged.max_output_tokens),
            (Some(8), Some(5000))
        );
        let alone = read_json(br#"{"model":"m","extra_body":{"max_tokens":5000}}"#).expect("read");
        assert_eq!(alone.max_output_tokens, Some(5000));
        assert!(!alone
            .ceiling_fields
            .read_by(&super::super::openai_chat::OpenAiChat));
        assert!(read_json(br#"{"model":"m","extra_body":{"n":1,"n":9}}"#).is_err());
        assert!(
            read_json(br#"{"model":"m","search_parameters":{"mode":"auto","mode":"off"}}"#)
                .is_err()
        );
        for (model, billed) in [
            ("gpt-4o-search-preview", true),
            ("gpt-4o-mini-search-preview-2025-03-11", true),
            ("gpt-5-search-api", true),
            ("openai/gpt-4o-mini:online", true),
            ("groq/compound-mini", true),
            ("groq/groq/compound", true),
            ("perplexity/sonar-pro", true),
            ("openai/o4-mini-deep-research", true),
            ("gpt-4o-mini", false),
            ("text-search-ada", false),
            ("GPT-4O-SEARCH-PREVIEW", true),
            ("x:ONLINE", true),
            ("openai/gpt-4o-mini:online:nitro", true),
            ("llama-3.1-sonar-large-128k-online", true),
        ] {
            assert_eq!(billed_model(model).is_some(), billed, "{model}");
        }
        // Hosted tools billed per image, container or grounded prompt are told; the ones the
        // proxy prices per call, functions and nulls are not.
        for (body, billed) in [
            (
                r#"{"model":"m","tools":[{"type":"web_search"},{"type":"image_generation","model":"gpt-image-1"}]}"#,
                true,
            ),
            (
                r#"{"model":"m","tools":[{"type":"code_interpreter","container":{"type":"auto"}}]}"#,
                true,
            ),
            (
                r#"{"model":"m","tools":[{"type":"code_execution_20250825","name":"code_execution"}]}"#,
                true,
            ),
            (r#"{"contents":[],"tools":[{"googleSearch":{}}]}"#, true),
            (
                r#"{"contents":[],"tools":[{"google_search_retrieval":{"dynamic_retrieval_config":{}}}]}"#,
                true,
            ),
            (
                r#"{"model":"gpt-4o-search-preview","web_search_options":{}}"#,
                true,
            ),
            (
                r#"{"model":"grok-4","tools":[{"type":"code_execution"},{"type":"x_search"}]}"#,
                true,
            ),
            (
                r#"{"model":"grok-3","search_parameters":{"mode":"on"}}"#,
                true,
            ),
            (r#"{"model":"m","plugins":[{"id":"web"}]}"#, true),
            (r#"{"model":"m","plugins":[]}"#, false),
            (
                r#"{"model":"grok-3","search_parameters":{"mode":"off"}}"#,
                false,
            ),
            (
                r#"{"model":"grok-3","search_parameters":{"mode":"auto"}}"#,
                true,
            ),
            (
                r#"{"model":"grok-3","search_parameters":{"sources":[{"type":"web"}]}}"#,
                true,
            ),
            (
                r#"{"contents":[],"tools":[{"retrieval":{"vertexAiSearch":{"datastore":"d"}}}]}"#,
                true,
            ),
            (
                r#"{"model":"m","tools":[{"type":"function","function":{"name":"image_generation"}}]}"#,
                false,
            ),
            (
                r#"{"model":"m","tools":[{"type":"web_search"},{"type":"file_search"}]}"#,
                false,
            ),
            (
                r#"{"contents":[],"tools":[{"googleSearch":null},{"codeExecution":{}}]}"#,
                false,
            ),
            (r#"{"model":"m","tools":"none"}"#, false),
        ] {
            let got = read_json(body.as_bytes()).expect(body);
            assert_eq!(got.billed_tool.is_some(), billed, "{body}");
        }
        assert!(read_json(
            br#"{"model":"m","tools":[{"type":"function","type":"image_generation"}]}"#
        )
        .is_err());
        // In what a gateway merges into the call too.
        for body in [
            r#"{"model":"m","extra_body":{"tools":[{"type":"image_generation","model":"gpt-image-1"}]}}"#,
            r#"{"model":"m","extra_body":{"web_search_options":{}}}"#,
            r#"{"contents":[],"extra_body":{"tools":[{"googleSearch":{}}]}}"#,
        ] {
            let got = read_json(body.as_bytes()).expect(body);
            assert!(got.billed_tool.is_some(), "{body}");
        }
        let got = read_json(
            br#"{"model":"m","extra_body":{"tools":[{"type":"image_generation","model":"gpt-image-1"}]}}"#,
        )
        .expect("read");
        assert_eq!(got.other_models, ["gpt-image-1"]);
    }

    #[test]
    fn nested_fields_are_read_and_checked_like_top_level_ones() {
        let read = |body: &str| read_json_with(&[&Nesting], body.as_bytes());
        let got = read(r#"{"model":"g","generationConfig":{"temperature":1,"maxOutputTokens":5}}"#)
            .expect("read");
        assert_eq!(got.max_output_tokens, Some(5));
        // The largest ceiling counts, wherever it sits in the body.
        let got =
            read(r#"{"max_tokens":9,"inferenceConfig":{"maxTokens":7},"generationConfig":null}"#)
                .expect("read");
        assert_eq!(got.max_output_tokens, Some(9));
        for bad in [
            r#"{"generationConfig":{"maxOutputTokens":1,"maxOutputTokens":2}}"#,
            r#"{"generationConfig":{"maxOutputTokens":1},"generationConfig":{}}"#,
            r#"{"generationConfig":{"maxOutputTokens":"1"}}"#,
            r#"{"generationConfig":[1]}"#,
            r#"{"generationConfig":5}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
        // Escaped keys are the keys they spell.
        assert!(read(r#"{"model":"a","mod\u0065l":"b"}"#).is_err());
        // Forms are flat: a nested field is no form field.
        // (`model`, `generationConfig`, `inferenceConfig`, `max_tokens`, then `n`, `best_of`,
        // `generation_config`, the four gateway model lists, `extra_body`, `user_config`,
        // `background`, the hosted tools' `tools`, `web_search_options`, `search_parameters`
        // and `plugins`.)
        assert_eq!(Tree::build(&[&Nesting]).root.len(), 18);
    }
}

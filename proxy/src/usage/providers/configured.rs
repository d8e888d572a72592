//! LLM providers declared in the tenant file (`[[llm_provider]]`), with no code per vendor: an
//! entry names its hosts and the API they speak (`openai_compatible`: Mistral, Groq, DeepSeek,
//! Together, vLLM, Ollama …; `azure_openai`: deployments in the path), and optionally maps
//! deployment names to the models they serve.
//!
//! ```toml
//! [[llm_provider]]
//! name = "vllm"                       # the price table's [providers.vllm]
//! hosts = ["llm.internal", "*.vllm.example.com"]
//! api = "openai_compatible"
//!
//! [[llm_provider]]
//! name = "azure_openai"
//! hosts = ["acme-eastus.openai.azure.com"]
//! api = "azure_openai"
//! deployments = { "prod-4o" = "gpt-4o", "cheap" = "gpt-4o-mini" }
//! ```
//!
//! A request to a declared host is an LLM call (its body classified, its usage metered by the
//! OpenAI readers its path names, or every reader), priced and named to policies under `name`.
//! A call to a deployment (`/openai/deployments/<name>/…`) is the deployment's model whatever
//! its body names (Azure serves the deployment's): mapped here, or the deployment's own name when
//! unmapped (so a price table that does not list it refuses it, rather than the call going
//! unpriced or priced as the model the body claims).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::problems::Problems;
use crate::target::Destination;

/// The API a declared provider's hosts speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI's chat completions, completions, embeddings and Responses shapes.
    OpenaiCompatible,
    /// Azure OpenAI: OpenAI's shapes under `/openai/deployments/<name>/…`, keys in `api-key`.
    AzureOpenai,
}

/// `[[llm_provider]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmProviderSpec {
    /// Name: the price table's `[providers.NAME]` key and the policies' `context.provider`.
    pub name: String,
    /// Hosts (`HOST` or `*.DOMAIN`).
    pub hosts: Vec<String>,
    /// The API they speak.
    pub api: Api,
    /// Deployment name -> model (what a call to the deployment is, whatever its body names).
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
}

/// A declared provider.
#[derive(Debug, Clone)]
pub struct ConfiguredProvider {
    /// Name (price table key, policy `provider`).
    pub name: String,
    /// The API its hosts speak.
    pub api: Api,
    exact: Vec<String>,
    suffixes: Vec<String>,
    deployments: HashMap<String, String>,
}

impl ConfiguredProvider {
    fn owns(&self, host: &str) -> bool {
        self.exact.iter().any(|h| h == host)
            || self
                .suffixes
                .iter()
                .any(|s| host.len() > s.len() && host.ends_with(s.as_str()))
    }
}

/// Every declared provider, in the order written (the first whose hosts match wins).
#[derive(Debug, Clone, Default)]
pub struct ConfiguredProviders(Vec<ConfiguredProvider>);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl ConfiguredProviders {
    /// Validates `[[llm_provider]]` entries, reporting into `p`; invalid entries are left out.
    pub fn from_spec(specs: Vec<LlmProviderSpec>, p: &mut Problems) -> Self {
        let mut out: Vec<ConfiguredProvider> = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let at = format!("llm_provider[{i}]");
            if !valid_name(&spec.name) {
                p.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` is not a provider name (lowercase letters, digits, `_`, `-`)",
                        spec.name
                    ),
                );
                continue;
            }
            if out.iter().any(|o| o.name == spec.name) {
                p.push(
                    format!("{at}.name"),
                    format!("`{}` is declared twice", spec.name),
                );
                continue;
            }
            if spec.hosts.is_empty() {
                p.push(format!("{at}.hosts"), "name at least one host");
                continue;
            }
            let (mut exact, mut suffixes) = (Vec::new(), Vec::new());
            for (j, host) in spec.hosts.iter().enumerate() {
                let lower = host.trim_end_matches('.').to_ascii_lowercase();
                match lower.strip_prefix("*.") {
                    Some(domain) if valid_host(domain) && domain.contains('.') => {
                        suffixes.push(format!(".{domain}"))
                    }
                    None if valid_host(&lower) => exact.push(lower),
                    _ => p.push(
                        format!("{at}.hosts[{j}]"),
                        format!("`{host}` is not a host name or `*.domain`"),
                    ),
                }
            }
            for (deployment, model) in &spec.deployments {
                if deployment.is_empty() || model.is_empty() || model.len() > 256 {
                    p.push(
                        format!("{at}.deployments"),
                        format!("`{deployment}` = `{model}`: both must be set"),
                    );
                }
            }
            out.push(ConfiguredProvider {
                name: spec.name,
                api: spec.api,
                exact,
                suffixes,
                deployments: spec.deployments.into_iter().collect(),
            });
        }
        Self(out)
    }

    /// The declared provider whose hosts include `host` (lowercase, trailing dot ignored).
    pub fn for_host(&self, host: &str) -> Option<&ConfiguredProvider> {
        let host = host.trim_end_matches('.');
        self.0.iter().find(|p| p.owns(host))
    }

    /// The declared provider named `name`.
    pub fn named(&self, name: &str) -> Option<&ConfiguredProvider> {
        self.0.iter().find(|p| p.name == name)
    }

    /// The model of a call to a deployment (`destination`'s path names one): its mapped model
    /// (under the provider that prices it), else the deployment's own name.
    pub fn model_for(&self, destination: &Destination) -> Option<String> {
        let deployment = super::registry::deployment_of(&destination.upstream_path)?;
        Some(self.deployment_model(destination, deployment))
    }

    /// The model `deployment` (of a call to `destination`) is mapped to, else its own name.
    pub fn deployment_model(&self, destination: &Destination, deployment: String) -> String {
        super::registry::price_key(destination)
            .and_then(|name| self.named(name))
            .and_then(|p| p.deployments.get(&deployment).cloned())
            .unwrap_or(deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str, path: &str, provider: Option<&str>) -> Destination {
        Destination::https_for_test(host, path, provider)
    }

    fn parse(toml_text: &str) -> (ConfiguredProviders, Vec<String>) {
        #[derive(Deserialize)]
        struct Doc {
            llm_provider: Vec<LlmProviderSpec>,
        }
        let doc: Doc = toml::from_str(toml_text).expect("toml");
        let path = std::path::Path::new("tenants.toml");
        let mut p = Problems::new(path);
        let out = ConfiguredProviders::from_spec(doc.llm_provider, &mut p);
        let problems = p
            .checked(())
            .problems
            .iter()
            .map(|x| x.to_string())
            .collect();
        (out, problems)
    }

    #[test]
    fn hosts_deployments_and_problems() {
        let (providers, problems) = parse(
            r#"
[[llm_provider]]
name = "vllm"
hosts = ["LLM.internal.", "*.vllm.example.com"]
api = "openai_compatible"

[[llm_provider]]
name = "azure_openai"
hosts = ["acme.openai.azure.com"]
api = "azure_openai"
deployments = { "prod-4o" = "gpt-4o" }

[[llm_provider]]
name = "Bad Name"
hosts = ["x.example"]
api = "openai_compatible"

[[llm_provider]]
name = "vllm"
hosts = ["y.example"]
api = "openai_compatible"

[[llm_provider]]
name = "weird"
hosts = ["*.com", "a b"]
api = "openai_compatible"
"#,
        );
        assert_eq!(
            providers.for_host("llm.internal").map(|p| p.name.as_str()),
            Some("vllm")
        );
        assert_eq!(
            providers.for_host("a.vllm.example.com").map(|p| p.api),
            Some(Api::OpenaiCompatible)
        );
        assert!(
            providers.for_host("vllm.example.com").is_none(),
            "`*.` is subdomains only"
        );
        assert!(providers.for_host("evil-llm.internal").is_none());
        assert_eq!(problems.len(), 4, "{problems:?}");
        let azure = dest(
            "acme.openai.azure.com",
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-06-01",
            Some("azure_openai"),
        );
        assert_eq!(providers.model_for(&azure).as_deref(), Some("gpt-4o"));
        let unmapped = dest(
            "acme.openai.azure.com",
            "/openai/deployments/Other%20One/embeddings",
            Some("azure_openai"),
        );
        assert_eq!(providers.model_for(&unmapped).as_deref(), Some("Other One"));
        // Azure's v1 and Responses APIs name the deployment in the body's `model`.
        for path in [
            "/openai/v1/chat/completions",
            "/openai/v1/responses",
            "/openai/responses?api-version=2025-04-01-preview",
            "/OpenAI//v1/Chat/Completions",
        ] {
            assert!(
                super::super::registry::body_names_deployment(path),
                "{path}"
            );
        }
        for path in [
            "/openai/deployments/prod-4o/chat/completions",
            "/v1/chat/completions",
        ] {
            assert!(
                !super::super::registry::body_names_deployment(path),
                "{path}"
            );
        }
        assert_eq!(
            providers.model_for(&dest("llm.internal", "/v1/chat/completions", Some("vllm"))),
            None
        );
    }
}

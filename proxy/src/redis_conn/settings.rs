//! The Redis keys of a configuration section (`[limiter]`, `[audit]`), validated into a
//! [`RedisEndpoint`]:
//!
//! - `redis_url`: `redis://host:port[/db]`, `rediss://…` (TLS), a cluster as
//!   `redis+cluster://h1:p1,h2:p2` (`rediss+cluster://` with TLS) or as a list of seed nodes
//!   (`["redis://h1:p1", "redis://h2:p2"]`); it may name an ACL user (`redis://user@host`) but
//!   never a password;
//! - `redis_url_env`: the name of an environment variable holding such a URL instead (it may
//!   hold a password: it comes from a secret store);
//! - `redis_username`: the ACL user;
//! - `redis_password_file` or `redis_password_env`: where the password is read from;
//! - `redis_ca_file`: PEM of the CA that signs the servers' certificates (`rediss://` only).

use std::path::PathBuf;

use serde::Deserialize;

use super::{RedisEndpoint, RedisPassword};
use crate::problems::Problems;

/// `redis_url` as written: one URL, or a cluster's seed nodes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RedisUrlSpec {
    /// One URL (a server, or `redis+cluster://`).
    One(String),
    /// Seed nodes of a cluster.
    Seeds(Vec<String>),
}

/// A section's Redis keys, as written (each section declares them as its own fields, so its
/// `deny_unknown_fields` still holds, and hands them over here).
#[derive(Debug, Clone, Default)]
pub struct RedisEndpointSpec {
    /// `redis_url`.
    pub url: Option<RedisUrlSpec>,
    /// `redis_url_env`.
    pub url_env: Option<String>,
    /// `redis_username`.
    pub username: Option<String>,
    /// `redis_password_file`.
    pub password_file: Option<PathBuf>,
    /// `redis_password_env`.
    pub password_env: Option<String>,
    /// `redis_ca_file`.
    pub ca_file: Option<PathBuf>,
}

/// A parsed Redis URL (or list of seeds).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    nodes: Vec<String>,
    cluster: bool,
    tls: bool,
    has_password: bool,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A node may carry the URL's user info (its password): the address after it only.
        let nodes: Vec<&str> = self
            .nodes
            .iter()
            .map(|n| n.rsplit_once('@').map_or(n.as_str(), |(_, at)| at))
            .collect();
        f.debug_struct("RedisUrl")
            .field("nodes", &nodes)
            .field("cluster", &self.cluster)
            .field("tls", &self.tls)
            .field("has_password", &self.has_password)
            .finish()
    }
}

impl RedisUrl {
    /// Parses one URL: `redis[s]://[user[:password]@]host:port[/db]` or
    /// `redis[s]+cluster://[user[:password]@]h1:p1,h2:p2`. Errors never repeat the URL (it may
    /// hold a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("write `redis://host:port` (or `rediss://`, `redis+cluster://`)")?;
        let (tls, cluster) = match scheme {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis+cluster" => (false, true),
            "rediss+cluster" => (true, true),
            _ => {
                return Err(format!(
                    "unknown scheme `{scheme}`: write `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://`"
                ))
            }
        };
        if !cluster {
            let parsed = redis::parse_redis_url(url).ok_or("not a valid Redis URL")?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err("the URL names no host".into());
            }
            return Ok(Self {
                nodes: vec![url.to_string()],
                cluster,
                tls,
                has_password: parsed.password().is_some(),
            });
        }
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let hosts = hosts.trim_end_matches('/');
        if hosts.contains('/') {
            return Err("a cluster URL names no database (a cluster has only db 0)".into());
        }
        let node_scheme = if tls { "rediss" } else { "redis" };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(|h| match userinfo {
                Some(u) => format!("{node_scheme}://{u}@{h}"),
                None => format!("{node_scheme}://{h}"),
            })
            .collect();
        let mut seeds = Self::seeds(&nodes)?;
        seeds.tls = tls;
        Ok(seeds)
    }

    /// Seed nodes of a cluster, each a `redis://` or `rediss://` URL (all the same scheme).
    pub fn seeds(urls: &[String]) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("a cluster needs at least one seed node".into());
        }
        let mut parsed = Vec::new();
        for url in urls {
            let one = Self::parse(url)?;
            if one.cluster {
                return Err("a seed node is a `redis://host:port` URL".into());
            }
            parsed.push(one);
        }
        let tls = parsed[0].tls;
        if parsed.iter().any(|p| p.tls != tls) {
            return Err("seed nodes mix `redis://` and `rediss://`".into());
        }
        Ok(Self {
            nodes: urls.to_vec(),
            cluster: true,
            tls,
            has_password: parsed.iter().any(|p| p.has_password),
        })
    }

    /// The endpoint, with the user and password from their own keys.
    pub(super) fn into_endpoint(
        self,
        username: Option<String>,
        password: Option<RedisPassword>,
    ) -> RedisEndpoint {
        RedisEndpoint {
            nodes: self.nodes,
            cluster: self.cluster,
            tls: self.tls,
            username,
            password,
            ca_pem: None,
            password_file: None,
        }
    }
}

impl RedisEndpointSpec {
    /// Whether any Redis key is set.
    pub fn is_set(&self) -> bool {
        self.url.is_some() || self.url_env.is_some()
    }

    /// Validates the keys of `section` (`limiter`, `audit`); `None` (with the problems
    /// recorded) when no usable endpoint results. Files and variables are read now, so `check`
    /// reports a missing one; their contents are never part of a message.
    pub fn validate(&self, section: &str, p: &mut Problems<'_>) -> Option<RedisEndpoint> {
        let at = |key: &str| format!("{section}.{key}");
        let url = match (&self.url, &self.url_env) {
            (Some(_), Some(_)) => {
                p.push(
                    at("redis_url_env"),
                    "set `redis_url` or `redis_url_env`, not both",
                );
                None
            }
            (None, None) => {
                p.push(
                    at("redis_url"),
                    "set `redis_url = \"redis://host:port\"` or `redis_url_env`",
                );
                None
            }
            (Some(spec), None) => {
                let parsed = match spec {
                    RedisUrlSpec::One(u) => RedisUrl::parse(u),
                    RedisUrlSpec::Seeds(list) => RedisUrl::seeds(list),
                };
                match parsed {
                    // SECURITY: a password written into the configuration would be readable by
                    // whoever reads the file (a ConfigMap, a repository).
                    Ok(u) if u.has_password => {
                        p.push(
                            at("redis_url"),
                            "the URL holds a password: move it to `redis_password_file` or `redis_password_env` (or take the whole URL from `redis_url_env`)",
                        );
                        None
                    }
                    Ok(u) => Some(u),
                    Err(e) => {
                        p.push(at("redis_url"), e);
                        None
                    }
                }
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) => match RedisUrl::parse(value.trim()) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        p.push(at("redis_url_env"), format!("`{var}`: {e}"));
                        None
                    }
                },
                Err(_) => {
                    p.push(
                        at("redis_url_env"),
                        format!("the environment variable `{var}` is not set"),
                    );
                    None
                }
            },
        };
        let password = match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => {
                p.push(
                    at("redis_password_env"),
                    "set `redis_password_file` or `redis_password_env`, not both",
                );
                None
            }
            (Some(file), None) => {
                let path = p.path(file);
                match crate::whole_file::read_to_string(&path) {
                    Ok(v) if !v.trim().is_empty() => Some(RedisPassword::new(v)),
                    Ok(_) => {
                        p.push(at("redis_password_file"), "the file is empty");
                        None
                    }
                    Err(e) => {
                        p.push(
                            at("redis_password_file"),
                            format!("cannot read `{}`: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(RedisPassword::new(v)),
                _ => {
                    p.push(
                        at("redis_password_env"),
                        format!("the environment variable `{var}` is not set"),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        if self.username.as_deref().is_some_and(str::is_empty) {
            p.push(at("redis_username"), "must not be empty");
        }
        let ca_pem = self.ca_file.as_ref().and_then(|file| {
            let path = p.path(file);
            match crate::whole_file::read(&path) {
                Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                    Some(pem)
                }
                Ok(_) => {
                    p.push(at("redis_ca_file"), "holds no PEM certificate");
                    None
                }
                Err(e) => {
                    p.push(
                        at("redis_ca_file"),
                        format!("cannot read `{}`: {e}", path.display()),
                    );
                    None
                }
            }
        });
        let url = url?;
        if ca_pem.is_some() && !url.tls {
            p.push(
                at("redis_ca_file"),
                "a CA is for TLS: write `rediss://` (or `rediss+cluster://`)",
            );
        }
        let mut endpoint = url.into_endpoint(self.username.clone(), password);
        endpoint.ca_pem = ca_pem;
        endpoint.password_file = self.password_file.as_deref().map(|f| p.path(f));
        Some(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_redis_url_prints_without_its_password() {
        for url in [
            "redis://app:pw-secret-1@10.0.0.1:6379/0",
            "rediss+cluster://app:pw-secret-1@a:7000,b:7001",
        ] {
            let printed = format!("{:?}", RedisUrl::parse(url).expect(url));
            assert!(!printed.contains("pw-secret-1"), "{printed}");
        }
    }

    fn check(spec: &RedisEndpointSpec) -> Result<RedisEndpoint, Vec<String>> {
        let mut p = Problems::new(Path::new("/nonexistent/tenant-proxy.toml"));
        let endpoint = spec.validate("limiter", &mut p);
        let problems: Vec<String> = p
            .checked(())
            .problems
            .into_iter()
            .map(|c| format!("{}: {}", c.location.unwrap_or_default(), c.message))
            .collect();
        match endpoint {
            Some(e) if problems.is_empty() => Ok(e),
            _ => Err(problems),
        }
    }

    fn url(u: &str) -> RedisEndpointSpec {
        RedisEndpointSpec {
            url: Some(RedisUrlSpec::One(u.into())),
            ..Default::default()
        }
    }

    #[test]
    fn urls_name_a_server_or_a_cluster() {
        for (u, cluster, tls, nodes) in [
            ("redis://127.0.0.1:6379", false, false, 1),
            ("rediss://redis.internal:6380/2", false, true, 1),
            ("redis://proxy@127.0.0.1:6379", false, false, 1),
            (
                "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
                true,
                false,
                3,
            ),
            ("rediss+cluster://proxy@r1:7000,r2:7000/", true, true, 2),
        ] {
            let e = check(&url(u)).unwrap_or_else(|p| panic!("{u}: {p:?}"));
            assert_eq!(
                (e.cluster, e.tls, e.nodes.len()),
                (cluster, tls, nodes),
                "{u}"
            );
        }
        let seeds = RedisEndpointSpec {
            url: Some(RedisUrlSpec::Seeds(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into(),
            ])),
            ..Default::default()
        };
        let e = check(&seeds).unwrap();
        assert!(e.cluster && !e.tls && e.nodes.len() == 2);
    }

    #[test]
    fn each_rejection_names_its_key_and_never_the_password() {
        let cases: Vec<(&str, RedisEndpointSpec, &str)> = vec![
            (
                "no url",
                RedisEndpointSpec::default(),
                "limiter.redis_url: set",
            ),
            (
                "bad scheme",
                url("http://127.0.0.1:6379"),
                "unknown scheme `http`",
            ),
            (
                "password in the file",
                url("redis://:hunter2@127.0.0.1:6379"),
                "limiter.redis_url: the URL holds a password",
            ),
            (
                "password in a cluster url",
                url("redis+cluster://u:hunter2@a:1,b:2"),
                "holds a password",
            ),
            (
                "mixed seeds",
                RedisEndpointSpec {
                    url: Some(RedisUrlSpec::Seeds(vec![
                        "redis://a:1".into(),
                        "rediss://b:2".into(),
                    ])),
                    ..Default::default()
                },
                "mix",
            ),
            (
                "no seeds",
                RedisEndpointSpec {
                    url: Some(RedisUrlSpec::Seeds(vec![])),
                    ..Default::default()
                },
                "at least one seed",
            ),
            (
                "both urls",
                RedisEndpointSpec {
                    url_env: Some("TP_TEST_REDIS_BOTH".into()),
                    ..url("redis://a:1")
                },
                "limiter.redis_url_env: set `redis_url` or `redis_url_env`, not both",
            ),
            (
                "unset variable",
                RedisEndpointSpec {
                    url_env: Some("TP_TEST_REDIS_NEVER_SET".into()),
                    ..Default::default()
                },
                "`TP_TEST_REDIS_NEVER_SET` is not set",
            ),
            (
                "unset password variable",
                RedisEndpointSpec {
                    password_env: Some("TP_TEST_REDIS_PW_NEVER_SET".into()),
                    ..url("redis://a:1")
                },
                "limiter.redis_password_env",
            ),
            (
                "missing password file",
                RedisEndpointSpec {
                    password_file: Some("/nonexistent/redis-password".into()),
                    ..url("redis://a:1")
                },
                "limiter.redis_password_file: cannot read",
            ),
            (
                "ca without tls",
                RedisEndpointSpec {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..url("redis://a:1")
                },
                "limiter.redis_ca_file",
            ),
            (
                "cluster with a db",
                url("redis+cluster://a:1,b:2/3"),
                "no database",
            ),
        ];
        for (name, spec, expected) in cases {
            let problems = check(&spec).expect_err(name);
            let all = problems.join("\n");
            assert!(all.contains(expected), "{name}: {all}");
            assert!(!all.contains("hunter2"), "{name}: {all}");
        }
    }

    #[test]
    fn the_url_and_password_may_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        // The variable names are unique to this test.
        std::env::set_var(
            "TP_TEST_REDIS_URL_FROM_ENV",
            "redis://:in-env@127.0.0.1:6379",
        );
        std::env::set_var("TP_TEST_REDIS_PW_FROM_ENV", "from-env");
        let from_env = check(&RedisEndpointSpec {
            url_env: Some("TP_TEST_REDIS_URL_FROM_ENV".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_env.nodes.len(), 1);
        let with_file = check(&RedisEndpointSpec {
            password_file: Some(pw),
            username: Some("proxy".into()),
            ..url("redis://127.0.0.1:6379")
        })
        .unwrap();
        assert_eq!(
            with_file.password,
            Some(RedisPassword::new("s3cret".into()))
        );
        assert_eq!(with_file.username.as_deref(), Some("proxy"));
        let with_env = check(&RedisEndpointSpec {
            password_env: Some("TP_TEST_REDIS_PW_FROM_ENV".into()),
            ..url("redis://127.0.0.1:6379")
        })
        .unwrap();
        assert_eq!(
            with_env.password,
            Some(RedisPassword::new("from-env".into()))
        );
    }
}

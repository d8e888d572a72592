//! How the proxy dials out, as configured: `[egress]` (which destinations may be dialed, static
//! name answers, tunnels) and `[upstream]` (timeouts and extra trusted CAs) in the static file,
//! and each tenant's own `egress_allow` in the tenant file.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::EgressException;
use crate::problems::Problems;

/// `[egress]`, as written: the SSRF guard and tunnel settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// Non-global destinations every tenant may reach: CIDRs (`10.1.0.0/16`) or `host:port`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Ports `CONNECT` may open tunnels to.
    #[serde(default = "default_connect_ports")]
    pub connect_ports: Vec<u16>,
    /// Static answers for names (checked like any DNS answer), e.g. `"api.internal" = ["10.0.0.5"]`.
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<String>>,
    /// Longest a DNS lookup may take.
    #[serde(default = "default_dns_timeout")]
    pub dns_timeout: String,
    /// A tunnel with no traffic (opaque) or no request (intercepted) for this long is closed.
    #[serde(default = "default_tunnel_idle_timeout")]
    pub tunnel_idle_timeout: String,
    /// Open tunnels per tenant, unless the tenant sets `max_tunnels`.
    #[serde(default = "default_max_tunnels")]
    pub max_tunnels_per_tenant: u32,
    /// Name lookups one tenant may have running at once (429 `dns_lookup_limit` above it).
    #[serde(default = "default_max_dns_lookups_per_tenant")]
    pub max_dns_lookups_per_tenant: u32,
    /// How long a tenant's answer for a name is used before the name is looked up again
    /// (`0s`: every request looks its host up).
    #[serde(default = "default_dns_cache_ttl")]
    pub dns_cache_ttl: String,
    /// Longest a client may take to send a request head, from its first byte (and to start one
    /// on a new connection).
    #[serde(default = "default_client_header_timeout")]
    pub client_header_timeout: String,
}

impl Default for EgressSpec {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            connect_ports: default_connect_ports(),
            hosts: BTreeMap::new(),
            dns_timeout: default_dns_timeout(),
            tunnel_idle_timeout: default_tunnel_idle_timeout(),
            max_tunnels_per_tenant: default_max_tunnels(),
            max_dns_lookups_per_tenant: default_max_dns_lookups_per_tenant(),
            dns_cache_ttl: default_dns_cache_ttl(),
            client_header_timeout: default_client_header_timeout(),
        }
    }
}

fn default_connect_ports() -> Vec<u16> {
    vec![443]
}
fn default_dns_timeout() -> String {
    "2s".into()
}
fn default_tunnel_idle_timeout() -> String {
    "5m".into()
}
fn default_max_dns_lookups_per_tenant() -> u32 {
    // A quarter of one worker's blocking pool (512 threads): a tenant whose names do not
    // resolve keeps at most that many busy. With answers kept (`dns_cache_ttl`) a tenant looks
    // each of its names up once a TTL; without, its lookups in flight are its request rate
    // times a lookup's time: 128 is 6,400 requests a second at 20 ms a lookup.
    128
}
fn default_dns_cache_ttl() -> String {
    // getaddrinfo gives no record TTL. 30 s is the JVM's default: a moved name is followed
    // within half a minute, and a busy tenant looks each host up twice a minute.
    "30s".into()
}
fn default_max_tunnels() -> u32 {
    256
}
fn default_client_header_timeout() -> String {
    "10s".into()
}

/// `[egress]`, validated.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// Global exceptions to the SSRF guard.
    pub exceptions: Vec<EgressException>,
    /// Ports tunnels may be opened to.
    pub connect_ports: Vec<u16>,
    /// Static name answers.
    pub hosts: HashMap<String, Vec<IpAddr>>,
    /// DNS lookup timeout.
    pub dns_timeout: Duration,
    /// Idle timeout of tunnels.
    pub tunnel_idle_timeout: Duration,
    /// Default cap on a tenant's open tunnels.
    pub max_tunnels_per_tenant: u32,
    /// Name lookups one tenant may have running at once.
    pub max_dns_lookups_per_tenant: u32,
    /// How long a tenant's answer for a name is kept (zero: not kept).
    pub dns_cache_ttl: Duration,
    /// Time a new connection has to send its first request head.
    pub client_header_timeout: Duration,
}

impl EgressSettings {
    /// Validates `[egress]`, recording each problem at its field.
    pub fn from_spec(spec: EgressSpec, p: &mut Problems<'_>) -> Self {
        let exceptions = exceptions("egress.allow", &spec.allow, p);
        if spec.connect_ports.is_empty() || spec.connect_ports.contains(&0) {
            p.push(
                "egress.connect_ports",
                "list the ports tunnels may use (1-65535), e.g. `[443]`",
            );
        }
        let mut hosts = HashMap::new();
        for (name, addrs) in spec.hosts {
            let mut ips = Vec::new();
            for a in &addrs {
                match a.parse::<IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => p.push(
                        format!("egress.hosts.{name}"),
                        format!("`{a}` is not an IP address"),
                    ),
                }
            }
            if addrs.is_empty() {
                p.push(format!("egress.hosts.{name}"), "list at least one address");
            }
            hosts.insert(name.trim_end_matches('.').to_ascii_lowercase(), ips);
        }
        if spec.max_tunnels_per_tenant == 0 {
            p.push("egress.max_tunnels_per_tenant", "must be at least 1");
        }
        if spec.max_dns_lookups_per_tenant == 0 {
            p.push("egress.max_dns_lookups_per_tenant", "must be at least 1");
        }
        EgressSettings {
            exceptions,
            connect_ports: spec.connect_ports,
            hosts,
            dns_timeout: p.positive_duration("egress.dns_timeout", &spec.dns_timeout),
            tunnel_idle_timeout: p
                .duration("egress.tunnel_idle_timeout", &spec.tunnel_idle_timeout),
            max_tunnels_per_tenant: spec.max_tunnels_per_tenant,
            max_dns_lookups_per_tenant: spec.max_dns_lookups_per_tenant,
            dns_cache_ttl: p.duration("egress.dns_cache_ttl", &spec.dns_cache_ttl),
            client_header_timeout: p
                .positive_duration("egress.client_header_timeout", &spec.client_header_timeout),
        }
    }
}

/// Parses egress exceptions (CIDRs or `host:port`) written at `at` (`egress.allow`,
/// `tenants.<id>.egress_allow`); each bad one is recorded at `at[i]`.
pub fn exceptions(at: &str, written: &[String], p: &mut Problems<'_>) -> Vec<EgressException> {
    let mut out = Vec::new();
    for (i, a) in written.iter().enumerate() {
        match a.parse::<EgressException>() {
            Ok(e) => out.push(e),
            Err(e) => p.push(format!("{at}[{i}]"), e),
        }
    }
    out
}

/// `[upstream]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Longest wait for each read from the upstream (time to first byte included).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    /// Longest wait for each write to the upstream.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: String,
    /// PEM files of CAs trusted for upstream TLS in addition to the system roots.
    #[serde(default)]
    pub extra_ca_files: Vec<PathBuf>,
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            write_timeout: default_write_timeout(),
            extra_ca_files: Vec::new(),
        }
    }
}

fn default_connect_timeout() -> String {
    "5s".into()
}
fn default_read_timeout() -> String {
    "120s".into()
}
fn default_write_timeout() -> String {
    "30s".into()
}

/// Upstream connection settings.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-read timeout.
    pub read_timeout: Duration,
    /// Per-write timeout.
    pub write_timeout: Duration,
    /// Extra trusted CA files.
    pub extra_ca_files: Vec<PathBuf>,
}

impl UpstreamSettings {
    /// Validates `[upstream]`; CA files resolve against the configuration file.
    pub fn from_spec(spec: UpstreamSpec, p: &mut Problems<'_>) -> Self {
        let settings = UpstreamSettings {
            connect_timeout: p.positive_duration("upstream.connect_timeout", &spec.connect_timeout),
            read_timeout: p.positive_duration("upstream.read_timeout", &spec.read_timeout),
            write_timeout: p.positive_duration("upstream.write_timeout", &spec.write_timeout),
            extra_ca_files: spec.extra_ca_files.iter().map(|f| p.path(f)).collect(),
        };
        for (i, f) in settings.extra_ca_files.iter().enumerate() {
            p.require_file(format!("upstream.extra_ca_files[{i}]"), f);
        }
        settings
    }
}

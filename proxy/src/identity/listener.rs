//! `[[listener]]` in the static file: where the proxy listens and how each listener learns who
//! is calling (its identity sources in order, its bound workload, its mTLS files).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::mtls::SpiffePattern;
use super::{IdentitySourceKind, ListenerBinding, ListenerIdentity};
use crate::ids::{TenantId, WorkloadId};
use crate::problems::Problems;

/// `[[listener]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// A name for logs and metrics.
    pub name: String,
    /// `host:port` to bind.
    pub listen: String,
    /// `proxy` (the default: clients that name the proxy) or `transparent` (connections the
    /// kernel redirected to it; see [`ListenerKind`]).
    #[serde(default)]
    pub kind: ListenerKind,
    /// Identity sources tried in order: `binding`, `token`, `mtls`.
    pub identity: Vec<IdentitySourceKind>,
    /// For `binding`: the one workload every connection on this listener is.
    pub binding: Option<BindingSpec>,
    /// For `mtls`: the listener speaks TLS and requires client certificates.
    pub tls: Option<ListenerTlsSpec>,
}

/// `binding = { tenant = "…", workload = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingSpec {
    /// Tenant id.
    pub tenant: String,
    /// Workload id.
    pub workload: String,
}

/// `[listener.tls]`: an mTLS listener whose clients are identified by their SPIFFE ID.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// The listener's own certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates client certificates must chain to (PEM; reloaded when the file changes).
    pub client_ca: PathBuf,
    /// The SPIFFE ID pattern, e.g. `spiffe://{trust_domain}/tenant/{tenant}/workload/{workload}`.
    pub spiffe_id: String,
    /// The trust domain client IDs must belong to, e.g. `example.org`.
    pub trust_domain: String,
}

/// What reaches a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// Clients that name the proxy: forward (`HTTP_PROXY`, `CONNECT`) and route mode.
    #[default]
    Proxy,
    /// Connections redirected by the kernel (nftables/iptables `REDIRECT`), served toward their
    /// original destination; see `tenant-proxy sidecar-init`.
    Transparent,
}

/// A proxy listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Name for logs and metrics.
    pub name: String,
    /// Bound address.
    pub listen: SocketAddr,
    /// What reaches it.
    pub kind: ListenerKind,
    /// How it identifies callers: its sources in order, and its bound workload.
    pub identity: ListenerIdentity,
    /// TLS with client certificates, for `mtls` listeners.
    pub tls: Option<ListenerTls>,
}

/// An mTLS listener's files and SPIFFE ID mapping.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// Client trust bundle (PEM), reloaded on change.
    pub client_ca: PathBuf,
    /// How a SPIFFE ID names tenant and workload.
    pub spiffe: Arc<SpiffePattern>,
}

impl ListenerSettings {
    /// Validates every `[[listener]]`: unique names, addresses used once (and not by the admin
    /// listener, `admin`), and each one's identity sources with the settings they need. A
    /// listener's problems are recorded at `listener[i].<field>`.
    pub fn list_from_spec(
        specs: Vec<ListenerSpec>,
        admin: SocketAddr,
        p: &mut Problems<'_>,
    ) -> Vec<Self> {
        if specs.is_empty() {
            p.push("listener", "at least one `[[listener]]` is required");
        }
        let mut names = HashSet::new();
        // Every address taken so far, and what took it.
        let mut addrs = vec![(admin, "the admin listener".to_string())];
        let mut listeners = Vec::new();
        for (i, l) in specs.into_iter().enumerate() {
            let at = |field: &str| format!("listener[{i}].{field}");
            if !names.insert(l.name.clone()) {
                p.push(at("name"), format!("duplicate listener name `{}`", l.name));
            }
            let listen = match l.listen.parse::<SocketAddr>() {
                Ok(a) => {
                    if let Some((b, owner)) = addrs.iter().find(|(b, _)| overlap(a, *b)) {
                        let message = if a == *b {
                            format!("address `{a}` is used twice (also by {owner})")
                        } else {
                            format!(
                                "address `{a}` overlaps `{b}` of {owner}: a wildcard address takes its port on every address, so the second socket cannot bind"
                            )
                        };
                        p.push(at("listen"), message);
                    }
                    addrs.push((a, format!("listener `{}`", l.name)));
                    a
                }
                Err(_) => {
                    p.push(
                        at("listen"),
                        format!("`{}` is not an `ip:port` address", l.listen),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            if l.identity.is_empty() {
                p.push(
                    at("identity"),
                    "list at least one identity source (`binding`, `token`, `mtls`)",
                );
            }
            // SECURITY: a transparent listener serves whatever the pod sends, and captured
            // traffic is the agent's own: the listener's binding is the only identity it may
            // have (a token or certificate in captured traffic is never believed).
            if l.kind == ListenerKind::Transparent
                && (l.identity != [IdentitySourceKind::Binding] || l.tls.is_some())
            {
                p.push(
                    at("identity"),
                    "a `transparent` listener identifies callers by its binding only: `identity = [\"binding\"]`, no `tls`",
                );
            }
            let wants = |kind| l.identity.contains(&kind);
            let tls = listener_tls(l.tls, wants(IdentitySourceKind::Mtls), &at, p);
            let binding = listener_binding(l.binding, wants(IdentitySourceKind::Binding), &at, p);
            listeners.push(ListenerSettings {
                name: l.name,
                listen,
                kind: l.kind,
                identity: ListenerIdentity {
                    sources: l.identity,
                    binding,
                },
                tls,
            });
        }
        listeners
    }
}

impl ListenerSettings {
    /// The warning `check` prints and `run` logs when this listener takes its binding as the
    /// identity of connections from anywhere: it identifies callers by `binding` (first, or
    /// after a token that a caller may simply leave out) and listens on an address other
    /// hosts may reach (a wildcard or a routable address). Anyone who reaches it is then the
    /// bound workload, with its credentials and budgets.
    ///
    /// A transparent listener is not warned about: it must take redirected IPv4 and IPv6
    /// connections (`[::]`), and a connection made to it directly, not redirected, is refused
    /// (its original destination is the listener itself).
    pub fn exposed_binding_warning(&self) -> Option<String> {
        let binding = self.identity.binding.as_ref()?;
        if self.kind == ListenerKind::Transparent || self.listen.ip().to_canonical().is_loopback() {
            return None;
        }
        let reach = if self.listen.ip().is_unspecified() {
            "every address of this host"
        } else {
            "an address other hosts may reach"
        };
        Some(format!(
            "listener `{}` ({}) takes its binding as the caller's identity and listens on {reach}: anyone who can reach that address acts as {}/{}, with its credentials and budgets; bind it to loopback (127.0.0.1) or a pod-local interface, or identify callers by `token` or `mtls`",
            self.name, self.listen, binding.tenant, binding.workload
        ))
    }
}

/// Whether sockets bound to `a` and to `b` would fight for one port: the same address, or a
/// wildcard and any address it covers. `0.0.0.0` covers every IPv4 address; `::` covers every
/// address, IPv4 too, because sockets are dual-stack by default (Linux `bindv6only = 0`).
/// Port 0 asks the kernel for a free port: each such socket gets its own.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: IpAddr, other: IpAddr| match wild {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    };
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// `[listener.tls]`: present exactly when the listener identifies callers by `mtls`.
fn listener_tls(
    spec: Option<ListenerTlsSpec>,
    wanted: bool,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems<'_>,
) -> Option<ListenerTls> {
    match (spec, wanted) {
        (Some(t), true) => {
            let files = [
                ("cert", &t.cert),
                ("key", &t.key),
                ("client_ca", &t.client_ca),
            ];
            for (field, f) in files {
                if !p.path(f).is_file() {
                    p.push(
                        at(&format!("tls.{field}")),
                        format!("`{}` is not a readable file", f.display()),
                    );
                }
            }
            match SpiffePattern::new(&t.spiffe_id, &t.trust_domain) {
                Ok(spiffe) => Some(ListenerTls {
                    cert: p.path(&t.cert),
                    key: p.path(&t.key),
                    client_ca: p.path(&t.client_ca),
                    spiffe: Arc::new(spiffe),
                }),
                Err(e) => {
                    p.push(at("tls.spiffe_id"), e.to_string());
                    None
                }
            }
        }
        (None, true) => {
            p.push(at("tls"), "identity source `mtls` needs `[listener.tls]` with cert, key, client_ca, spiffe_id and trust_domain");
            None
        }
        (Some(_), false) => {
            p.push(
                at("tls"),
                "`tls` is set but `identity` does not list `mtls`",
            );
            None
        }
        (None, false) => None,
    }
}

/// `binding = { tenant, workload }`: present exactly when the listener identifies callers by
/// `binding`.
fn listener_binding(
    spec: Option<BindingSpec>,
    wanted: bool,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems<'_>,
) -> Option<ListenerBinding> {
    match (spec, wanted) {
        (Some(b), true) => {
            let tenant = TenantId::new(&b.tenant)
                .map_err(|e| p.push(at("binding.tenant"), e.to_string()))
                .ok();
            let workload = WorkloadId::new(&b.workload)
                .map_err(|e| p.push(at("binding.workload"), e.to_string()))
                .ok();
            tenant
                .zip(workload)
                .map(|(tenant, workload)| ListenerBinding { tenant, workload })
        }
        (None, true) => {
            p.push(
                at("binding"),
                "identity source `binding` needs `binding = { tenant, workload }`",
            );
            None
        }
        (Some(_), false) => {
            p.push(
                at("binding"),
                "`binding` is set but `identity` does not list `binding`",
            );
            None
        }
        (None, false) => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn listener(
        listen: &str,
        kind: ListenerKind,
        sources: &[IdentitySourceKind],
    ) -> ListenerSettings {
        ListenerSettings {
            name: "l".into(),
            listen: listen.parse().unwrap(),
            kind,
            identity: ListenerIdentity {
                sources: sources.to_vec(),
                binding: sources
                    .contains(&IdentitySourceKind::Binding)
                    .then(|| ListenerBinding {
                        tenant: TenantId::new("acme").unwrap(),
                        workload: WorkloadId::new("bot").unwrap(),
                    }),
            },
            tls: None,
        }
    }

    #[test]
    fn a_binding_listener_other_hosts_reach_is_warned_about() {
        use IdentitySourceKind::{Binding, Token};
        use ListenerKind::{Proxy, Transparent};
        let cases: [(&str, &str, ListenerKind, &[IdentitySourceKind], bool); 10] = [
            ("v4 wildcard", "0.0.0.0:8080", Proxy, &[Binding], true),
            ("v6 wildcard", "[::]:8080", Proxy, &[Binding], true),
            ("routable address", "10.1.2.3:8080", Proxy, &[Binding], true),
            (
                "binding after a token",
                "0.0.0.0:8080",
                Proxy,
                &[Token, Binding],
                true,
            ),
            ("v4 loopback", "127.0.0.1:8080", Proxy, &[Binding], false),
            (
                "other v4 loopback",
                "127.0.0.2:8080",
                Proxy,
                &[Binding],
                false,
            ),
            ("v6 loopback", "[::1]:8080", Proxy, &[Binding], false),
            (
                "v4-mapped loopback",
                "[::ffff:127.0.0.1]:8080",
                Proxy,
                &[Binding],
                false,
            ),
            ("tokens only", "0.0.0.0:8080", Proxy, &[Token], false),
            ("transparent", "[::]:15001", Transparent, &[Binding], false),
        ];
        for (name, listen, kind, sources, warned) in cases {
            let warning = listener(listen, kind, sources).exposed_binding_warning();
            assert_eq!(warning.is_some(), warned, "{name}: {warning:?}");
            if let Some(w) = warning {
                assert!(w.contains("listener `l`") && w.contains("acme/bot"), "{w}");
                assert!(w.contains("anyone who can reach that address"), "{w}");
            }
        }
    }

    #[test]
    fn listener_addresses_overlap_on_one_port() {
        let cases = [
            ("same address", "127.0.0.1:8080", "127.0.0.1:8080", true),
            (
                "v4 wildcard and loopback",
                "0.0.0.0:8080",
                "127.0.0.1:8080",
                true,
            ),
            (
                "loopback and v4 wildcard",
                "127.0.0.1:8080",
                "0.0.0.0:8080",
                true,
            ),
            (
                "v6 wildcard and v4 address",
                "[::]:8080",
                "10.0.0.1:8080",
                true,
            ),
            (
                "v6 wildcard and v6 loopback",
                "[::1]:8080",
                "[::]:8080",
                true,
            ),
            (
                "v4 wildcard and v6 loopback",
                "0.0.0.0:8080",
                "[::1]:8080",
                false,
            ),
            (
                "two specific addresses",
                "127.0.0.1:8080",
                "127.0.0.2:8080",
                false,
            ),
            ("other ports", "0.0.0.0:8080", "127.0.0.1:8081", false),
            ("port 0", "0.0.0.0:0", "127.0.0.1:0", false),
        ];
        for (name, a, b, want) in cases {
            assert_eq!(
                overlap(a.parse().unwrap(), b.parse().unwrap()),
                want,
                "{name}"
            );
        }
    }
}

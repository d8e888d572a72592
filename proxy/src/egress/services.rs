//! The addresses of the services the proxy itself uses, kept current for the egress guard,
//! which refuses them as destinations even where an exception covers their network: the Redis
//! servers it keeps every tenant's state in, and the collector it sends traces to.
//!
//! SECURITY: a tenant's request that reached this Redis could read or rewrite every tenant's
//! counters, runs, holds and audit copies; one that reached the collector could write spans in
//! another tenant's name. What the configuration names is not all of it: a Redis Cluster's
//! seeds are some of its nodes (the client learns the rest from the cluster, and a failover or
//! a resharding adds more), every node also listens on its cluster bus port, and a server named
//! by DNS moves when its pod restarts. So the list is rebuilt every [`REFRESH`] from the names
//! resolved again and, for a cluster, from what its first seed to answer names (see
//! [`RedisEndpoint::cluster_nodes`]). A refresh that learns nothing (no seed answers, a name
//! resolves to nothing) keeps what was known: an address leaves the list only when its name
//! resolves elsewhere or its cluster answers without it.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::redis_conn::RedisEndpoint;

/// How often the list is rebuilt.
pub const REFRESH: Duration = Duration::from_secs(10);

/// How long a refresh waits for one seed's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The current list, shared with the egress guard.
pub type Guarded = Arc<ArcSwap<Vec<SocketAddr>>>;

/// How long start-up waits for the first full list (a cluster's nodes) before it goes on with
/// the configured names alone; the thread completes it as soon as a seed answers.
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// What the guard refuses: Redis endpoints, and other services by `(host, port)`.
#[derive(Debug, Default)]
pub struct Services {
    /// The Redis servers (a cluster's seeds).
    pub redis: Vec<RedisEndpoint>,
    /// Other services (the trace collector).
    pub named: Vec<(String, u16)>,
}

impl Services {
    fn is_empty(&self) -> bool {
        self.redis.is_empty() && self.named.is_empty()
    }

    /// Each configured name resolved now, one set per Redis endpoint then per named service.
    fn resolved(&self) -> Vec<BTreeSet<SocketAddr>> {
        let named = self
            .named
            .iter()
            .map(|(host, port)| resolve(host, *port).into_iter().collect());
        self.redis
            .iter()
            .map(|e| e.addresses().into_iter().collect())
            .chain(named)
            .collect()
    }
}

/// What the refreshes learnt, kept for those that learn nothing.
#[derive(Debug, Default)]
struct Known {
    /// The last addresses of each configured name (as [`Services::resolved`] orders them).
    names: Vec<BTreeSet<SocketAddr>>,
    /// The last nodes the clusters named.
    cluster_nodes: BTreeSet<SocketAddr>,
}

impl Known {
    fn all(&self) -> Vec<SocketAddr> {
        let mut all: BTreeSet<SocketAddr> = self.names.iter().flatten().copied().collect();
        all.extend(self.cluster_nodes.iter().copied());
        all.into_iter().collect()
    }
}

/// A list holding what `services` name, resolved now, and a thread that keeps it current for
/// as long as the process runs. Returns once the first full list is in (or after
/// [`FIRST_WAIT`]), so a cluster's nodes are guarded before the first request. Without
/// services the list stays empty and no thread starts.
pub fn start(services: Services) -> std::io::Result<Guarded> {
    let mut known = Known {
        names: services.resolved(),
        ..Known::default()
    };
    let guarded: Guarded = Arc::new(ArcSwap::from_pointee(known.all()));
    if services.is_empty() {
        return Ok(guarded);
    }
    let list = guarded.clone();
    let (first, first_in) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("egress-services".into())
        .spawn(move || loop {
            refresh(&services, &mut known);
            let now = known.all();
            if **list.load() != now {
                list.store(Arc::new(now));
            }
            // Only the first send is waited for; later ones find the channel gone or full.
            let _ = first.try_send(());
            std::thread::sleep(REFRESH);
        })?;
    let _ = first_in.recv_timeout(FIRST_WAIT);
    Ok(guarded)
}

/// Learns the addresses again: each name resolved (one that resolves to nothing keeps its last
/// addresses), and the clusters' nodes as they name them (kept when no seed answers).
fn refresh(services: &Services, known: &mut Known) {
    let now = services.resolved();
    known.names.resize_with(now.len(), BTreeSet::new);
    for (kept, fresh) in known.names.iter_mut().zip(now) {
        if !fresh.is_empty() {
            *kept = fresh;
        }
    }
    let mut answered = false;
    let mut nodes = BTreeSet::new();
    for endpoint in services.redis.iter().filter(|e| e.is_cluster()) {
        if let Some(named) = endpoint.cluster_nodes(ASK_TIMEOUT) {
            answered = true;
            nodes.extend(named.iter().flat_map(|(host, port)| resolve(host, *port)));
        }
    }
    if answered {
        known.cluster_nodes = nodes;
    }
}

/// `host` (an IP or a name) on `port`, resolved now; none when it does not resolve.
fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_without_an_answer_keeps_what_is_known() {
        let services = Services {
            redis: vec![RedisEndpoint::from_url("redis+cluster://127.0.0.1:1").unwrap()],
            named: vec![
                ("localhost".into(), 4318),
                ("collector.invalid".into(), 4318),
            ],
        };
        let node: SocketAddr = "10.1.2.3:6379".parse().unwrap();
        let moved: SocketAddr = "10.9.9.9:4318".parse().unwrap();
        let mut known = Known {
            // The last name resolved once, and no longer does.
            names: vec![BTreeSet::new(), BTreeSet::new(), BTreeSet::from([moved])],
            cluster_nodes: BTreeSet::from([node]),
        };
        // Nothing listens on port 1: no seed answers.
        refresh(&services, &mut known);
        let now = known.all();
        assert!(now.contains(&node), "{now:?}");
        assert!(now.contains(&moved), "{now:?}");
        assert!(now.contains(&"127.0.0.1:1".parse().unwrap()), "{now:?}");
        // The collector, by its name resolved.
        assert!(
            now.iter().any(|a| a.port() == 4318 && a.ip().is_loopback()),
            "{now:?}"
        );
    }
}

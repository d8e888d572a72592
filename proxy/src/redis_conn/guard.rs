//! The addresses of the Redis servers the proxy keeps every tenant's state in, kept current for
//! the egress guard, which refuses them as destinations even where an exception covers their
//! network.
//!
//! SECURITY: a tenant's request that reached this Redis could read or rewrite every tenant's
//! counters, runs, holds and audit copies. What the configuration names is not all of it: a
//! Redis Cluster's seeds are some of its nodes (the client learns the rest from the cluster,
//! and a failover or a resharding adds more), every node also listens on its cluster bus port,
//! and a server named by DNS moves when its pod restarts. So the list is rebuilt every
//! [`REFRESH`] from the names resolved again and, for a cluster, from `CLUSTER NODES` asked of
//! each seed in turn. A refresh that learns nothing (Redis down, a name that no longer
//! resolves) keeps every address already known: the list only forgets an address the cluster
//! stopped naming and no name resolves to.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::RedisEndpoint;

/// How often the list is rebuilt.
pub const REFRESH: Duration = Duration::from_secs(10);

/// How long a refresh waits for one seed's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The current list, shared with the egress guard.
pub type Guarded = Arc<ArcSwap<Vec<SocketAddr>>>;

/// How long start-up waits for the first full list (a cluster's nodes) before it goes on with
/// the configured names alone; the thread completes it as soon as a seed answers.
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// A list holding what `endpoints` name, resolved now, and a thread that keeps it current for
/// as long as the process runs. Returns once the first full list is in (or after
/// [`FIRST_WAIT`]), so a cluster's nodes are guarded before the first request. Without
/// endpoints the list stays empty and no thread starts.
pub fn start(endpoints: Vec<RedisEndpoint>) -> std::io::Result<Guarded> {
    let seeds: BTreeSet<SocketAddr> = endpoints.iter().flat_map(|e| e.addresses()).collect();
    let guarded: Guarded = Arc::new(ArcSwap::from_pointee(seeds.into_iter().collect()));
    if endpoints.is_empty() {
        return Ok(guarded);
    }
    let list = guarded.clone();
    let (first, first_in) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("redis-guard".into())
        .spawn(move || {
            let mut cluster_nodes = BTreeSet::new();
            loop {
                let now = current(&endpoints, &mut cluster_nodes);
                if **list.load() != now {
                    list.store(Arc::new(now));
                }
                // Only the first send is waited for; later ones find the channel gone or full.
                let _ = first.try_send(());
                std::thread::sleep(REFRESH);
            }
        })?;
    let _ = first_in.recv_timeout(FIRST_WAIT);
    Ok(guarded)
}

/// Every address now: the configured names resolved, and each cluster's nodes as the cluster
/// names them (`cluster_nodes` keeps the last answer, for refreshes that get none).
fn current(
    endpoints: &[RedisEndpoint],
    cluster_nodes: &mut BTreeSet<SocketAddr>,
) -> Vec<SocketAddr> {
    let mut all: BTreeSet<SocketAddr> = endpoints.iter().flat_map(|e| e.addresses()).collect();
    let mut answered = false;
    let mut named = BTreeSet::new();
    for endpoint in endpoints.iter().filter(|e| e.is_cluster()) {
        if let Some(nodes) = endpoint.cluster_nodes(ASK_TIMEOUT) {
            answered = true;
            named.extend(nodes.iter().flat_map(|n| node_addresses(n)));
        }
    }
    if answered {
        *cluster_nodes = named;
    }
    all.extend(cluster_nodes.iter().copied());
    all.into_iter().collect()
}

/// The addresses of one `CLUSTER NODES` line: the node's client port and its bus port, on its
/// IP, or on its announced hostname resolved. A node without an address yet (`:0@0`) has none.
fn node_addresses(line: &str) -> Vec<SocketAddr> {
    // <id> <ip:port@cport[,hostname]> <flags> …
    let Some(field) = line.split_whitespace().nth(1) else {
        return Vec::new();
    };
    let (address, hostname) = field.split_once(',').unwrap_or((field, ""));
    let Some((host_port, bus)) = address.split_once('@') else {
        return Vec::new();
    };
    let Some((ip, port)) = host_port.rsplit_once(':') else {
        return Vec::new();
    };
    let ports = [port, bus].map(|p| p.parse::<u16>().ok().filter(|p| *p != 0));
    let host = if ip.is_empty() { hostname } else { ip };
    if host.is_empty() {
        return Vec::new();
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ports
        .into_iter()
        .flatten()
        .flat_map(|port| (host, port).to_socket_addrs().into_iter().flatten())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_nodes_line_gives_the_client_and_bus_ports() {
        let line = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected";
        assert_eq!(
            node_addresses(line),
            ["127.0.0.1:30004", "127.0.0.1:31004"].map(|a| a.parse().unwrap())
        );
        // IPv6, and a hostname announced beside the address.
        let line = "e7d1 ::1:7000@17000,redis-0.redis myself,master - 0 0 1 connected 0-5460";
        assert_eq!(
            node_addresses(line),
            ["[::1]:7000", "[::1]:17000"].map(|a| a.parse().unwrap())
        );
        // Only a hostname: it is resolved.
        let line = "e7d1 :7000@17000,localhost master - 0 0 1 connected";
        let got = node_addresses(line);
        assert!(
            got.iter().any(|a| a.port() == 7000 && a.ip().is_loopback()),
            "{got:?}"
        );
        assert!(got.iter().any(|a| a.port() == 17000), "{got:?}");
    }

    #[test]
    fn a_node_without_an_address_or_a_garbled_line_gives_none() {
        for line in [
            "e7d1 :0@0 handshake - 0 0 0 connected",
            "",
            "e7d1",
            "e7d1 nonsense master",
            "e7d1 127.0.0.1:x@y master",
        ] {
            assert!(node_addresses(line).is_empty(), "{line}");
        }
    }

    #[test]
    fn a_refresh_without_an_answer_keeps_the_nodes_already_known() {
        let endpoint = RedisEndpoint::from_url("redis+cluster://127.0.0.1:1").unwrap();
        let known: SocketAddr = "10.1.2.3:6379".parse().unwrap();
        let mut nodes = BTreeSet::from([known]);
        // Nothing listens on port 1: no seed answers.
        let now = current(&[endpoint], &mut nodes);
        assert!(now.contains(&known), "{now:?}");
        assert!(now.contains(&"127.0.0.1:1".parse().unwrap()), "{now:?}");
    }
}

//! A Redis Cluster of three masters on loopback for the `route+limits(redis-cluster)` row: the
//! same admission work as the single-server row, through the cluster client (slot routing, one
//! connection per master). No replicas: the row compares what the proxy pays per call against
//! one server, not what replication costs the servers.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tenant_proxy_loadtest::ports::HeldPort;

/// Three `redis-server` children formed into one cluster, killed on drop.
pub struct LocalCluster {
    nodes: Vec<(Child, HeldPort, HeldPort)>,
}

impl LocalCluster {
    /// Starts three empty nodes under `dir` (one subdirectory each) and assigns every slot.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut cluster = LocalCluster { nodes: Vec::new() };
        for i in 0..3 {
            let (port, bus) = (HeldPort::for_child()?, HeldPort::for_child()?);
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let child = Command::new("redis-server")
                .args(["--port", &port.port.to_string()])
                .args(["--cluster-port", &bus.port.to_string()])
                .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a cluster node (redis-server)")?;
            cluster.nodes.push((child, port, bus));
        }
        for port in cluster.ports() {
            wait_until(&format!("cluster node {port} to listen"), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })?;
        }
        let addresses: Vec<String> = cluster.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for port in cluster.ports() {
            wait_until(&format!("cluster node {port} to serve every slot"), || {
                Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                    .args(["CLUSTER", "INFO"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            })?;
        }
        Ok(cluster)
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().map(|(_, port, _)| port.port)
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `done` every 50 ms for up to 20 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

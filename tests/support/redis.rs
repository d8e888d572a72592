//! A real `redis-server` on a loopback port, stopped and started again on the same port when a
//! test needs Redis to go away and come back.
//!
//! `redis-server --port 0` does not mean "any port" (it turns TCP off), and the proxy's
//! configuration takes `redis://host:port` URLs only, so the harness picks the port: it holds a
//! [`HeldPort::for_child`] (bound, not listening, `SO_REUSEADDR`) for the server's whole life,
//! and `redis-server`, which binds with `SO_REUSEADDR` too, listens on it beside that socket.
//! Nothing else is given the port meanwhile, even while the server is down between a stop and a
//! restart, so a restart cannot lose its port to another process.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::HeldPort;

/// A running (or stopped) `redis-server`, killed on drop.
pub struct RedisServer {
    pub port: u16,
    held: HeldPort,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Server arguments beyond the port and persistence (TLS, ACL users).
    extra: Vec<String>,
    /// `redis-cli` arguments that reach it (TLS, login); empty for a plain server.
    cli_login: Vec<String>,
}

impl RedisServer {
    /// A new, empty server.
    pub fn start() -> Self {
        Self::start_with(Vec::new(), Vec::new())
    }

    /// A new, empty server started with `extra` arguments, reached by `redis-cli` with
    /// `cli_login` (its readiness is checked through `redis-cli` then).
    pub fn start_with(extra: Vec<String>, cli_login: Vec<String>) -> Self {
        let held = HeldPort::for_child().unwrap();
        let mut redis = RedisServer {
            port: held.port,
            held,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra,
            cli_login,
        };
        redis.restart();
        redis
    }

    /// A server whose only login is ACL user `user` with `password` (the default user is off).
    pub fn start_with_acl(user: &str, password: &str) -> Self {
        let (server, cli) = Self::acl_login(user, password);
        Self::start_with(server, cli)
    }

    /// Server arguments making `user`/`password` the only login, and the `redis-cli` ones
    /// that log in with it.
    fn acl_login(user: &str, password: &str) -> (Vec<String>, Vec<String>) {
        (
            vec![
                "--user".into(),
                "default".into(),
                "off".into(),
                "--user".into(),
                user.into(),
                "on".into(),
                format!(">{password}"),
                "~*".into(),
                "&*".into(),
                "+@all".into(),
            ],
            vec![
                "--user".into(),
                user.into(),
                "--pass".into(),
                password.into(),
                "--no-auth-warning".into(),
            ],
        )
    }

    /// A server that speaks TLS only (no plain port), with the certificate and key in
    /// `cert_pem`/`key_pem`, issued by the CA in `ca_pem`; clients need no certificate. With
    /// `acl`, its only login is that user and password.
    pub fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        acl: Option<(&str, &str)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = (
            dir.path().join("server.pem"),
            dir.path().join("server.key"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        std::fs::write(&ca, ca_pem).unwrap();
        let held = HeldPort::for_child().unwrap();
        let port = held.port.to_string();
        let mut redis = RedisServer {
            port: held.port,
            held,
            child: None,
            dir,
            extra: vec![
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            cli_login: vec!["--tls".into(), "--cacert".into(), ca.display().to_string()],
        };
        if let Some((user, password)) = acl {
            let login = Self::acl_login(user, password);
            redis.extra.extend(login.0);
            redis.cli_login.extend(login.1);
        }
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL, as a crash): connections to its port are refused until
    /// [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its port, with what a `SAVE` before it left (else empty).
    pub fn restart(&mut self) {
        self.stop();
        // A TLS server listens on its `--tls-port` only.
        let tls = self.extra.iter().any(|a| a == "--tls-port");
        let plain_port = if tls {
            "0".to_string()
        } else {
            self.held.port.to_string()
        };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &plain_port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().as_deref() != Some("PONG") {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> Option<String> {
        if self.cli_login.is_empty() {
            self.command("PING").first().cloned()
        } else {
            Some(self.cli(&["PING"]).trim().to_string())
        }
    }

    /// Sends an inline command (plain servers without a login only); returns the reply lines (status, bulk strings and array items).
    pub fn command(&self, cmd: &str) -> Vec<String> {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return vec![];
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            return vec![];
        }
        let mut r = BufReader::new(s);
        let mut first = String::new();
        if r.read_line(&mut first).is_err() {
            return vec![];
        }
        let first = first.trim_end().to_string();
        match first.chars().next() {
            Some('+') | Some(':') => vec![first[1..].to_string()],
            Some('$') if first == "$-1" => vec![],
            Some('$') => {
                let mut v = String::new();
                r.read_line(&mut v).unwrap();
                vec![v.trim_end().to_string()]
            }
            Some('*') => {
                let n: usize = first[1..].parse().unwrap_or(0);
                (0..n)
                    .map(|_| {
                        let mut len = String::new();
                        r.read_line(&mut len).unwrap();
                        let mut v = String::new();
                        r.read_line(&mut v).unwrap();
                        v.trim_end().to_string()
                    })
                    .collect()
            }
            _ => vec![first],
        }
    }

    /// Runs `redis-cli --raw ARGS` against this server (for replies [`Self::command`] does not
    /// parse, such as nested arrays); its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(&self.cli_login)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real Redis Cluster on loopback: three masters and a replica of each (`redis-cli --cluster
/// create … --cluster-replicas 1`), every node on a held port and its cluster bus on another
/// held port. A node stopped with [`Self::stop_master_of`] is failed over by the cluster itself
/// (node timeout 1 s).
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    _held: HeldPort,
    bus: HeldPort,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Six new, empty nodes formed into a cluster whose every slot is served.
    pub fn start() -> Self {
        let nodes: Vec<ClusterNode> = (0..6)
            .map(|_| {
                let held = HeldPort::for_child().unwrap();
                let bus = HeldPort::for_child().unwrap();
                let dir = tempfile::tempdir().unwrap();
                let child = Command::new("redis-server")
                    .args([
                        "--port",
                        &held.port.to_string(),
                        "--cluster-port",
                        &bus.port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--logfile",
                        "redis.log",
                        // Replicas sync at once (a replica not yet synced is never promoted).
                        "--repl-diskless-sync-delay",
                        "0",
                    ])
                    .current_dir(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed");
                ClusterNode {
                    port: held.port,
                    _held: held,
                    bus,
                    child: Some(child),
                    dir,
                }
            })
            .collect();
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            wait_for(Duration::from_secs(10), "a cluster node to start", || {
                cluster.cli(node.port, &["PING"]).trim() == "PONG"
            });
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_healthy(Duration::from_secs(20));
        cluster
    }

    /// `redis+cluster://` with three of the nodes as seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every node's client port.
    pub fn client_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Every node's client port and cluster bus port.
    pub fn all_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .flat_map(|n| [n.port, n.bus.port])
            .collect()
    }

    /// Every node as a `redis://` seed URL.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Runs `redis-cli -c --raw ARGS` against the node on `port`; its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command through the first live node (following redirections).
    pub fn command(&self, args: &[&str]) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        self.cli(node.port, args)
    }

    /// `GET key` on every live node, replicas included (`READONLY`): port, role and value, for
    /// a failure's post-mortem (which node holds what of a counter).
    pub fn value_on_every_node(&self, key: &str) -> Vec<(u16, String, String)> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| {
                let mut cli = Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &n.port.to_string(), "--raw"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = cli.stdin.take().unwrap();
                stdin
                    .write_all(format!("READONLY\nROLE\nGET {key}\n").as_bytes())
                    .unwrap();
                drop(stdin);
                let out = cli.wait_with_output().unwrap();
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                let lines: Vec<&str> = out.lines().collect();
                let role = lines.get(1).copied().unwrap_or("?").to_string();
                let value = lines.last().copied().unwrap_or("").to_string();
                (n.port, role, value)
            })
            .collect()
    }

    /// Every key of every master (`KEYS *` on each node that is a master).
    pub fn all_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            if self.cli(node.port, &["ROLE"]).lines().next() == Some("master") {
                keys.extend(
                    self.cli(node.port, &["KEYS", "*"])
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
            }
        }
        keys.sort();
        keys
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.serving_master(key).unwrap_or_else(|| {
            panic!(
                "no master serves `{key}`:\n{}",
                self.command(&["CLUSTER", "NODES"])
            )
        })
    }

    /// The live master serving `key`'s slot, if one does (none between a master's failure and
    /// its replica's promotion).
    fn serving_master(&self, key: &str) -> Option<u16> {
        let slot: u16 = self
            .command(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let nodes = self.command(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap();
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return Some(port);
                    }
                }
            }
        }
        None
    }

    /// Waits until the master serving `key`'s slot has a replica that has caught up with it (link
    /// up, no full sync under way, every write applied); the master's port. A failover loses only the writes that
    /// replica lags by; a replica still loading its master's data (after a spurious failover of
    /// a stalled node, say) would lose everything, which no ceiling bound covers.
    pub fn wait_replica_in_sync(&self, key: &str, within: Duration) -> u16 {
        let mut master = 0;
        wait_for(within, "the serving master's replica to be in sync", || {
            // None while a failover is under way.
            let Some(serving) = self.serving_master(key) else {
                return false;
            };
            master = serving;
            let id = self.cli(master, &["CLUSTER", "MYID"]).trim().to_string();
            self.command(&["CLUSTER", "NODES"]).lines().any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 4 || !f[2].contains("slave") || f[2].contains("fail") || f[3] != id {
                    return false;
                }
                let Some(port) = f[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()) else {
                    return false;
                };
                // Caught up: the replica has applied everything the master had written when
                // asked first. A link that is up can still lag, and a resumed old master
                // first runs the writes queued while it stalled, then resyncs.
                let written = repl_offset(&self.cli(master, &["INFO", "replication"]));
                let info = self.cli(port, &["INFO", "replication"]);
                info.contains("master_link_status:up")
                    && info.contains("master_sync_in_progress:0")
                    && written.is_some()
                    && repl_offset(&info) >= written
            })
        });
        master
    }

    /// Kills (SIGKILL, as a crash) the master serving `key`'s slot; its port.
    pub fn stop_master_of(&mut self, key: &str) -> u16 {
        let port = self.master_of(key);
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        port
    }

    /// Waits until every live node reports `cluster_state:ok` and `key`'s slot is served by a
    /// live master other than `stopped`: the cluster promoted a replica.
    pub fn wait_promoted(&self, key: &str, stopped: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while !(self.live_nodes_ok() && self.serving_master(key).is_some_and(|m| m != stopped)) {
            assert!(
                Instant::now() < deadline,
                "no replica was promoted:\n{}\n{}\n{}",
                self.command(&["CLUSTER", "NODES"]),
                self.command(&["CLUSTER", "INFO"]),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every node's log, for a failure message.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log =
                    std::fs::read_to_string(n.dir.path().join("redis.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- node {}:\n{}",
                    n.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn live_nodes_ok(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            self.cli(n.port, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
        })
    }

    fn wait_healthy(&self, within: Duration) {
        wait_for(
            within,
            "the cluster to serve every slot, each replica in sync",
            || {
                self.live_nodes_ok()
                    && self
                        .cli(self.nodes[0].port, &["CLUSTER", "INFO"])
                        .contains("cluster_slots_ok:16384")
                    // Half the nodes replicate, each with its link up. A node that `--cluster
                    // create` has not yet made a replica still says `role:master`, so asking
                    // each node alone would pass before any replica has synced.
                    && self
                        .nodes
                        .iter()
                        .filter(|n| {
                            let info = self.cli(n.port, &["INFO", "replication"]);
                            info.contains("role:slave") && info.contains("master_link_status:up")
                        })
                        .count()
                        == self.nodes.len() / 2
            },
        );
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Polls `done` every 50 ms until it holds; panics naming `what` after `within`.
/// `master_repl_offset` from `INFO replication` (on a replica: how far it has applied).
fn repl_offset(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_for(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP relay in front of a Redis server that misbehaves on demand: it cuts settlements (lets a
/// call naming a settlement's `:settled:` marker run, then closes its client's connection
/// without the answer, as a connection cut after Redis ran the call, which the client sends
/// again), or puts every open connection's replies out of step with its calls (the next reply
/// replaced by a bulk-string length no reply fills).
pub struct RedisRelay {
    pub port: u16,
    /// Settlements still to cut.
    cuts: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    /// Each open connection's "replace the next reply" flag.
    open: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// Bytes whose next call (on whichever connection sends it) gets its reply replaced.
    garble_call: Arc<Mutex<Option<Vec<u8>>>>,
}

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

impl RedisRelay {
    /// A relay to `redis` that passes everything on until told otherwise.
    pub fn start(redis: &RedisServer) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = RedisRelay {
            port: listener.local_addr().unwrap().port(),
            cuts: Arc::default(),
            cut: Arc::default(),
            sent: Arc::default(),
            open: Arc::default(),
            garble_call: Arc::default(),
        };
        let redis_port = redis.port;
        let (cuts, cut, sent, open, garble_call) = (
            relay.cuts.clone(),
            relay.cut.clone(),
            relay.sent.clone(),
            relay.open.clone(),
            relay.garble_call.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let cut_next = Arc::new(AtomicBool::new(false));
                let garble_next = Arc::new(AtomicBool::new(false));
                open.lock().unwrap().push(garble_next.clone());
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (cuts, arm, sent) = (cuts.clone(), cut_next.clone(), sent.clone());
                let (garble_call, garble_mine) = (garble_call.clone(), garble_next.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut from_client, &mut buf) {
                        let settles = buf[..n].windows(9).any(|w| w == b":settled:");
                        sent.fetch_add(usize::from(settles), Ordering::SeqCst);
                        let take = |l: usize| l.checked_sub(1);
                        if settles
                            && cuts
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
                                .is_ok()
                        {
                            arm.store(true, Ordering::SeqCst);
                        }
                        let mut garbled = garble_call.lock().unwrap();
                        if garbled
                            .as_ref()
                            .is_some_and(|p| buf[..n].windows(p.len()).any(|w| w == p))
                        {
                            *garbled = None;
                            garble_mine.store(true, Ordering::SeqCst);
                        }
                        drop(garbled);
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Both);
                });
                let (mut from_server, mut to_client) = (server, client);
                let cut = cut.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut from_server, &mut buf) {
                        if cut_next.load(Ordering::SeqCst) {
                            // Redis ran it; its answer is lost with the connection.
                            cut.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        let reply: &[u8] = if garble_next.swap(false, Ordering::SeqCst) {
                            b"$999999999999\r\n"
                        } else {
                            &buf[..n]
                        };
                        if to_client.write_all(reply).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                    let _ = from_server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        relay
    }

    /// Cuts the next `n` settlements.
    pub fn cut_settlements(&self, n: usize) {
        self.cuts.store(n, Ordering::SeqCst);
    }

    /// Replaces the next reply on every connection open now by a length no reply fills.
    pub fn put_replies_out_of_step(&self) {
        for next in self.open.lock().unwrap().iter() {
            next.store(true, Ordering::SeqCst);
        }
    }

    /// Replaces the reply to the next call whose bytes hold `pattern` by a length no reply
    /// fills (that one connection's replies fall out of step).
    pub fn put_reply_out_of_step_for(&self, pattern: &[u8]) {
        *self.garble_call.lock().unwrap() = Some(pattern.to_vec());
    }

    /// `redis://127.0.0.1:PORT` of the relay.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Settlement calls sent through the relay so far (a second send counted again).
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Settlements cut so far.
    pub fn cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

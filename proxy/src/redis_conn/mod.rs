//! How the proxy reaches Redis, for every concern that keeps shared state there (the limiter's
//! counters and run life records, the audit streams, the revocation list): one server or a
//! Redis Cluster, plain or TLS (`rediss://`) with the deployment's own CA, with an ACL user and
//! a password read from a file or the environment, never from the configuration file.
//!
//! Every key the proxy writes carries a hash tag (`{tenant}`, or `{revocations}`), and every
//! script touches the keys of one tag only, so a script runs on the one Cluster node that owns
//! the slot; [`one_slot`] is checked before each script call, so a key that would break this is
//! refused here, not by the cluster at run time (`CROSSSLOT`).

pub mod local;
pub mod settings;

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use zeroize::Zeroizing;

pub use settings::{RedisEndpointSpec, RedisUrl};

/// A Redis password. `Debug` prints a placeholder; the bytes are wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(Zeroizing<String>);

impl RedisPassword {
    /// Wraps `value` (trailing newlines of a password file are not part of it).
    pub fn new(value: String) -> Self {
        let mut value = Zeroizing::new(value);
        while value.ends_with('\n') || value.ends_with('\r') {
            value.pop();
        }
        Self(value)
    }
}

impl fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisPassword(<redacted>)")
    }
}

/// Where Redis is and how to log in, validated (see [`settings`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisEndpoint {
    /// One URL for a single server; the seed nodes of a cluster. A URL from the environment may
    /// carry a password, so these are never printed.
    nodes: Vec<String>,
    /// Whether `nodes` are seeds of a Redis Cluster.
    cluster: bool,
    /// `rediss://`.
    tls: bool,
    /// ACL user (`AUTH user password`); `None`: the default user.
    username: Option<String>,
    /// The password, from `redis_password_file` or `redis_password_env`.
    password: Option<RedisPassword>,
    /// PEM of the CA that signs the servers' certificates (`redis_ca_file`); `None`: the
    /// system's roots.
    ca_pem: Option<Vec<u8>>,
    /// The file the password was read from (`redis_password_file`), for the warning about a
    /// file other users can read.
    password_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SECURITY: URLs may carry a password (from the environment): only their count shows.
        f.debug_struct("RedisEndpoint")
            .field("nodes", &self.nodes.len())
            .field("cluster", &self.cluster)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

impl RedisEndpoint {
    /// The file the password was read from, if it came from one.
    pub fn password_file(&self) -> Option<&std::path::Path> {
        self.password_file.as_deref()
    }

    /// An endpoint from one URL, without a password file or CA (tests and tools):
    /// `redis://host:port[/db]`, `rediss://…`, `redis+cluster://h1:p1,h2:p2`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let parsed = RedisUrl::parse(url)?;
        Ok(parsed.into_endpoint(None, None))
    }

    /// The addresses of the configured nodes (a cluster's seeds), resolved now: what the egress
    /// guard refuses to let a tenant's request reach. A node whose name does not resolve has
    /// none.
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        use std::net::ToSocketAddrs as _;
        let mut out = Vec::new();
        for url in &self.nodes {
            let Ok(info) = url.as_str().into_connection_info() else {
                continue;
            };
            let (host, port) = match info.addr() {
                redis::ConnectionAddr::Tcp(host, port)
                | redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
                _ => continue,
            };
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if let Ok(addrs) = (host.as_str(), port).to_socket_addrs() {
                out.extend(addrs);
            }
        }
        out
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Every node of a cluster as `(host, port)`, its client and its bus port, from the first
    /// seed that answers within `timeout` (`CLUSTER NODES`; when the login may not ask that,
    /// `CLUSTER SLOTS`, which every cluster client may ask: client ports only, and a replica
    /// only once it has caught up with its master); `None` when no seed answers. The egress
    /// guard learns a cluster's nodes from it.
    pub fn cluster_nodes(&self, timeout: Duration) -> Option<Vec<(String, u16)>> {
        self.nodes.iter().find_map(|url| {
            let mut conn = self
                .client_for(url)
                .ok()?
                .get_connection_with_timeout(timeout)
                .ok()?;
            conn.set_read_timeout(Some(timeout)).ok()?;
            conn.set_write_timeout(Some(timeout)).ok()?;
            match redis::cmd("CLUSTER")
                .arg("NODES")
                .query::<String>(&mut conn)
            {
                Ok(text) => Some(text.lines().flat_map(nodes_line_addresses).collect()),
                Err(_) => {
                    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).ok()?;
                    Some(slots_addresses(&slots))
                }
            }
        })
    }

    /// A placeholder for a section whose endpoint was rejected: it connects nowhere (such a
    /// configuration is never served; its problems are reported).
    pub fn unusable() -> Self {
        Self {
            nodes: Vec::new(),
            cluster: false,
            tls: false,
            username: None,
            password: None,
            ca_pem: None,
            password_file: None,
        }
    }

    fn tls_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: self.ca_pem.clone(),
        }
    }

    /// Connection details of one node, with the configured user and password.
    fn node_info(&self, url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
        let info = url.into_connection_info()?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            redis_settings = redis_settings.set_username(user);
        }
        if let Some(password) = &self.password {
            redis_settings = redis_settings.set_password(password.0.as_str());
        }
        Ok(info.set_redis_settings(redis_settings))
    }

    fn single_client(&self) -> redis::RedisResult<redis::Client> {
        self.client_for(self.nodes.first().map(String::as_str).unwrap_or_default())
    }

    /// A client of the node at `url`, with the configured login and trust.
    fn client_for(&self, url: &str) -> redis::RedisResult<redis::Client> {
        let info = self.node_info(url)?;
        if self.tls && self.ca_pem.is_some() {
            redis::Client::build_with_tls(info, self.tls_certificates())
        } else {
            redis::Client::open(info)
        }
    }

    fn cluster_client(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| self.node_info(n))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // A call is time-boxed by its caller; the client's own retries (MOVED during a
            // resharding, a node reconnecting) happen within that box.
            .retries(2)
            .min_retry_wait(5)
            .max_retry_wait(50);
        if self.tls && self.ca_pem.is_some() {
            builder = builder.certs(self.tls_certificates());
        }
        builder.build()
    }

    /// Connects: a reconnecting multiplexed connection to one server, or a cluster connection
    /// (which follows `MOVED`, refreshes its slot map and reconnects to promoted replicas by
    /// itself). Its driver runs on the current tokio runtime. `timeout` bounds the connect and
    /// each reply.
    pub async fn connect(&self, timeout: Duration) -> redis::RedisResult<AsyncConn> {
        if self.cluster {
            let client = self.cluster_client(timeout)?;
            Ok(AsyncConn::Cluster(client.get_async_connection().await?))
        } else {
            let client = self.single_client()?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            Ok(AsyncConn::Node(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }

    /// A blocking connection (for threads that are not on a runtime, such as the audit writer).
    pub fn connect_blocking(&self, timeout: Duration) -> redis::RedisResult<BlockingConn> {
        if self.cluster {
            let client = self.cluster_client(timeout)?;
            let conn = client.get_connection()?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            Ok(BlockingConn::Cluster(Box::new(conn)))
        } else {
            let conn = self.single_client()?.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            Ok(BlockingConn::Node(Box::new(conn)))
        }
    }
}

/// An async connection to one server or to a cluster; cheap to clone (a handle to one
/// multiplexed connection).
#[derive(Clone)]
pub enum AsyncConn {
    /// One server.
    Node(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl fmt::Debug for AsyncConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AsyncConn::Node(_) => "AsyncConn::Node",
            AsyncConn::Cluster(_) => "AsyncConn::Cluster",
        })
    }
}

/// Whether a call that failed with `error` is sent once more on the connection the manager
/// has begun to remake.
///
/// A [`ConnectionManager`] learns that its connection is dead only from a call that fails on it
/// (the socket closed by a restarted server, or the failed reconnect left by an outage), starts
/// a new connection, and hands that call the error. Without a second try, every connection
/// would refuse one request after each Redis restart, long after Redis answers again (and
/// `/readyz`, probed on another connection, says so). The second try waits for the new
/// connection; the caller's time box ([`local::answer_within`]) bounds both.
///
/// A call cut mid-flight may have run before its connection died; sending it again can then
/// count one request twice, which only refuses sooner, never admits more (a lease is keyed by
/// its id). The cluster client retries the same way (`retries` in [`RedisEndpoint`]).
fn worth_a_second_try(error: &redis::RedisError) -> bool {
    error.is_connection_dropped()
}

impl ConnectionLike for AsyncConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AsyncConn::Node(c) => Box::pin(async move {
                match c.send_packed_command(cmd).await {
                    Err(e) if worth_a_second_try(&e) => c.send_packed_command(cmd).await,
                    answer => answer,
                }
            }),
            AsyncConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AsyncConn::Node(c) => Box::pin(async move {
                match c.send_packed_commands(pipeline, offset, count).await {
                    Err(e) if worth_a_second_try(&e) => {
                        c.send_packed_commands(pipeline, offset, count).await
                    }
                    answer => answer,
                }
            }),
            AsyncConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AsyncConn::Node(c) => c.get_db(),
            AsyncConn::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for BlockingConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockingConn::Node(_) => "BlockingConn::Node",
            BlockingConn::Cluster(_) => "BlockingConn::Cluster",
        })
    }
}

/// A blocking connection to one server or to a cluster.
pub enum BlockingConn {
    /// One server.
    Node(Box<redis::Connection>),
    /// A Redis Cluster.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl BlockingConn {
    /// Sends the commands built by `add` (one per item) as one pipeline per node, replies
    /// ignored.
    pub fn pipeline<I>(
        &mut self,
        items: I,
        add: impl Fn(&mut Cmd, I::Item),
    ) -> redis::RedisResult<()>
    where
        I: IntoIterator,
    {
        match self {
            BlockingConn::Node(conn) => {
                let mut pipe = redis::pipe();
                for item in items {
                    let mut cmd = Cmd::new();
                    add(&mut cmd, item);
                    pipe.add_command(cmd).ignore();
                }
                pipe.query::<()>(conn.as_mut())
            }
            BlockingConn::Cluster(conn) => {
                // The cluster pipeline splits the commands by the node owning each key.
                let mut pipe = redis::cluster::cluster_pipe();
                for item in items {
                    let mut cmd = Cmd::new();
                    add(&mut cmd, item);
                    pipe.add_command(cmd).ignore();
                }
                pipe.query::<()>(conn.as_mut())
            }
        }
    }
}

/// The addresses of one `CLUSTER NODES` line, `<id> <ip:port@cport[,hostname]> <flags> …`:
/// the client and bus ports on the node's IP, or on its announced hostname when it has no IP.
/// A node without an address yet (`:0@0`) has none.
fn nodes_line_addresses(line: &str) -> Vec<(String, u16)> {
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
    let host = if ip.is_empty() { hostname } else { ip };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Vec::new();
    }
    [port, bus]
        .into_iter()
        .filter_map(|p| p.parse::<u16>().ok().filter(|p| *p != 0))
        .map(|p| (host.to_string(), p))
        .collect()
}

/// The nodes of a `CLUSTER SLOTS` answer: per slot range `[start, end, node…]`, each node
/// `[ip, port, id, …]`.
fn slots_addresses(slots: &Value) -> Vec<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    ranges
        .iter()
        .filter_map(|range| match range {
            Value::Array(parts) => Some(parts.iter().skip(2)),
            _ => None,
        })
        .flatten()
        .filter_map(|node| match node {
            Value::Array(fields) => match (fields.first().and_then(text), fields.get(1)) {
                (Some(host), Some(Value::Int(port))) if !host.is_empty() && host != "?" => {
                    u16::try_from(*port)
                        .ok()
                        .filter(|p| *p != 0)
                        .map(|p| (host, p))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The hash tag of `key`: the text between its first `{` and the next `}` when that is not
/// empty, else the whole key (what Redis Cluster hashes to pick the slot).
pub fn hash_tag(key: &str) -> &str {
    // A byte scan: keys are short, and `str::find` sets up a searcher per call (every key of
    // every limiter call is checked here).
    let bytes = key.as_bytes();
    if let Some(open) = bytes.iter().position(|&b| b == b'{') {
        if let Some(len) = bytes[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                // Both ends are ASCII braces, so both are char boundaries.
                return key.get(open + 1..open + 1 + len).unwrap_or(key);
            }
        }
    }
    key
}

/// Checks that `keys` all hash to one slot (one hash tag), as one script's keys must on a
/// Redis Cluster; the tag of the first key. An empty list has no tag.
pub fn one_slot<'k>(keys: impl IntoIterator<Item = &'k str>) -> Result<Option<&'k str>, String> {
    let mut tag = None;
    for key in keys {
        let t = hash_tag(key);
        match tag {
            None => tag = Some(t),
            Some(first) if first == t => {}
            Some(first) => {
                return Err(format!(
                    "one script's keys span two hash tags (`{first}` and `{t}`)"
                ))
            }
        }
    }
    Ok(tag)
}

/// One script call, written as a plain `EVALSHA` command. Arguments go straight into the
/// command's one buffer: redis-rs's `ScriptInvocation` keeps each in a `Vec` of its own and
/// copies them all again into a command (for the limiter, about a tenth of what a call cost
/// the proxy).
pub struct ScriptCall<'s> {
    script: &'s redis::Script,
    cmd: redis::Cmd,
}

/// Names the script only: the arguments are callers' (an approval's record among them).
impl std::fmt::Debug for ScriptCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptCall")
            .field("script", &self.script.get_hash())
            .field("args", &self.cmd.args_iter().count())
            .finish()
    }
}

impl<'s> ScriptCall<'s> {
    /// A call of `script` on `keys`, which must share one hash tag: a script's keys live in one
    /// Cluster slot (every key the proxy builds carries its tenant's tag, so this refuses only
    /// a key built wrongly, before Redis would refuse it with `CROSSSLOT`).
    pub fn new<K: AsRef<str>>(script: &'s redis::Script, keys: &[K]) -> Result<Self, String> {
        one_slot(keys.iter().map(AsRef::as_ref))?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for key in keys {
            cmd.arg(key.as_ref());
        }
        Ok(Self { script, cmd })
    }

    /// Adds an argument (`ARGV`).
    pub fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Runs the call; a server that does not have the script (restarted, flushed, a new
    /// replica) is sent it once and asked again, as `ScriptInvocation` does.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut AsyncConn,
    ) -> redis::RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            answer => answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_nodes_line_gives_the_client_and_bus_ports() {
        let owned = |v: &[(&str, u16)]| -> Vec<(String, u16)> {
            v.iter().map(|(h, p)| (h.to_string(), *p)).collect()
        };
        let line = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected";
        assert_eq!(
            nodes_line_addresses(line),
            owned(&[("127.0.0.1", 30004), ("127.0.0.1", 31004)])
        );
        // IPv6, and a hostname announced beside the address.
        let line = "e7d1 ::1:7000@17000,redis-0.redis myself,master - 0 0 1 connected 0-5460";
        assert_eq!(
            nodes_line_addresses(line),
            owned(&[("::1", 7000), ("::1", 17000)])
        );
        // Only a hostname.
        let line = "e7d1 :7000@17000,redis-0.redis master - 0 0 1 connected";
        assert_eq!(
            nodes_line_addresses(line),
            owned(&[("redis-0.redis", 7000), ("redis-0.redis", 17000)])
        );
        for line in [
            "e7d1 :0@0 handshake - 0 0 0 connected",
            "",
            "e7d1",
            "e7d1 nonsense master",
            "e7d1 127.0.0.1:x@y master",
        ] {
            assert!(nodes_line_addresses(line).is_empty(), "{line}");
        }
    }

    #[test]
    fn a_cluster_slots_answer_gives_every_nodes_client_port() {
        let node = |ip: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(ip.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("?", 7001)]),
            Value::Int(3),
        ]);
        assert_eq!(
            slots_addresses(&slots),
            [
                ("10.0.0.1".to_string(), 7000),
                ("10.0.0.4".to_string(), 7003)
            ]
        );
        assert!(slots_addresses(&Value::Nil).is_empty());
    }

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        for (key, tag) in [
            ("tp:{acme}:rate_s", "acme"),
            ("tp:{acme}:run:{x}:life", "acme"),
            ("tp:{}:x", "tp:{}:x"),
            ("plain", "plain"),
            ("tp:{open", "tp:{open"),
            ("a{}{b}", "a{}{b}"),
            ("{x}}", "x"),
            ("é{ü}", "ü"),
        ] {
            assert_eq!(hash_tag(key), tag, "{key}");
        }
    }

    #[test]
    fn one_scripts_keys_must_share_their_tag() {
        assert_eq!(
            one_slot(["tp:{acme}:a", "tp:{acme}:w:bot:b"]),
            Ok(Some("acme"))
        );
        assert_eq!(one_slot([]), Ok(None));
        let err = one_slot(["tp:{acme}:a", "tp:{globex}:a"]).unwrap_err();
        assert!(err.contains("`acme` and `globex`"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_urls_or_passwords() {
        let endpoint = RedisEndpoint {
            username: Some("proxy".into()),
            password: Some(RedisPassword::new("hunter2-secret\n".into())),
            ..RedisEndpoint::from_url("redis://127.0.0.1:6379").unwrap()
        };
        let shown = format!("{endpoint:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("6379"),
            "{shown}"
        );
        assert!(shown.contains("proxy"), "{shown}");
        assert_eq!(
            RedisPassword::new("pw\r\n".into()),
            RedisPassword::new("pw".into())
        );
    }
}

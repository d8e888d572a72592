//! tenant-proxy: a multi-tenant egress proxy for AI agents.
//!
//! Every call an agent makes, whether a plain request, a request inside a tunnel or a `CONNECT`,
//! goes through one admission chain, [`pipeline::admit`] (its module docs give the order and why;
//! `policy explain` runs the same chain without side effects); [`pipeline`] maps pingora's
//! phases onto it:
//!
//! 1. [`identity`]: who is calling, from the listener, a signed token or an mTLS client
//!    certificate's SPIFFE ID, never from anything the agent writes;
//! 2. [`context::TenantContext`]: one immutable value every later phase receives;
//! 3. [`runs`]: a signed run is started, or refused once closed;
//! 4. [`target`] and [`body`]: where the call goes and what model it names (toward an LLM
//!    destination a body is decoded and read, or refused);
//! 5. [`policy`]: Cedar decides, default deny, errors deny (a shadow set, when configured, is
//!    asked too and only audited; each tenant's clean answers are kept in its own bounded
//!    decision cache, dropped on reload); then [`egress`] resolves the name and refuses non-global
//!    destinations;
//! 6. [`credentials`]: `$CRED{}` handles swapped for the tenant's own secrets toward bound hosts;
//! 7. [`limits`]: ceilings reserved last, so a request refused for any other reason uses none;
//! 8. forward, meter LLM [`usage`] from the response (each provider's API is one file in
//!    [`usage::providers`]), then [`audit`] one record per request in the tenant's own
//!    partition, and [`metrics`] by opaque tenant id.
//!
//! Each request is also one OpenTelemetry span when traces are exported ([`otel`]), with the
//! same care: ids, the decision and the path without query values, nothing secret.
//!
//! A `transparent` listener takes connections the kernel redirected ([`transparent`]: the
//! sidecar shape, for clients that ignore proxy settings) and serves them on the same paths.
//!
//! The process log ([`logging`]) holds no secret at any level: third-party debug lines stay
//! off, and failures are logged without the upstream bytes pingora keeps in its errors.
//!
//! On `SIGTERM` the proxy drains ([`drain`]): it stops accepting, lets the requests in flight
//! finish within the drain time, and cuts the rest so that each still records and settles before
//! the audit writer stops.
//!
//! At startup the process raises its soft open-file limit to the hard one ([`open_files`]), so
//! the connection caps, not the host's default 1024 descriptors, bound how many clients it serves.
//!
//! Configuration ([`config`]) has a static part and a tenant part; each section is validated by
//! the concern that owns it, reporting into [`problems`]. The tenant part, with keys and
//! policies, forms a [`snapshot`] swapped atomically on [`reload`].
//!
//! HTTPS arrives as CONNECT ([`tunnel`]): the tunnel is decided by Cedar, then either
//! terminated with a leaf minted by the deployment's local CA ([`tls`]) so each inner request
//! runs the same pipeline, or relayed opaquely. Every dial goes through [`egress`], which
//! resolves the name itself and refuses non-global destinations.
//!
//! MCP servers ([`mcp`]) get one more step: each `tools/call`, `resources/read` and
//! `prompts/get` is decided as its own Cedar action, and list responses show only the tools,
//! resources and prompts the workload may use. A server is a destination, scoped however it is
//! reached (any route to it, forward mode, a tunnel).
//!
//! Shared state (limit counters, run life records, audit streams, the revocation list) lives in
//! Redis when replicas share it, one server or a Redis Cluster, reached through [`redis_conn`].
//! A permit marked `@approval` holds what it allows until a person of the tenant approves or
//! denies it through the approvals API ([`approvals`]); the hold is one step of the same chain.
//!
//! A signed run ([`runs`]) gets run-level audit events: `run_started` with its first request and
//! a `run_summary` when its token expires or it is closed, each once across replicas.

pub mod admin;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod body;
pub mod charset;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod credentials;
pub mod drain;
pub mod egress;
pub mod error;
pub mod form_pairs;
pub mod front;
pub mod header_names;
pub mod identity;
pub mod ids;
pub mod json_names;
pub mod json_scalar;
pub mod limits;
pub mod logging;
pub mod lower_hex;
pub mod mcp;
pub mod metrics;
pub mod open_files;
pub mod otel;
pub mod own_http;
pub mod part_names;
pub mod path_watch;
pub mod pipeline;
pub mod policy;
pub mod pricing;
pub mod private_key;
pub mod problems;
pub mod reason;
pub mod redis_conn;
pub mod reload;
pub mod reload_status;
pub mod runs;
pub mod shares;
pub mod shown;
pub mod snapshot;
mod stream_wrap;
pub mod target;
pub mod tls;
pub mod trace;
pub mod transparent;
pub mod tunnel;
pub mod usage;
pub mod websocket_switch;
pub mod whole_file;

/// How many cases a property test runs: `default`, or `PROPTEST_CASES` when set (run the
/// parsers' fuzz targets longer with e.g. `PROPTEST_CASES=200000 cargo test -p tenant-proxy
/// --lib fuzz_`).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether this is the test `name` (its full path) running in a process of its own; when it is
/// not, runs it so (this test binary again, with that test alone) and asserts it passed. For
/// tests that measure the process (its peak memory), which other tests' work would disturb.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn in_own_process(name: &str) -> bool {
    const CHILD: &str = "TENANT_PROXY_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("1 passed"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// This process's peak resident memory (`VmHWM`), for tests that bound what reading a body
/// takes.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kib * 1024
}

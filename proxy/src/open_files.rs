//! The process's open-file limit. Every client connection, upstream connection, tunnel and
//! audit partition holds a descriptor, and many hosts still start services with a soft limit of
//! 1024: far below the connection caps (`[limits] max_connections_per_listener`), so the proxy
//! would start refusing accepts with `EMFILE` long before its own caps say "overloaded". Like
//! nginx's `worker_rlimit_nofile` and Go's runtime, the proxy raises the soft limit to the hard
//! one at startup; it never touches the hard limit (that needs privilege and is the operator's
//! call), and it says so when even the hard limit is below what the caps allow.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The open-file limit after [`raise_to_hard_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (unchanged).
    pub hard: u64,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-file limit to the hard limit, when it is lower.
pub fn raise_to_hard_limit() -> nix::Result<OpenFileLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(OpenFileLimit {
            soft,
            hard,
            raised_from: None,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(OpenFileLimit {
        soft: hard,
        hard,
        raised_from: Some(soft),
    })
}

/// Descriptors the connection caps allow at worst: each client connection of each listener
/// may hold one upstream connection (or a tunnel's) beside it, plus a margin for audit files,
/// the admin port and the approvals API (at most [`crate::own_http::MAX_OPEN`] each), Redis and
/// name lookups.
pub fn needed_for(listeners: usize, max_connections_per_listener: u32) -> u64 {
    const MARGIN: u64 = 256;
    (listeners as u64)
        .saturating_mul(u64::from(max_connections_per_listener))
        .saturating_mul(2)
        .saturating_add(MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_counts_an_upstream_per_client_connection_and_never_overflows() {
        assert_eq!(needed_for(2, 10_000), 40_256);
        assert_eq!(needed_for(0, 10_000), 256);
        assert_eq!(needed_for(usize::MAX, u32::MAX), u64::MAX);
    }
}

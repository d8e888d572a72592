//! Workload tokens signed with the repository's test keys.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tenant_proxy::identity::token::RunBudget;
use tenant_proxy::identity::token::{mint, MintRequest};
use tenant_proxy::ids::{TenantId, WorkloadId};

use super::repo_root;

/// The Ed25519 key the test JWKS lists as `test-ed`.
pub const TEST_KEY: &str = "proxy/src/identity/testdata/ed25519-test.pem";
/// The ES256 key the test JWKS lists as `test-es`.
pub const TEST_KEY_ES256: &str = "proxy/src/identity/testdata/es256-test.pem";
/// A key the test JWKS does not list.
pub const OTHER_KEY: &str = "proxy/src/identity/testdata/other-ed25519.pem";
/// The test JWKS (both test keys).
pub const TEST_JWKS: &str = "proxy/src/identity/testdata/test-jwks.json";

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What to put in a token.
pub struct TokenOpts {
    pub key: &'static str,
    pub tenant: &'static str,
    pub workload: &'static str,
    pub audience: &'static str,
    pub ttl_secs: u64,
    pub issued_at: u64,
    pub not_before: Option<u64>,
    pub run_id: Option<&'static str>,
    pub jti: Option<&'static str>,
    pub kid: Option<&'static str>,
    pub run_budget: Option<RunBudget>,
    /// Scopes (an approver token's groups).
    pub scopes: Vec<&'static str>,
}

impl Default for TokenOpts {
    fn default() -> Self {
        Self {
            key: TEST_KEY,
            tenant: "acme",
            workload: "bot",
            audience: "tenant-proxy",
            ttl_secs: 300,
            issued_at: now(),
            not_before: None,
            run_id: None,
            jti: None,
            kid: Some("test-ed"),
            run_budget: None,
            scopes: Vec::new(),
        }
    }
}

/// A signed token.
pub fn token(o: TokenOpts) -> String {
    let pem = std::fs::read_to_string(repo_root().join(o.key)).unwrap();
    let req = MintRequest {
        tenant: TenantId::new(o.tenant).unwrap(),
        workload: WorkloadId::new(o.workload).unwrap(),
        audience: o.audience.into(),
        issuer: None,
        ttl: Duration::from_secs(o.ttl_secs),
        run_id: o.run_id.map(String::from),
        run_budget: o.run_budget,
        scopes: o.scopes.iter().map(|s| s.to_string()).collect(),
        jti: o.jti.map(String::from),
        kid: o.kid.map(String::from),
        now_unix: o.issued_at,
        not_before: o.not_before,
    };
    mint(&pem, &req).unwrap()
}

/// A valid token of `tenant`'s `workload`.
pub fn token_for(tenant: &'static str, workload: &'static str) -> String {
    token(TokenOpts {
        tenant,
        workload,
        ..Default::default()
    })
}

/// The audience of approver tokens (`[approvals] audience`'s default).
pub const APPROVER_AUDIENCE: &str = "tenant-proxy-approvals";

/// An approver token: `approver` of `tenant`, in `groups`.
pub fn approver_token(
    tenant: &'static str,
    approver: &'static str,
    groups: &[&'static str],
) -> String {
    token(TokenOpts {
        tenant,
        workload: approver,
        audience: APPROVER_AUDIENCE,
        scopes: groups.to_vec(),
        ..Default::default()
    })
}

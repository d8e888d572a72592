//! tenant-proxy: a multi-tenant egress proxy for AI agents.
//!
//! Every call an agent makes goes through one pipeline (see [`proxy`]):
//!
//! 1. [`identity`]: who is calling, from the listener, a signed token or (later) mTLS, never
//!    from anything the agent writes;
//! 2. [`ctx::TenantContext`]: one immutable value every later phase receives;
//! 3. [`target`] and [`body`]: where the call goes and what model it names;
//! 4. [`policy`]: Cedar decides, default deny, errors deny;
//! 5. [`credentials`]: `$CRED{}` handles swapped for the tenant's own secrets toward bound hosts;
//! 6. forward, meter LLM [`usage`] from the response, then [`audit`] one record per request in
//!    the tenant's own partition, and [`metrics`] by opaque tenant id.
//!
//! Configuration ([`config`]) has a static part and a tenant part; the tenant part, with keys
//! and policies, forms a [`snapshot`] swapped atomically on [`reload`].

pub mod admin;
pub mod app;
pub mod audit;
pub mod body;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod ctx;
pub mod error;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod pricing;
pub mod proxy;
pub mod reload;
pub mod snapshot;
pub mod target;
pub mod trace;
pub mod usage;

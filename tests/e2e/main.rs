//! The end-to-end suite: the real `tenant-proxy` binary (built from the current sources by the
//! harness) against real origins, clients and `redis-server` on loopback. One test binary, one
//! module per concern, so the suite compiles and links once.

// Test code: a failed step should panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod approvals;
mod approvals_store;
mod audit_chain;
mod budgets;
mod canary;
mod credentials;
mod examples;
mod forwarding;
mod https;
mod identity;
mod isolation;
mod limit_contract;
mod limits;
mod llm_bodies;
mod mcp;
mod mcp_scope;
mod oauth;
mod plain_tunnel;
mod policy_tools;
mod protocol;
mod providers;
mod quickstart;
mod raw_credentials;
mod redis;
mod redis_cluster;
mod redis_tls;
mod reload_audit;
mod reload_watch;
mod revocations;
mod runs;
mod sigv4;
mod tenant_trouble;
mod traces;
mod transparent;
mod usage;

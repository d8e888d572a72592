//! Credentials: `$CRED{name}` handles resolved to per-tenant secrets.

pub mod handle;

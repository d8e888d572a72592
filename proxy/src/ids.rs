//! Identifier newtypes shared by every module.
//!
//! Tenant and workload ids end up in file paths (audit partitions), Redis keys and metric
//! labels, so they are restricted to a small alphabet at construction: an id that exists at
//! runtime can never traverse a path, break a key's hash tag or inject a label.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind}: {why}")]
pub struct InvalidId {
    kind: &'static str,
    value: String,
    why: &'static str,
}

/// The tenant that metrics and log lines name a caller not identified yet (its refusals, the
/// audit queue's refusals before the tenant is known): no tenant may have it, or its series and
/// lines would merge with every unidentified caller's.
pub const TENANT_NONE: &str = "none";

fn validate(kind: &'static str, value: &str, reserved: &[&str]) -> Result<(), InvalidId> {
    if reserved.contains(&value) {
        return Err(InvalidId {
            kind,
            value: value.into(),
            why:
                "the name is reserved: metrics and log lines name callers not identified yet `none`",
        });
    }
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
    if ok {
        Ok(())
    } else {
        // Truncate what we echo back: the input may be hostile and long.
        Err(InvalidId {
            kind,
            value: value.chars().take(64).collect(),
            why: "use 1-63 characters from a-z, 0-9, `-` and `_`, starting with a letter or digit",
        })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, reserved: $reserved:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: &str) -> Result<Self, InvalidId> {
                validate($kind, value, $reserved)?;
                Ok(Self(value.into()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(&s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

/// Longest run id, in bytes (run ids are ASCII).
pub const MAX_RUN_ID_LEN: usize = 128;

/// [`valid_run_id`]'s rule, as a refusal states it.
pub const RUN_ID_RULE: &str =
    "use 1-128 characters from `A-Z`, `a-z`, `0-9`, `.`, `_`, `:` and `-`";

/// A run id (the token's `run_id` claim, and the run an operator names on the admin port): 1-128
/// characters from `A-Za-z0-9._:-`. Run ids end up in Redis keys (`tp:{tenant}:run:<run>:…`)
/// and audit records, so nothing else is accepted wherever one comes from.
pub fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_RUN_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

id_type!(
    /// A tenant: the customer account every request is attributed to.
    TenantId,
    "tenant id",
    reserved: &[TENANT_NONE]
);
id_type!(
    /// A workload within a tenant: one agent deployment (a sidecar, a service account).
    WorkloadId,
    "workload id",
    reserved: &[]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["acme", "a", "tenant-1", "t_2", "0abc"] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "../etc",
            "a/b",
            "-x",
            "_x",
            "a b",
            "a{b}",
            &"x".repeat(64),
        ] {
            assert!(TenantId::new(bad).is_err(), "{bad}");
        }
        // The name metrics and logs give callers not identified yet is no tenant's; a workload
        // may have it.
        let reserved = TenantId::new(TENANT_NONE).expect_err("reserved");
        assert!(reserved.to_string().contains("reserved"), "{reserved}");
        assert!(TenantId::new("none2").is_ok());
        assert!(WorkloadId::new(TENANT_NONE).is_ok());
    }

    #[test]
    fn run_ids() {
        assert!(RUN_ID_RULE.contains(&format!("1-{MAX_RUN_ID_LEN} ")));
        for ok in ["r", "run-42", "A.b_c:d-0", &"r".repeat(128)] {
            assert!(valid_run_id(ok), "{ok}");
        }
        for bad in [
            "",
            "../../etc",
            "a/b",
            "a b",
            "a\nb",
            "a\0b",
            "a{b}",
            "é",
            &"r".repeat(129),
        ] {
            assert!(!valid_run_id(bad), "{bad:?}");
        }
    }
}

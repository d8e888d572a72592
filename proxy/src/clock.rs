//! Wall-clock helpers shared by every module that stamps or compares times.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds now as a signed value (what calendars and policies compute with).
pub fn unix_now_i64() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `t` as RFC 3339 (UTC), e.g. `2026-12-02T22:03:06.123456789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_counts_from_the_epoch() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let now = unix_now();
        assert!(now > 1_700_000_000);
        assert_eq!(unix_now_i64() as u64 / 10, now / 10);
    }
}

//! Reading a proxy's audit trail: each tenant's partition, record by record.

use std::path::Path;
use std::time::{Duration, Instant};

use super::walk;

/// Every record in `tenant`'s partition under the audit directory `dir` (all days, in file
/// order; the signed checkpoints beside them are not records).
pub fn records_in(dir: &Path, tenant: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for file in walk(&dir.join(tenant))
        .into_iter()
        .filter(|f| !f.ends_with("checkpoints.jsonl"))
    {
        // A line the proxy is still writing has no newline yet (a read can land between the
        // bytes of one write); it is read whole on the next poll. A complete line that does not
        // parse still fails the test.
        let bytes = std::fs::read(file).unwrap();
        let complete = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |end| end + 1);
        for line in std::str::from_utf8(&bytes[..complete]).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

/// Waits (5 s at most) until `tenant` has at least `n` records under `dir`; them all.
pub fn wait_records_in(dir: &Path, tenant: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let recs = records_in(dir, tenant);
        if recs.len() >= n {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{tenant} has {} audit records, expected {n}",
            recs.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (5 s at most) until `tenant` has a record with `request_id` under `dir`; that record.
pub fn wait_record_in(dir: &Path, tenant: &str, request_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = records_in(dir, tenant)
            .into_iter()
            .find(|r| r["request_id"] == request_id)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record {request_id} for {tenant}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Cost (micro-units) the records say calls were settled at.
pub fn cost_spent(records: &[serde_json::Value]) -> u64 {
    records
        .iter()
        .filter_map(|r| r["settled"]["cost_micros"].as_u64())
        .sum()
}

/// LLM tokens (input + output) the records say were used.
pub fn tokens_spent(records: &[serde_json::Value]) -> u64 {
    records
        .iter()
        .filter_map(|r| r["usage"].as_object())
        .map(|u| u["input_tokens"].as_u64().unwrap_or(0) + u["output_tokens"].as_u64().unwrap_or(0))
        .sum()
}

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::health::STREAM_STALL;
use super::held::RETRY_FIRST;
use super::*;
use crate::audit::chain::tests::record;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::verify::{verify_tenant, Keys};
use crate::audit::FsyncPolicy;

fn settings(dir: &Path, max_file_bytes: u64) -> AuditSettings {
    AuditSettings {
        dir: dir.to_path_buf(),
        queue_capacity: 16,
        fsync: FsyncPolicy::Batch,
        flush_interval: Duration::from_millis(1),
        max_file_bytes,
        checkpoint_interval: Duration::from_secs(60),
        signing_key: None,
        stream: None,
    }
}

#[test]
fn the_writer_waits_for_more_records_only_while_a_batch_is_not_full() {
    assert!(waits_for_more(false, 0));
    assert!(waits_for_more(false, MAX_BATCH - 2));
    // With the record in hand, a full batch.
    assert!(!waits_for_more(false, MAX_BATCH - 1));
    assert!(!waits_for_more(false, 10 * MAX_BATCH));
    assert!(!waits_for_more(true, 0));
}

fn writer(dir: &Path, max_file_bytes: u64) -> Writer {
    let (signer, _) = Signer::generate().unwrap();
    signer.publish(dir).unwrap();
    Writer::new(
        settings(dir, max_file_bytes),
        signer,
        None,
        Arc::new(Health::default()),
        Arc::new(AtomicBool::new(false)),
        DirLock::take(dir).unwrap(),
    )
}

impl Writer {
    /// Writes a one-tenant batch as a first attempt.
    fn write_batch(&mut self, batch: &[AuditEntry], now: SystemTime) -> io::Result<()> {
        let tenant = batch[0].tenant().to_string();
        self.write_tenant(&tenant, batch, now, false).map(|_| ())
    }
}

fn at(date: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(
        &format!("{date}T12:00:00Z"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.into()
}

fn batch(tenant: &str, n: usize) -> Vec<AuditEntry> {
    (0..n)
        .map(|_| record(tenant, "2026-11-28T12:00:00Z").into())
        .collect()
}

#[test]
fn chains_continue_across_restarts_days_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 2_000);
    w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
    w.write_batch(&batch("globex", 1), at("2026-11-28"))
        .unwrap();
    w.checkpoint_all();
    drop(w);
    // A restart on the next day: the chain goes on in a new file.
    let mut w = writer(dir.path(), 2_000);
    w.write_batch(&batch("acme", 10), at("2026-11-29")).unwrap();
    w.checkpoint_all();
    let files: Vec<_> = layout::record_files(&dir.path().join("acme"))
        .unwrap()
        .into_iter()
        .map(FilePos::rel)
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(files[0], "2026/11/28.jsonl");
    assert_eq!(files[1], "2026/11/29.jsonl");
    assert_eq!(files[2], "2026/11/29_000001.jsonl");
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!(report.problem, None);
    assert_eq!((report.records, report.checkpoints), (13, 2));
    let report = verify_tenant(dir.path(), "globex", &Keys::published(dir.path()).into());
    assert_eq!((report.records, report.problem), (1, None));
}

/// The trail (records, checkpoints, the lock, the published key, their directories) is
/// created for the proxy's user and group only, whatever the umask lets other users read.
#[test]
fn other_users_of_the_host_cannot_read_the_trail() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("audit");
    let mut w = writer(&root, 2_000);
    w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
    w.checkpoint_all();
    let mut seen = 0;
    let mut walk = vec![root.clone()];
    while let Some(at) = walk.pop() {
        for entry in fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o007, 0, "{} is {:o}", path.display(), mode & 0o777);
            seen += 1;
            if path.is_dir() {
                walk.push(path);
            }
        }
    }
    assert!(
        seen >= 7,
        "records, checkpoints, lock, key and their directories: {seen}"
    );
}

#[test]
fn a_torn_last_line_is_cut_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
    drop(w);
    let path = dir.path().join("acme/2026/11/28.jsonl");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"seq\":3,\"prev\":\"ab").unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
    w.checkpoint_all();
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!((report.records, report.problem), (4, None));
    // The bytes cut off are moved beside the file, never destroyed.
    let kept = fs::read(dir.path().join("acme/2026/11/28.jsonl.torn")).unwrap();
    assert_eq!(kept, b"{\"seq\":3,\"prev\":\"ab\n");
    // A second torn tail is kept after the first.
    drop(w);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"seq\":5,").unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
    let kept = fs::read(dir.path().join("acme/2026/11/28.jsonl.torn")).unwrap();
    assert_eq!(kept, b"{\"seq\":3,\"prev\":\"ab\n{\"seq\":5,\n");
}

#[test]
fn a_retried_batch_is_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
    // A failed attempt left part of a batch behind.
    let path = dir.path().join("acme/2026/11/28.jsonl");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"seq\":3,\"prev\":\"half a line\"}\n{\"se")
        .unwrap();
    w.write_tenant("acme", &batch("acme", 1), at("2026-11-28"), true)
        .unwrap();
    w.checkpoint_all();
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!((report.records, report.problem), (3, None));
}

#[test]
fn a_file_changed_by_another_process_is_not_cut_and_the_chain_goes_on_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
    // Someone else removes the last record.
    let path = dir.path().join("acme/2026/11/28.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let kept: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    fs::write(&path, &kept).unwrap();
    let err = w
        .write_batch(&batch("acme", 1), at("2026-11-28"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        kept,
        "nothing padded or cut"
    );
    // The next attempt appends where the file now ends, and goes on from the chain's head
    // the writer knows: the record removed shows (a chain going on from what is left would
    // hide it).
    w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 3);
    assert_eq!(last_seq(dir.path(), "acme"), 4);
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    let problem = report.problem.unwrap();
    assert_eq!(problem.reason, crate::audit::verify::Problem::Deleted);
    assert_eq!(problem.detail, "seq 3 to 3 are missing");
}

#[test]
fn an_unchained_last_record_fails_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acme/2026/11/28.jsonl");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"{\"tenant\":\"acme\"}\n").unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    let err = w
        .write_batch(&batch("acme", 1), at("2026-11-28"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

fn request_ids(dir: &Path, tenant: &str) -> Vec<String> {
    layout::record_files(&dir.join(tenant))
        .unwrap()
        .into_iter()
        .flat_map(|pos| {
            let text = fs::read_to_string(pos.path(&dir.join(tenant))).unwrap();
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["request_id"].as_str().unwrap().to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn named(tenant: &str, id: &str) -> AuditEntry {
    let mut r = record(tenant, "2026-11-28T12:00:00Z");
    r.request_id = id.into();
    r.into()
}

#[test]
fn one_tenants_unwritable_partition_holds_only_its_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    // acme's partition cannot be created: a file is where its directory goes.
    fs::write(dir.path().join("acme"), b"not a directory").unwrap();
    w.write(
        vec![
            named("acme", "a1"),
            named("globex", "g1"),
            named("acme", "a2"),
        ],
        at("2026-11-28"),
    );
    assert!(
        w.health.sink.load(Ordering::Acquire),
        "the sink as a whole still writes"
    );
    assert_eq!(
        **w.health.failing.load(),
        HashSet::from(["acme".to_string()])
    );
    assert_eq!(request_ids(dir.path(), "globex"), ["g1"]);
    // More for both: globex goes on, acme's wait behind the ones it holds.
    w.write(
        vec![named("globex", "g2"), named("acme", "a3")],
        at("2026-11-28"),
    );
    assert_eq!(request_ids(dir.path(), "globex"), ["g1", "g2"]);
    // Not due yet: nothing is tried.
    w.retry_held(Instant::now());
    assert_eq!(w.held["acme"].records.len(), 3);
    // The partition recovers: everything held is written, in order, and acme is served.
    fs::remove_file(dir.path().join("acme")).unwrap();
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert!(w.held.is_empty());
    assert!(w.health.failing.load().is_empty());
    assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2", "a3"]);
    w.checkpoint_all();
    for tenant in ["acme", "globex"] {
        let report = verify_tenant(dir.path(), tenant, &Keys::published(dir.path()).into());
        assert_eq!(report.problem, None, "{tenant}");
    }
}

/// A partition removed while its file is open (a cleanup job): the next write notices, the
/// tenant's requests are refused until the retry writes into a new file, and that file goes
/// on from the chain's head, so verification shows the records that were removed.
#[test]
fn a_partition_removed_underneath_the_writer_fails_then_goes_on_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(
        vec![named("acme", "a1"), named("acme", "a2")],
        at("2026-11-28"),
    );
    fs::remove_dir_all(dir.path().join("acme")).unwrap();
    w.write(vec![named("acme", "a3")], at("2026-11-28"));
    assert_eq!(
        **w.health.failing.load(),
        HashSet::from(["acme".to_string()]),
        "nothing is written into the removed file"
    );
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert!(w.held.is_empty());
    assert!(w.health.failing.load().is_empty());
    assert_eq!(request_ids(dir.path(), "acme"), ["a3"]);
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert!(report.problem.is_some(), "the removal shows: {report:?}");
    // A file removed alone (not its directory) is noticed the same way.
    let files = layout::record_files(&dir.path().join("acme")).unwrap();
    fs::remove_file(files[0].path(&dir.path().join("acme"))).unwrap();
    w.write(vec![named("acme", "a4")], at("2026-11-28"));
    assert!(!w.health.failing.load().is_empty());
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert_eq!(request_ids(dir.path(), "acme"), ["a4"]);
}

/// Records a partition could not take before shutdown are not lost: they are logged as the
/// lines they would have been, and appended to the mended partition they verify.
#[test]
fn records_unwritten_at_shutdown_are_logged_as_their_chained_lines() {
    let dir = tempfile::tempdir().unwrap();
    let acme = dir.path().join("acme");
    let mut w = writer(dir.path(), 1 << 20);
    w.write(vec![named("acme", "a1")], at("2026-11-28"));
    let file = layout::record_files(&acme).unwrap()[0].path(&acme);
    let kept = fs::read(&file).unwrap();
    // The partition goes, and a file stands where it was: nothing can be written there.
    fs::remove_dir_all(&acme).unwrap();
    fs::write(&acme, b"in the way").unwrap();
    w.write(
        vec![named("acme", "a2"), named("acme", "a3")],
        at("2026-11-28"),
    );
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert_eq!(w.held["acme"].records.len(), 2);
    let unwritten = w.unwritten_lines();
    assert_eq!(unwritten.len(), 1);
    let lines: Vec<String> = unwritten[0]
        .1
        .iter()
        .map(|l| l.as_ref().unwrap().clone())
        .collect();
    assert_eq!(lines.len(), 2);
    // Mended by hand: the partition back, the logged lines appended.
    fs::remove_file(&acme).unwrap();
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut mended = kept;
    for line in &lines {
        mended.extend_from_slice(line.as_bytes());
        mended.push(b'\n');
    }
    fs::write(&file, mended).unwrap();
    assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2", "a3"]);
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!(
        (report.records, report.problem.as_ref()),
        (3, None),
        "{report:?}"
    );
}

/// The `unwritten audit record` lines `f` logs, in order (the `line` field of each).
fn logged_unwritten(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer({
            let out = out.clone();
            move || out.clone()
        })
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["fields"]["message"] == "unwritten audit record")
        .map(|v| v["fields"]["line"].as_str().unwrap().to_string())
        .collect()
}

fn seq_of(line: &str) -> u64 {
    chain::parse_link(line.as_bytes())
        .unwrap_or_else(|| panic!("not a record: {line}"))
        .seq
}

/// The `seq` of `tenant`'s last record on disk.
fn last_seq(dir: &Path, tenant: &str) -> u64 {
    let files = layout::record_files(&dir.join(tenant)).unwrap();
    let text = fs::read_to_string(files.last().unwrap().path(&dir.join(tenant))).unwrap();
    seq_of(text.lines().last().unwrap())
}

/// A tenant whose partition stays failing costs bounded memory: past `max_held` the oldest
/// records go to the log as the lines they would have been, chained on; once the partition
/// is back the chain goes on after them, so `audit verify` shows them missing until they
/// are put back, and with them back the partition verifies.
#[test]
fn a_failing_partition_holds_a_bounded_number_of_records_and_logs_the_rest() {
    // A partition with a record already (the writer knows its head), and one never written
    // (it does not).
    for known in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let acme = dir.path().join("acme");
        let mut w = writer(dir.path(), 1 << 20);
        w.max_held = 4;
        let first = if known {
            w.write(vec![named("acme", "a0")], at("2026-11-28"));
            1
        } else {
            0
        };
        let kept = fs::read(acme.join("2026/11/28.jsonl")).ok();
        // The partition goes, and a file stands where it was: nothing can be written there.
        let _ = fs::remove_dir_all(&acme);
        fs::write(&acme, b"in the way").unwrap();
        let mut retry_at = Instant::now();
        let logged = logged_unwritten(|| {
            for i in 0..5 {
                w.write(
                    vec![
                        named("acme", &format!("a{}", 2 * i + 1)),
                        named("acme", &format!("a{}", 2 * i + 2)),
                    ],
                    at("2026-11-28"),
                );
                assert!(w.held["acme"].records.len() <= 4, "the bound holds");
                retry_at += 2 * RETRY_DELAY;
                w.retry_held(retry_at);
                assert!(w.held["acme"].records.len() <= 4);
            }
        });
        assert_eq!(w.held["acme"].records.len(), 4);
        assert!(w.health.failing.load().contains("acme"), "still refused");
        // The six oldest went to the log, chained on from the partition's head.
        let seqs: Vec<u64> = logged.iter().map(|l| seq_of(l)).collect();
        assert_eq!(seqs, (first + 1..=first + 6).collect::<Vec<_>>(), "{known}");
        // The partition back: the four held are written after them, the chain going on.
        fs::remove_file(&acme).unwrap();
        if let Some(kept) = &kept {
            fs::create_dir_all(acme.join("2026/11")).unwrap();
            fs::write(acme.join("2026/11/28.jsonl"), kept).unwrap();
        }
        w.retry_held(retry_at + 2 * RETRY_DELAY);
        assert!(w.held.is_empty());
        assert!(w.health.failing.load().is_empty());
        let ids = request_ids(dir.path(), "acme");
        assert_eq!(&ids[ids.len() - 4..], ["a7", "a8", "a9", "a10"]);
        assert_eq!(last_seq(dir.path(), "acme"), first + 10);
        w.checkpoint_all();
        let keys = Keys::published(dir.path()).into();
        let problem = verify_tenant(dir.path(), "acme", &keys).problem.unwrap();
        assert_eq!(problem.reason, crate::audit::verify::Problem::Deleted);
        assert!(
            problem
                .detail
                .starts_with(&format!("seq {} to {} are missing", first + 1, first + 6)),
            "{problem:?}"
        );
        // The logged lines put back where they belong (here: before the records written
        // on the retry's day), the partition verifies.
        let at = acme.join("2026/11/28.jsonl");
        let mut mended = kept.unwrap_or_default();
        for line in &logged {
            mended.extend_from_slice(line.as_bytes());
            mended.push(b'\n');
        }
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(&at, mended).unwrap();
        let report = verify_tenant(dir.path(), "acme", &keys);
        assert_eq!(
            (report.records, report.problem),
            (first + 10, None),
            "{known}"
        );
    }
}

/// A retry writes what a tenant holds a few records first, then the rest in batches, each
/// durable before the next: a partition that fails again partway keeps what was written
/// (and a partition still failing costs a retry those few records, not the backlog).
#[test]
fn a_retry_writes_the_held_records_a_batch_at_a_time_keeping_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let acme = dir.path().join("acme");
    let mut w = writer(dir.path(), 1 << 20);
    // Every record's line is as long (ids of one length, seq below 100) give or take a
    // digit: the first RETRY_FIRST fit in today's file, the next one rotates into a part
    // that cannot be made (a directory is in the way).
    let line = chain::seal(&named("acme", "r00"), ChainHead::EMPTY)
        .unwrap()
        .0;
    let len = line.len() as u64 + 1;
    w.settings.max_file_bytes = RETRY_FIRST as u64 * (len + 1) + len / 2;
    fs::write(&acme, b"in the way").unwrap();
    let records: Vec<AuditEntry> = (0..40)
        .map(|i| named("acme", &format!("r{i:02}")))
        .collect();
    w.write(records, SystemTime::now());
    assert_eq!(w.held["acme"].records.len(), 40);
    fs::remove_file(&acme).unwrap();
    let today = FilePos::day_of(SystemTime::now());
    fs::create_dir_all(today.next_part().path(&acme)).unwrap();
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert_eq!(
        w.held["acme"].records.len(),
        40 - RETRY_FIRST,
        "progress is kept"
    );
    assert_eq!(request_ids(dir.path(), "acme").len(), RETRY_FIRST);
    assert!(w.health.failing.load().contains("acme"));
    fs::remove_dir(today.next_part().path(&acme)).unwrap();
    w.retry_held(Instant::now() + 3 * RETRY_DELAY);
    assert!(w.held.is_empty());
    let ids = request_ids(dir.path(), "acme");
    assert_eq!(ids, (0..40).map(|i| format!("r{i:02}")).collect::<Vec<_>>());
    w.checkpoint_all();
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!((report.records, report.problem), (40, None));
}

/// A partition file that leaves its path while open (renamed, moved aside with its
/// directory, or unlinked while a snapshot's hard link keeps it) is not written on: the
/// partition fails, then goes on in a new file from the chain's head, visibly.
#[test]
fn a_partition_file_moved_or_unlinked_while_open_is_not_written_on() {
    for how in ["rename", "hard link then rm", "directory moved aside"] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write(
            vec![named("acme", "a1"), named("acme", "a2")],
            at("2026-11-28"),
        );
        let path = dir.path().join("acme/2026/11/28.jsonl");
        let elsewhere = match how {
            "rename" => {
                let to = dir.path().join("acme/2026/11/28.jsonl.old");
                fs::rename(&path, &to).unwrap();
                to
            }
            "hard link then rm" => {
                let to = dir.path().join("snapshot.jsonl");
                fs::hard_link(&path, &to).unwrap();
                fs::remove_file(&path).unwrap();
                to
            }
            _ => {
                fs::rename(dir.path().join("acme"), dir.path().join("acme-archived")).unwrap();
                dir.path().join("acme-archived/2026/11/28.jsonl")
            }
        };
        w.write(vec![named("acme", "a3")], at("2026-11-28"));
        assert_eq!(
            **w.health.failing.load(),
            HashSet::from(["acme".to_string()]),
            "{how}: the partition fails"
        );
        assert_eq!(
            fs::read_to_string(&elsewhere).unwrap().lines().count(),
            2,
            "{how}: nothing written into the file that left"
        );
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert!(w.held.is_empty(), "{how}");
        assert_eq!(request_ids(dir.path(), "acme"), ["a3"], "{how}");
        assert_eq!(last_seq(dir.path(), "acme"), 3, "{how}: the chain goes on");
        w.checkpoint_all();
        let problem = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into())
            .problem
            .unwrap();
        assert_eq!(
            (problem.reason, problem.detail.as_str()),
            (
                crate::audit::verify::Problem::Deleted,
                "seq 1 to 2 are missing"
            ),
            "{how}"
        );
    }
}

/// A partition moved out of the trail and linked back while its file is open: the path still
/// leads to the open file, through the link, and records went on outside the trail. The write
/// notices the link, the partition fails, and the file outside gets nothing more.
#[test]
fn a_partition_linked_back_while_open_is_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(vec![named("acme", "a1")], at("2026-11-28"));
    let moved = outside.path().join("acme");
    fs::rename(dir.path().join("acme"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, dir.path().join("acme")).unwrap();
    w.write(
        vec![named("acme", "a2"), named("globex", "g1")],
        at("2026-11-28"),
    );
    assert_eq!(
        **w.health.failing.load(),
        HashSet::from(["acme".to_string()])
    );
    let day = moved.join("2026/11/28.jsonl");
    assert_eq!(fs::read_to_string(&day).unwrap().lines().count(), 1);
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert_eq!(fs::read_to_string(&day).unwrap().lines().count(), 1);
    assert!(
        w.held.contains_key("acme"),
        "still held: the link stays refused"
    );
    assert_eq!(request_ids(dir.path(), "globex"), ["g1"]);
}

/// A checkpoint that cannot be written fails the partition as a record that cannot does:
/// the tenant is refused until the retry writes it. One whose partition's directory was
/// moved aside is written into the directory made anew, as a record would be.
#[test]
fn a_checkpoint_that_cannot_be_written_fails_the_partition_until_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(vec![named("acme", "a1")], at("2026-11-28"));
    let checkpoints = dir.path().join("acme").join(CHECKPOINTS_FILE);
    fs::create_dir(&checkpoints).unwrap();
    w.checkpoint_all();
    assert_eq!(
        **w.health.failing.load(),
        HashSet::from(["acme".to_string()])
    );
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert!(w.health.failing.load().contains("acme"), "still failing");
    fs::remove_dir(&checkpoints).unwrap();
    w.retry_held(Instant::now() + 3 * RETRY_DELAY);
    assert!(w.health.failing.load().is_empty());
    assert_eq!(checkpoint_lines(dir.path(), "acme").len(), 1);

    // The whole partition moved aside: the checkpoint goes into the directory made anew.
    w.write(vec![named("acme", "a2")], at("2026-11-28"));
    fs::rename(dir.path().join("acme"), dir.path().join("acme-archived")).unwrap();
    w.checkpoint_all();
    assert!(w.health.failing.load().is_empty());
    assert_eq!(checkpoint_lines(dir.path(), "acme").len(), 1);
}

/// A partition deleted before the writer opened its file (the tenant sent nothing since
/// the start) goes on from the chain's head the writer recovered, as one deleted while its
/// file was open does: `audit verify` shows the records deleted, not a fresh chain.
#[test]
fn a_partition_deleted_before_its_file_was_opened_goes_on_from_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 5), at("2026-11-28")).unwrap();
    w.checkpoint_all();
    drop(w);
    let mut w = writer(dir.path(), 1 << 20);
    w.recover_all(at("2026-11-28"));
    fs::remove_dir_all(dir.path().join("acme")).unwrap();
    w.write(vec![named("acme", "a6")], at("2026-11-28"));
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert!(w.held.is_empty());
    assert_eq!(request_ids(dir.path(), "acme"), ["a6"]);
    assert_eq!(last_seq(dir.path(), "acme"), 6);
    w.checkpoint_all();
    let problem = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into())
        .problem
        .unwrap();
    assert_eq!(
        (problem.reason, problem.detail.as_str()),
        (
            crate::audit::verify::Problem::Deleted,
            "seq 1 to 5 are missing"
        )
    );
}

/// The audit directory removed while the writer runs: the writer locks the directory made
/// anew (so no second proxy can start on it) and publishes its key there again; when
/// another process locked the new one first, the writer refuses everything and writes
/// nothing there until it is free.
#[test]
fn a_removed_audit_directory_is_locked_again_or_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("audit");
    fs::create_dir(&dir).unwrap();
    let mut w = writer(&dir, 1 << 20);
    let key = dir
        .join(layout::KEYS_DIR)
        .join(format!("{}.pub", w.signer.key_id()));
    w.write(vec![named("acme", "a1")], at("2026-11-28"));
    // Removed while idle: the writer notices within a retry.
    fs::remove_dir_all(&dir).unwrap();
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert!(
        matches!(DirLock::take(&dir), Err(LockError::Held(_))),
        "the directory made anew is this writer's"
    );
    assert!(key.exists(), "the key is published again");
    assert!(w.health.serving());
    w.write(vec![named("acme", "a2")], at("2026-11-28"));
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert_eq!(request_ids(&dir, "acme"), ["a2"]);

    // Removed again, and another proxy locks the new directory first.
    fs::remove_dir_all(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    let other = DirLock::take(&dir).unwrap();
    w.write(vec![named("acme", "a3")], at("2026-11-28"));
    assert!(!w.health.serving(), "every request is refused");
    w.write(vec![named("acme", "a4")], at("2026-11-28"));
    w.retry_held(Instant::now() + RETRY_DELAY);
    w.checkpoint_all();
    assert!(!w.health.serving());
    assert!(
        !dir.join("acme").exists(),
        "nothing written into the other's directory"
    );
    drop(other);
    w.retry_held(Instant::now() + 2 * RETRY_DELAY);
    assert!(w.health.serving());
    assert!(w.held.is_empty());
    assert_eq!(request_ids(&dir, "acme"), ["a3", "a4"]);
    assert!(key.exists());
}

/// A required stream send that hangs (a frozen Redis) refuses requests once it has lasted
/// longer than `STREAM_STALL`, before its own timeout ends it; a quick one refuses nothing.
#[test]
fn a_hanging_stream_send_refuses_before_it_times_out() {
    let health = Health::default();
    assert!(health.serving());
    health.stream_send_since.store(mono_ms(), Ordering::Release);
    assert!(health.serving(), "a send just begun");
    // (The clock starts at its first reading: wait until it has run past the stall.)
    let stall = STREAM_STALL.as_millis() as u64;
    while mono_ms() <= stall + 100 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let long_ago = mono_ms() - stall - 50;
    health.stream_send_since.store(long_ago, Ordering::Release);
    assert!(!health.serving(), "a send hanging past the stall");
    health.stream_send_since.store(0, Ordering::Release);
    assert!(health.serving(), "the send ended");
    health.sink.store(false, Ordering::Release);
    assert!(!health.serving());
}

#[test]
fn a_partition_that_failed_midway_is_cut_back_and_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(vec![named("acme", "a1")], at("2026-11-28"));
    // Today's file becomes /dev/full: every write fails, as on a full disk (a link the trail
    // never follows but in such a test).
    crate::audit::layout::FULL_DISK_BY_LINK.set(true);
    let path = dir.path().join("acme/2026/11/28.jsonl");
    let kept = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    // (The writer's open handle is on the file just removed; as after a restart, it opens
    // the path anew.)
    w.logs.get_mut("acme").unwrap().file = None;
    w.write(
        vec![named("acme", "a2"), named("globex", "g1")],
        at("2026-11-28"),
    );
    assert!(w.held.contains_key("acme"));
    assert_eq!(request_ids(dir.path(), "globex"), ["g1"]);
    // Space again, with a torn line left by the failed attempt.
    fs::remove_file(&path).unwrap();
    let mut torn = kept.clone();
    torn.extend_from_slice(b"{\"seq\":2,\"prev\":\"ab");
    fs::write(&path, &torn).unwrap();
    crate::audit::layout::FULL_DISK_BY_LINK.set(false);
    w.held.get_mut("acme").unwrap().next_try = Instant::now();
    w.retry_held(Instant::now());
    assert!(w.held.is_empty());
    assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2"]);
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!((report.records, report.problem), (2, None));
}

/// A partition idle for a whole checkpoint interval closes its file (a removed tenant's
/// descriptor is not kept for ever), and its next record opens it again, chained on.
#[test]
fn an_idle_partition_lets_go_of_its_file_and_takes_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(
        vec![named("acme", "a1"), named("globex", "g1")],
        at("2026-11-28"),
    );
    w.checkpoint_all();
    let open = |w: &Writer, t: &str| w.logs.get(t).unwrap().file.is_some();
    assert!(
        open(&w, "acme") && open(&w, "globex"),
        "written this interval"
    );
    w.write(vec![named("globex", "g2")], at("2026-11-28"));
    w.checkpoint_all();
    assert!(!open(&w, "acme"), "acme took nothing for an interval");
    assert!(open(&w, "globex"));
    w.write(vec![named("acme", "a2")], at("2026-11-28"));
    assert!(open(&w, "acme"));
    w.checkpoint_all();
    assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2"]);
    for tenant in ["acme", "globex"] {
        let report = verify_tenant(dir.path(), tenant, &Keys::published(dir.path()).into());
        assert_eq!((report.records, report.problem), (2, None), "{tenant}");
    }
}

#[test]
fn an_unwritable_directory_refuses_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("audit");
    fs::create_dir_all(&root).unwrap();
    let mut w = writer(&root, 1 << 20);
    // The whole directory goes (a stand-in for a full disk): the probe fails too.
    fs::remove_dir_all(&root).unwrap();
    fs::write(&root, b"not a directory").unwrap();
    w.write(vec![named("acme", "a1")], at("2026-11-28"));
    assert!(!w.health.sink.load(Ordering::Acquire));
    fs::remove_file(&root).unwrap();
    w.retry_held(Instant::now() + RETRY_DELAY);
    assert!(w.health.sink.load(Ordering::Acquire));
    assert!(w.held.is_empty());
    assert_eq!(request_ids(&root, "acme"), ["a1"]);
}

fn checkpoint_lines(dir: &Path, tenant: &str) -> Vec<String> {
    fs::read_to_string(dir.join(tenant).join(CHECKPOINTS_FILE))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn parsed(line: &str) -> Checkpoint {
    serde_json::from_str(line).unwrap()
}

#[test]
fn checkpoints_chain_across_restarts_and_a_crashed_head_is_signed_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
    w.checkpoint_all();
    w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
    // A crash: seq 4 and 5 are not signed.
    drop(w);
    let lines = checkpoint_lines(dir.path(), "acme");
    assert_eq!(lines.len(), 1);
    let first = parsed(&lines[0]);
    assert_eq!(first.prev_checkpoint, Some(hex::encode(chain::GENESIS)));
    assert_eq!(first.interval_ms, Some(60_000));
    // The next process (another generated key) signs the recovered head before anything
    // else, linked to the last checkpoint on disk.
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
    let lines = checkpoint_lines(dir.path(), "acme");
    assert_eq!(lines.len(), 2);
    let recovered = parsed(&lines[1]);
    assert_eq!(recovered.seq, 5);
    assert_ne!(recovered.key_id, first.key_id);
    assert_eq!(
        recovered.prev_checkpoint,
        Some(hex::encode(chain::line_hash(lines[0].as_bytes())))
    );
    w.checkpoint_all();
    drop(w);
    // A clean restart: the head is covered, nothing is signed until the chain moves.
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
    assert_eq!(checkpoint_lines(dir.path(), "acme").len(), 3);
    w.checkpoint_all();
    let lines = checkpoint_lines(dir.path(), "acme");
    assert_eq!(parsed(&lines[3]).seq, 7);
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!(
        (report.checkpoints, report.problem.clone()),
        (4, None),
        "{report:?}"
    );

    // A checkpoint removed while the writer runs: the next one still links to it.
    let mut kept = checkpoint_lines(dir.path(), "acme");
    kept.pop();
    fs::write(
        dir.path().join("acme").join(CHECKPOINTS_FILE),
        kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
    w.checkpoint_all();
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!(
        report.problem.map(|p| p.reason),
        Some(crate::audit::verify::Problem::CheckpointGap)
    );
}

#[test]
fn a_restart_after_a_crash_signs_every_tenants_head_before_any_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
    w.write_batch(&batch("globex", 2), at("2026-11-28"))
        .unwrap();
    w.checkpoint_all();
    w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
    w.write_batch(&batch("initech", 4), at("2026-11-28"))
        .unwrap();
    // A crash: acme's 4 and 5 and all of initech are unsigned; globex is covered.
    drop(w);
    let mut w = writer(dir.path(), 1 << 20);
    w.recover_all(at("2026-11-29"));
    // No tenant sent anything, yet each crashed head is signed, and only those.
    let seqs = |tenant: &str| -> Vec<u64> {
        checkpoint_lines(dir.path(), tenant)
            .iter()
            .map(|l| parsed(l).seq)
            .collect()
    };
    assert_eq!(seqs("acme"), [3, 5]);
    assert_eq!(seqs("globex"), [2]);
    assert_eq!(seqs("initech"), [4]);
    for tenant in ["acme", "globex", "initech"] {
        let report = verify_tenant(dir.path(), tenant, &Keys::published(dir.path()).into());
        assert_eq!(report.problem, None, "{tenant}: {report:?}");
        assert!(report.notes.is_empty(), "{tenant}: {report:?}");
    }
    // Signed once: the clean stop signs nothing more.
    w.checkpoint_all();
    assert_eq!(seqs("acme"), [3, 5]);
    // The recovered chains go on.
    w.write_batch(&batch("initech", 1), at("2026-11-29"))
        .unwrap();
    w.checkpoint_all();
    assert_eq!(seqs("initech"), [4, 5]);
}

#[test]
fn a_writer_with_another_interval_states_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
    w.checkpoint_all();
    drop(w);
    let mut w = writer(dir.path(), 1 << 20);
    w.settings.checkpoint_interval = Duration::from_secs(600);
    w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
    let lines = checkpoint_lines(dir.path(), "acme");
    assert_eq!(lines.len(), 2);
    let restated = parsed(&lines[1]);
    assert_eq!((restated.seq, restated.interval_ms), (2, Some(600_000)));
    let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
    assert_eq!(report.problem, None, "{report:?}");
}

/// What whoever can write the audit directory plants there is never written through and
/// blocks nothing: a partition linked elsewhere and a FIFO as a day file fail their own
/// tenants only (the FIFO stopped the writer thread, every tenant's records with it), the
/// files they lead to are untouched, and `verify` reports the FIFO rather than wait on it.
#[test]
fn links_and_fifos_planted_in_the_trail_are_never_written_through() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let side = tempfile::tempdir().unwrap();
    let important = side.path().join("important.txt");
    fs::write(&important, "KEEP").unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    symlink(side.path(), dir.path().join("globex")).unwrap();
    fs::create_dir_all(dir.path().join("initech")).unwrap();
    symlink(&important, dir.path().join("initech/checkpoints.jsonl")).unwrap();
    let month = dir.path().join("acme/2026/11");
    fs::create_dir_all(&month).unwrap();
    let fifo = month.join("28.jsonl");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (done, wrote) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        w.write(
            vec![
                named("acme", "a1"),
                named("globex", "g1"),
                named("initech", "i1"),
                named("hooli", "h1"),
            ],
            at("2026-11-28"),
        );
        w.checkpoint_all();
        done.send(w).unwrap();
    });
    let w = wrote
        .recv_timeout(Duration::from_secs(20))
        .expect("the writer went on");
    assert_eq!(request_ids(dir.path(), "hooli"), ["h1"]);
    let failing = w.health.failing.load();
    assert!(
        failing.contains("acme") && failing.contains("globex") && !failing.contains("hooli"),
        "{failing:?}"
    );
    assert_eq!(fs::read_to_string(&important).unwrap(), "KEEP");
    assert_eq!(
        fs::read_dir(side.path()).unwrap().count(),
        1,
        "nothing written beside it"
    );
    // The lock file and a public key linked elsewhere are not written through either.
    drop(w);
    let lock = tempfile::tempdir().unwrap();
    symlink(&important, lock.path().join(crate::audit::lock::LOCK_FILE)).unwrap();
    assert!(DirLock::take(lock.path()).is_err());
    let (signer, _) = Signer::generate().unwrap();
    let keys = lock.path().join(crate::audit::layout::KEYS_DIR);
    fs::create_dir_all(&keys).unwrap();
    symlink(&important, keys.join(format!("{}.pub", signer.key_id()))).unwrap();
    assert!(signer.publish(lock.path()).is_err());
    assert_eq!(fs::read_to_string(&important).unwrap(), "KEEP");
    // A hard link to another tenant's day file: the partition fails (its last record names
    // another tenant), and globex's file gets nothing of acme's.
    let trail = tempfile::tempdir().unwrap();
    let mut w = writer(trail.path(), 1 << 20);
    w.write(vec![named("globex", "g1")], at("2026-11-28"));
    let globex_day = trail.path().join("globex/2026/11/28.jsonl");
    let globex_before = fs::read(&globex_day).unwrap();
    fs::create_dir_all(trail.path().join("acme/2026/11")).unwrap();
    fs::hard_link(&globex_day, trail.path().join("acme/2026/11/28.jsonl")).unwrap();
    w.write(
        vec![named("acme", "a1"), named("globex", "g2")],
        at("2026-11-28"),
    );
    let failing = w.health.failing.load();
    assert!(
        failing.contains("acme") && !failing.contains("globex"),
        "{failing:?}"
    );
    assert!(fs::read(&globex_day).unwrap().starts_with(&globex_before));
    assert_eq!(request_ids(trail.path(), "globex"), ["g1", "g2"]);
    drop(w);
    // `verify` says the FIFO cannot be read, at once.
    let (done, verified) = std::sync::mpsc::channel();
    let root = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let report = verify_tenant(&root, "acme", &Keys::published(&root).into());
        done.send(report.problem).unwrap();
    });
    let problem = verified
        .recv_timeout(Duration::from_secs(20))
        .expect("verify did not wait on the FIFO");
    assert!(problem.is_some(), "the FIFO is reported");
}

/// A last record planted at the largest `seq` fails its own tenant's partition (an overflow
/// panicked the writer thread, and every tenant was refused), and `verify` reports it at once
/// (it looped over a range to 2^64).
#[test]
fn a_record_planted_at_the_largest_seq_fails_its_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(
        vec![named("acme", "a1"), named("acme", "a2")],
        at("2026-11-28"),
    );
    drop(w);
    let day = dir.path().join("acme/2026/11/28.jsonl");
    let text = fs::read_to_string(&day).unwrap();
    fs::write(
        &day,
        text.replace("{\"seq\":2,", "{\"seq\":18446744073709551615,"),
    )
    .unwrap();
    let (done, wrote) = std::sync::mpsc::channel();
    let root = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let mut w = writer(&root, 1 << 20);
        w.write(
            vec![named("acme", "a3"), named("globex", "g1")],
            at("2026-11-28"),
        );
        let failing = w.health.failing.load().iter().cloned().collect::<Vec<_>>();
        // Not lost at shutdown either: logged without its place in the chain.
        let logged = logged_unwritten(|| w.write_held_before_exit());
        let report = verify_tenant(&root, "acme", &Keys::published(&root).into());
        done.send((failing, logged, report.problem)).unwrap();
    });
    let (failing, logged, problem) = wrote
        .recv_timeout(Duration::from_secs(20))
        .expect("the writer or verify went on");
    assert_eq!(failing, ["acme"]);
    assert_eq!(request_ids(dir.path(), "globex"), ["g1"]);
    assert!(problem.is_some());
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].starts_with("{\"seq\":null,") && logged[0].contains("a3"),
        "{logged:?}"
    );
}

/// A checkpoint line planted past the head (its seq near 2^64) holds no later checkpoint back:
/// the writer signs its new records at the next checkpoint (it stopped signing that tenant for
/// good), and `verify` reports the planted line.
#[test]
fn a_checkpoint_planted_past_the_head_holds_no_checkpoint_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(vec![named("acme", "a1")], at("2026-11-28"));
    w.checkpoint_all();
    drop(w);
    let lines = checkpoint_lines(dir.path(), "acme");
    let planted = lines
        .last()
        .unwrap()
        .replacen("\"seq\":1,", "\"seq\":18446744073709551615,", 1);
    assert_ne!(&planted, lines.last().unwrap());
    let file = dir.path().join("acme/checkpoints.jsonl");
    let mut text = fs::read_to_string(&file).unwrap();
    text.push_str(&planted);
    text.push('\n');
    fs::write(&file, text).unwrap();
    let before = checkpoint_lines(dir.path(), "acme").len();
    let mut w = writer(dir.path(), 1 << 20);
    w.write(vec![named("acme", "a2")], at("2026-11-28"));
    w.checkpoint_all();
    let after = checkpoint_lines(dir.path(), "acme");
    assert!(after.len() > before, "no checkpoint after the planted one");
    assert_eq!(parsed(after.last().unwrap()).seq, 2);
}

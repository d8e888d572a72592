//! Triggers for reloading the snapshot: file changes (debounced) and SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::snapshot::SnapshotHandle;

const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts the watcher and SIGHUP threads. They run for the life of the process.
pub fn spawn(handle: Arc<SnapshotHandle>) {
    let (tx, rx) = mpsc::channel::<()>();

    // The watched set is taken from the first snapshot; watching directories (not files) keeps
    // working when editors and ConfigMaps replace files by rename.
    let targets: Vec<Target> = handle
        .load()
        .watched_paths()
        .into_iter()
        .map(|p| Target::new(&p))
        .collect();
    // A directory read by the snapshot (policies) is watched with everything under it; a
    // file's directory only for its own entries. Watching a file's directory recursively woke
    // the watcher for every write under it: the audit trail and the process log often live
    // beside the tenant file, and each of their writes cost the watcher thread a wake-up.
    let mut watches: Vec<(PathBuf, RecursiveMode)> = targets
        .iter()
        .map(|t| (t.watch.clone(), t.mode()))
        .collect();
    // Recursive first, so that a directory wanted both ways is watched recursively once.
    watches.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then((a.1 == RecursiveMode::NonRecursive).cmp(&(b.1 == RecursiveMode::NonRecursive)))
    });
    watches.dedup_by(|later, first| later.0 == first.0);

    let watch_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() && concerns(&e.paths, &targets) {
                let _ = watch_tx.send(());
            }
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            for (p, mode) in &watches {
                if let Err(e) = w.watch(p, *mode) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot watch for changes; SIGHUP still reloads");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; SIGHUP still reloads");
            None
        }
    };

    let sighup_tx = tx;
    let _ = std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the SIGHUP listener");
                    return;
                }
            };
            rt.block_on(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    tracing::error!("cannot listen for SIGHUP");
                    return;
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading");
                    if sighup_tx.send(()).is_err() {
                        return;
                    }
                }
            });
        });

    let _ = std::thread::Builder::new()
        .name("reloader".into())
        .spawn(move || {
            // The watcher lives as long as this thread, which lives as long as the process.
            let _watcher = watcher;
            while rx.recv().is_ok() {
                // Debounce: editors and atomic renames produce bursts of events.
                std::thread::sleep(DEBOUNCE);
                while rx.try_recv().is_ok() {}
                let _ = handle.reload();
            }
        });
}

/// One path the snapshot is read from, and the directory watched for it.
#[derive(Debug)]
struct Target {
    /// The file or directory (absolute).
    path: PathBuf,
    /// What is watched: the directory itself, or a file's directory.
    watch: PathBuf,
    /// Any change in `watch` counts: `path` is a symlink (a Kubernetes ConfigMap swaps the
    /// directory its files link into, so the event names that, not the file) or does not exist
    /// yet.
    whole_dir: bool,
}

impl Target {
    fn new(path: &Path) -> Self {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if path.is_dir() {
            return Self {
                watch: path.clone(),
                path,
                whole_dir: false,
            };
        }
        let whole_dir = std::fs::symlink_metadata(&path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(true);
        Self {
            watch: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            path,
            whole_dir,
        }
    }

    /// How `watch` is watched: a directory the snapshot reads with all beneath it, a file's
    /// directory for its own entries only.
    fn mode(&self) -> RecursiveMode {
        if self.watch == self.path {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        }
    }

    fn concerns(&self, changed: &Path) -> bool {
        changed.starts_with(&self.path)
            || (self.whole_dir && changed.parent() == Some(self.watch.as_path()))
    }
}

/// Whether a change to `changed` may change the snapshot. A file that merely shares a directory
/// with a watched file (an audit log, the process log, a pid file) does not: reloading for every
/// record written would recompile every policy several times a second under load.
fn concerns(changed: &[PathBuf], targets: &[Target]) -> bool {
    // An event naming no path (the watcher lost track) may be about anything.
    changed.is_empty()
        || changed
            .iter()
            .any(|c| targets.iter().any(|t| t.concerns(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_to_what_the_snapshot_reads_trigger_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("tenants.toml"), "").unwrap();
        std::fs::create_dir_all(root.join("policies/global")).unwrap();
        std::fs::create_dir_all(root.join("audit/acme")).unwrap();
        let targets = [
            Target::new(&root.join("tenants.toml")),
            Target::new(&root.join("policies")),
        ];
        for (path, want) in [
            ("tenants.toml", true),
            ("policies", true),
            ("policies/global/base.cedar", true),
            ("policies/tenants/acme/new.cedar", true),
            // Beside the tenant file, but not read by the snapshot.
            ("audit/acme/2026/12/03.jsonl", false),
            ("proxy.log", false),
            ("tenants.toml.swp", false),
            ("prices.toml.bak", false),
        ] {
            assert_eq!(concerns(&[root.join(path)], &targets), want, "{path}");
        }
        assert!(concerns(&[], &targets), "an event without a path");
        // A symlinked file (a ConfigMap): anything in its directory counts.
        std::fs::write(root.join("real.toml"), "").unwrap();
        std::os::unix::fs::symlink(root.join("real.toml"), root.join("linked.toml")).unwrap();
        let linked = [Target::new(&root.join("linked.toml"))];
        assert!(concerns(&[root.join("..data")], &linked));
        assert_eq!(linked[0].watch, root);
        // ... but not what is written below it (an audit trail beside a ConfigMap's file).
        assert!(!concerns(
            &[root.join("audit/acme/2026/12/03.jsonl")],
            &linked
        ));
    }

    #[test]
    fn a_files_directory_is_watched_for_its_own_entries_a_policy_directory_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("tenants.toml"), "").unwrap();
        std::fs::create_dir_all(root.join("policies")).unwrap();
        assert_eq!(
            Target::new(&root.join("tenants.toml")).mode(),
            RecursiveMode::NonRecursive
        );
        assert_eq!(
            Target::new(&root.join("policies")).mode(),
            RecursiveMode::Recursive
        );
    }
}

//! Triggers for reloading the snapshot: file changes (debounced) and SIGHUP.
//!
//! What is watched is derived again at every reload from what the configuration names then
//! ([`SnapshotHandle::watched_paths`]), and by path, not by the directory a path led to when
//! it was first read: a reload that moves `policy_dir` or `revoked_jtis_file`, a directory
//! replaced by rename, a symlink flipped to a new release and a file linked into another
//! directory are all followed by the edits made after them.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::path_watch::watch;
use crate::snapshot::SnapshotHandle;

const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts the watcher and SIGHUP threads. They run for the life of the process.
pub fn spawn(handle: Arc<SnapshotHandle>) {
    let (tx, rx) = mpsc::channel::<()>();
    let watcher = watch(&handle.watched_paths(), &tx, None, SIGHUP_RELOADS);

    let sighup_tx = tx.clone();
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
            let mut watcher = watcher;
            while rx.recv().is_ok() {
                // Debounce: editors and atomic renames produce bursts of events.
                std::thread::sleep(DEBOUNCE);
                while rx.try_recv().is_ok() {}
                // SECURITY: watch what the configuration names now, where it leads now, before
                // reading it. The paths may have moved (this reload's tenant file names another
                // policy directory), a directory may have been replaced (by rename, or a symlink
                // flipped): the set watched before would never see the edits that follow, and
                // they would silently not apply. Watched before the read, a change made during
                // it reloads again.
                watcher = watch(&handle.watched_paths(), &tx, watcher, SIGHUP_RELOADS);
                let _ = handle.reload();
            }
        });
}

/// What still reloads the tenant configuration when a change cannot be watched.
const SIGHUP_RELOADS: &str = "SIGHUP still reloads";

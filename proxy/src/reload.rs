//! Triggers for reloading the snapshot: file changes (debounced) and SIGHUP.

use std::path::PathBuf;
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
    let paths: Vec<PathBuf> = {
        let snap = handle.load();
        let mut dirs: Vec<PathBuf> = snap
            .watched_paths()
            .into_iter()
            .map(|p| {
                if p.is_dir() {
                    p
                } else {
                    p.parent().map(|d| d.to_path_buf()).unwrap_or_default()
                }
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    };

    let watch_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() {
                let _ = watch_tx.send(());
            }
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            for p in &paths {
                if let Err(e) = w.watch(p, RecursiveMode::Recursive) {
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

//! Watches `zones_dir` for operator edits and hands the changed zone file
//! paths to the updater. Bounded: when the updater is busy the watcher
//! thread waits rather than dropping an edit.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Starts watching; the returned watcher must be kept alive.
pub fn watch(dir: &Path, tx: mpsc::Sender<PathBuf>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)) {
                return;
            }
            for path in event.paths {
                if path.extension().is_some_and(|x| x == "zone") {
                    // The receiver is gone only at shutdown.
                    let _ = tx.blocking_send(path);
                }
            }
        }
        Err(error) => warn!(%error, "zone directory watch error"),
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

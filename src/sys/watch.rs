//! Watches a directory for operator edits (zone files in `zones_dir`, the
//! configuration file) and hands the changed paths on. Bounded: when the
//! receiver is busy the watcher thread waits rather than dropping an edit.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

/// Watches `dir` for changes to the files `wanted` accepts.
pub fn watch_matching(
    dir: &Path,
    wanted: impl Fn(&Path) -> bool + Send + 'static,
    tx: mpsc::Sender<PathBuf>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)) {
                return;
            }
            for path in event.paths {
                if wanted(&path) {
                    // The receiver is gone only at shutdown.
                    let _ = tx.blocking_send(path);
                }
            }
        }
        Err(error) => warn!(%error, "directory watch error"),
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

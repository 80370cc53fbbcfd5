//! Talking to the service manager: with systemd's `Type=notify`, a role
//! says when it is ready (listeners bound, zones loaded), reloading or
//! stopping; and SIGHUP, systemd's `ExecReload`, asks a role to read its
//! files again. Outside a service manager (no `NOTIFY_SOCKET`) the
//! notifications do nothing.

use std::path::PathBuf;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(false, states) {
        warn!(%error, "cannot notify the service manager");
    }
}

/// Serving: the service manager may start what depends on this role.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// On each SIGHUP, `path` goes to `files` as if the file had been edited:
/// whoever follows the file reads it again. Bounded: a burst of signals
/// while a reload is pending is one reload.
pub fn reload_on_hangup(what: &'static str, path: PathBuf, files: mpsc::Sender<PathBuf>) {
    // Installed here, before this returns: a SIGHUP right after start-up
    // must not meet the default action (the end of the process).
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!(what, "cannot install a SIGHUP handler; reload by editing the files");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!(what, file = %path.display(), "SIGHUP: reading again");
            if files.try_send(path.clone()).is_err() && files.is_closed() {
                return;
            }
        }
    });
}

/// For roles that reload nothing: SIGHUP is logged instead of ending the
/// process (its default action).
pub fn ignore_hangups(role: &'static str) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!(role, "SIGHUP: this role reads its configuration only at start; restart it to apply changes");
        }
    });
}

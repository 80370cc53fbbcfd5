//! The ring's side of gRPC: telling the authorities' server tables
//! (`Ring` service) about the joins, deaths and leaves a ring member saw,
//! and running a member wired to them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Bearer;
use super::v1::ring_client::RingClient;
use super::v1::{DeleteRequest, DispatcherRequest, Member as MemberMsg};
use crate::config::{ClientTls, RingConfig};
use crate::ring::driver::{self, Report, RingCounters};

/// Runs this host as a ring member until shutdown, telling `authorities`
/// what it sees and `elected` whether it is the dispatcher; after leaving,
/// waits (at most 2 s) for the leave to be told.
pub async fn run_member(
    cfg: RingConfig,
    authorities: Vec<String>,
    token: Option<String>,
    tls: ClientTls,
    counters: Arc<RingCounters>,
    elected: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (reports, rx) = mpsc::channel(256);
    let teller = tokio::spawn(tell(authorities, token, tls, rx));
    let result = driver::run(cfg, reports, counters, elected, shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), teller).await;
    result
}

/// Tells every authority, in order, retrying a few times while one is away.
pub async fn tell(authorities: Vec<String>, token: Option<String>, tls: ClientTls, mut rx: mpsc::Receiver<Report>) {
    let Ok(bearer) = Bearer::new(token.as_deref()) else { return };
    let clients: Vec<_> = authorities
        .iter()
        .filter_map(|url| match crate::grpc::tls::endpoint(url, &tls) {
            Ok(e) => Some(e),
            Err(error) => {
                tracing::error!(%error, "cannot tell this authority of ring changes");
                None
            }
        })
        .map(|e| RingClient::with_interceptor(e.connect_timeout(Duration::from_secs(1)).connect_lazy(), bearer.clone()))
        .collect();
    while let Some(report) = rx.recv().await {
        for client in &clients {
            let mut client = client.clone();
            // A death that cannot be told at once is stale soon: views move on.
            let attempts = if matches!(report, Report::Delete { .. }) { 3 } else { 6 };
            for attempt in 0..attempts {
                let result = match &report {
                    Report::Announce(a) => client.server_announce(MemberMsg { address: a.to_string() }).await.map(|_| ()),
                    Report::Elected { me, elected } => {
                        client.dispatcher(DispatcherRequest { address: me.to_string(), elected: *elected }).await.map(|_| ())
                    }
                    Report::Delete { dead, reporter } => {
                        client.server_delete(DeleteRequest { dead: dead.to_string(), reporter: reporter.to_string() }).await.map(|_| ())
                    }
                };
                match result {
                    Ok(()) => break,
                    // Already known (a restart) or already gone (reported by another buddy).
                    Err(s) if matches!(s.code(), tonic::Code::AlreadyExists | tonic::Code::NotFound) => break,
                    Err(s) => {
                        debug!(?report, code = ?s.code(), attempt, "ring report not delivered; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                }
            }
        }
    }
}

//! NOTIFY (RFC 1996): tells each configured secondary that a zone's serial
//! moved, retrying over UDP until it acknowledges. The message codec is
//! pure; the sender task is bounded (one zone at a time per secondary,
//! newest serial wins).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const TRIES: usize = 5;
const WAIT: Duration = Duration::from_millis(500);

/// Encodes a NOTIFY for `zone`.
pub fn notify_message(id: u16, zone: &Name) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    let mut q = Query::query(zone.clone(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    m.to_vec().expect("a NOTIFY always encodes")
}

/// Is `reply` the acknowledgement of NOTIFY `id`?
pub fn is_ack(reply: &[u8], id: u16) -> Option<ResponseCode> {
    let m = Message::from_vec(reply).ok()?;
    (m.metadata.id == id && m.metadata.message_type == MessageType::Response && m.metadata.op_code == OpCode::Notify)
        .then_some(m.metadata.response_code)
}

async fn notify_one(target: SocketAddr, sources: &[IpAddr], zone: &Name, serial: u32) {
    // Secondaries accept NOTIFY by the primary's address: send from ours.
    let source = sources.iter().find(|ip| ip.is_ipv4() == target.is_ipv4()).copied();
    let bind = SocketAddr::new(source.unwrap_or(if target.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) }), 0);
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(error) => return warn!(%target, %error, "cannot open a socket for NOTIFY"),
    };
    for attempt in 1..=TRIES {
        let id: u16 = rand_id();
        if let Err(error) = socket.send_to(&notify_message(id, zone), target).await {
            debug!(%target, %error, "NOTIFY send failed");
        }
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            if from != target {
                continue;
            }
            match is_ack(&buf[..n], id) {
                Some(ResponseCode::NoError) => {
                    info!(%target, %zone, serial, attempt, "NOTIFY acknowledged");
                    return;
                }
                Some(code) => {
                    warn!(%target, %zone, serial, %code, from = %bind.ip(), "secondary refused our NOTIFY; check its ACL for this address");
                    return;
                }
                None => {}
            }
        }
    }
    warn!(%target, %zone, serial, "secondary did not acknowledge NOTIFY");
}

fn rand_id() -> u16 {
    rand::random()
}

/// Sends NOTIFY to every target for each (zone, serial) received. While a
/// target is still being told about a zone, newer serials replace the
/// pending one instead of queueing.
pub async fn run(targets: Vec<SocketAddr>, sources: Vec<IpAddr>, mut rx: mpsc::Receiver<(Name, u32)>, shutdown: CancellationToken) {
    let pending: Arc<Mutex<HashMap<(SocketAddr, Name), u32>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (zone, serial) = tokio::select! {
            Some(x) = rx.recv() => x,
            _ = shutdown.cancelled() => break,
        };
        for &target in &targets {
            let key = (target, zone.clone());
            let mut p = pending.lock().await;
            let busy = p.contains_key(&key);
            p.insert(key.clone(), serial);
            drop(p);
            if busy {
                continue;
            }
            let pending = pending.clone();
            let sources = sources.clone();
            tasks.spawn(async move {
                loop {
                    let Some(serial) = pending.lock().await.get(&key).copied() else { return };
                    notify_one(key.0, &sources, &key.1, serial).await;
                    let mut p = pending.lock().await;
                    if p.get(&key) == Some(&serial) {
                        p.remove(&key);
                        return;
                    }
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_round_trips() {
        let zone = Name::from_ascii("demo.example.").unwrap();
        let bytes = notify_message(7, &zone);
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!((m.metadata.op_code, m.metadata.authoritative), (OpCode::Notify, true));
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        let mut reply = m.clone();
        reply.metadata.message_type = MessageType::Response;
        assert_eq!(is_ack(&reply.to_vec().unwrap(), 7), Some(ResponseCode::NoError));
        assert_eq!(is_ack(&reply.to_vec().unwrap(), 8), None);
        assert_eq!(is_ack(&bytes, 7), None, "a query is not an acknowledgement");
    }
}

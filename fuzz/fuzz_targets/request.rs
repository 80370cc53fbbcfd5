//! The DNS request path: any datagram through the pre-encoded fast path and
//! through the hickory-server handler. Neither may panic; whatever either
//! sends back must be a well-formed DNS response to the same ID.

#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use vnamed::dns::snapshot::Snapshot;
use vnamed::dns::{fixture, handler::DnsHandler, udp};

static SNAP: LazyLock<Arc<ArcSwap<Snapshot>>> = LazyLock::new(|| Arc::new(ArcSwap::from_pointee(fixture::snapshot())));
static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));

fn check(reply: &[u8], request: &[u8]) {
    let m = Message::from_vec(reply).expect("replies are well-formed");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(reply[..2], request[..2], "same ID");
}

fuzz_target!(|data: &[u8]| {
    let mut out = [0u8; 4096];
    if let Some(len) = SNAP.load().fast.respond(data, &mut out) {
        check(&out[..len], data);
    }
    let handler = DnsHandler::new(SNAP.clone(), vec!["127.0.0.0/8".parse().unwrap()], Arc::default());
    let sent = Arc::new(Mutex::new(Vec::new()));
    let s = sent.clone();
    RT.block_on(udp::respond(&handler, data.to_vec(), "127.0.0.1:5353".parse().unwrap(), move |b| {
        s.lock().unwrap().push(b.to_vec());
    }));
    for reply in sent.lock().unwrap().iter() {
        check(reply, data);
    }
});

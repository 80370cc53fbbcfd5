//! Malformed and hostile requests: each gets a well-formed error response
//! (FORMERR, REFUSED, NOTIMP) or is dropped, and the server keeps serving.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

use common::{Authority, ZONE};

fn query(name: &str, qtype: RecordType, class: DNSClass) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    let mut q = Query::query(Name::from_ascii(name).unwrap(), qtype);
    q.set_query_class(class);
    m.add_query(q);
    m
}

/// Sends raw bytes; the decoded reply, or None when the server stays silent.
fn exchange(a: &Authority, bytes: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind((a.ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    s.send_to(bytes, (a.ip, a.port)).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).expect("every reply is well-formed"))
}

fn rcode(a: &Authority, m: &Message) -> ResponseCode {
    let reply = exchange(a, &m.to_vec().unwrap()).expect("a reply");
    assert_eq!(reply.metadata.id, 0x4242);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    reply.metadata.response_code
}

#[test]
fn malformed_requests_get_errors_or_silence_and_serving_goes_on() {
    let a = Authority::in_process(&[("example.test.zone", ZONE)], "");
    let good = query("static.example.test.", RecordType::A, DNSClass::IN);
    assert_eq!(rcode(&a, &good), ResponseCode::NoError);

    // Wrong class, ANY, two questions, no question, a meta type, an UPDATE, an unknown opcode.
    assert_eq!(rcode(&a, &query("static.example.test.", RecordType::A, DNSClass::CH)), ResponseCode::Refused);
    assert_eq!(rcode(&a, &query("static.example.test.", RecordType::ANY, DNSClass::IN)), ResponseCode::NotImp);
    let mut two = good.clone();
    two.add_query(Query::query(Name::from_ascii("ns1.example.test.").unwrap(), RecordType::A));
    assert_eq!(rcode(&a, &two), ResponseCode::FormErr);
    let none = Message::new(0x4242, MessageType::Query, OpCode::Query);
    assert_eq!(rcode(&a, &none), ResponseCode::FormErr);
    assert_eq!(rcode(&a, &query("static.example.test.", RecordType::OPT, DNSClass::IN)), ResponseCode::FormErr);
    let mut update = good.clone();
    update.metadata.op_code = OpCode::Update;
    assert_eq!(rcode(&a, &update), ResponseCode::Refused);
    let mut status = good.clone();
    status.metadata.op_code = OpCode::Status;
    assert_eq!(rcode(&a, &status), ResponseCode::NotImp);
    // AXFR over UDP is not a thing.
    assert_eq!(rcode(&a, &query("example.test.", RecordType::AXFR, DNSClass::IN)), ResponseCode::FormErr);

    // Truncated after the header: FORMERR. Shorter than a header: silence.
    let bytes = good.to_vec().unwrap();
    let reply = exchange(&a, &bytes[..15]).expect("header parses, so a reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert!(exchange(&a, &bytes[..5]).is_none());
    assert!(exchange(&a, &[]).is_none());
    // Garbage, oversized garbage, and a response posing as a query.
    for junk in [vec![0xffu8; 64], vec![0x5a; 3000], (0..=255u8).cycle().take(700).collect()] {
        if let Some(reply) = exchange(&a, &junk) {
            assert!(
                matches!(reply.metadata.response_code, ResponseCode::FormErr | ResponseCode::NotImp | ResponseCode::Refused),
                "{reply:?}"
            );
        }
    }
    let mut response = good.clone();
    response.metadata.message_type = MessageType::Response;
    assert!(exchange(&a, &response.to_vec().unwrap()).is_none(), "responses are never answered (no reflection)");

    // Still serving, over UDP and TCP.
    assert_eq!(rcode(&a, &good), ResponseCode::NoError);
    assert!(a.dig("static.example.test A +tcp +short").contains("192.0.2.10"));
}

#[test]
fn garbage_over_tcp_closes_that_connection_only() {
    use std::io::{Read, Write};
    let a = Authority::in_process(&[("example.test.zone", ZONE)], "");
    let mut c = std::net::TcpStream::connect((a.ip, a.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // A length prefix promising more than is sent, then garbage.
    c.write_all(&[0x00, 0x20, 0xde, 0xad, 0xbe, 0xef]).unwrap();
    drop(c);
    let mut c = std::net::TcpStream::connect((a.ip, a.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(&[0x00, 0x10]).unwrap();
    c.write_all(&[0xff; 16]).unwrap();
    let mut buf = [0u8; 512];
    let _ = c.read(&mut buf);
    assert!(a.dig("static.example.test A +tcp +short").contains("192.0.2.10"));
}

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
    // An UPDATE names its zone with an SOA "question" (RFC 2136 §3.1.1):
    // with one it is refused (vnamed takes no updates), without one it is
    // malformed, and the reply does not echo a zone section that is not one.
    let mut update = query("example.test.", RecordType::SOA, DNSClass::IN);
    update.metadata.op_code = OpCode::Update;
    assert_eq!(rcode(&a, &update), ResponseCode::Refused);
    let mut update = good.clone();
    update.metadata.op_code = OpCode::Update;
    let reply = exchange(&a, &update.to_vec().unwrap()).expect("a reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert!(reply.queries.is_empty(), "{reply:?}");
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
    // A whole query with junk after it is malformed, however it is sent.
    let mut junk = good.to_vec().unwrap();
    junk.extend_from_slice(&[0xab; 4000]);
    let reply = exchange(&a, &junk).expect("a reply");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr, "{reply:?}");
    assert_eq!(tcp_exchange(&a, &junk).metadata.response_code, ResponseCode::FormErr);
    let mut pool = query("www.example.test.", RecordType::A, DNSClass::IN).to_vec().unwrap();
    pool.push(0);
    assert_eq!(exchange(&a, &pool).expect("a reply").metadata.response_code, ResponseCode::FormErr, "the fast path's names too");
    let mut response = good.clone();
    response.metadata.message_type = MessageType::Response;
    assert!(exchange(&a, &response.to_vec().unwrap()).is_none(), "responses are never answered (no reflection)");

    // Still serving, over UDP and TCP.
    assert_eq!(rcode(&a, &good), ResponseCode::NoError);
    assert!(a.dig("static.example.test A +tcp +short").contains("192.0.2.10"));
}

/// One message over TCP; its reply.
fn tcp_exchange(a: &Authority, bytes: &[u8]) -> Message {
    Message::from_vec(&tcp_bytes(a, bytes)).expect("every reply is well-formed")
}

fn tcp_bytes(a: &Authority, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect((a.ip, a.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
    c.write_all(bytes).unwrap();
    let mut len = [0u8; 2];
    c.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut reply).unwrap();
    reply
}

/// Replies by the handler (TCP, and UDP questions the fast path leaves to
/// it) compress their names against the question as the fast path's do:
/// the same answer is the same size whichever way it is asked.
#[test]
fn answers_compress_alike_over_udp_and_tcp() {
    let pool = "[[pool]]\nname = \"www.example.test.\"\nanswers = 2\nmembers = [{ id = \"a\", address = \"192.0.2.1\" }, { id = \"b\", address = \"192.0.2.2\" }]\n";
    let a = Authority::in_process(&[("example.test.zone", ZONE)], pool);
    for (name, qtype, answers) in
        [("www.example.test.", RecordType::A, 2), ("static.example.test.", RecordType::A, 1), ("mail.example.test.", RecordType::MX, 1)]
    {
        let q = query(name, qtype, DNSClass::IN).to_vec().unwrap();
        let s = UdpSocket::bind((a.ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&q, (a.ip, a.port)).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        let tcp = tcp_bytes(&a, &q);
        let (udp_m, tcp_m) = (Message::from_vec(&buf[..n]).unwrap(), Message::from_vec(&tcp).unwrap());
        assert_eq!(tcp_m.answers.len(), answers, "{tcp_m:?}");
        assert_eq!(udp_m.answers.len(), tcp_m.answers.len());
        assert_eq!(tcp.len(), n, "{name}: TCP {} bytes, UDP {n}", tcp.len());
        // Each answer's owner is a pointer to the question (offset 12).
        let question_end = 12 + name.len() + 1 + 4;
        assert_eq!(&tcp[question_end..question_end + 2], &[0xc0, 12], "{name}: {tcp:02x?}");
    }
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

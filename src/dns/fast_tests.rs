//! Tests of the pre-encoded fast path: every response it gives is the
//! slow path's, patched for the query.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::dns::snapshot::Snapshot;
use crate::dns::view::ZoneView;
use crate::dns::wire::edns_malformed;
use crate::zone::ZoneFile;

fn snap() -> Snapshot {
    let text = "$TTL 300\n@ IN SOA ns1 h 1 3600 600 86400 60\n  IN NS ns1\nns1 IN A 127.0.0.1\nalias IN CNAME ns1\n*.w IN A 192.0.2.1\n";
    let z = ZoneFile::parse(Path::new("x.zone"), Name::from_ascii("example.").unwrap(), text.into()).unwrap();
    let www = Name::from_ascii("www.example.").unwrap();
    let addrs = vec!["127.0.10.1".parse().unwrap(), "127.0.10.2".parse().unwrap()];
    let mut pools = HashMap::new();
    pools.insert(LowerName::from(&www), Arc::new(PoolAnswer::new(www, 5, addrs, 1, true, false)));
    let view = ZoneView::new(z.data.clone(), 3, pools);
    let mut s = Snapshot::default();
    s.zones.insert(view.data.lower_origin.clone(), Arc::new(view));
    s
}

fn table(s: &Snapshot) -> FastTable {
    build_all(&s.zones)
}

/// A query for ns1.example. A with an OPT record of these option bytes.
fn with_options(options: &[u8]) -> Vec<u8> {
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii("ns1.example.").unwrap(), RecordType::A));
    let mut bytes = q.to_vec().unwrap();
    bytes[11] = 1; // ARCOUNT
    bytes.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0]);
    bytes.extend_from_slice(&(options.len() as u16).to_be_bytes());
    bytes.extend_from_slice(options);
    bytes
}

#[test]
fn the_slow_path_keys_a_question_as_the_fast_path_does() {
    let t = table(&snap());
    let mut out = [0u8; 4096];
    let mut key = [0u8; MAX_KEY];
    let reply = t.respond_keyed(&query("NS1.Example.", RecordType::A, None, 1), &mut out, &mut key).expect("answered");
    let name = Name::from_ascii("NS1.Example.").unwrap();
    assert_eq!(&key[..reply.name_and_type], &question_key(&name, RecordType::A)[..]);
}

#[test]
fn malformed_edns_options_are_left_to_the_slow_path_which_refuses_them() {
    let t = table(&snap());
    let mut out = [0u8; 4096];
    let cookie = |len: u16| [&[0u8, 10][..], &len.to_be_bytes(), &vec![0xab; len as usize]].concat();
    for good in [vec![], cookie(8), cookie(16), cookie(40), [&cookie(8)[..], &[0, 12, 0, 2, 0, 0]].concat()] {
        let q = with_options(&good);
        assert!(!edns_malformed(&q), "{good:?}");
        assert!(t.respond(&q, &mut out).is_some(), "{good:?}");
    }
    for bad in [cookie(0), cookie(7), cookie(41), vec![0, 10], vec![0, 10, 0, 8, 1, 2, 3], vec![0, 12, 0, 4, 0]] {
        let q = with_options(&bad);
        assert!(edns_malformed(&q), "{bad:?}");
        assert!(t.respond(&q, &mut out).is_none(), "{bad:?}");
    }
    assert!(!edns_malformed(&with_options(&[])[..20]), "cut short: the decoder decides");
}

fn query(name: &str, t: RecordType, edns: Option<bool>, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(dnssec_ok) = edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

#[test]
fn fast_answers_match_the_lookup_with_id_flags_and_case_patched() {
    let s = snap();
    let t = table(&s);
    let mut out = [0u8; 1232];
    let req = query("nS1.ExAmple.", RecordType::A, Some(true), 0xbeef);
    let n = t.respond(&req, &mut out).expect("static name is pre-encoded");
    let m = Message::from_vec(&out[..n]).unwrap();
    assert_eq!(m.metadata.id, 0xbeef);
    assert!(m.metadata.recursion_desired && m.metadata.authoritative);
    assert_eq!(m.queries[0].name().to_string(), "nS1.ExAmple.");
    assert_eq!(m.answers.len(), 1);
    assert!(m.edns.as_ref().unwrap().flags().dnssec_ok);

    let ask = |req: Vec<u8>| {
        let mut out = [0u8; 1232];
        let n = t.respond(&req, &mut out)?;
        Some(Message::from_vec(&out[..n]).unwrap())
    };
    let a = ask(query("www.example.", RecordType::A, None, 1)).unwrap();
    let b = ask(query("www.example.", RecordType::A, None, 1)).unwrap();
    assert!(a.edns.is_none());
    assert_ne!(a.answers[0].data, b.answers[0].data, "round-robin rotates");
    assert!(t.respond(&query("alias.example.", RecordType::A, None, 1), &mut out).is_some());
    let soa = ask(query("example.", RecordType::SOA, None, 1)).unwrap();
    assert!(matches!(&soa.answers[0].data, hickory_proto::rr::RData::SOA(x) if x.serial == 3));
}

#[test]
fn everything_else_goes_to_the_slow_path() {
    let t = table(&snap());
    let mut out = [0u8; 1232];
    for (name, ty) in [("nope.example.", RecordType::A), ("x.w.example.", RecordType::A), ("ns1.example.", RecordType::MX)] {
        assert!(t.respond(&query(name, ty, None, 1), &mut out).is_none(), "{name} {ty}");
    }
    let mut two = Message::from_vec(&query("ns1.example.", RecordType::A, None, 1)).unwrap();
    two.add_query(Query::query(Name::from_ascii("ns1.example.").unwrap(), RecordType::A));
    assert!(t.respond(&two.to_vec().unwrap(), &mut out).is_none());
    let mut bytes = query("ns1.example.", RecordType::A, Some(false), 1);
    bytes.push(0);
    assert!(t.respond(&bytes, &mut out).is_none(), "trailing bytes");
    assert!(t.respond(&bytes[..20], &mut out).is_none(), "truncated");
    let mut response = query("ns1.example.", RecordType::A, None, 1);
    response[2] |= 0x80;
    assert!(t.respond(&response, &mut out).is_none(), "responses are not queries");
}

#[test]
fn the_zone_serial_is_written_in_when_answering() {
    let s = snap();
    let t = table(&s);
    let serial_of = |m: &Message| {
        m.answers.iter().chain(&m.authorities).find_map(|r| match &r.data {
            hickory_proto::rr::RData::SOA(x) => Some(x.serial),
            _ => None,
        })
    };
    let ask = |name: &str, ty: RecordType, edns: Option<bool>| {
        let mut out = [0u8; 1232];
        let n = t.respond(&query(name, ty, edns, 7), &mut out).expect("pre-encoded");
        Message::from_vec(&out[..n]).unwrap()
    };
    assert_eq!(serial_of(&ask("example.", RecordType::SOA, None)), Some(3));
    let nodata = ask("www.example.", RecordType::AAAA, Some(false));
    assert!(nodata.answers.is_empty());
    assert_eq!(serial_of(&nodata), Some(3), "NODATA for a virtual name carries the SOA");
    let origin = LowerName::from(Name::from_ascii("example.").unwrap());
    let cell = t
        .stable
        .get(&crate::dns::stable::static_key(&origin, RecordType::SOA))
        .and_then(|(_, p)| p)
        .expect("the apex SOA is patched")
        .serial
        .clone();
    cell.store(0xdead_beef, Ordering::Relaxed);
    assert_eq!(serial_of(&ask("example.", RecordType::SOA, Some(true))), Some(0xdead_beef));
    assert_eq!(serial_of(&ask("www.example.", RecordType::AAAA, None)), Some(0xdead_beef), "one cell per zone");
    let a = ask("www.example.", RecordType::A, None);
    assert_eq!(serial_of(&a), None, "positive answers carry no serial");
}

#[test]
fn dynamic_entries_change_one_shard_at_a_time() {
    let t = table(&snap());
    let mut d = t.dynamic.clone();
    let key = key_of(&LowerName::from(Name::from_ascii("www.example.").unwrap()), RecordType::A, Shape::Plain);
    let before = d.get(&key).unwrap().clone();
    let shared = d.shards.iter().zip(t.dynamic.shards.iter()).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
    assert_eq!(shared, SHARDS);
    d.insert(key.clone(), Arc::new(Entry { counters: None, serial: None, ..(*before).clone() }));
    let shared = d.shards.iter().zip(t.dynamic.shards.iter()).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
    assert_eq!(shared, SHARDS - 1, "only the key's shard is copied");
    assert!(Arc::ptr_eq(t.dynamic.get(&key).unwrap(), &before), "the old table is untouched");
    d.remove(&key);
    assert!(d.get(&key).is_none());
}

#[test]
fn answers_drawn_by_shares_follow_them_query_by_query_on_both_paths() {
    let mut s = snap();
    let www = Name::from_ascii("www.example.").unwrap();
    let addrs: Vec<std::net::IpAddr> = ["127.0.10.1", "127.0.10.2", "127.0.10.3", "::1"].iter().map(|a| a.parse().unwrap()).collect();
    let answer = PoolAnswer::new(www.clone(), 5, addrs.clone(), 2, false, false).with_shares(vec![0.2, 0.3, 0.4, 0.1]);
    let origin = LowerName::from(Name::from_ascii("example.").unwrap());
    let mut view = (*s.zones[&origin]).clone();
    view.pools.insert(LowerName::from(&www), Arc::new(answer));
    s.zones.insert(origin, Arc::new(view));
    let t = table(&s);
    let mut firsts: HashMap<String, usize> = HashMap::new();
    for i in 0..2000u16 {
        let mut out = [0u8; 1232];
        let n = t.respond(&query("www.example.", RecordType::A, None, i), &mut out).expect("pre-encoded");
        let m = Message::from_vec(&out[..n]).unwrap();
        let got: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_ne!(got[0], got[1], "distinct members");
        // After the drawn one, the rest in share order: .3 first, unless it led.
        let second = if got[0] == "127.0.10.3" { "127.0.10.2" } else { "127.0.10.3" };
        assert_eq!(got[1], second, "{got:?}");
        *firsts.entry(got[0].clone()).or_default() += 1;
    }
    // The IPv4 members' shares among themselves: 2/9, 3/9, 4/9 of the answers.
    for (a, share) in [("127.0.10.1", 2.0 / 9.0), ("127.0.10.2", 3.0 / 9.0), ("127.0.10.3", 4.0 / 9.0)] {
        let got = firsts[a] as f64 / 2000.0;
        assert!((got - share).abs() < 0.005, "{a}: {got} of the answers, its share {share}");
    }
    let v6 = t.respond(&query("www.example.", RecordType::AAAA, None, 1), &mut [0u8; 1232]).expect("pre-encoded");
    assert!(v6 > 0);
    // The slow path draws the same way.
    let name = LowerName::from(&www);
    let mut slow: HashMap<String, usize> = HashMap::new();
    for turn in 0..1000 {
        let a = crate::dns::lookup::lookup(&s.zones, &name, RecordType::A, DNSClass::IN, turn);
        *slow.entry(a.answers[0].data.to_string()).or_default() += 1;
    }
    for (a, expect) in [("127.0.10.1", 222.2), ("127.0.10.2", 333.3), ("127.0.10.3", 444.4)] {
        assert!((slow[a] as f64 - expect).abs() <= 1.0, "{a}: {} in a full cycle of the schedule", slow[a]);
    }
}

#[test]
fn a_pool_with_one_leader_answers_it_first_and_the_rest_after_from_one_encoding() {
    let mut s = snap();
    let www = Name::from_ascii("www.example.").unwrap();
    let addrs: Vec<std::net::IpAddr> = ["127.0.10.1", "127.0.10.2", "127.0.10.3"].iter().map(|a| a.parse().unwrap()).collect();
    // Priority with its first member full: the second leads, the others follow.
    let answer = PoolAnswer::new(www.clone(), 5, addrs, 3, false, false).with_shares(vec![0.0, 1.0, 0.0]);
    assert_eq!(answer.turns(false), (vec![1], vec![0; 1000]), "one response, led by the second record");
    let origin = LowerName::from(Name::from_ascii("example.").unwrap());
    let mut view = (*s.zones[&origin]).clone();
    view.pools.insert(LowerName::from(&www), Arc::new(answer));
    s.zones.insert(origin, Arc::new(view));
    let t = table(&s);
    for i in 0..5u16 {
        let mut out = [0u8; 1232];
        let n = t.respond(&query("www.example.", RecordType::A, None, i), &mut out).expect("pre-encoded");
        let got: Vec<String> = Message::from_vec(&out[..n]).unwrap().answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(got, ["127.0.10.2", "127.0.10.1", "127.0.10.3"]);
    }
}

#[test]
fn responses_filled_from_a_template_are_the_bytes_a_full_encoding_gives() {
    let mut s = snap();
    let www = Name::from_ascii("www.example.").unwrap();
    for (answers, v6) in [(1, false), (3, false), (2, true)] {
        let addrs: Vec<std::net::IpAddr> = (0..50u32)
            .map(|i| {
                if v6 && i % 2 == 1 {
                    std::net::IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8u128 << 96 | u128::from(i)))
                } else {
                    std::net::IpAddr::from(std::net::Ipv4Addr::from(0x7f0a_0000 + i))
                }
            })
            .collect();
        let shares: Vec<f64> = (0..50).map(|i| 1.0 + f64::from(i % 5)).collect();
        let pool = PoolAnswer::new(www.clone(), 5, addrs, answers, false, false).with_shares(shares);
        let key = LowerName::from(&www);
        let zone = s.zones.values_mut().next().unwrap();
        Arc::make_mut(zone).pools.insert(key.clone(), Arc::new(pool.clone()));
        let serial = Arc::new(AtomicU32::new(3));
        let built = pool_entries(&s.zones, &key, &pool, &serial);
        let mut filled = 0;
        for t in [RecordType::A, RecordType::AAAA] {
            let (leads, _) = pool.turns(t == RecordType::AAAA);
            if leads.len() <= 2 {
                continue; // AAAA of a pool of IPv4 members: NODATA
            }
            filled += 1;
            for shape in SHAPES {
                let entry = &built.iter().find(|(k, _)| **k == *key_of(&key, t, shape)).expect("an entry per shape").1;
                for (i, &lead) in leads.iter().enumerate() {
                    let full = encode(&crate::dns::lookup::lookup_turn(&s.zones, &key, t, DNSClass::IN, Turn::Lead(lead)), &key, t, shape)
                        .unwrap();
                    assert_eq!(entry.responses[i], full, "answers {answers}, {t}, {shape:?}, lead {lead}");
                }
            }
        }
        assert_eq!(filled, if v6 { 2 } else { 1 });
    }
}

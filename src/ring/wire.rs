//! Ring messages on the wire (UDP): a small binary codec for the bodies,
//! inside the authenticated envelope (`crate::envelope`, magic `b"VR"`).
//! Pure: decoding refuses anything malformed with a reason, so the driver
//! can drop and count it.

use super::member::{Carried, Msg};
use crate::envelope::{Envelope, EnvelopeError, Reader, open, put_addr, seal};

const MAGIC: &[u8; 2] = b"VR";
/// Messages carried by one token, at most.
const MAX_CARRIED: usize = 256;

/// Encodes a message.
pub fn encode(msg: &Msg, env: Envelope, key: Option<&[u8]>) -> Vec<u8> {
    let kind = match msg {
        Msg::Ping { .. } => 1,
        Msg::Pong { .. } => 2,
        Msg::Token { .. } => 3,
        Msg::Join { .. } => 4,
        Msg::Hello { .. } => 5,
        Msg::Leave => 6,
        Msg::Dead { .. } => 7,
        Msg::Purge { .. } => 8,
        Msg::Replace { .. } => 9,
    };
    let mut out = Vec::with_capacity(64);
    match msg {
        Msg::Ping { seq } => out.extend_from_slice(&seq.to_be_bytes()),
        Msg::Pong { seq, view } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&view.to_be_bytes());
        }
        Msg::Token { round, hops, carried } => {
            out.extend_from_slice(&round.to_be_bytes());
            out.extend_from_slice(&hops.to_be_bytes());
            let carried = &carried[..carried.len().min(MAX_CARRIED)];
            out.extend_from_slice(&(carried.len() as u16).to_be_bytes());
            for c in carried {
                put_addr(&mut out, &c.origin);
                match &c.to {
                    Some(t) => {
                        out.push(1);
                        put_addr(&mut out, t);
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(&c.ttl.to_be_bytes());
                let body = &c.body[..c.body.len().min(1024)];
                out.extend_from_slice(&(body.len() as u16).to_be_bytes());
                out.extend_from_slice(body);
            }
        }
        Msg::Join { capable } | Msg::Hello { capable } => out.push(*capable as u8),
        Msg::Leave => {}
        Msg::Dead { dead } => put_addr(&mut out, dead),
        Msg::Purge { epoch } => out.extend_from_slice(&epoch.to_be_bytes()),
        Msg::Replace { replace, with, with_capable, gone } => {
            put_addr(&mut out, replace);
            put_addr(&mut out, with);
            out.push(*with_capable as u8 | (*gone as u8) << 1);
        }
    }
    seal(MAGIC, kind, env, &out, key)
}

/// Decodes a datagram; with a key, only tagged messages with a valid tag pass.
pub fn decode(data: &[u8], key: Option<&[u8]>) -> Result<(Msg, Envelope), EnvelopeError> {
    let (kind, env, body) = open(MAGIC, data, key)?;
    let mut r = Reader { b: body };
    let msg = match kind {
        1 => Msg::Ping { seq: r.u64("ping")? },
        2 => Msg::Pong { seq: r.u64("pong")?, view: r.u64("pong view")? },
        3 => {
            let round = r.u64("token")?;
            let hops = r.u16("token")?;
            let n = r.u16("token")? as usize;
            if n > MAX_CARRIED {
                return Err(EnvelopeError::Malformed("token: too many carried messages"));
            }
            let mut carried = Vec::with_capacity(n);
            for _ in 0..n {
                let origin = r.addr("carried origin")?;
                let to = match r.u8("carried to")? {
                    0 => None,
                    1 => Some(r.addr("carried to")?),
                    _ => return Err(EnvelopeError::Malformed("carried to")),
                };
                let ttl = r.u16("carried ttl")?;
                let len = r.u16("carried body")? as usize;
                let body = r.take(len, "carried body")?.to_vec();
                carried.push(Carried { origin, to, ttl, body });
            }
            Msg::Token { round, hops, carried }
        }
        4 | 5 => {
            let capable = match r.u8("capability")? {
                0 => false,
                1 => true,
                _ => return Err(EnvelopeError::Malformed("capability")),
            };
            if kind == 4 { Msg::Join { capable } } else { Msg::Hello { capable } }
        }
        6 => Msg::Leave,
        7 => Msg::Dead { dead: r.addr("dead")? },
        8 => Msg::Purge { epoch: r.u64("purge")? },
        9 => {
            let replace = r.addr("replace")?;
            let with = r.addr("replace")?;
            let flags = r.u8("replace flags")?;
            if flags > 3 {
                return Err(EnvelopeError::Malformed("replace flags"));
            }
            Msg::Replace { replace, with, with_capable: flags & 1 == 1, gone: flags & 2 == 2 }
        }
        k => return Err(EnvelopeError::Kind(k)),
    };
    if !r.b.is_empty() {
        return Err(EnvelopeError::Malformed("trailing bytes"));
    }
    Ok((msg, env))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{HEADER, MAX_SKEW_MS, ReplayGuard};
    use std::net::SocketAddr;

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 7946))
    }

    fn all() -> Vec<Msg> {
        vec![
            Msg::Ping { seq: 7 },
            Msg::Pong { seq: 7, view: 0x0123_4567_89ab_cdef },
            Msg::Token {
                round: 3,
                hops: 2,
                carried: vec![
                    Carried { origin: a(1), to: Some(a(2)), ttl: 4, body: b"hello".to_vec() },
                    Carried { origin: "[::1]:9".parse().unwrap(), to: None, ttl: 1, body: vec![] },
                ],
            },
            Msg::Join { capable: true },
            Msg::Hello { capable: false },
            Msg::Leave,
            Msg::Dead { dead: a(9) },
            Msg::Purge { epoch: 11 },
            Msg::Replace { replace: a(3), with: "[::1]:7946".parse().unwrap(), with_capable: true, gone: false },
            Msg::Replace { replace: a(3), with: a(4), with_capable: false, gone: true },
        ]
    }

    #[test]
    fn every_message_round_trips_with_and_without_a_key() {
        let env = Envelope { boot: 1, seq: 2, time_ms: 3 };
        for key in [None, Some(&b"ring secret"[..])] {
            for m in all() {
                let bytes = encode(&m, env, key);
                assert_eq!(decode(&bytes, key).unwrap(), (m.clone(), env), "{m:?}");
            }
        }
    }

    #[test]
    fn malformed_forged_and_replayed_are_refused() {
        let env = Envelope { boot: 1, seq: 2, time_ms: 1_000_000 };
        let key = Some(&b"k"[..]);
        let good = encode(&Msg::Dead { dead: a(3) }, env, key);
        assert_eq!(decode(&good[..10], key), Err(EnvelopeError::Short));
        assert_eq!(decode(&encode(&Msg::Leave, env, None), key), Err(EnvelopeError::Untagged));
        let mut forged = good.clone();
        forged[HEADER + 2] ^= 1; // change the dead member's address
        assert_eq!(decode(&forged, key), Err(EnvelopeError::Forged));
        assert_eq!(decode(&good, Some(&b"other"[..])), Err(EnvelopeError::Forged));
        let mut bad = encode(&Msg::Leave, env, None);
        bad[0] = b'X';
        assert_eq!(decode(&bad, None), Err(EnvelopeError::Magic));
        let mut kind = encode(&Msg::Leave, env, None);
        kind[4] = 99;
        assert_eq!(decode(&kind, None), Err(EnvelopeError::Kind(99)));
        let mut trailing = encode(&Msg::Leave, env, None);
        trailing.push(0);
        assert!(matches!(decode(&trailing, None), Err(EnvelopeError::Malformed(_))));

        let mut g = ReplayGuard::default();
        assert!(g.check(a(1), env, 1_000_500).is_ok());
        assert_eq!(g.check(a(1), env, 1_000_500), Err(EnvelopeError::Replayed));
        assert!(g.check(a(1), Envelope { seq: 3, ..env }, 1_000_500).is_ok());
        assert!(g.check(a(1), Envelope { boot: 9, seq: 1, ..env }, 1_000_500).is_ok(), "a restarted sender");
        assert!(matches!(g.check(a(2), env, 1_000_000 + MAX_SKEW_MS + 1), Err(EnvelopeError::Skew(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 12345;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode(&bytes, None);
            let _ = decode(&bytes, Some(b"k"));
            let mut framed = b"VR\x01\x00".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed, None);
        }
    }
}

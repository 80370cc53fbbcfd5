//! Ring messages on the wire (UDP): a small binary codec, authenticated
//! with HMAC-SHA256 when the ring has a shared key, and a replay guard.
//! Pure: decoding refuses anything malformed, forged or replayed with a
//! reason, so the driver can drop and count it.
//!
//! Layout: `b"VR"`, version 1, flags (bit 0: tagged), kind, boot id (u64),
//! sequence (u64), sender's clock (Unix ms, u64), body, then a 16-byte tag
//! over everything before it when tagged. Integers are big-endian.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::member::{Carried, Msg};

const MAGIC: &[u8; 2] = b"VR";
const VERSION: u8 = 1;
const HEADER: usize = 2 + 1 + 1 + 1 + 8 + 8 + 8;
const TAG: usize = 16;
/// Messages carried by one token, at most.
const MAX_CARRIED: usize = 256;
/// How far a sender's clock may be from ours (replays older than this are refused).
pub const MAX_SKEW_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("too short")]
    Short,
    #[error("not a vnamed ring message")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unauthenticated: this ring requires a key")]
    Untagged,
    #[error("forged: the authentication tag does not match")]
    Forged,
    #[error("replayed or out of order")]
    Replayed,
    #[error("sender clock {0} ms away")]
    Skew(i64),
}

/// What a datagram says besides its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub boot: u64,
    pub seq: u64,
    pub time_ms: u64,
}

pub(crate) fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Reads a body front to back; every shortfall is `Malformed(what)`.
pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Malformed(what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn u8(&mut self, w: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, w)?[0])
    }
    pub(crate) fn u16(&mut self, w: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take(2, w)?.try_into().expect("2 bytes")))
    }
    pub(crate) fn u64(&mut self, w: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8, w)?.try_into().expect("8 bytes")))
    }
    pub(crate) fn addr(&mut self, w: &'static str) -> Result<SocketAddr, WireError> {
        let ip: IpAddr = match self.u8(w)? {
            4 => <[u8; 4]>::try_from(self.take(4, w)?).map(IpAddr::from).expect("4 bytes"),
            6 => <[u8; 16]>::try_from(self.take(16, w)?).map(IpAddr::from).expect("16 bytes"),
            _ => return Err(WireError::Malformed(w)),
        };
        Ok(SocketAddr::new(ip, self.u16(w)?))
    }
}

fn tag(key: &[u8], data: &[u8]) -> [u8; TAG] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    let full = mac.finalize().into_bytes();
    full[..TAG].try_into().expect("16 of 32 bytes")
}

/// Wraps `body` in the authenticated envelope: `magic`, version, flags,
/// `kind`, the envelope, the body, then the tag when there is a key. The
/// ring (`b"VR"`) and the SRP responders' peer messages (`b"VS"`) share it.
pub fn seal(magic: &[u8; 2], kind: u8, env: Envelope, body: &[u8], key: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len() + TAG);
    out.extend_from_slice(magic);
    out.push(VERSION);
    out.push(key.is_some() as u8);
    out.push(kind);
    out.extend_from_slice(&env.boot.to_be_bytes());
    out.extend_from_slice(&env.seq.to_be_bytes());
    out.extend_from_slice(&env.time_ms.to_be_bytes());
    out.extend_from_slice(body);
    if let Some(key) = key {
        let t = tag(key, &out);
        out.extend_from_slice(&t);
    }
    out
}

/// Checks the envelope `seal` made (with a key, only tagged messages with
/// a valid tag pass) and returns the kind, the envelope and the body.
pub fn open<'a>(magic: &[u8; 2], data: &'a [u8], key: Option<&[u8]>) -> Result<(u8, Envelope, &'a [u8]), WireError> {
    if data.len() < HEADER {
        return Err(WireError::Short);
    }
    if &data[..2] != magic {
        return Err(WireError::Magic);
    }
    if data[2] != VERSION {
        return Err(WireError::Version(data[2]));
    }
    let tagged = data[3] & 1 == 1;
    let body_end = match (key, tagged) {
        (Some(_), false) => return Err(WireError::Untagged),
        (Some(k), true) => {
            if data.len() < HEADER + TAG {
                return Err(WireError::Short);
            }
            let end = data.len() - TAG;
            let want = tag(k, &data[..end]);
            // Constant time: no early exit.
            if want.iter().zip(&data[end..]).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
                return Err(WireError::Forged);
            }
            end
        }
        (None, true) => data.len() - TAG.min(data.len() - HEADER),
        (None, false) => data.len(),
    };
    let mut r = Reader { b: &data[4..body_end] };
    let kind = r.u8("kind")?;
    let env = Envelope { boot: r.u64("header")?, seq: r.u64("header")?, time_ms: r.u64("header")? };
    Ok((kind, env, r.b))
}

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
        Msg::Ping { seq } | Msg::Pong { seq } => out.extend_from_slice(&seq.to_be_bytes()),
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
pub fn decode(data: &[u8], key: Option<&[u8]>) -> Result<(Msg, Envelope), WireError> {
    let (kind, env, body) = open(MAGIC, data, key)?;
    let mut r = Reader { b: body };
    let msg = match kind {
        1 => Msg::Ping { seq: r.u64("ping")? },
        2 => Msg::Pong { seq: r.u64("pong")? },
        3 => {
            let round = r.u64("token")?;
            let hops = r.u16("token")?;
            let n = r.u16("token")? as usize;
            if n > MAX_CARRIED {
                return Err(WireError::Malformed("token: too many carried messages"));
            }
            let mut carried = Vec::with_capacity(n);
            for _ in 0..n {
                let origin = r.addr("carried origin")?;
                let to = match r.u8("carried to")? {
                    0 => None,
                    1 => Some(r.addr("carried to")?),
                    _ => return Err(WireError::Malformed("carried to")),
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
                _ => return Err(WireError::Malformed("capability")),
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
                return Err(WireError::Malformed("replace flags"));
            }
            Msg::Replace { replace, with, with_capable: flags & 1 == 1, gone: flags & 2 == 2 }
        }
        k => return Err(WireError::Kind(k)),
    };
    if !r.b.is_empty() {
        return Err(WireError::Malformed("trailing bytes"));
    }
    Ok((msg, env))
}

/// Refuses replays: per sender, a boot id with increasing sequence numbers,
/// and a clock within `MAX_SKEW_MS` of ours. Bounded by the ring's size.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    last: HashMap<SocketAddr, (u64, u64)>,
}

impl ReplayGuard {
    pub fn check(&mut self, from: SocketAddr, env: Envelope, now_ms: u64) -> Result<(), WireError> {
        let skew = env.time_ms as i64 - now_ms as i64;
        if skew.unsigned_abs() > MAX_SKEW_MS {
            return Err(WireError::Skew(skew));
        }
        match self.last.get(&from) {
            Some(&(boot, seq)) if boot == env.boot && env.seq <= seq => Err(WireError::Replayed),
            _ => {
                if self.last.len() > 65_536 {
                    self.last.clear(); // a flood of made-up senders: start over rather than grow
                }
                self.last.insert(from, (env.boot, env.seq));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 7946))
    }

    fn all() -> Vec<Msg> {
        vec![
            Msg::Ping { seq: 7 },
            Msg::Pong { seq: 7 },
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
        assert_eq!(decode(&good[..10], key), Err(WireError::Short));
        assert_eq!(decode(&encode(&Msg::Leave, env, None), key), Err(WireError::Untagged));
        let mut forged = good.clone();
        forged[HEADER + 2] ^= 1; // change the dead member's address
        assert_eq!(decode(&forged, key), Err(WireError::Forged));
        assert_eq!(decode(&good, Some(&b"other"[..])), Err(WireError::Forged));
        let mut bad = encode(&Msg::Leave, env, None);
        bad[0] = b'X';
        assert_eq!(decode(&bad, None), Err(WireError::Magic));
        let mut kind = encode(&Msg::Leave, env, None);
        kind[4] = 99;
        assert_eq!(decode(&kind, None), Err(WireError::Kind(99)));
        let mut trailing = encode(&Msg::Leave, env, None);
        trailing.push(0);
        assert!(matches!(decode(&trailing, None), Err(WireError::Malformed(_))));

        let mut g = ReplayGuard::default();
        assert!(g.check(a(1), env, 1_000_500).is_ok());
        assert_eq!(g.check(a(1), env, 1_000_500), Err(WireError::Replayed));
        assert!(g.check(a(1), Envelope { seq: 3, ..env }, 1_000_500).is_ok());
        assert!(g.check(a(1), Envelope { boot: 9, seq: 1, ..env }, 1_000_500).is_ok(), "a restarted sender");
        assert!(matches!(g.check(a(2), env, 1_000_000 + MAX_SKEW_MS + 1), Err(WireError::Skew(_))));
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

//! The authenticated envelope every vnamed datagram between peers travels
//! in: the ring's messages (`b"VR"`) and the SRP responders' (`b"VS"`).
//! A small binary header, an HMAC-SHA256 tag when the peers share a key,
//! and a replay guard. Pure: opening refuses anything malformed, forged or
//! replayed with a reason, so a driver can drop and count it.
//!
//! Layout: magic (2 bytes), version 1, flags (bit 0: tagged), kind, boot id
//! (u64), sequence (u64), sender's clock (Unix ms, u64), body, then a
//! 16-byte tag over everything before it when tagged. Integers are big-endian.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
pub(crate) const HEADER: usize = 2 + 1 + 1 + 1 + 8 + 8 + 8;
const TAG: usize = 16;
/// How far a sender's clock may be from ours (replays older than this are refused).
pub const MAX_SKEW_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("too short")]
    Short,
    #[error("not a message of this kind of peer")]
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
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EnvelopeError> {
        if self.b.len() < n {
            return Err(EnvelopeError::Malformed(what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn u8(&mut self, w: &'static str) -> Result<u8, EnvelopeError> {
        Ok(self.take(1, w)?[0])
    }
    pub(crate) fn u16(&mut self, w: &'static str) -> Result<u16, EnvelopeError> {
        Ok(u16::from_be_bytes(self.take(2, w)?.try_into().expect("2 bytes")))
    }
    pub(crate) fn u64(&mut self, w: &'static str) -> Result<u64, EnvelopeError> {
        Ok(u64::from_be_bytes(self.take(8, w)?.try_into().expect("8 bytes")))
    }
    pub(crate) fn addr(&mut self, w: &'static str) -> Result<SocketAddr, EnvelopeError> {
        let ip: IpAddr = match self.u8(w)? {
            4 => <[u8; 4]>::try_from(self.take(4, w)?).map(IpAddr::from).expect("4 bytes"),
            6 => <[u8; 16]>::try_from(self.take(16, w)?).map(IpAddr::from).expect("16 bytes"),
            _ => return Err(EnvelopeError::Malformed(w)),
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
pub fn open<'a>(magic: &[u8; 2], data: &'a [u8], key: Option<&[u8]>) -> Result<(u8, Envelope, &'a [u8]), EnvelopeError> {
    if data.len() < HEADER {
        return Err(EnvelopeError::Short);
    }
    if &data[..2] != magic {
        return Err(EnvelopeError::Magic);
    }
    if data[2] != VERSION {
        return Err(EnvelopeError::Version(data[2]));
    }
    let tagged = data[3] & 1 == 1;
    let body_end = match (key, tagged) {
        (Some(_), false) => return Err(EnvelopeError::Untagged),
        (Some(k), true) => {
            if data.len() < HEADER + TAG {
                return Err(EnvelopeError::Short);
            }
            let end = data.len() - TAG;
            let want = tag(k, &data[..end]);
            // Constant time: no early exit.
            if want.iter().zip(&data[end..]).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
                return Err(EnvelopeError::Forged);
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

/// Refuses replays: per sender, a boot id with increasing sequence numbers,
/// and a clock within `MAX_SKEW_MS` of ours. Bounded by the ring's size.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    last: HashMap<SocketAddr, (u64, u64)>,
}

impl ReplayGuard {
    pub fn check(&mut self, from: SocketAddr, env: Envelope, now_ms: u64) -> Result<(), EnvelopeError> {
        let skew = env.time_ms as i64 - now_ms as i64;
        if skew.unsigned_abs() > MAX_SKEW_MS {
            return Err(EnvelopeError::Skew(skew));
        }
        match self.last.get(&from) {
            Some(&(boot, seq)) if boot == env.boot && env.seq <= seq => Err(EnvelopeError::Replayed),
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

    const ENV: Envelope = Envelope { boot: 7, seq: 1, time_ms: 1_000 };

    #[test]
    fn sealed_bodies_open_only_with_the_same_magic_and_key() {
        let sealed = seal(b"VT", 3, ENV, b"body", Some(b"k"));
        assert_eq!(open(b"VT", &sealed, Some(b"k")).unwrap(), (3, ENV, &b"body"[..]));
        assert_eq!(open(b"VX", &sealed, Some(b"k")).unwrap_err(), EnvelopeError::Magic);
        assert_eq!(open(b"VT", &sealed, Some(b"other")).unwrap_err(), EnvelopeError::Forged);
        let plain = seal(b"VT", 3, ENV, b"body", None);
        assert_eq!(open(b"VT", &plain, Some(b"k")).unwrap_err(), EnvelopeError::Untagged);
        assert_eq!(open(b"VT", &plain, None).unwrap(), (3, ENV, &b"body"[..]));
        for cut in 0..HEADER {
            assert_eq!(open(b"VT", &sealed[..cut], Some(b"k")).unwrap_err(), EnvelopeError::Short);
        }
    }

    #[test]
    fn the_guard_refuses_replays_and_skewed_clocks() {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.check(from, ENV, 1_000), Ok(()));
        assert_eq!(guard.check(from, ENV, 1_000), Err(EnvelopeError::Replayed));
        assert_eq!(guard.check(from, Envelope { seq: 2, ..ENV }, 1_000), Ok(()));
        assert_eq!(guard.check(from, Envelope { boot: 8, seq: 1, ..ENV }, 1_000), Ok(()), "a restarted sender starts over");
        let late = 1_000 + MAX_SKEW_MS + 1;
        assert!(matches!(guard.check(from, Envelope { seq: 9, ..ENV }, late), Err(EnvelopeError::Skew(_))));
    }
}

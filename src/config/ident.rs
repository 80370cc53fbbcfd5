//! The one set of rules for names and addresses that come from outside:
//! member ids, hosts, farms and metric names, whether they arrive in the
//! configuration file, over the gRPC API, from a farm or from a monitor.
//! Nothing reaches a zone file, a log line or an error reply that did not
//! pass here; what is echoed back of a refused value is cut short.

use std::fmt::Write as _;
use std::net::IpAddr;

use hickory_proto::rr::Name;

/// Longest member id, host or farm name.
pub const ID_MAX: usize = 63;
/// Longest metric name.
pub const METRIC_MAX: usize = 64;
/// Longest domain name, as text.
pub const NAME_MAX: usize = 255;
/// Longest free-text label.
pub const LABEL_MAX: usize = 128;
/// How much of a refused value an error message repeats.
const SHOWN_MAX: usize = 40;

/// Why an identifier or address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("must not be empty")]
    Empty,
    #[error("{shown} is too long; at most {max} bytes")]
    TooLong { shown: String, max: usize },
    #[error("{shown} must start with a letter or digit")]
    BadStart { shown: String },
    #[error("{shown} has {ch:?} at byte {at}, which is not allowed here")]
    BadChar { shown: String, ch: char, at: usize },
    #[error("{shown} is not a domain name: {why}")]
    BadName { shown: String, why: String },
    #[error("{0} cannot be a member's address (unspecified, multicast or broadcast)")]
    Address(IpAddr),
}

/// A member id, host or farm name: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
pub fn check_id(s: &str) -> Result<(), IdentError> {
    check(s, ID_MAX, true)
}

/// A metric name: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn check_metric(s: &str) -> Result<(), IdentError> {
    check(s, METRIC_MAX, false)
}

fn check(s: &str, max: usize, alnum_first: bool) -> Result<(), IdentError> {
    if s.is_empty() {
        return Err(IdentError::Empty);
    }
    if s.len() > max {
        return Err(IdentError::TooLong { shown: shown(s), max });
    }
    if let Some((at, ch)) = s.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(IdentError::BadChar { shown: shown(s), ch, at });
    }
    if alnum_first && !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(IdentError::BadStart { shown: shown(s) });
    }
    Ok(())
}

/// A pool (a DNS name) as a request names it: at most 255 bytes that
/// read as a domain name.
pub fn check_name(s: &str) -> Result<(), IdentError> {
    if s.is_empty() {
        return Err(IdentError::Empty);
    }
    if s.len() > NAME_MAX {
        return Err(IdentError::TooLong { shown: shown(s), max: NAME_MAX });
    }
    match s.char_indices().find(|&(_, c)| !(c.is_ascii_graphic()) || matches!(c, ';' | '"' | '(' | ')' | '\\')) {
        Some((at, ch)) => Err(IdentError::BadChar { shown: shown(s), ch, at }),
        None => Name::from_ascii(s).map(drop).map_err(|e| IdentError::BadName { shown: shown(s), why: e.to_string() }),
    }
}

/// A free-text label from outside (a check's description): at most
/// `LABEL_MAX` bytes, no control characters.
pub fn check_label(s: &str) -> Result<(), IdentError> {
    if s.len() > LABEL_MAX {
        return Err(IdentError::TooLong { shown: shown(s), max: LABEL_MAX });
    }
    match s.char_indices().find(|&(_, c)| c.is_control()) {
        Some((at, ch)) => Err(IdentError::BadChar { shown: shown(s), ch, at }),
        None => Ok(()),
    }
}

/// An address a member may be answered with.
pub fn check_address(a: IpAddr) -> Result<(), IdentError> {
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    if a.is_unspecified() || a.is_multicast() || broadcast { Err(IdentError::Address(a)) } else { Ok(()) }
}

/// A value from outside, safe to repeat in a message: quoted, control
/// characters escaped, and cut short with its full length said.
pub fn shown(s: &str) -> String {
    let mut out = String::from("\"");
    let mut cut = false;
    for (n, c) in s.chars().enumerate() {
        if n == SHOWN_MAX {
            cut = true;
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    if cut {
        let _ = write!(out, "... ({} bytes)", s.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_plain_words() {
        for good in ["web1", "a", "db-2.east", "Z_9", &"x".repeat(63)] {
            assert_eq!(check_id(good), Ok(()), "{good}");
        }
        for bad in ["", " web1", "web 1", "web1\nevil 60 IN TXT x", "-web", ".web", "_web", "wéb", "a;b", "a\"b", &"x".repeat(64)] {
            assert!(check_id(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn metric_names_keep_their_old_rule() {
        assert_eq!(check_metric("_private.load-1"), Ok(()));
        assert!(check_metric(&"m".repeat(65)).is_err());
        assert!(check_metric("a b").is_err());
    }

    #[test]
    fn pool_names_are_domain_names() {
        assert_eq!(check_name("www.example."), Ok(()));
        for bad in ["", "www example.", "www\n.example.", "a;b.", &format!("{}.", "a".repeat(300))] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_addresses_are_unicast() {
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            assert!(check_address(bad.parse().unwrap()).is_err(), "{bad}");
        }
        for good in ["127.0.0.1", "192.0.2.10", "::1", "2001:db8::1"] {
            assert_eq!(check_address(good.parse().unwrap()), Ok(()), "{good}");
        }
    }

    #[test]
    fn refused_values_are_echoed_short_and_escaped() {
        let long = format!("a\n{}", "b".repeat(10_000));
        let e = check_id(&long).unwrap_err().to_string();
        assert!(e.len() < 120, "{e}");
        assert!(e.contains("\\n") && !e.contains('\n') && e.contains("10002 bytes"), "{e}");
        assert_eq!(shown("web1"), "\"web1\"");
    }
}

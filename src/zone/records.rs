//! Resource records from zone-file entries, one entry at a time so that
//! every record and every error carries its line. The common types with
//! plain data (A, AAAA, TXT, CNAME, NS, PTR, MX) are read directly; any
//! other entry, and any entry with escapes, goes through hickory's zone
//! parser, which reads the rest of RFC 1035's master format.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::txt::{Parser, parse_ttl};

use super::text;

/// Parses each record entry on its own; hands each record to `each` with
/// its line and entry.
pub(super) fn parse_records(
    src: &str,
    entries: &[text::Entry],
    origin: &Name,
    each: impl FnMut(Record, usize, usize) -> Result<(), (usize, String)>,
) -> Result<(), (usize, String)> {
    parse_with(src, entries, origin, true, each)
}

fn parse_with(
    src: &str,
    entries: &[text::Entry],
    origin: &Name,
    direct: bool,
    mut each: impl FnMut(Record, usize, usize) -> Result<(), (usize, String)>,
) -> Result<(), (usize, String)> {
    let mut origin = origin.clone();
    let mut default_ttl: Option<u32> = None;
    let mut last_ttl: Option<u32> = None;
    let mut last_owner: Option<Name> = None;
    for (index, entry) in entries.iter().enumerate() {
        let line = entry.line;
        let first = entry.token(src, 0).unwrap_or_default();
        if !entry.blank_owner && first.starts_with('$') {
            let arg = entry.token(src, 1).ok_or((line, format!("{first} needs an argument")))?;
            match first.to_ascii_uppercase().as_str() {
                "$ORIGIN" => {
                    origin = Name::parse(arg, Some(&origin)).map_err(|e| (line, format!("$ORIGIN: {e}")))?;
                }
                "$TTL" => default_ttl = Some(parse_ttl(arg).map_err(|e| (line, format!("$TTL: {e}")))?),
                other => return Err((line, format!("directive {other} is not supported"))),
            }
            continue;
        }
        let (owner, rest) = if entry.blank_owner {
            let owner = last_owner.as_ref().ok_or((line, "record without an owner name".to_owned()))?;
            (Owner::Last(owner.clone()), &entry.tokens[..])
        } else {
            (Owner::Text(first), &entry.tokens[1..])
        };
        if rest.is_empty() {
            return Err((line, format!("{owner}: record has no type or data")));
        }
        let ttl = default_ttl.or(last_ttl).unwrap_or(3600);
        if direct && let Some(record) = direct_record(src, &owner, rest, &origin, ttl) {
            last_owner = Some(record.name.clone());
            last_ttl = Some(record.ttl);
            each(record, line, index)?;
            continue;
        }
        let mut one = format!("$TTL {ttl}\n{owner}");
        for r in rest {
            one.push(' ');
            one.push_str(&src[r.clone()]);
        }
        one.push('\n');
        let (_, sets) = Parser::new(one, None, Some(origin.clone())).parse().map_err(|e| (line, e.to_string()))?;
        for set in sets.into_values() {
            for record in set.records_without_rrsigs() {
                last_owner = Some(record.name.clone());
                last_ttl = Some(record.ttl);
                each(record.clone(), line, index)?;
            }
        }
    }
    Ok(())
}

/// An entry's owner: written, or the previous record's.
enum Owner<'a> {
    Text(&'a str),
    Last(Name),
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Text(t) => f.write_str(t),
            Owner::Last(n) => write!(f, "{n}"),
        }
    }
}

/// The one data token of a type that takes one.
fn one<'a>(data: &[&'a str]) -> Option<&'a str> {
    if let [x] = data { Some(x) } else { None }
}

/// A domain name as the master format writes it, when it is plain (no
/// escapes, which the full parser reads).
fn plain_name(token: &str, origin: &Name) -> Option<Name> {
    if token.bytes().any(|b| matches!(b, b'\\' | b'"' | b'(' | b')' | b';')) {
        return None;
    }
    Name::parse(token, Some(origin)).ok()
}

/// The record of an entry of a common type with plain data, or `None` to
/// leave the entry to the full parser (which also gives its errors).
fn direct_record(src: &str, owner: &Owner, rest: &[Range<usize>], origin: &Name, default_ttl: u32) -> Option<Record> {
    let name = match owner {
        Owner::Text("@") => origin.clone(),
        Owner::Text(t) => plain_name(t, origin)?,
        Owner::Last(n) => n.clone(),
    };
    let mut tokens = rest.iter().map(|r| &src[r.clone()]);
    let mut ttl = None;
    let mut class = false;
    let rtype = loop {
        let t = tokens.next()?;
        if t.starts_with(|c: char| c.is_ascii_digit()) && ttl.is_none() {
            ttl = Some(parse_ttl(t).ok()?);
        } else if t.eq_ignore_ascii_case("IN") && !class {
            class = true;
        } else {
            break t;
        }
    };
    let data: Vec<&str> = tokens.collect();
    let rdata = if rtype.eq_ignore_ascii_case("A") {
        RData::A(A(one(&data)?.parse::<Ipv4Addr>().ok()?))
    } else if rtype.eq_ignore_ascii_case("AAAA") {
        RData::AAAA(AAAA(one(&data)?.parse::<Ipv6Addr>().ok()?))
    } else if rtype.eq_ignore_ascii_case("CNAME") {
        RData::CNAME(CNAME(plain_name(one(&data)?, origin)?))
    } else if rtype.eq_ignore_ascii_case("NS") {
        RData::NS(NS(plain_name(one(&data)?, origin)?))
    } else if rtype.eq_ignore_ascii_case("PTR") {
        RData::PTR(PTR(plain_name(one(&data)?, origin)?))
    } else if rtype.eq_ignore_ascii_case("MX") {
        let [pref, exchange] = data[..] else { return None };
        RData::MX(MX::new(pref.parse().ok()?, plain_name(exchange, origin)?))
    } else if rtype.eq_ignore_ascii_case("TXT") {
        let mut strings = Vec::with_capacity(data.len());
        for d in &data {
            let s = match d.strip_prefix('"') {
                Some(q) => q.strip_suffix('"')?,
                None => d,
            };
            if s.len() > 255 || s.bytes().any(|b| matches!(b, b'\\' | b'"')) {
                return None;
            }
            strings.push(s.to_owned());
        }
        if strings.is_empty() {
            return None;
        }
        RData::TXT(TXT::new(strings))
    } else {
        return None;
    };
    Some(Record::from_rdata(name, ttl.unwrap_or(default_ttl), rdata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(src: &str, direct: bool) -> Result<Vec<(Record, usize)>, (usize, String)> {
        let entries = text::entries(src).unwrap();
        let mut out = Vec::new();
        let origin = Name::from_ascii("example.").unwrap();
        parse_with(src, &entries, &origin, direct, |r, line, _| {
            out.push((r, line));
            Ok(())
        })?;
        Ok(out)
    }

    /// The direct reading gives exactly what the full parser gives, for
    /// every form it reads and for the ones it leaves to the parser.
    #[test]
    fn direct_reading_matches_the_full_parser() {
        let src = "\
$TTL 300
@ IN SOA ns1 hostmaster ( 1 3600 600 86400 30 )
  IN NS ns1
  NS ns2.other.
ns1 IN A 127.0.0.1
ns1 600 IN A 127.0.0.2
ns1 IN 700 A 127.0.0.3
Www 1h AAAA 2001:db8::1
txt IN TXT \"v=spf1 include:x ~all\" plain \"\"
esc IN TXT \"a \\\"quoted\\\" word\"
alias CNAME www
alias2 CNAME www.other.
@ MX 10 mail
mail.example. MX 20 mail
4.3.2.1 PTR host
srv SRV 0 5 5060 sip
$ORIGIN sub.example.
deep A 10.0.0.1
  A 10.0.0.2
$TTL 1d
last AAAA ::1
";
        let direct = all(src, true).unwrap();
        let full = all(src, false).unwrap();
        assert_eq!(direct.len(), 18);
        for ((d, dl), (f, fl)) in direct.iter().zip(&full) {
            assert_eq!((d, dl), (f, fl));
            assert_eq!(d.ttl, f.ttl, "{d}");
            assert_eq!(d.name.to_string(), f.name.to_string(), "case kept: {d}");
        }
        assert_eq!(direct.len(), full.len());
    }

    #[test]
    fn bad_data_gets_the_full_parsers_error() {
        for bad in ["x A 10.0.0.256\n", "x AAAA 10.0.0.1\n", "x MX ten mail\n", "x CNAME\n", "x CNAME @\n"] {
            let src = format!("$TTL 60\n{bad}");
            assert_eq!(all(&src, true).unwrap_err(), all(&src, false).unwrap_err(), "{bad}");
        }
        // What the full parser accepts, the direct reading gives alike.
        for odd in ["x A 10.0.0.1 10.0.0.2\n", "x TXT \"\"\n", "x IN IN A 10.0.0.1\n"] {
            let src = format!("$TTL 60\n{odd}");
            assert_eq!(format!("{:?}", all(&src, true)), format!("{:?}", all(&src, false)), "{odd}");
        }
    }
}

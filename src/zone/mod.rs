//! Zone files: reading an RFC 1035 master file into the data the DNS
//! authority serves, validating it the way `named-checkzone` would (every
//! problem with its file and line), and rendering the managed blocks vnamed
//! writes back for its virtual names.

pub mod data;
pub mod io;
pub mod journal;
mod records;
pub mod sync;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::ident;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use records::parse_records;

pub use data::{Node, Nodes, RrSet, ZoneData};
pub use text::Block;

/// A problem with a zone file, pointing at the line that causes it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ZoneError {
    #[error("{file}: {source}")]
    Read { file: String, source: Arc<std::io::Error> },
    #[error("{file}:{line}: {message}")]
    At { file: String, line: usize, message: String },
    #[error("{file}: {message}")]
    Whole { file: String, message: String },
}

/// A zone file as read from disk: its text (kept for rewriting), where the
/// serial and the managed blocks are, and the parsed data.
#[derive(Debug, Clone)]
pub struct ZoneFile {
    pub path: PathBuf,
    /// Shared with what the file sync believes is on disk: one copy.
    pub text: Arc<str>,
    pub data: Arc<ZoneData>,
    pub serial: u32,
    pub serial_span: Range<usize>,
    pub blocks: Vec<Block>,
    /// Each block's index in `blocks`, by the hash of its pool's name.
    block_index: Vec<(u64, u32)>,
    /// A and AAAA records outside their own name's managed block: a hash
    /// of the owner and the line, sorted (a name's lines are found by the
    /// hash alone; two names of one zone whose 64-bit hashes collide would
    /// share their lines).
    strays: Vec<(u64, u32)>,
}

/// Whether `line` lies inside the managed block of `owner` (blocks in
/// text order).
fn in_own_block(blocks: &[Block], text: &str, owner: &LowerName, line: usize) -> bool {
    let i = blocks.partition_point(|b| b.lines.start <= line);
    i > 0 && {
        let b = &blocks[i - 1];
        line <= b.lines.end && block_is(b, text, owner)
    }
}

/// Whether block `b` of `text` is the managed block of pool `name`.
fn block_is(b: &Block, text: &str, name: &LowerName) -> bool {
    Name::from_ascii(b.pool(text)).is_ok_and(|p| LowerName::from(&p) == *name)
}

/// The hash under which a name's stray address lines and its managed
/// block are indexed.
fn name_hash(name: &LowerName) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x766e_616d_6564).hash_one(name)
}

/// Blocks by the hash of their pool's name, then by place (so the first
/// of a name is found first, as a search would): 12 bytes a block.
fn index_blocks(blocks: &[Block], text: &str) -> Vec<(u64, u32)> {
    let mut index: Vec<(u64, u32)> = blocks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| Some((name_hash(&LowerName::from(&Name::from_ascii(b.pool(text)).ok()?)), u32::try_from(i).ok()?)))
        .collect();
    index.sort_unstable();
    index
}

/// The zone name a file in `zones_dir` serves: `demo.example.zone` → `demo.example.`.
pub fn origin_for(path: &Path) -> Option<Name> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".zone")?;
    let mut name = Name::from_ascii(stem).ok()?;
    name.set_fqdn(true);
    Some(name)
}

impl ZoneFile {
    /// Reads and validates a zone file whose origin comes from its name:
    /// a regular file (not a link) of at most `limit` bytes.
    pub fn load(path: &Path, limit: u64) -> Result<Self, ZoneError> {
        let file = path.display().to_string();
        let text = crate::files::read_regular(path, limit, crate::files::Links::Refuse)
            .map_err(|e| ZoneError::Read { file: file.clone(), source: Arc::new(e) })?;
        let origin = origin_for(path)
            .ok_or_else(|| ZoneError::Whole { file: file.clone(), message: "file name must be <zone name>.zone".into() })?;
        Self::parse(path, origin, text)
    }

    /// Parses and validates zone text.
    pub fn parse(path: &Path, origin: Name, text: String) -> Result<Self, ZoneError> {
        let file = path.display().to_string();
        let at = |line: usize, message: String| ZoneError::At { file: file.clone(), line, message };
        let entries = text::entries(&text).map_err(|e| at(e.line, e.message))?;
        let blocks = text::blocks(&text).map_err(|e| at(e.line, e.message))?;

        let lower_origin = LowerName::from(&origin);
        let mut nodes = Nodes::default();
        let mut soa: Option<(SOA, u32, usize)> = None;
        let mut serial_span = None;
        // Where each CNAME is, for the errors that name its line.
        let mut lines: HashMap<(LowerName, RecordType), usize> = HashMap::new();
        let mut count = 0;
        let mut strays = Vec::new();
        // Each record goes into its node as it is parsed: the records are
        // never all held twice.
        let each = |record: Record, line: usize, entry: usize| -> Result<(), (usize, String)> {
            let at = |line: usize, message: String| (line, message);
            if record.dns_class != DNSClass::IN {
                return Err(at(line, format!("class {} is not served; only IN", record.dns_class)));
            }
            let owner = LowerName::from(&record.name);
            if !lower_origin.zone_of(&owner) {
                return Err(at(line, format!("{} is outside the zone {origin}", record.name)));
            }
            let rtype = record.record_type();
            if let RData::SOA(s) = &record.data {
                if owner != lower_origin {
                    return Err(at(line, format!("SOA at {} is not at the zone apex {origin}", record.name)));
                }
                if let Some((_, _, first)) = soa {
                    return Err(at(line, format!("second SOA record (the first is on line {first})")));
                }
                let tokens = &entries[entry];
                let pos = (0..tokens.tokens.len())
                    .find(|&i| tokens.token(&text, i).is_some_and(|t| t.eq_ignore_ascii_case("SOA")))
                    .map(|i| i + 3)
                    .and_then(|i| tokens.tokens.get(i).cloned())
                    .ok_or_else(|| at(line, "cannot find the SOA serial".into()))?;
                serial_span = Some(pos);
                soa = Some((s.clone(), record.ttl, line));
            }
            if rtype == RecordType::CNAME {
                lines.entry((owner.clone(), rtype)).or_insert(line);
            }
            if matches!(rtype, RecordType::A | RecordType::AAAA) && !in_own_block(&blocks, &text, &owner, line) {
                strays.push((name_hash(&owner), u32::try_from(line).unwrap_or(u32::MAX)));
            }
            let node = nodes.entry(owner).or_default();
            let set = match node.rrsets.iter().position(|s| s.rtype == rtype) {
                Some(i) => &mut node.rrsets[i],
                None => {
                    node.rrsets.push(RrSet::new(rtype, record.ttl));
                    node.rrsets.last_mut().expect("just pushed")
                }
            };
            // RFC 2181 §5.2: one TTL per RRset; the first one wins.
            if set.insert(&record.data).map_err(|m| at(line, m))? {
                count += 1;
            }
            Ok(())
        };
        parse_records(&text, &entries, &origin, each).map_err(|(l, m)| at(l, m))?;
        let Some((soa, soa_ttl, _)) = soa else {
            return Err(ZoneError::Whole { file, message: format!("no SOA record at the zone apex {origin}") });
        };
        if nodes.get(&lower_origin).and_then(|n| n.get(RecordType::NS)).is_none() {
            return Err(ZoneError::Whole { file, message: format!("no NS records at the zone apex {origin}") });
        }
        for (name, node) in &nodes {
            if node.get(RecordType::CNAME).is_some() && node.rrsets.len() > 1 {
                let line = lines[&(name.clone(), RecordType::CNAME)];
                return Err(at(line, format!("{name} has a CNAME and other data")));
            }
            if node.get(RecordType::CNAME).is_some_and(|s| s.len() > 1) {
                let line = lines[&(name.clone(), RecordType::CNAME)];
                return Err(at(line, format!("{name} has more than one CNAME")));
            }
        }
        // Make every name between the apex and an owner exist (empty non-terminals).
        let owners: Vec<LowerName> = nodes.keys().cloned().collect();
        for owner in owners {
            let mut name = owner.base_name();
            while lower_origin.zone_of(&name) && name != lower_origin {
                nodes.entry(name.clone()).or_default();
                name = name.base_name();
            }
        }
        for block in &blocks {
            if Name::from_ascii(block.pool(&text)).is_err() {
                return Err(at(block.lines.start, format!("bad pool name {:?}", block.pool(&text))));
            }
        }
        let serial = soa.serial;
        nodes.shrink_to_fit();
        strays.sort_unstable();
        strays.shrink_to_fit();
        let block_index = index_blocks(&blocks, &text);
        Ok(ZoneFile {
            path: path.to_owned(),
            serial_span: serial_span.expect("set with the SOA"),
            data: Arc::new(ZoneData { origin, lower_origin, soa, soa_ttl, nodes, record_count: count }),
            serial,
            text: text.into(),
            block_index,
            blocks,
            strays,
        })
    }

    /// This file with its managed blocks replaced by `rendered` (each
    /// block's text by lower-case pool name; an empty one removes it) and
    /// its serial set to `serial`. Only what changes is checked (each new
    /// block parses, names records of this zone, and gives no CNAME owner
    /// other data): the rest is this file's, which parsed. The data stays
    /// this file's (the blocks only hold the pools' answers, which the
    /// served answers override); what a file read back from disk would
    /// give differs in those addresses alone.
    pub fn rewritten(&self, serial: u32, rendered: &BTreeMap<String, String>) -> Result<ZoneFile, ZoneError> {
        let file = self.path.display().to_string();
        let at = |line: usize, message: String| ZoneError::At { file: file.clone(), line, message };
        let data = &self.data;
        for (pool, block) in rendered {
            let within = |m: String| at(0, format!("the block written for {pool}: {m}"));
            let entries = text::entries(block).map_err(|e| within(e.message))?;
            let check = |record: Record, _, _| {
                let owner = LowerName::from(&record.name);
                if !data.lower_origin.zone_of(&owner) {
                    return Err((0, format!("{} is outside the zone {}", record.name, data.origin)));
                }
                if data.nodes.get(&owner).is_some_and(|n| n.get(RecordType::CNAME).is_some()) {
                    return Err((0, format!("{} has a CNAME and other data", record.name)));
                }
                Ok(())
            };
            parse_records(block, &entries, &data.origin, check).map_err(|(_, m)| within(m))?;
        }
        let (text, serial_span) = text::rewrite(&self.text, &self.blocks, self.serial_span.clone(), serial, rendered);
        let blocks = text::blocks(&text).map_err(|e| at(e.line, e.message))?;
        let block_index = index_blocks(&blocks, &text);
        Ok(ZoneFile {
            path: self.path.clone(),
            text: text.into(),
            data: data.clone(),
            serial,
            serial_span,
            blocks,
            block_index,
            strays: Vec::new(),
        })
    }

    /// The managed block for a pool, if the file has one.
    pub fn block(&self, pool: &Name) -> Option<&Block> {
        let name = LowerName::from(pool);
        let hash = name_hash(&name);
        let from = self.block_index.partition_point(|&(h, _)| h < hash);
        self.block_index[from..]
            .iter()
            .take_while(|&&(h, _)| h == hash)
            .filter_map(|&(_, i)| self.blocks.get(i as usize))
            .find(|b| block_is(b, &self.text, &name))
    }

    /// Lines of A/AAAA records for a virtual name outside its managed block:
    /// the operator's, which would contradict the live answer.
    pub fn stray_addresses(&self, pool: &Name) -> Vec<usize> {
        let hash = name_hash(&LowerName::from(pool));
        let from = self.strays.partition_point(|&(h, _)| h < hash);
        self.strays[from..].iter().take_while(|&&(h, _)| h == hash).map(|&(_, line)| line as usize).collect()
    }

    /// The addresses the file holds for a name (the last answer served for a pool).
    pub fn addresses(&self, name: &Name) -> Vec<IpAddr> {
        let Some(node) = self.data.nodes.get(&LowerName::from(name)) else {
            return Vec::new();
        };
        node.rrsets
            .iter()
            .filter(|s| matches!(s.rtype, RecordType::A | RecordType::AAAA))
            .flat_map(|s| s.data())
            .filter_map(|d| d.ip_addr())
            .collect()
    }
}

/// The administrative notes kept for one member inside a managed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberNote {
    pub id: Arc<str>,
    pub admin: &'static str,
    pub weight: u32,
}

/// Renders the managed block for a pool: marker comments, member notes and
/// the A/AAAA records currently answered.
pub fn render_block(pool: &Name, ttl: u32, addresses: &[IpAddr], notes: &[MemberNote]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "; {} {pool} -- written by vnamed; edits here are replaced", text::BEGIN);
    // Only what passes the identifier rules goes into a comment: an id
    // carrying a newline would otherwise write records of its own.
    for note in notes.iter().filter(|n| ident::check_id(&n.id).is_ok()) {
        let _ = writeln!(out, "; {} {} admin={} weight={}", text::MEMBER, note.id, note.admin, note.weight);
    }
    for addr in addresses {
        let rtype = if addr.is_ipv4() { "A" } else { "AAAA" };
        let _ = writeln!(out, "{pool} {ttl} IN {rtype} {addr}");
    }
    let _ = writeln!(out, "; {} {pool}", text::END);
    out
}

/// All `*.zone` files in a directory, each loaded (at most `limit` bytes
/// each); every broken file is reported, not just the first.
pub fn load_dir(dir: &Path, limit: u64) -> Result<BTreeMap<LowerName, ZoneFile>, Vec<ZoneError>> {
    let read = std::fs::read_dir(dir).map_err(|e| vec![ZoneError::Read { file: dir.display().to_string(), source: Arc::new(e) }])?;
    let mut paths: Vec<PathBuf> =
        read.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "zone")).collect();
    paths.sort();
    let mut zones = BTreeMap::new();
    let mut errors = Vec::new();
    for path in paths {
        match ZoneFile::load(&path, limit) {
            Ok(z) => {
                zones.insert(z.data.lower_origin.clone(), z);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(zones) } else { Err(errors) }
}

/// Is `a` newer than `b` in serial-number arithmetic (RFC 1982)?
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = "\
$TTL 300
@   IN SOA ns1 hostmaster ( 2024010101 3600 600 86400 60 )
    IN NS ns1
ns1 IN A 127.0.0.1
mail IN MX 10 ns1 ; an MX
alias IN CNAME www
a.b.c IN TXT \"deep\"
; vnamed:begin www.example.
; vnamed:member web2 admin=down
www.example. 5 IN A 127.0.10.1
; vnamed:end www.example.
";

    fn parse(text: &str) -> Result<ZoneFile, ZoneError> {
        ZoneFile::parse(Path::new("example.zone"), Name::from_ascii("example.").unwrap(), text.to_owned())
    }

    #[test]
    fn reads_records_blocks_and_serial() {
        let z = parse(EXAMPLE).unwrap();
        assert_eq!(z.serial, 2024010101);
        assert_eq!(&z.text[z.serial_span.clone()], "2024010101");
        assert_eq!(z.data.record_count, 7);
        let www = Name::from_ascii("www.example.").unwrap();
        assert_eq!(z.addresses(&www), vec!["127.0.10.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(z.block(&www).unwrap().members(&z.text)[0].0, "web2");
        // b.c.example. is an empty non-terminal
        assert!(z.data.nodes[&LowerName::from(Name::from_ascii("b.c.example.").unwrap())].rrsets.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let bad = EXAMPLE.replace("mail IN MX 10 ns1", "mail IN MX ten ns1");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.starts_with("example.zone:5:"), "{e}");
        let bad = EXAMPLE.replace("alias IN CNAME www", "ns1 IN CNAME www");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("example.zone:6:") && e.contains("CNAME and other data"), "{e}");
        let bad = format!("{EXAMPLE}other.test. IN A 127.0.0.1\n");
        assert!(parse(&bad).unwrap_err().to_string().contains(":12: other.test. is outside"));
        let bad = EXAMPLE.replace("    IN NS ns1\n", "");
        assert!(parse(&bad).unwrap_err().to_string().contains("no NS records"));
    }

    #[test]
    fn rendered_block_round_trips() {
        let z = parse(EXAMPLE).unwrap();
        let www = Name::from_ascii("www.example.").unwrap();
        let addrs: Vec<IpAddr> = vec!["127.0.10.2".parse().unwrap(), "::1".parse().unwrap()];
        let body = render_block(&www, 5, &addrs, &[MemberNote { id: "web1".into(), admin: "auto", weight: 3 }]);
        let mut replace = BTreeMap::new();
        replace.insert("www.example.".to_owned(), body);
        let written = z.rewritten(2024010102, &replace).unwrap();
        let again = parse(&written.text).unwrap();
        // What the rewrite works out without parsing is what a parse finds.
        assert_eq!((written.serial, &written.serial_span, &written.blocks), (again.serial, &again.serial_span, &again.blocks));
        assert!(Arc::ptr_eq(&written.data, &z.data), "the data is shared, not parsed again");
        assert_eq!(again.serial, 2024010102);
        assert_eq!(again.addresses(&www), addrs);
        let pairs = [("admin".to_owned(), "auto".to_owned()), ("weight".to_owned(), "3".to_owned())];
        assert_eq!(again.block(&www).unwrap().members(&again.text)[0].1, pairs);
        assert!(again.text.contains("mail IN MX 10 ns1 ; an MX"));
        // Written again over the block it wrote: the same.
        let twice = written.rewritten(2024010103, &replace).unwrap();
        assert_eq!(&*twice.text, written.text.replace("2024010102", "2024010103"));
        // A block that would make a file we refuse is not written.
        let mut cname = BTreeMap::new();
        let mail = Name::from_ascii("mail.example.").unwrap();
        cname.insert("mail.example.".to_owned(), render_block(&mail, 5, &addrs, &[]));
        let with_cname = parse(&format!("{EXAMPLE}other IN CNAME mail\n")).unwrap();
        let alias = Name::from_ascii("other.example.").unwrap();
        let mut bad = BTreeMap::new();
        bad.insert("other.example.".to_owned(), render_block(&alias, 5, &addrs, &[]));
        assert!(with_cname.rewritten(3, &bad).unwrap_err().to_string().contains("CNAME and other data"));
        let mut outside = BTreeMap::new();
        outside.insert("www.other.".to_owned(), render_block(&Name::from_ascii("www.other.").unwrap(), 5, &addrs, &[]));
        assert!(z.rewritten(3, &outside).unwrap_err().to_string().contains("outside the zone"));
        assert!(z.rewritten(3, &cname).is_ok());
    }
}

//! The text of a zone file as the operator wrote it: split into logical
//! entries (RFC 1035 §5.1: parentheses, quotes, comments) with their line
//! numbers and byte spans, the vnamed-managed blocks found by their marker
//! comments, and rewrites that touch only the managed blocks and the SOA
//! serial so that everything else in the file survives byte for byte.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::config::ident;

/// Marker comment that opens the block of records vnamed owns for one pool.
pub const BEGIN: &str = "vnamed:begin";
/// Marker comment that closes it.
pub const END: &str = "vnamed:end";
/// Comment inside a block carrying one member's administrative state.
pub const MEMBER: &str = "vnamed:member";

/// A lexical problem, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TextError {
    pub line: usize,
    pub message: String,
}

/// One logical entry: a directive or a resource record, possibly spanning
/// lines inside parentheses.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Line on which the entry starts (1-based).
    pub line: usize,
    /// Byte spans of its tokens in the source (quoted strings keep their quotes).
    pub tokens: Vec<Range<usize>>,
    /// The entry started with white space: its owner is the previous owner.
    pub blank_owner: bool,
}

impl Entry {
    pub fn token<'a>(&self, src: &'a str, i: usize) -> Option<&'a str> {
        self.tokens.get(i).map(|r| &src[r.clone()])
    }
}

/// Splits zone text into entries.
pub fn entries(src: &str) -> Result<Vec<Entry>, TextError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut line = 1;
    let mut depth = 0usize;
    let mut paren_line = 0;
    let mut current: Option<Entry> = None;
    let mut at_line_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
                at_line_start = true;
                if depth == 0
                    && let Some(e) = current.take()
                {
                    out.push(e);
                }
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                at_line_start = false;
                continue;
            }
            b';' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        let entry = current.get_or_insert_with(|| Entry { line, tokens: Vec::new(), blank_owner: !at_line_start });
        at_line_start = false;
        match c {
            b'(' => {
                if depth == 0 {
                    paren_line = line;
                }
                depth += 1;
                i += 1;
            }
            b')' => {
                if depth == 0 {
                    return Err(TextError { line, message: "')' without '('".into() });
                }
                depth -= 1;
                i += 1;
            }
            b'"' => {
                let start = i;
                let open_line = line;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(TextError { line: open_line, message: "unterminated quoted string".into() });
                        }
                        Some(b'\\') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\n') => {
                            line += 1;
                            i += 1;
                        }
                        Some(_) => i += 1,
                    }
                }
                entry.tokens.push(start..i.min(bytes.len()));
            }
            _ => {
                let start = i;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b')' | b'"' => break,
                        _ => i += 1,
                    }
                }
                let end = i.min(bytes.len());
                entry.tokens.push(start..end);
            }
        }
    }
    if depth > 0 {
        return Err(TextError { line: paren_line, message: "'(' is never closed".into() });
    }
    if let Some(e) = current.take() {
        out.push(e);
    }
    // An entry made only of parentheses has no tokens; it is not an entry.
    out.retain(|e| !e.tokens.is_empty());
    Ok(out)
}

/// A managed block found in the text: where it is, nothing copied out of
/// it (a zone of 100,000 pools keeps 100,000 of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Where the pool name written after the begin marker is, as written.
    pub name: Range<usize>,
    /// Lines of the begin and end markers (1-based, inclusive).
    pub lines: Range<usize>,
    /// Bytes from the start of the begin line to the end of the end line.
    pub bytes: Range<usize>,
}

/// A member's note: its id and its `key=value` pairs.
pub type Note = (String, Vec<(String, String)>);

impl Block {
    /// The pool name as written, in `src` (the text the block was found in).
    pub fn pool<'a>(&self, src: &'a str) -> &'a str {
        src.get(self.name.clone()).unwrap_or_default()
    }

    /// The `vnamed:member` notes inside the block, in `src`.
    pub fn members(&self, src: &str) -> Vec<Note> {
        let text = src.get(self.bytes.clone()).unwrap_or_default();
        text.split_inclusive('\n').filter_map(|raw| marker(raw, MEMBER)).filter_map(|n| note(n).ok()).collect()
    }
}

fn marker<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(';')?.trim_start();
    let rest = rest.strip_prefix(word)?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then(|| rest.trim())
}

/// A member note's words: the id, then `key=value` pairs.
fn note(text: &str) -> Result<Note, String> {
    let mut words = text.split_whitespace();
    let Some(id) = words.next() else {
        return Err("member note without a member id".into());
    };
    ident::check_id(id).map_err(|e| format!("member note: member id {e}"))?;
    let mut pairs = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("member note: expected key=value, got {w:?}"));
        };
        pairs.push((k.to_owned(), v.to_owned()));
    }
    Ok((id.to_owned(), pairs))
}

/// Finds the managed blocks of a zone text.
pub fn blocks(src: &str) -> Result<Vec<Block>, TextError> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut offset = 0;
    for (n, raw) in src.split_inclusive('\n').enumerate() {
        let line = n + 1;
        let start = offset;
        offset += raw.len();
        if let Some(rest) = marker(raw, BEGIN) {
            // The pool name is the first word; the rest is a note for readers.
            let pool = rest.split_whitespace().next().unwrap_or_default();
            if open.is_some() {
                return Err(TextError { line, message: "managed block opened inside another".into() });
            }
            if pool.is_empty() {
                return Err(TextError { line, message: "managed block without a pool name".into() });
            }
            // `pool` is a slice of `src`: its place is its distance from the start.
            let at = pool.as_ptr() as usize - src.as_ptr() as usize;
            open = Some(Block { name: at..at + pool.len(), lines: line..line, bytes: start..start });
        } else if marker(raw, END).is_some() {
            let Some(mut b) = open.take() else {
                return Err(TextError { line, message: "managed block end without a begin".into() });
            };
            b.lines.end = line;
            b.bytes.end = offset;
            out.push(b);
        } else if let Some(text) = marker(raw, MEMBER) {
            if open.is_none() {
                return Err(TextError { line, message: "member note outside a managed block".into() });
            }
            note(text).map_err(|message| TextError { line, message })?;
        }
    }
    if let Some(b) = open {
        return Err(TextError { line: b.lines.start, message: format!("managed block for {} is never closed", b.pool(src)) });
    }
    Ok(out)
}

/// Rewrites `src`: each block named in `replace` (by lower-case pool name)
/// gets the new body, blocks that do not exist yet are appended, and the SOA
/// serial at `serial_span` becomes `serial`. Everything else is kept.
/// Returns the text and where the serial is in it.
pub fn rewrite(
    src: &str,
    found: &[Block],
    serial_span: Range<usize>,
    serial: u32,
    replace: &BTreeMap<String, String>,
) -> (String, Range<usize>) {
    let serial_at = serial_span.start;
    let mut edits: Vec<(Range<usize>, String)> = vec![(serial_span, serial.to_string())];
    let mut appended = String::new();
    // By lower-case name: a zone of 100,000 pools is not searched 100,000 times.
    let by_pool: std::collections::HashMap<String, &Block> = found.iter().rev().map(|b| (b.pool(src).to_ascii_lowercase(), b)).collect();
    for (pool, body) in replace {
        match by_pool.get(&pool.to_ascii_lowercase()) {
            Some(b) => edits.push((b.bytes.clone(), body.clone())),
            None => appended.push_str(body),
        }
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(src.len() + appended.len() + 64);
    let mut at = 0;
    let mut new_span = 0..0;
    for (range, text) in edits {
        out.push_str(&src[at..range.start]);
        if range.start == serial_at {
            new_span = out.len()..out.len() + text.len();
        }
        out.push_str(&text);
        at = range.end;
    }
    out.push_str(&src[at..]);
    if !appended.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&appended);
    }
    (out, new_span)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$TTL 300\n@ IN SOA ns1 hostmaster ( 7 ; serial\n  3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1 ; glue\ntxt IN TXT \"a ; not a comment\" \"b\"\n";

    #[test]
    fn splits_entries_with_lines_and_continuations() {
        let e = entries(ZONE).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[1].line, 2);
        assert_eq!(e[1].token(ZONE, 5), Some("7"));
        assert_eq!(e[1].tokens.len(), 10);
        assert!(e[2].blank_owner);
        assert_eq!(e[2].line, 4);
        assert_eq!(e[4].token(ZONE, 3), Some("\"a ; not a comment\""));
    }

    #[test]
    fn lexical_errors_name_the_line() {
        assert_eq!(entries("a A 1\nb ( A\n").unwrap_err().line, 2);
        assert_eq!(entries("a A 1\n\nb TXT \"x\n").unwrap_err().line, 3);
        assert_eq!(entries("a A 1 )\n").unwrap_err().line, 1);
    }

    #[test]
    fn rewrite_touches_only_blocks_and_serial() {
        let src = format!(
            "{ZONE}; vnamed:begin www.example.\n; vnamed:member web1 admin=down\nwww.example. 5 IN A 127.0.0.9\n; vnamed:end\n; trailing comment\n"
        );
        let found = blocks(&src).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pool(&src), "www.example.");
        assert_eq!(found[0].members(&src), vec![("web1".to_owned(), vec![("admin".to_owned(), "down".to_owned())])]);
        let span = entries(&src).unwrap()[1].tokens[5].clone();
        let mut replace = BTreeMap::new();
        replace.insert("www.example.".to_owned(), "; vnamed:begin www.example.\nNEW\n; vnamed:end www.example.\n".to_owned());
        replace.insert("api.example.".to_owned(), "; vnamed:begin api.example.\nAPI\n; vnamed:end api.example.\n".to_owned());
        let (out, serial) = rewrite(&src, &found, span, 8, &replace);
        assert_eq!(&out[serial], "8");
        assert!(out.starts_with("$TTL 300\n@ IN SOA ns1 hostmaster ( 8 ; serial\n"));
        assert!(out.contains("\"a ; not a comment\""));
        assert!(out.contains("NEW\n; vnamed:end www.example.\n; trailing comment\n; vnamed:begin api.example.\nAPI\n"));
        assert!(!out.contains("127.0.0.9"));
    }

    #[test]
    fn unbalanced_blocks_are_errors() {
        assert_eq!(blocks("; vnamed:begin a.\n").unwrap_err().line, 1);
        assert_eq!(blocks("x\n; vnamed:end\n").unwrap_err().line, 2);
    }
}

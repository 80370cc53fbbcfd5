//! Reading a zone file from disk with a size limit: the first two bytes
//! of the input set the limit, the rest is the file. A file over the limit
//! is refused without being parsed; one within it reads as its text
//! parses. Either way nothing panics and nothing is read past the limit.

#![no_main]

use std::path::Path;

use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use vnamed::zone::{ZoneError, ZoneFile};

fuzz_target!(|data: &[u8]| {
    let Some((head, body)) = data.split_first_chunk::<2>() else { return };
    let limit = u64::from(u16::from_be_bytes(*head));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("example.zone");
    std::fs::write(&path, body).unwrap();
    let loaded = ZoneFile::load(&path, limit);
    if body.len() as u64 > limit {
        assert!(matches!(loaded, Err(ZoneError::Read { .. })), "over the limit and not refused: {loaded:?}");
        return;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        assert!(loaded.is_err());
        return;
    };
    let parsed = ZoneFile::parse(Path::new(&path), Name::from_ascii("example.").unwrap(), text.to_owned());
    assert_eq!(loaded.is_ok(), parsed.is_ok(), "{loaded:?} / {parsed:?}");
    if let (Ok(a), Ok(b)) = (loaded, parsed) {
        assert_eq!((a.serial, a.blocks, a.data.record_count), (b.serial, b.blocks, b.data.record_count));
    }
});

//! Zone file text: any input is either refused with an error naming a line
//! or parsed; a parsed zone rewritten with a managed block and a new serial
//! (the way vnamed writes, splicing without parsing the whole text again)
//! must parse again, keep the new serial, and give what the splice said:
//! the same serial span and managed blocks.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use vnamed::zone::{ZoneFile, render_block};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let origin = Name::from_ascii("example.").unwrap();
    let Ok(zone) = ZoneFile::parse(Path::new("example.zone"), origin.clone(), src.to_owned()) else { return };
    let pool = Name::from_ascii("www.example.").unwrap();
    let mut blocks = BTreeMap::new();
    blocks.insert(pool.to_string(), render_block(&pool, 5, &["192.0.2.1".parse().unwrap()], &[]));
    let serial = zone.serial.wrapping_add(1);
    let Ok(written) = zone.rewritten(serial, &blocks) else { return };
    if let Ok(again) = ZoneFile::parse(Path::new("example.zone"), origin, written.text.clone()) {
        assert_eq!(again.serial, serial);
        assert_eq!(again.serial_span, written.serial_span);
        assert_eq!(again.blocks, written.blocks);
    }
});

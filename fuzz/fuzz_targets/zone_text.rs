//! Zone file text: any input is either refused with an error naming a line
//! or parsed; a parsed zone rewritten with a managed block and a new serial
//! must parse again and keep the new serial.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use vnamed::zone::{ZoneFile, render_block, text};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let origin = Name::from_ascii("example.").unwrap();
    let Ok(zone) = ZoneFile::parse(Path::new("example.zone"), origin.clone(), src.to_owned()) else { return };
    let pool = Name::from_ascii("www.example.").unwrap();
    let mut blocks = BTreeMap::new();
    blocks.insert(pool.to_string(), render_block(&pool, 5, &["192.0.2.1".parse().unwrap()], &[]));
    let serial = zone.serial.wrapping_add(1);
    let rewritten = text::rewrite(&zone.text, &zone.blocks, zone.serial_span.clone(), serial, &blocks);
    if let Ok(again) = ZoneFile::parse(Path::new("example.zone"), origin, rewritten) {
        assert_eq!(again.serial, serial);
    }
});

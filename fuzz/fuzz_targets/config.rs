//! Configuration text: any input is either refused with its problems or
//! read into a configuration whose member ids all pass the identifier
//! rules (nothing else can reach a zone file).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vnamed::config::{Config, ident};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Config::from_toml(text) {
        for p in &c.pool {
            assert!(p.members.iter().all(|m| ident::check_id(&m.id).is_ok()));
        }
    }
});

//! Ring datagrams: any input, keyed or not, is either refused or decoded,
//! and a decoded message encodes back to one that decodes the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vnamed::ring::wire;

fuzz_target!(|data: &[u8]| {
    for key in [None, Some(&b"ring-key"[..])] {
        if let Ok((msg, env)) = wire::decode(data, key) {
            let again = wire::encode(&msg, env, key);
            let (msg2, env2) = wire::decode(&again, key).expect("what we encode decodes");
            assert_eq!((msg, env), (msg2, env2));
        }
    }
});

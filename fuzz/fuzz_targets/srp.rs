//! SRP datagrams: any request is either refused or decoded, and a decoded
//! one encodes back to an equivalent request; any response is either
//! refused or decoded, and a decoded one re-encodes within the limits and
//! decodes to the same instances. Peer messages never panic either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vnamed::srp::codec::{self, Request};
use vnamed::srp::peer::PeerMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(Request::decode(&r.encode()), Ok(r));
    }
    if let Ok(infos) = codec::decode_response(data) {
        for i in &infos {
            let again = codec::encode_instance(i);
            assert!(again.len() - 3 <= codec::MAX_INSTANCE_RESPONSE);
            let _ = codec::decode_response(&again);
        }
    }
    let _ = codec::decode_dac(data);
    let _ = PeerMsg::decode(data, None);
    let _ = PeerMsg::decode(data, Some(b"k"));
});

//! Report batches as they arrive over gRPC: any bytes are either refused
//! by the protobuf decoder or decoded, and a decoded batch is either
//! refused with a reason or checked into reports whose names pass the
//! identifier rules and whose metrics are finite and not negative, at any
//! observation time.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vnamed::config::ident;
use vnamed::grpc::report;
use vnamed::grpc::v1::ReportBatch;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = ReportBatch::decode(data) else { return };
    for now in [0, 1_700_000_000_000, i64::MIN, i64::MAX] {
        match report::decode(&batch, now) {
            Ok(reports) => {
                for r in reports {
                    assert!(ident::check_id(&r.member).is_ok() && ident::check_name(&r.pool).is_ok());
                    assert!(r.custom.values().all(|v| v.is_finite() && *v >= 0.0));
                }
            }
            Err(e) => {
                let _ = e.reason();
                assert!(e.to_string().len() < 400, "refusals are short");
            }
        }
    }
});

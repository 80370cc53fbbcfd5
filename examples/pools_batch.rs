//! For `scripts/bench/pools.sh`: reports member `m0` of pools
//! `p0.ZONE` .. `p{COUNT-1}.ZONE` up or down, in one batch, and prints
//! how long the authority took to accept it.
//!
//! usage: pools_batch GRPC_URL TOKEN ZONE COUNT up|down

use std::collections::HashMap;
use std::time::Instant;

use vnamed::grpc::Bearer;
use vnamed::grpc::v1::status_client::StatusClient;
use vnamed::grpc::v1::{MemberReport, ReportBatch};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, token, zone, count, state] = &args[..] else { anyhow::bail!("usage: pools_batch GRPC_URL TOKEN ZONE COUNT up|down") };
    let count: usize = count.parse()?;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?;
    let mut client = StatusClient::with_interceptor(channel, Bearer::new(Some(token))?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let reports = (0..count)
        .map(|p| MemberReport {
            pool: format!("p{p}.{zone}"),
            member: "m0".into(),
            up: state == "up",
            metrics: HashMap::new(),
            observed_unix_ms: 0,
            check: "pools".into(),
            addresses: Vec::new(),
        })
        .collect();
    let start = Instant::now();
    client.report(ReportBatch { source: "pools".into(), reports }).await?;
    println!("{}", start.elapsed().as_millis());
    Ok(())
}

//! Compiles the gRPC API in `proto/` with a pure-Rust protobuf compiler, so
//! building vnamed needs no system `protoc`, and keeps the encoded
//! descriptors for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds =
        protox::compile(["vnamed/v1/admin.proto", "vnamed/v1/host.proto", "vnamed/v1/ring.proto", "vnamed/v1/status.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("vnamed_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

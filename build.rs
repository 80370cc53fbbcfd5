//! Compiles the gRPC API in `proto/` with a pure-Rust protobuf compiler, so
//! building vnamed needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["vnamed/v1/admin.proto", "vnamed/v1/status.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

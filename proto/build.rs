//! Compiles the .proto files with `protox` (pure Rust, no system `protoc`) and hands the file
//! descriptor set to `tonic-prost-build`. The set is also written to `OUT_DIR` for gRPC
//! server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/fleet/registry/v1/registry.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("fleet_registry_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".fleet.registry.v1.WatchEvent")
        .compile_fds(fds)?;
    Ok(())
}

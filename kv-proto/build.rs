//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`), keeps the encoded
//! descriptor set for server reflection, and generates the prost messages and tonic services.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/kv/v1/kv.proto",
    "proto/kv/v1/shardmaster.proto",
    "proto/kv/v1/node.proto",
    "proto/kv/v1/stored.proto",
    "proto/kvstore.proto",
    "proto/shardmaster.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("kv_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

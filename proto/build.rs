//! Compiles `proto/duet/v1/*.proto` into Rust (messages, clients and servers) and writes the encoded
//! file descriptor set that server reflection serves. protoc comes from the `protoc-bin-vendored`
//! crate, so building needs no system protobuf compiler.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/duet/v1/common.proto",
    "proto/duet/v1/drafter.proto",
    "proto/duet/v1/verifier.proto",
    "proto/duet/v1/orchestrator.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("duet_v1_descriptor.bin"))
        .compile_protos(PROTOS, &["proto"])?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}

//! Generates the berth.v1 API and the internal Raft transport with tonic.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("berth_descriptor.bin"))
        .compile_protos(
            &[
                "proto/berth/v1/sandbox.proto",
                "proto/berth/v1/cluster.proto",
                "proto/berth/v1/auth.proto",
                "proto/berth/raft/v1/raft.proto",
                "proto/berth/agent/v1/agent.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}

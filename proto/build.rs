//! Compiles `proto/fleet.proto` with protox (pure Rust), so no system `protoc`
//! is needed on a fresh machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/fleet.proto");
    let fds = protox::compile(["fleet.proto"], ["proto"])?;
    // The encoded descriptors, for the controller's gRPC server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fleet_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Artifact chunks as `Bytes`: the controller sends one read of a chunk
    // to every host downloading it, without a copy per host.
    tonic_prost_build::configure()
        .bytes(".fleet.v1.ArtifactChunk.data")
        .compile_fds(fds)?;
    Ok(())
}

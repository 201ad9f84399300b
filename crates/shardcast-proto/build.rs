//! Compiles `proto/shardcast/*/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler, so no `protoc` is needed) and generates the tonic services. The
//! encoded descriptor set is kept for gRPC reflection. KEDA's external
//! scaler contract (`proto/externalscaler/`) is compiled on its own, so the
//! inference server's reflection does not advertise a service it lacks;
//! Prometheus' remote-write messages (`proto/prometheus/`) likewise, as
//! plain messages without a service.

use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "shardcast/forecast/v1/forecast.proto",
    "shardcast/ingest/v1/ingest.proto",
    "shardcast/model/v1/model.proto",
];

const KEDA: &str = "externalscaler/externalscaler.proto";

const REMOTE_WRITE: &str = "prometheus/remote.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    std::fs::write(
        out.join("shardcast_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    // Outside the reflection set: KEDA's service, and the remote-write
    // messages (no service).
    let alone = |file: &str, services: bool| -> Result<(), Box<dyn std::error::Error>> {
        let mut c = protox::Compiler::new([&root])?;
        c.open_files([file])?;
        tonic_prost_build::configure()
            .build_client(services)
            .build_server(services)
            .compile_fds(c.file_descriptor_set())?;
        Ok(())
    };
    alone(KEDA, true)?;
    alone(REMOTE_WRITE, false)?;
    for p in PROTOS.iter().chain([&KEDA, &REMOTE_WRITE]) {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    Ok(())
}

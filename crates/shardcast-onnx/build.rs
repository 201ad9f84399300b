//! Compiles the vendored `proto/onnx.proto` (the ONNX IR schema, see
//! `proto/README.md`) with protox, a pure-Rust protobuf compiler (no
//! `protoc`), and generates its prost messages.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.open_files(["onnx.proto"])?;
    prost_build::Config::new().compile_fds(compiler.file_descriptor_set())?;
    println!(
        "cargo:rerun-if-changed={}",
        root.join("onnx.proto").display()
    );
    Ok(())
}

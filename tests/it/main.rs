//! Integration tests of the `shardcast` binary and the store on real data.
//! One test binary; tests that need `../shared/data` skip with a printed
//! reason when it is absent.

mod cli;
mod e2e;
mod model;
mod nab;
mod notebooks;
mod onnx;
mod plan;
mod serve;
mod simulate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `../shared/data` next to the repository, if present.
pub(crate) fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent", p.display());
        None
    }
}

/// Runs the built binary from the repository root.
pub(crate) fn shardcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// Runs the binary, asserts success and returns its stdout.
pub(crate) fn ok(args: &[&str]) -> String {
    let out = shardcast(args);
    assert!(
        out.status.success(),
        "shardcast {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

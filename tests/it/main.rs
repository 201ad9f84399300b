//! Integration tests of the `shardcast` binary and the store on real data.
//! One test binary; tests that need `../shared/data` skip with a printed
//! reason when it is absent.

mod cli;
mod model;
mod nab;

use std::path::{Path, PathBuf};

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

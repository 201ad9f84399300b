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
mod prometheus;
mod s3;
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

/// The test Python (`SHARDCAST_PYTHON`, else `.venv/bin/python`) when it
/// can import `modules`, else `None` after printing why `what` is skipped.
/// With `SHARDCAST_REQUIRE_PYTHON=1` (as CI sets) a missing Python fails.
pub(crate) fn python_with(modules: &str, what: &str) -> Option<PathBuf> {
    let required = std::env::var("SHARDCAST_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let candidate = std::env::var_os("SHARDCAST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    let reason = match Command::new(&candidate)
        .args(["-c", &format!("import {modules}")])
        .output()
    {
        Ok(o) if o.status.success() => return Some(candidate),
        Ok(o) => format!(
            "{} cannot import {modules}: {}",
            candidate.display(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ),
        Err(e) => format!("{} cannot be run: {e}", candidate.display()),
    };
    let hint = "(make it with `python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt`, or set SHARDCAST_PYTHON)";
    assert!(!required, "SHARDCAST_REQUIRE_PYTHON=1 but {reason} {hint}");
    eprintln!("skipped {what}: {reason} {hint}");
    None
}

/// Ingests `data/sample/events.csv` into the events table of `store`.
pub(crate) fn ingest_events(store: &str) -> String {
    ok(&[
        "ingest",
        "--store",
        store,
        "--table",
        "events",
        "--end-col",
        "end",
        "--kind-col",
        "kind",
        "--scope-col",
        "scope",
        "--name-col",
        "name",
        "data/sample/events.csv",
    ])
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

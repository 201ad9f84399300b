//! The notebooks (`notebooks/*.ipynb`) run headless against the real
//! binary: the bundled sample is ingested into a fresh store, `shardcast
//! serve` serves it with the bundled model, and
//! `notebooks/run_notebooks.py` executes every notebook with
//! `SHARDCAST_SERVER`, `SHARDCAST_STORE` and `SHARDCAST_BIN` pointing at
//! them; any failing cell fails the test with the notebook's error.
//!
//! The Python interpreter is `$SHARDCAST_PYTHON`, else `.venv/bin/python`
//! at the repository root; without nbclient (and the notebooks' packages)
//! the test is skipped with a printed reason, unless
//! `SHARDCAST_REQUIRE_PYTHON=1`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::serve::Server;
use super::{ok, repo};

/// Modules the notebooks and their runner import.
const MODULES: &str =
    "nbclient, nbformat, ipykernel, numpy, pandas, pyarrow, matplotlib, grpc, grpc_tools";

/// Ingests the bundled sample as `shardcast demo` does: the traces, the
/// events, and the EC2 traces a second time, so that the store also holds
/// files a later write replaced (which the first notebook must not read).
fn ingest_sample(store: &Path) {
    let store = store.to_str().unwrap();
    let metrics: [(&str, &str, &str, &str); 5] = [
        ("data/sample/nab/ec2_cpu_*.csv", "aws", "ec2-cpu", "value"),
        (
            "data/sample/nab/elb_request_count_*.csv",
            "aws",
            "elb-requests",
            "value",
        ),
        ("data/sample/nab/rds_cpu_*.csv", "aws", "rds-cpu", "value"),
        (
            "data/sample/azure/azure.csv",
            "azure",
            "vm-cpu",
            "min cpu,avg cpu,max cpu",
        ),
        (
            "data/sample/nyc_taxi/nyc_taxi.csv",
            "nyc-taxi",
            "rides",
            "value",
        ),
    ];
    for (glob, app, shard_type, cols) in metrics {
        ok(&[
            "ingest",
            "--store",
            store,
            "--app",
            app,
            "--shard-type",
            shard_type,
            "--value-col",
            cols,
            glob,
        ]);
    }
    super::ingest_events(store);
    let again = ok(&[
        "ingest",
        "--store",
        store,
        "--app",
        "aws",
        "--shard-type",
        "ec2-cpu",
        "data/sample/nab/ec2_cpu_*.csv",
    ]);
    assert!(again.contains("8064 stored rows replaced"), "{again}");
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn notebooks_run_headless_against_the_server_and_the_store() {
    let Some(py) = super::python_with(MODULES, "the notebooks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ingest_sample(&store);
    let server = Server::start(&[
        "serve".to_owned(),
        "--store".into(),
        store.to_str().unwrap().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]);

    let jupyter = dir.path().join("jupyter");
    let started = Instant::now();
    let out = Command::new(&py)
        .args([
            "notebooks/run_notebooks.py",
            "--require-stripped",
            "--timeout",
            "300",
        ])
        .current_dir(repo())
        .env("SHARDCAST_SERVER", &server.addr)
        .env("SHARDCAST_STORE", &store)
        .env("SHARDCAST_BIN", env!("CARGO_BIN_EXE_shardcast"))
        .env_remove("SHARDCAST_TOKEN")
        .env_remove("SHARDCAST_SIM_CSV")
        .env_remove("SHARDCAST_SIM_SERIES")
        .env("MPLBACKEND", "Agg")
        .env("JUPYTER_RUNTIME_DIR", jupyter.join("runtime"))
        .env("IPYTHONDIR", jupyter.join("ipython"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the notebooks failed ({}):\n{stdout}\n{stderr}\n--- shardcast serve log (tail) ---\n{}",
        out.status,
        tail(&server.log(), 40)
    );
    eprintln!(
        "{}notebooks ran in {:.1}s",
        stdout,
        started.elapsed().as_secs_f64()
    );
    let notebooks = std::fs::read_dir(repo().join("notebooks"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".ipynb") && n.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    let done = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        notebooks >= 3 && done == notebooks,
        "{notebooks} notebooks:\n{stdout}"
    );
}

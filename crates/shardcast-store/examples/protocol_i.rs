//! Protocol I (`shared/bench/PROTOCOL.md`): generate a metrics CSV, ingest
//! it into a store and run the resampling query, side by side with DuckDB
//! (`benches/duckdb_ingest.py`) in the same run; prints a table.
//!
//! ```text
//! benches/setup.sh    # once: DuckDB in benches/.venv
//! cargo run --profile perf -p shardcast-store --example protocol_i -- --million-rows 10
//! ```
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use shardcast_core::Timestamp;
use shardcast_core::rng::SplitMix64;
use shardcast_store::Store;
use shardcast_store::ingest::{
    KeySource, MetricMapping, ReadSettings, TimestampFormat, parse_metric_files,
};

/// Settings of a protocol I run.
#[derive(Debug, Parser)]
struct BenchIngestArgs {
    /// Millions of rows to generate.
    #[arg(long, default_value_t = 10.0)]
    million_rows: f64,
    /// Working directory (CSV, stores, Parquet); emptied first.
    #[arg(long, default_value = "out/bench-ingest")]
    dir: PathBuf,
    /// Python interpreter with the `duckdb` package
    /// (`benches/setup.sh` makes `benches/.venv`).
    #[arg(long, env = "SHARDCAST_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Skip the DuckDB side.
    #[arg(long)]
    no_reference: bool,
}

const APPS: [&str; 4] = ["shop", "search", "chat", "video"];
const TYPES: [&str; 3] = ["api-cpu", "session-mem", "gpu-infer"];
const METRICS: [&str; 2] = ["cpu", "requests"];
/// Runs of the resampling query; the median is reported (same on the DuckDB side).
const QUERY_RUNS: usize = 5;

/// Start of the generated data: 2026-01-05T00:00:00Z.
fn t0() -> i64 {
    Timestamp::from_date(2026, 1, 5)
        .expect("valid date")
        .millis()
}

/// Writes `rows` rows `(timestamp, app, shard_type, metric, value)`, one
/// point per second per series, series interleaved in time order.
fn generate(path: &Path, rows: u64) -> Result<u64> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    writeln!(w, "timestamp,app,shard_type,metric,value")?;
    let mut rng = SplitMix64::new(0);
    let mut n = 0;
    let mut sec = 0i64;
    'outer: loop {
        let ts = Timestamp(t0() + sec * 1000);
        let stamp = ts.to_string();
        let stamp = stamp.trim_end_matches('Z').replace('T', " ");
        let daily = (2.0 * std::f64::consts::PI * (ts.second_of_day() as f64) / 86_400.0).sin();
        for (i, app) in APPS.iter().enumerate() {
            for (j, ty) in TYPES.iter().enumerate() {
                for (k, m) in METRICS.iter().enumerate() {
                    let noise = rng.unit();
                    let level = 100.0 * (1 + i + j + k) as f64;
                    let v = level * (1.0 + 0.3 * daily) + 10.0 * noise;
                    writeln!(w, "{stamp},{app},{ty},{m},{v:.3}")?;
                    n += 1;
                    if n >= rows {
                        break 'outer;
                    }
                }
            }
        }
        sec += 1;
    }
    w.flush()?;
    Ok(n)
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            };
        }
    }
    total
}

/// The resampling query of protocol I: 5-minute means per series over the
/// first two days of data.
fn query_bounds() -> (String, String) {
    (
        Timestamp(t0()).to_string(),
        Timestamp(t0() + 2 * Timestamp::DAY_MS).to_string(),
    )
}

#[derive(Debug, serde::Deserialize)]
struct Reference {
    copy_s: f64,
    query_s: f64,
    bytes: u64,
    groups: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = BenchIngestArgs::parse();
    let rows = (args.million_rows * 1e6) as u64;
    if rows == 0 {
        bail!("--million-rows must be positive");
    }
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("cannot clear {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let csv = args.dir.join("metrics.csv");
    eprintln!("generating {rows} rows into {}", csv.display());
    generate(&csv, rows)?;
    let csv_bytes = std::fs::metadata(&csv)?.len();

    let store_dir = args.dir.join("store");
    let store = Store::open(&store_dir.to_string_lossy())?;
    let mapping = MetricMapping {
        timestamp_col: "timestamp".into(),
        timestamp_format: TimestampFormat::Auto,
        value_cols: vec!["value".into()],
        app: KeySource::Column("app".into()),
        shard_type: KeySource::Column("shard_type".into()),
        metric: KeySource::Column("metric".into()),
        series: KeySource::Constant("bench".into()),
    };
    eprintln!("ingesting with shardcast");
    let started = Instant::now();
    let paths = vec![csv.clone()];
    let (batch, _) = tokio::task::spawn_blocking(move || {
        parse_metric_files(&paths, &mapping, &ReadSettings::default())
    })
    .await??;
    let parsed = started.elapsed().as_secs_f64();
    let summary = store.write_points(batch).await?;
    let ingest_s = started.elapsed().as_secs_f64();
    if summary.rows != rows {
        bail!("stored {} rows, generated {rows}", summary.rows);
    }
    let (from, until) = query_bounds();
    let sql = format!(
        "SELECT app, shard_type, metric, series, date_bin(INTERVAL '5 minutes', ts) AS bin, avg(value) AS mean \
         FROM metrics WHERE ts >= '{from}' AND ts < '{until}' GROUP BY 1, 2, 3, 4, 5"
    );
    eprintln!("querying with shardcast");
    // The median of several runs: one query takes a fraction of a second
    // and this shared machine is noisy.
    let mut times = Vec::with_capacity(QUERY_RUNS);
    let mut result = Vec::new();
    for _ in 0..QUERY_RUNS {
        let started = Instant::now();
        result = store.sql(&sql).await?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let query_s = times[QUERY_RUNS / 2];
    let groups: usize = result.iter().map(|b| b.num_rows()).sum();
    let bytes = dir_bytes(&store_dir);

    let reference = if args.no_reference {
        None
    } else {
        Some(run_duckdb(&args, &csv, &from, &until)?)
    };

    println!(
        "protocol I (query: median of {QUERY_RUNS} runs): {rows} rows, CSV {:.1} MB, 5-min mean per series over {from} .. {until}",
        csv_bytes as f64 / 1e6
    );
    println!("| figure              | shardcast    | duckdb       | ratio (shardcast/duckdb) |");
    println!("|---------------------|--------------|--------------|--------------------------|");
    let r = reference.as_ref();
    let fmt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.3}{unit}"));
    let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}", a / b));
    let ours_rate = rows as f64 / ingest_s;
    let ref_rate = r.map(|r| rows as f64 / r.copy_s);
    println!(
        "| ingest rows/s       | {:>12} | {:>12} | {:>24} |",
        format!("{:.0}", ours_rate),
        ref_rate.map_or("-".into(), |v| format!("{v:.0}")),
        ratio(ours_rate, ref_rate)
    );
    println!(
        "| ingest seconds      | {:>12} | {:>12} | {:>24} |",
        format!("{ingest_s:.3}"),
        fmt(r.map(|r| r.copy_s), ""),
        ratio(ingest_s, r.map(|r| r.copy_s))
    );
    println!(
        "| query seconds       | {:>12} | {:>12} | {:>24} |",
        format!("{query_s:.3}"),
        fmt(r.map(|r| r.query_s), ""),
        ratio(query_s, r.map(|r| r.query_s))
    );
    println!(
        "| bytes on disk       | {:>12} | {:>12} | {:>24} |",
        bytes,
        r.map_or("-".into(), |r| r.bytes.to_string()),
        ratio(bytes as f64, r.map(|r| r.bytes as f64))
    );
    println!(
        "| result groups       | {:>12} | {:>12} | {:>24} |",
        groups,
        r.map_or("-".into(), |r| r.groups.to_string()),
        ""
    );
    println!(
        "(shardcast ingest: {parsed:.3}s parsing, {:.3}s sorting, partitioning and writing Parquet)",
        ingest_s - parsed
    );
    Ok(())
}

fn run_duckdb(args: &BenchIngestArgs, csv: &Path, from: &str, until: &str) -> Result<Reference> {
    let python = args.python.clone().unwrap_or_else(|| {
        let venv = Path::new("benches/.venv/bin/python");
        if venv.exists() {
            venv.to_path_buf()
        } else {
            "python3".into()
        }
    });
    let parquet = args.dir.join("duckdb.parquet");
    eprintln!("ingesting and querying with DuckDB ({})", python.display());
    let out = std::process::Command::new(&python)
        .arg("benches/duckdb_ingest.py")
        .arg(csv)
        .arg(&parquet)
        .arg(from)
        .arg(until)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (run benches/setup.sh, or pass --no-reference)",
                python.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "the DuckDB reference failed (run benches/setup.sh first): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("the DuckDB reference printed no JSON result")
}

//! `shardcast demo`: the main job on the bundled data. For now it ingests
//! the bundled traces and events into a fresh store, lists the series,
//! runs a summary query and resamples every series to the protocol grid.

use anyhow::{Context, Result, bail};
use shardcast_core::GridStep;
use shardcast_store::ingest::{
    EventMapping, KeySource, MetricMapping, ReadSettings, TimestampFormat, expand_inputs,
    parse_event_files, parse_metric_files,
};
use shardcast_store::query::SeriesFilter;
use shardcast_store::resample::{Agg, GapFill, resample};

use crate::cli::{DemoArgs, OutputFormat};

/// The median spacing of a series' timestamps, rounded to whole minutes.
fn typical_step(ts: &[i64]) -> GridStep {
    let mut gaps: Vec<i64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0)
        .collect();
    gaps.sort_unstable();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or(300_000);
    GridStep::from_millis(((median + 30_000) / 60_000).max(1) * 60_000)
        .unwrap_or(GridStep::FIVE_MINUTES)
}

/// The bundled traces: (glob under the data dir, app, shard type, value columns).
const SOURCES: &[(&str, &str, &str, &[&str])] = &[
    ("nab/ec2_cpu_*.csv", "aws", "ec2-cpu", &["value"]),
    (
        "nab/elb_request_count_*.csv",
        "aws",
        "elb-requests",
        &["value"],
    ),
    ("nab/rds_cpu_*.csv", "aws", "rds-cpu", &["value"]),
    (
        "azure/azure.csv",
        "azure",
        "vm-cpu",
        &["min cpu", "avg cpu", "max cpu"],
    ),
    ("nyc_taxi/nyc_taxi.csv", "nyc-taxi", "rides", &["value"]),
];

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    if !args.data.is_dir() {
        bail!(
            "bundled data not found at {} (run from the repository root or pass --data)",
            args.data.display()
        );
    }
    let store_dir = args.out.join("store");
    if store_dir.exists() {
        std::fs::remove_dir_all(&store_dir)
            .with_context(|| format!("cannot clear {}", store_dir.display()))?;
    }
    let store = super::open(&store_dir.to_string_lossy())?;
    println!(
        "[1/4] ingesting the bundled traces from {} into {}",
        args.data.display(),
        store_dir.display()
    );
    for (pattern, app, shard_type, cols) in SOURCES {
        let paths = expand_inputs(&[args.data.join(pattern).to_string_lossy().into_owned()])?;
        let mapping = MetricMapping::new(app, shard_type, cols);
        let (batch, _) = parse_metric_files(&paths, &mapping, &ReadSettings::default())?;
        let s = store.write_points(batch).await?;
        println!(
            "      {pattern:<28} {:>7} rows -> {app}/{shard_type}",
            s.rows
        );
    }
    let events = args.data.join("events.csv");
    let mapping = EventMapping {
        start_col: "start".into(),
        end_col: Some("end".into()),
        timestamp_format: TimestampFormat::Auto,
        kind: KeySource::Column("kind".into()),
        scope: KeySource::Column("scope".into()),
        name_col: Some("name".into()),
    };
    let (ev, _) = parse_event_files(&[events], &mapping, &ReadSettings::default())?;
    let s = store.write_events(ev).await?;
    println!("      events.csv                   {:>7} events", s.rows);

    println!("\n[2/4] stored series");
    super::print_series(&store, None).await?;

    println!("\n[3/4] summary query (DataFusion SQL over the Parquet store)");
    let sql = "SELECT app, shard_type, count(DISTINCT series) AS series, count(*) AS points, \
               round(avg(value), 3) AS mean, round(max(value), 3) AS max, \
               min(ts) AS first, max(ts) AS last \
               FROM metrics GROUP BY app, shard_type ORDER BY app, shard_type";
    println!("      {sql}");
    super::print_batches(&store.sql(sql).await?, OutputFormat::Table)?;

    println!(
        "\n[4/4] every series on a regular grid of its own spacing (mean per bin, gaps linearly interpolated)"
    );
    println!(
        "{:<40} {:>6} {:>8} {:>8} {:>6}",
        "series", "grid", "points", "bins", "gaps"
    );
    for s in store.load_series(&SeriesFilter::default()).await? {
        let step = typical_step(&s.ts);
        let grid = resample(&s.ts, &s.value, step, Agg::Mean, GapFill::Linear)?;
        println!(
            "{:<40} {:>6} {:>8} {:>8} {:>6}",
            s.key.series,
            step.to_string(),
            s.ts.len(),
            grid.values.len(),
            grid.filled
        );
    }
    println!("\noutputs: store in {}", store_dir.display());
    Ok(())
}

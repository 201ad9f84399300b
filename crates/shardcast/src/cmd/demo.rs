//! `shardcast demo`: the main job on the bundled data. For now it ingests
//! the bundled traces and events into a fresh store, lists the series,
//! runs a summary query, resamples every series to the protocol grid and
//! forecasts the next hour of the 5-minute series with the bundled model.

use anyhow::{Context, Result, bail};
use shardcast_core::GridStep;
use shardcast_store::ingest::{
    EventMapping, KeySource, MetricMapping, ReadSettings, TimestampFormat, expand_inputs,
    parse_event_files, parse_metric_files,
};
use shardcast_store::query::SeriesFilter;
use shardcast_store::resample::{Agg, GapFill, resample};

use shardcast_model::forecaster::Model;

use crate::cli::{AggArg, DemoArgs, GridArgs, OutputFormat, StoreArgs};

/// The median spacing of a series' timestamps, rounded to whole minutes.
pub(crate) fn typical_step(ts: &[i64]) -> GridStep {
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
        "[1/5] ingesting the bundled traces from {} into {}",
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

    println!("\n[2/5] stored series");
    super::print_series(&store, None).await?;

    println!("\n[3/5] summary query (DataFusion SQL over the Parquet store)");
    let sql = "SELECT app, shard_type, count(DISTINCT series) AS series, count(*) AS points, \
               round(avg(value), 3) AS mean, round(max(value), 3) AS max, \
               min(ts) AS first, max(ts) AS last \
               FROM metrics GROUP BY app, shard_type ORDER BY app, shard_type";
    println!("      {sql}");
    super::print_batches(&store.sql(sql).await?, OutputFormat::Table)?;

    println!(
        "\n[4/5] every series on a regular grid of its own spacing (mean per bin, gaps linearly interpolated)"
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
    forecasts(&args, &store_dir).await?;
    println!("\noutputs: store in {}", store_dir.display());
    Ok(())
}

/// Step 5: the bundled model's forecast of the next hour of every 5-minute
/// series.
async fn forecasts(args: &DemoArgs, store_dir: &std::path::Path) -> Result<()> {
    let Some(dir) = super::model::newest_model(&args.models, "default") else {
        println!(
            "\n[5/5] no model under {}/default; train one with `shardcast train` (see models/README.md)",
            args.models.display()
        );
        return Ok(());
    };
    let model = Model::load(&dir)?;
    let grid = GridArgs {
        store: StoreArgs {
            store: store_dir.to_string_lossy().into_owned(),
        },
        app: Some("aws,azure".into()),
        shard_type: None,
        metric: None,
        series: None,
        grid: GridStep::from_millis(model.step_ms())?,
        base_grid: None,
        agg: AggArg::Mean,
    };
    let (grids, step) = super::model::load_grids(&grid).await?;
    let fc = super::model::forecast_latest(&model, &grids)?;
    let cfg = model.config();
    let (h, q) = (cfg.horizon, cfg.quantiles.len());
    let level = |tau: f64| cfg.quantiles.iter().position(|&l| (l - tau).abs() < 1e-9);
    let (lo, mid, hi) = (level(0.1), level(0.5), level(0.9));
    println!(
        "\n[5/5] forecasts from the bundled model {} ({} steps of {step}; median and 80% interval)",
        dir.display(),
        h
    );
    println!(
        "{:<34} {:>12} {:>12} {:>27}",
        "series",
        "last value",
        "next step",
        format!("in {} (p10 .. p90)", step_span(step, h))
    );
    for (g, f) in grids.iter().zip(&fc) {
        let at = |k: usize, i: Option<usize>| i.map_or(f32::NAN, |i| f[k * q + i]);
        println!(
            "{:<34} {:>12.3} {:>12.3} {:>12.3} ({:.3} .. {:.3})",
            g.label,
            g.values.last().copied().unwrap_or(f32::NAN),
            at(0, mid),
            at(h - 1, mid),
            at(h - 1, lo),
            at(h - 1, hi)
        );
    }
    Ok(())
}

fn step_span(step: GridStep, steps: usize) -> String {
    let minutes = step.millis() / 60_000 * steps as i64;
    if minutes % 60 == 0 {
        format!("{}h", minutes / 60)
    } else {
        format!("{minutes}m")
    }
}

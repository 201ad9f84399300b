//! `shardcast demo`: the whole pipeline on the bundled data, on loopback
//! sockets. It ingests the bundled traces into a fresh store, holding back
//! the last stretch of the AWS traces; uses the bundled model (or trains a
//! small one when there is none); starts the inference server and KEDA's
//! scaler on free local ports; runs the planner daemon for a few rounds
//! while the held-back data is replayed through the server's ingest API one
//! 5-minute bin per round; draws a forecast fan chart; runs protocol P's
//! simulation on one trace; stops everything and says where its outputs
//! are.

mod replay;

use anyhow::{Context, Result, bail};
use shardcast_store::ingest::{
    EventMapping, KeySource, MetricMapping, PointBatch, ReadSettings, TimestampFormat,
    expand_inputs, parse_event_files, parse_metric_files,
};
use std::path::{Path, PathBuf};

use clap::Parser;
use shardcast_model::versions;

use crate::cli::{Cli, Command, DemoArgs, OutputFormat};

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
    for stale in ["store", "models"] {
        let p = args.out.join(stale);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("cannot clear {}", p.display()))?;
        }
    }
    let store = super::open(&store_dir.to_string_lossy())?;
    println!(
        "[1/7] ingesting the bundled traces from {} into {} (AWS points from {} on are held back for the replay)",
        args.data.display(),
        store_dir.display(),
        replay::start()
    );
    let mut held_back = PointBatch::default();
    for (pattern, app, shard_type, cols) in SOURCES {
        let paths = expand_inputs(&[args.data.join(pattern).to_string_lossy().into_owned()])?;
        let mapping = MetricMapping::new(app, shard_type, cols);
        let (batch, _) = parse_metric_files(&paths, &mapping, &ReadSettings::default())?;
        let (now, later) = replay::split(batch);
        let s = store.write_points(now).await?;
        println!(
            "      {pattern:<28} {:>7} rows -> {app}/{shard_type}{}",
            s.rows,
            if later.is_empty() {
                String::new()
            } else {
                format!(" ({} held back)", later.len())
            }
        );
        held_back.append(later);
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

    println!("\n[2/7] stored series");
    super::print_series(&store, None).await?;

    println!("\n[3/7] summary query (DataFusion SQL over the Parquet store)");
    let sql = "SELECT app, shard_type, count(DISTINCT series) AS series, count(*) AS points, \
               round(avg(value), 3) AS mean, round(max(value), 3) AS max, \
               min(ts) AS first, max(ts) AS last \
               FROM metrics GROUP BY app, shard_type ORDER BY app, shard_type";
    println!("      {sql}");
    super::print_batches(&store.sql(sql).await?, OutputFormat::Table)?;

    let models = model(&args, &store_dir).await?;
    let replayed = replay::run(&args, &store_dir, &models, held_back).await?;
    simulate(&args, &store_dir).await?;

    println!("\noutputs in {}:", args.out.display());
    for (what, path) in [
        ("Parquet store", store_dir.clone()),
        ("planner decisions (JSON lines)", replayed.decisions),
        ("forecast fan chart", replayed.chart),
        ("protocol P per-step CSV", args.out.join("simulate.csv")),
        ("shards over time per policy", args.out.join("simulate.png")),
    ] {
        println!("  {what:<32} {}", path.display());
    }
    Ok(())
}

/// Step 4: the newest version of the bundled model, or a small one trained
/// now on the store when there is none.
async fn model(args: &DemoArgs, store_dir: &Path) -> Result<PathBuf> {
    if let Some(dir) = versions::newest(&args.models, "default").map(|(_, dir)| dir) {
        println!("\n[4/7] model: the bundled {}", dir.display());
        return Ok(args.models.clone());
    }
    let models = args.out.join("models");
    println!(
        "\n[4/7] model: none under {}/default, training a small one into {}",
        args.models.display(),
        models.display()
    );
    let cli = Cli::try_parse_from([
        "shardcast",
        "train",
        "--store",
        &store_dir.to_string_lossy(),
        "--app",
        "aws,azure",
        "--grid",
        "5m",
        "--models-dir",
        &models.to_string_lossy(),
        "--max-steps",
        "300",
    ])?;
    let Command::Train(train) = cli.command else {
        unreachable!("parsed as train");
    };
    super::model::train(*train).await?;
    Ok(models)
}

/// Step 7: protocol P on the replayed ELB trace: the reactive rule, the
/// planner on the model's forecasts and the oracle, over its last day.
async fn simulate(args: &DemoArgs, store_dir: &Path) -> Result<()> {
    println!(
        "\n[7/7] protocol P on {}: reactive HPA rule vs shardcast planner vs oracle over the last day",
        replay::SIMULATED
    );
    let cli = Cli::try_parse_from([
        "shardcast",
        "simulate",
        "--store",
        &store_dir.to_string_lossy(),
        "--series",
        replay::SIMULATED,
        "--out",
        &args.out.join("simulate.csv").to_string_lossy(),
        "--from",
        &replay::simulate_from().to_string(),
        "--max-steps",
        "200",
        "--seed",
        "1",
    ])?;
    let Command::Simulate(sim) = cli.command else {
        unreachable!("parsed as simulate");
    };
    super::simulate::run(*sim).await
}

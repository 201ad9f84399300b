//! Subcommand implementations: settings in, library calls, tables out.

mod demo;
mod ingest;
mod model;
pub(crate) mod onnx;
mod plan;
mod serve;
mod simulate;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use shardcast_core::Timestamp;
use shardcast_prometheus::pull::{self, Progress};
use shardcast_store::Store;

use crate::cli::{Cli, Command, OutputFormat};

pub(crate) async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Ingest(args) => ingest::run(*args).await,
        Command::Pull(args) => {
            let store = open(&args.store.store)?;
            let report = pull::run(&store, &args.pull, shutdown_signal(), |p| match p {
                Progress::Retrying { .. } => eprintln!("{p}"),
                _ => println!("{p}"),
            })
            .await?;
            println!("{report}");
            Ok(())
        }
        Command::Query(args) => {
            let store = open(&args.store.store)?;
            let batches = store.sql(&args.sql).await.context("query failed")?;
            print_batches(&batches, args.format)
        }
        Command::Series(args) => {
            let store = open(&args.store.store)?;
            print_series(&store, args.app.as_deref()).await
        }
        Command::Compact(args) => {
            let store = open(&args.store.store)?;
            let s = store.compact(args.grace).await?;
            println!(
                "compacted {} partitions: {} live files before, {} after; deleted {} unreferenced objects (store version {})",
                s.partitions, s.files_before, s.files_after, s.deleted, s.version
            );
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Train(args) => model::train(*args).await,
        Command::Retrain(args) => model::retrain(*args).await,
        Command::Backtest(args) => model::backtest(*args).await,
        Command::Serve(args) => serve::run(*args).await,
        Command::Plan(args) => plan::run(*args).await,
        Command::ExportOnnx(args) => onnx::export(args).await,
        Command::Simulate(args) => simulate::run(*args).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

pub(crate) fn open(location: &str) -> Result<Store> {
    Store::open(location).with_context(|| format!("cannot open the store at {location}"))
}

pub(crate) fn print_batches(batches: &[RecordBatch], format: OutputFormat) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Table => {
            println!("{}", arrow::util::pretty::pretty_format_batches(batches)?);
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for b in batches {
                w.write(b)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?;
        }
    }
    Ok(())
}

pub(crate) async fn print_series(store: &Store, app: Option<&str>) -> Result<()> {
    let series = store.list_series().await?;
    println!(
        "{:<12} {:<14} {:<10} {:<40} {:<22} {:<22} {:>9}",
        "app", "shard_type", "metric", "series", "first", "last", "points"
    );
    let mut shown = 0;
    for s in series.iter().filter(|s| app.is_none_or(|a| s.key.app == a)) {
        println!(
            "{:<12} {:<14} {:<10} {:<40} {:<22} {:<22} {:>9}",
            s.key.app,
            s.key.shard_type,
            s.key.metric,
            s.key.series,
            Timestamp(s.first).to_string(),
            Timestamp(s.last).to_string(),
            s.points
        );
        shown += 1;
    }
    println!("{shown} series");
    Ok(())
}

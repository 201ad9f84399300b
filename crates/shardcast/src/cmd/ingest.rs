//! `shardcast ingest`.

use anyhow::{Context, Result};
use shardcast_store::ingest::{expand_inputs, parse_event_files, parse_metric_files};

use crate::cli::{IngestArgs, Table};

pub(crate) async fn run(args: IngestArgs) -> Result<()> {
    let store = super::open(&args.store.store)?;
    let paths = expand_inputs(&args.inputs)?;
    let settings = args.read;
    let started = std::time::Instant::now();
    let (summary, report) = match args.table {
        Table::Metrics => {
            let mapping = args.mapping.metrics();
            let (batch, report) = tokio::task::spawn_blocking(move || {
                parse_metric_files(&paths, &mapping, &settings)
            })
            .await
            .context("parser thread failed")??;
            (store.write_points(batch).await?, report)
        }
        Table::Events => {
            let mapping = args.mapping.events();
            let (events, report) = parse_event_files(&paths, &mapping, &settings)?;
            (store.write_events(events).await?, report)
        }
    };
    print!("{report}");
    println!(
        "ingested {} rows from {} files in {:.2}s ({} stored rows replaced, {} files, {} bytes written; store version {})",
        summary.rows,
        report.files.len(),
        started.elapsed().as_secs_f64(),
        summary.replaced,
        summary.files_written,
        summary.bytes_written,
        summary.version
    );
    Ok(())
}

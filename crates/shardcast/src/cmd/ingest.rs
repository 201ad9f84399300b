//! `shardcast ingest`.

use anyhow::{Context, Result};
use shardcast_store::ingest::{
    EventMapping, KeySource, MetricMapping, ReadSettings, expand_inputs, parse_event_files,
    parse_metric_files,
};

use crate::cli::{IngestArgs, SeriesFrom, Table};

fn source(constant: &str, column: &Option<String>) -> KeySource {
    match column {
        Some(c) => KeySource::Column(c.clone()),
        None => KeySource::Constant(constant.to_string()),
    }
}

/// Converts the raw flags into the store's mapping.
pub(crate) fn metric_mapping(args: &IngestArgs) -> MetricMapping {
    let series = match (&args.series, &args.series_col, args.series_from) {
        (Some(s), _, _) => KeySource::Constant(s.clone()),
        (_, Some(c), _) => KeySource::Column(c.clone()),
        (_, _, Some(SeriesFrom::FileStem)) => KeySource::FileStem,
        (_, _, Some(SeriesFrom::ValueCol)) => KeySource::ValueColumn,
        _ if args.value_cols.len() > 1 => KeySource::ValueColumn,
        _ => KeySource::FileStem,
    };
    MetricMapping {
        timestamp_col: args.timestamp_col.clone(),
        timestamp_format: args.timestamp_format,
        value_cols: args.value_cols.clone(),
        app: source(&args.app, &args.app_col),
        shard_type: source(&args.shard_type, &args.shard_type_col),
        metric: source(&args.metric, &args.metric_col),
        series,
    }
}

pub(crate) async fn run(args: IngestArgs) -> Result<()> {
    let store = super::open(&args.store.store)?;
    let paths = expand_inputs(&args.inputs)?;
    let settings = ReadSettings {
        format: args.format,
        skip_invalid: args.skip_invalid,
        max_line_bytes: args.max_line_bytes,
    };
    let started = std::time::Instant::now();
    let (summary, report) = match args.table {
        Table::Metrics => {
            let mapping = metric_mapping(&args);
            let (batch, report) = tokio::task::spawn_blocking(move || {
                parse_metric_files(&paths, &mapping, &settings)
            })
            .await
            .context("parser thread failed")??;
            (store.write_points(batch).await?, report)
        }
        Table::Events => {
            let mapping = EventMapping {
                start_col: args.start_col.clone(),
                end_col: args.end_col.clone(),
                timestamp_format: args.timestamp_format,
                kind: match (&args.kind, &args.kind_col) {
                    (_, Some(c)) => KeySource::Column(c.clone()),
                    (Some(k), None) => KeySource::Constant(k.clone()),
                    (None, None) => KeySource::Column("kind".into()),
                },
                scope: source(&args.scope, &args.scope_col),
                name_col: args.name_col.clone(),
            };
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

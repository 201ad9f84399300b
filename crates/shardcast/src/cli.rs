//! Command-line settings: one clap struct per subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// shardcast: forecasting pipeline for predictive shard autoscaling.
#[derive(Debug, Parser)]
#[command(name = "shardcast", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Ingest CSV or NDJSON files (paths or globs) into the store.
    Ingest(Box<IngestArgs>),
    /// Run a DataFusion SQL query over the store (tables `metrics`, `events`).
    Query(QueryArgs),
    /// List the stored series with their time range and point count.
    Series(SeriesArgs),
    /// Merge small files of each partition and delete unreferenced objects.
    Compact(StoreArgs),
    /// Benchmarks that print a table side by side with their reference.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the main job end to end on the bundled data.
    Demo(DemoArgs),
}

/// Where the store lives.
#[derive(Debug, Args, Clone)]
pub(crate) struct StoreArgs {
    /// Store location: a directory (created if missing) or a file:// URL.
    #[arg(long, env = "SHARDCAST_STORE", default_value = "shardcast-store")]
    pub(crate) store: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Table {
    Metrics,
    Events,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Csv,
    Ndjson,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum TsFormatArg {
    Auto,
    Iso,
    UnixS,
    UnixMs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SeriesFrom {
    /// The file name without extension.
    FileStem,
    /// The value column's name (spaces become underscores).
    ValueCol,
}

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Files or glob patterns (quote globs so the shell leaves them alone).
    #[arg(required = true)]
    pub(crate) inputs: Vec<String>,
    /// Which table the files feed.
    #[arg(long, value_enum, default_value = "metrics", env = "SHARDCAST_TABLE")]
    pub(crate) table: Table,
    /// Input format; guessed from the extension (.json/.jsonl/.ndjson) if absent.
    #[arg(long, value_enum, env = "SHARDCAST_FORMAT")]
    pub(crate) format: Option<FormatArg>,
    /// Column with the timestamp (metrics).
    #[arg(long, default_value = "timestamp", env = "SHARDCAST_TIMESTAMP_COL")]
    pub(crate) timestamp_col: String,
    /// How timestamps are written.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "SHARDCAST_TIMESTAMP_FORMAT"
    )]
    pub(crate) timestamp_format: TsFormatArg,
    /// Value column(s); each becomes a series. Repeat or comma-separate.
    #[arg(long = "value-col", default_value = "value", value_delimiter = ',')]
    pub(crate) value_cols: Vec<String>,
    /// App of every row.
    #[arg(
        long,
        default_value = "default",
        conflicts_with = "app_col",
        env = "SHARDCAST_APP"
    )]
    pub(crate) app: String,
    /// Column holding the app.
    #[arg(long)]
    pub(crate) app_col: Option<String>,
    /// Shard type of every row.
    #[arg(
        long,
        default_value = "default",
        conflicts_with = "shard_type_col",
        env = "SHARDCAST_SHARD_TYPE"
    )]
    pub(crate) shard_type: String,
    /// Column holding the shard type.
    #[arg(long)]
    pub(crate) shard_type_col: Option<String>,
    /// Metric name of every row.
    #[arg(long, default_value = "value", conflicts_with = "metric_col")]
    pub(crate) metric: String,
    /// Column holding the metric name.
    #[arg(long)]
    pub(crate) metric_col: Option<String>,
    /// Series id of every row.
    #[arg(long, conflicts_with_all = ["series_col", "series_from"])]
    pub(crate) series: Option<String>,
    /// Column holding the series id.
    #[arg(long, conflicts_with = "series_from")]
    pub(crate) series_col: Option<String>,
    /// Derive the series id (default: file stem with one value column,
    /// value column names with several).
    #[arg(long, value_enum)]
    pub(crate) series_from: Option<SeriesFrom>,
    /// Skip malformed rows and report them instead of failing the batch.
    #[arg(long, env = "SHARDCAST_SKIP_INVALID")]
    pub(crate) skip_invalid: bool,
    /// Longest accepted line, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) max_line_bytes: usize,
    /// Events: column with the start time.
    #[arg(long, default_value = "start")]
    pub(crate) start_col: String,
    /// Events: column with the end time (instants when absent).
    #[arg(long)]
    pub(crate) end_col: Option<String>,
    /// Events: kind of every row (holiday, campaign, batch-job, …).
    #[arg(long, conflicts_with = "kind_col")]
    pub(crate) kind: Option<String>,
    /// Events: column holding the kind.
    #[arg(long)]
    pub(crate) kind_col: Option<String>,
    /// Events: scope of every row (an app, app/shard_type, or *).
    #[arg(long, default_value = "*", conflicts_with = "scope_col")]
    pub(crate) scope: String,
    /// Events: column holding the scope.
    #[arg(long)]
    pub(crate) scope_col: Option<String>,
    /// Events: column holding a free-text name.
    #[arg(long)]
    pub(crate) name_col: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The SQL statement.
    pub(crate) sql: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: OutputFormat,
}

#[derive(Debug, Args)]
pub(crate) struct SeriesArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Only series of this app.
    #[arg(long)]
    pub(crate) app: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Protocol I: generate a CSV, ingest it and run the resampling query,
    /// side by side with DuckDB.
    Ingest(BenchIngestArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchIngestArgs {
    /// Millions of rows to generate.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) million_rows: f64,
    /// Working directory (CSV, stores, Parquet); emptied first.
    #[arg(long, default_value = "out/bench-ingest")]
    pub(crate) dir: PathBuf,
    /// Python interpreter with the `duckdb` package
    /// (`benches/setup.sh` makes `benches/.venv`).
    #[arg(long, env = "SHARDCAST_BENCH_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Skip the DuckDB side.
    #[arg(long)]
    pub(crate) no_reference: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Bundled data directory.
    #[arg(long, default_value = "data/sample")]
    pub(crate) data: PathBuf,
    /// Where the demo writes its store and outputs (emptied first).
    #[arg(long, default_value = "out/demo")]
    pub(crate) out: PathBuf,
}

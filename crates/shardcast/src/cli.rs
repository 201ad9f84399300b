//! Command-line settings: one clap struct per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shardcast_core::{GridStep, Timestamp, parse_duration};
use shardcast_daemon::{Clock, Format};
use shardcast_model::forecaster::{BaselineChoice, CellKind, ComputeDevice, Overrides};
use shardcast_server::registry::ModelFormat;
use shardcast_store::grids::GridSelection;
use shardcast_store::ingest::{InputFormat, TimestampFormat};
use shardcast_store::resample::Agg;

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
    /// Merge small files of each partition and delete unreferenced objects
    /// older than the grace period.
    Compact(CompactArgs),
    /// Run the main job end to end on the bundled data.
    Demo(DemoArgs),
    /// Fit a forecasting model on series from the store and save it.
    Train(Box<TrainArgs>),
    /// Protocol F rolling-origin backtest: fit before the held-out points,
    /// forecast them, score against seasonal naive, write the forecast CSV.
    Backtest(Box<BacktestArgs>),
    /// Serve forecasts of the store's series over gRPC (forecast, ingest
    /// and model services, health, reflection, Prometheus metrics).
    Serve(Box<ServeArgs>),
    /// The planner daemon: every interval, ask the inference server for each
    /// shard type's demand forecast, plan, and emit decisions as JSON lines
    /// with reasons; serves KEDA's external scaler API.
    #[command(long_about = PLAN_ABOUT)]
    Plan(Box<PlanArgs>),
    /// Write a trained model as a standard ONNX file with its input contract.
    ExportOnnx(crate::cmd::onnx::ExportOnnxArgs),
    /// Protocol P: replay a series from the store through the reactive HPA
    /// rule, the shardcast planner on the model's forecasts and the
    /// perfect-foresight oracle; write per-step CSV, summary and PNG.
    #[command(long_about = SIMULATE_ABOUT)]
    Simulate(Box<SimulateArgs>),
}

/// Where the store lives.
#[derive(Debug, Args, Clone)]
pub(crate) struct StoreArgs {
    /// Store location: a directory (created if missing) or a file:// URL.
    #[arg(long, env = "SHARDCAST_STORE", default_value = "shardcast-store")]
    pub(crate) store: String,
}

/// Where a bearer token comes from: the SHARDCAST_TOKEN environment
/// variable or a file, never the command line (the process list would show
/// it).
#[derive(Debug, Args, Clone)]
pub(crate) struct TokenArgs {
    /// File holding the bearer token: `serve` requires it of every call but
    /// health (reflection included) as `authorization: Bearer …`; `plan`
    /// sends it to the server, instead of the config's. Surrounding
    /// whitespace is ignored. The SHARDCAST_TOKEN environment variable may
    /// hold the token instead; it is not accepted on the command line,
    /// where the process list would show it.
    #[arg(long, env = "SHARDCAST_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Refused with a message: a token on the command line shows in the
    /// process list.
    #[arg(long = "token", hide = true)]
    pub(crate) token_on_command_line: Option<String>,
}

impl TokenArgs {
    /// The token from SHARDCAST_TOKEN or `--token-file`, if any; `--token`
    /// is refused.
    pub(crate) fn load(&self) -> anyhow::Result<Option<String>> {
        use shardcast_server::token::{TOKEN_ENV, load};
        anyhow::ensure!(
            self.token_on_command_line.is_none(),
            "--token is not accepted: a token on the command line shows in the process list; \
             put it in the {TOKEN_ENV} environment variable or in a file named by --token-file"
        );
        Ok(load(
            std::env::var_os(TOKEN_ENV),
            self.token_file.as_deref(),
        )?)
    }
}

/// Settings of `compact`.
#[derive(Debug, Args, Clone)]
pub(crate) struct CompactArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Keep unreferenced objects younger than this, and files that a
    /// manifest replaced less than this long ago (`0`, `30s`, `15m`, `1h`,
    /// `2d`). Writers and readers running beside the compaction are safe
    /// with any grace of 15 minutes or more; `0` is for a store nothing
    /// else is using (e.g. to clear a crash's leftovers at once).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(crate) grace: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Table {
    Metrics,
    Events,
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
    /// Input format, `csv` or `ndjson`; guessed from the extension
    /// (.json/.jsonl/.ndjson) if absent.
    #[arg(long, env = "SHARDCAST_FORMAT")]
    pub(crate) format: Option<InputFormat>,
    /// Column with the timestamp (metrics).
    #[arg(long, default_value = "timestamp", env = "SHARDCAST_TIMESTAMP_COL")]
    pub(crate) timestamp_col: String,
    /// How timestamps are written: `auto`, `iso`, `unix-s` or `unix-ms`.
    #[arg(long, default_value = "auto", env = "SHARDCAST_TIMESTAMP_FORMAT")]
    pub(crate) timestamp_format: TimestampFormat,
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

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Bundled data directory.
    #[arg(long, default_value = "data/sample")]
    pub(crate) data: PathBuf,
    /// Where the demo writes its store and outputs (emptied first).
    #[arg(long, default_value = "out/demo")]
    pub(crate) out: PathBuf,
    /// Directory of models; the newest version of `default` is used.
    #[arg(long, default_value = "models")]
    pub(crate) models: PathBuf,
}

/// Which series to read and how to put them on a grid.
#[derive(Debug, Args, Clone)]
pub(crate) struct GridArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Only series of this app (comma-separated for several).
    #[arg(long)]
    pub(crate) app: Option<String>,
    /// Only series of this shard type.
    #[arg(long)]
    pub(crate) shard_type: Option<String>,
    /// Only series of this metric.
    #[arg(long)]
    pub(crate) metric: Option<String>,
    /// Only series whose id matches this glob (e.g. `ec2_*`; comma-separated
    /// for several).
    #[arg(long)]
    pub(crate) series: Option<String>,
    /// Grid step: `5m`, `30m`, `1h`, …
    #[arg(long, default_value = "5m")]
    pub(crate) grid: GridStep,
    /// Resample to this finer grid first, then aggregate it to `--grid`
    /// (protocol F's hourly NAB grid is the hourly mean of the 5-minute grid).
    #[arg(long)]
    pub(crate) base_grid: Option<GridStep>,
    /// Aggregation per bin (mean, sum, max, min or pNN); empty bins are
    /// linearly interpolated.
    #[arg(long, default_value = "mean")]
    pub(crate) agg: Agg,
}

/// Model shape and training settings; flags override the config file.
#[derive(Debug, Args, Clone)]
pub(crate) struct ModelArgs {
    /// Training config, JSON `{"model": {...}, "train": {...}}` or TOML
    /// (`[model]` and `[train]` tables) when the name ends in `.toml`;
    /// unknown fields are refused. Unset fields take defaults derived from
    /// the grid.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Forecast horizon in grid steps (default: 12; for simulate, the steps
    /// the planner reads: lead + hold + 1).
    #[arg(long)]
    pub(crate) horizon: Option<usize>,
    /// Seasonal period in steps (default: one day of the grid).
    #[arg(long)]
    pub(crate) season: Option<usize>,
    /// Recurrent cell.
    #[arg(long)]
    pub(crate) cell: Option<CellKind>,
    /// Recurrent state width; by default 16 on under 8192 points of
    /// training data (all series together), else 64.
    #[arg(long)]
    pub(crate) hidden: Option<usize>,
    /// Context steps read by the encoder.
    #[arg(long)]
    pub(crate) context: Option<usize>,
    /// Lag inputs in steps, comma-separated (default: a day, and a week
    /// when the history is long enough).
    #[arg(long, value_delimiter = ',')]
    pub(crate) lags: Option<Vec<usize>>,
    /// Seasonal baselines fed to the network as known features: `auto`
    /// (daily and, with enough history, weekly shapes with two level
    /// estimates) or `none`. A config file can list them explicitly.
    #[arg(long)]
    pub(crate) baselines: Option<BaselineChoice>,
    /// Ensemble members (seeds); by default 3 on under 8192 points of
    /// training data (all series together), else 1.
    #[arg(long)]
    pub(crate) members: Option<usize>,
    /// Most optimiser steps per member.
    #[arg(long)]
    pub(crate) max_steps: Option<usize>,
    /// Random seed.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Device to train on: `cpu` (the default; the fused recurrent
    /// kernels) or `cuda` (the first GPU; needs a build with the `cuda`
    /// feature). The trained model runs on the CPU either way.
    #[arg(long)]
    pub(crate) device: Option<ComputeDevice>,
}

impl GridArgs {
    /// The store's selection these flags describe.
    pub(crate) fn selection(&self) -> GridSelection {
        let list = |v: &Option<String>| -> Vec<String> {
            v.iter()
                .flat_map(|a| a.split(','))
                .map(str::to_owned)
                .collect()
        };
        GridSelection {
            apps: list(&self.app),
            shard_type: self.shard_type.clone(),
            metric: self.metric.clone(),
            series: list(&self.series),
            step: self.grid,
            base_step: self.base_grid,
            agg: self.agg,
        }
    }
}

impl ModelArgs {
    /// The flags that win over the defaults and the config file.
    pub(crate) fn overrides(&self) -> Overrides {
        Overrides {
            cell: self.cell,
            hidden: self.hidden,
            context: self.context,
            lags: self.lags.clone(),
            baselines: self.baselines,
            members: self.members,
            max_steps: self.max_steps,
            seed: self.seed,
            device: self.device,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) grid: GridArgs,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Model name: it is written to `<models-dir>/<name>/<version>/`.
    #[arg(long, default_value = "default")]
    pub(crate) name: String,
    /// Directory of model directories.
    #[arg(long, default_value = "models")]
    pub(crate) models_dir: PathBuf,
    /// Version, a number from 1 (default: one more than the newest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) version: Option<u32>,
    /// Warm start from this model directory: weights whose names and shapes
    /// match are copied before training.
    #[arg(long)]
    pub(crate) from: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct BacktestArgs {
    #[command(flatten)]
    pub(crate) grid: GridArgs,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Held-out points at the end of each series, forecast in consecutive
    /// windows of the horizon.
    #[arg(long)]
    pub(crate) test_points: usize,
    /// Write the protocol F forecast CSV here.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Also save the fitted model to this (new) directory.
    #[arg(long)]
    pub(crate) save_model: Option<PathBuf>,
}

const PLAN_ABOUT: &str = "\
The planner daemon. Every interval it reads the shards' state (--state, a JSON
file kept by whoever runs the shards; without it, its own decisions are
assumed carried out), asks the inference server (ForecastShardType) for each
configured shard type's summed demand forecast, runs the scale planner and
writes one decision per shard type with its reason: JSON lines on stdout or
--out, or sentences with --format text.

When the server is unreachable, slow (past timeout_ms) or answers something
unusable, that shard type falls back to the reactive HPA rule for the round
and the reason says why; the daemon keeps running.

--keda-listen serves KEDA's external scaler gRPC API (IsActive,
StreamIsActive, GetMetricSpec, GetMetrics): a ScaledObject's trigger names the
shard type in its metadata (shardType, optionally app), and the metric value
is shards × keda_target, so KEDA asks for the planned count. --dry-run plans
and prints but publishes nothing (KEDA's metric calls answer UNAVAILABLE, so
it keeps the replicas it has; the same before the first round finishes).

The config file (TOML, or JSON when it ends in .json) holds:
  server = \"http://127.0.0.1:50051\"   interval_secs = 60   timeout_ms = 2000
  tls_ca = \"ca.pem\"  tls_domain = \"...\"  (for an https:// server)
  clock = \"wall\" (or \"data\": now = the end of the last observed bin, for replays)
  [[shard_types]]  app, shard_type, metric (optional), initial_shards, keda_target
  [shard_types.scale]  service_level, capacity_per_shard, target_utilisation,
  lead_time_secs, hold_secs, min_shards, max_shards, max_step_up, ...
An annotated example: examples/plan.toml.";

/// Settings of the planner daemon.
#[derive(Debug, Args, Clone)]
pub(crate) struct PlanArgs {
    /// Configuration file: server, interval, shard types and their policies.
    #[arg(long, env = "SHARDCAST_PLAN_CONFIG")]
    pub(crate) config: PathBuf,
    /// Inference server address, instead of the config's.
    #[arg(long, env = "SHARDCAST_SERVER")]
    pub(crate) server: Option<String>,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// Seconds between rounds, instead of the config's.
    #[arg(long, env = "SHARDCAST_PLAN_INTERVAL")]
    pub(crate) interval: Option<f64>,
    /// Stop after this many rounds (default: run until Ctrl-C or SIGTERM).
    #[arg(long, env = "SHARDCAST_PLAN_ITERATIONS")]
    pub(crate) iterations: Option<u64>,
    /// Where `now` comes from, instead of the config's: `wall` (the
    /// machine's clock) or `data` (the end of the last observed bin, for
    /// replayed data).
    #[arg(long, env = "SHARDCAST_PLAN_CLOCK")]
    pub(crate) clock: Option<Clock>,
    /// State file read every round (JSON: shard_types.<name>.ready, pending,
    /// unhealthy, observed_demand).
    #[arg(long, env = "SHARDCAST_PLAN_STATE")]
    pub(crate) state: Option<PathBuf>,
    /// Write the desired counts here after every round (atomically).
    #[arg(long, env = "SHARDCAST_PLAN_TARGETS")]
    pub(crate) targets: Option<PathBuf>,
    /// Append decisions to this file instead of printing them.
    #[arg(long, env = "SHARDCAST_PLAN_OUT")]
    pub(crate) out: Option<PathBuf>,
    /// `json` (one object per line) or `text` (one sentence per decision).
    #[arg(long, env = "SHARDCAST_PLAN_FORMAT", default_value = "json")]
    pub(crate) format: Format,
    /// Plan and print, publish nothing.
    #[arg(long, env = "SHARDCAST_PLAN_DRY_RUN")]
    pub(crate) dry_run: bool,
    /// Serve KEDA's external scaler API on this address (port 0 picks one;
    /// the bound address is printed on stderr).
    #[arg(long, env = "SHARDCAST_KEDA_LISTEN")]
    pub(crate) keda_listen: Option<std::net::SocketAddr>,
}

/// Settings of the inference server.
#[derive(Debug, Args, Clone)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Address to serve gRPC on (port 0 picks a free port; the bound address
    /// is printed).
    #[arg(long, env = "SHARDCAST_LISTEN", default_value = "127.0.0.1:50051")]
    pub(crate) listen: std::net::SocketAddr,
    /// Address to serve Prometheus `GET /metrics` on; off when unset.
    #[arg(long, env = "SHARDCAST_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Prometheus remote-write label rules (TOML: `app` and `shard_type`,
    /// optionally `metric`, `series` and `metrics`, each part `{ label =
    /// "name" }` or `{ value = "constant" }`); with them the metrics
    /// address also takes `POST /api/v1/write`.
    #[arg(
        long,
        env = "SHARDCAST_REMOTE_WRITE_RULES",
        requires = "metrics_listen"
    )]
    pub(crate) remote_write_rules: Option<PathBuf>,
    /// Directory holding `<name>/<version>/` model directories.
    #[arg(long, env = "SHARDCAST_MODELS_DIR", default_value = "models")]
    pub(crate) models_dir: PathBuf,
    /// Model to serve: its newest loadable version, following new versions.
    #[arg(long, env = "SHARDCAST_MODEL", default_value = "default")]
    pub(crate) model: String,
    /// Which artifact runs the forecasts: `candle` (the weights) or `onnx`
    /// (the version's `model.onnx` from `shardcast export-onnx`, run by
    /// tract). Versions without that file are passed over.
    #[arg(long, env = "SHARDCAST_MODEL_FORMAT", default_value = "candle")]
    pub(crate) format: ModelFormat,
    /// Aggregation that puts stored points on the model's grid (as in training).
    #[arg(long, env = "SHARDCAST_AGG", default_value = "mean")]
    pub(crate) agg: Agg,
    /// Most forecasts in one inference batch.
    #[arg(long, env = "SHARDCAST_MAX_BATCH", default_value_t = 64)]
    pub(crate) max_batch: usize,
    /// Longest a forecast waits for others to join its batch, microseconds.
    #[arg(long, env = "SHARDCAST_MAX_WAIT_US", default_value_t = 0)]
    pub(crate) max_wait_us: u64,
    /// Most forecasts queued; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHARDCAST_QUEUE", default_value_t = 1024)]
    pub(crate) queue: usize,
    /// Inference threads, each running its batches on one core (the server
    /// sets `RAYON_NUM_THREADS=1` unless it is set).
    #[arg(long, env = "SHARDCAST_WORKERS", default_value_t = 1)]
    pub(crate) workers: usize,
    /// Most series in one batch or shard type request; keep it well below
    /// --queue, since each series is one queued forecast.
    #[arg(long, env = "SHARDCAST_MAX_SERIES", default_value_t = 256)]
    pub(crate) max_series: usize,
    /// Largest request message, bytes; a bigger one is answered
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHARDCAST_MAX_MESSAGE_BYTES", default_value_t = 16 << 20)]
    pub(crate) max_message_bytes: usize,
    /// Most StreamForecasts calls open at once; more are answered
    /// RESOURCE_EXHAUSTED. Streams' forecasts together use at most half of
    /// --queue, waiting for room rather than being refused.
    #[arg(long, env = "SHARDCAST_MAX_STREAMS", default_value_t = 64)]
    pub(crate) max_streams: usize,
    /// Most series in one StreamForecasts call; more are answered
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHARDCAST_MAX_STREAM_KEYS", default_value_t = 256)]
    pub(crate) max_stream_keys: usize,
    /// Most reads of series history from the store at once (requests for
    /// the same series and store version share one read).
    #[arg(long, env = "SHARDCAST_STORE_READS", default_value_t = 4)]
    pub(crate) store_reads: usize,
    /// How often to look for new model versions, milliseconds.
    #[arg(long, env = "SHARDCAST_MODEL_POLL_MS", default_value_t = 2000)]
    pub(crate) model_poll_ms: u64,
    /// How often to look for new data in the store, milliseconds.
    #[arg(long, env = "SHARDCAST_STORE_POLL_MS", default_value_t = 1000)]
    pub(crate) store_poll_ms: u64,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// PEM certificate chain: serve TLS (needs --tls-key).
    #[arg(long, env = "SHARDCAST_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SHARDCAST_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

const SIMULATE_ABOUT: &str = "\
Protocol P: replay one stored series as shard demand through three autoscaling
policies and compare what each costs and how often it falls short.

  shardcast simulate --store DIR --series ID --out sim.csv

The series is put on its own grid (--grid to override) and the simulated range
is its last 7 days (at most its second half; --from/--to to choose). Demand is
divided by the capacity of one shard, chosen so that the range's peak needs
--peak-shards shards (or given with --capacity). A shard requested at step t
serves from t + --lead (default 10m). Policies:

  reactive   the Kubernetes HPA rule ceil(current x utilisation / target),
             tolerance 0.1, 5 min scale-down stabilisation; swept over
             --target-utilisations
  shardcast  the planner on the demand model's quantile forecasts, each made
             only from the points before its step, through the same
             forecasting contract the inference server calls; it covers the
             forecast from t + lead to t + lead + --hold at the service level,
             swept over --service-levels
  oracle     perfect foresight: the fewest shards that never fall short

The model is trained on the points before the simulated range with the same
defaults as `shardcast train` (the model flags below override them), or loaded
with --model (it must have been trained on data that ends before the range).

Outputs: the per-step CSV (ts, policy, knob, demand, shards_ready,
shards_requested; demand in shard units), a summary table on stdout
(under-provisioned steps, unserved demand, shard-hours relative to the oracle,
scale actions) with the issue's targets checked against the reactive rule at
target utilisation 0.7, and a PNG (--png, default: --out with .png) with demand
against ready shards per policy, the model's forecast fan at the lead time, and
the cost/violation curves of the sweeps.";

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The series id to replay, as `shardcast series` lists it.
    #[arg(long)]
    pub(crate) series: String,
    /// The app of the series, when several apps have a series of that id.
    #[arg(long)]
    pub(crate) app: Option<String>,
    /// Its shard type, when the id is ambiguous.
    #[arg(long)]
    pub(crate) shard_type: Option<String>,
    /// Its metric, when the id is ambiguous.
    #[arg(long)]
    pub(crate) metric: Option<String>,
    /// Per-step CSV: ts, policy, knob, demand, shards_ready, shards_requested.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// PNG chart (default: the CSV path with the extension .png).
    #[arg(long)]
    pub(crate) png: Option<PathBuf>,
    /// Draw no PNG.
    #[arg(long, conflicts_with = "png")]
    pub(crate) no_png: bool,
    /// Grid step (default: the series' median spacing, in whole minutes).
    #[arg(long)]
    pub(crate) grid: Option<GridStep>,
    /// Aggregation per bin (mean, sum, max, min or pNN); empty bins are
    /// linearly interpolated.
    #[arg(long, default_value = "mean")]
    pub(crate) agg: Agg,
    /// First simulated time (default: 7 days before the end, or the middle
    /// of the series when it is shorter than 14 days).
    #[arg(long)]
    pub(crate) from: Option<Timestamp>,
    /// End of the simulated range, exclusive (default: the end of the series).
    #[arg(long)]
    pub(crate) to: Option<Timestamp>,
    /// Time from requesting a shard until it serves (rounded up to whole grid
    /// steps): `10m`, `600s`, `0`.
    #[arg(long, default_value = "10m", env = "SHARDCAST_LEAD", value_parser = parse_duration)]
    pub(crate) lead: Duration,
    /// How long after the lead time the planner's count must keep covering
    /// the forecast (it then launches ahead of a rise and releases after a
    /// fall): `10m`, `0`. The model's default horizon grows with it.
    #[arg(long, default_value = "10m", env = "SHARDCAST_HOLD", value_parser = parse_duration)]
    pub(crate) hold: Duration,
    /// Scale demand so that the range's peak needs this many shards.
    #[arg(long, default_value_t = 20)]
    pub(crate) peak_shards: u32,
    /// Demand one shard serves, in the series' units (instead of
    /// --peak-shards).
    #[arg(long, conflicts_with = "peak_shards")]
    pub(crate) capacity: Option<f64>,
    /// Reactive knob: target utilisations to sweep, each in (0, 1].
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 0.6, 0.7, 0.8, 0.9])]
    pub(crate) target_utilisations: Vec<f64>,
    /// Shardcast knob: service levels to sweep, each in (0, 1). Levels above
    /// the model's highest quantile (0.975) read an exponential upper tail.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999, 0.9999, 0.99999])]
    pub(crate) service_levels: Vec<f64>,
    /// JSON simulator settings (min/max shards, the reactive rule's
    /// tolerance and stabilisation, the planner's policy); unknown fields are
    /// refused; fields left out keep the defaults. The lead and hold come
    /// from --lead and --hold.
    #[arg(long)]
    pub(crate) sim_config: Option<PathBuf>,
    /// Use this model directory instead of training one; it must have been
    /// trained only on data before the simulated range.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// Save the model trained for the run to this (new) directory.
    #[arg(long, conflicts_with = "model")]
    pub(crate) save_model: Option<PathBuf>,
    /// What forecasts for the shardcast policy: the demand model, its
    /// statistical half alone, or seasonal naive (no model is trained).
    #[arg(long, value_enum, default_value = "model")]
    pub(crate) forecaster: ForecasterChoice,
    #[command(flatten)]
    pub(crate) model_args: ModelArgs,
}

/// The `--forecaster` choice of `simulate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ForecasterChoice {
    /// The demand model (trained before the range, or `--model`).
    Model,
    /// The model's statistical half on its own.
    Statistical,
    /// Seasonal naive: a day ago, with the spread of the last week's
    /// day-over-day changes.
    Naive,
}

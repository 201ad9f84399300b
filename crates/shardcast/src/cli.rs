//! Command-line settings: one clap struct per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shardcast_core::{GridStep, Timestamp, parse_duration};
use shardcast_daemon::{ConfigOverrides, Format, Options};
use shardcast_model::forecaster::Overrides;
use shardcast_server::registry::ModelFormat;
use shardcast_server::token::TokenArgs;
use shardcast_store::grids::GridSelection;
use shardcast_store::ingest::{ColumnMapping, ReadSettings};
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
    /// Pull a PromQL query's range from Prometheus (`query_range`) into the
    /// store, one atomic batch per page; --follow keeps pulling every step.
    Pull(Box<PullCommand>),
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
    /// Retrain the newest version of a model from its weights on the
    /// store's data, score it beside that version on the most recent
    /// windows, and publish it as the next version only if it is not worse
    /// (else keep it aside); the verdict as JSON.
    Retrain(Box<RetrainArgs>),
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

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) read: ReadSettings,
    /// Files or glob patterns (quote globs so the shell leaves them alone).
    #[arg(required = true)]
    pub(crate) inputs: Vec<String>,
    /// Which table the files feed.
    #[arg(long, value_enum, default_value = "metrics", env = "SHARDCAST_TABLE")]
    pub(crate) table: Table,
    #[command(flatten)]
    pub(crate) mapping: ColumnMapping,
}

#[derive(Debug, Args)]
pub(crate) struct PullCommand {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) pull: shardcast_prometheus::pull::PullArgs,
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
    #[command(flatten)]
    pub(crate) selection: GridSelection,
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
    #[command(flatten)]
    pub(crate) overrides: Overrides,
}

#[derive(Debug, Args)]
pub(crate) struct RetrainArgs {
    #[command(flatten)]
    pub(crate) grid: GridArgs,
    #[command(flatten)]
    pub(crate) job: shardcast_model::retrain::RetrainJob,
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
    #[command(flatten)]
    pub(crate) overrides: ConfigOverrides,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// Stop after this many rounds (default: run until Ctrl-C or SIGTERM).
    #[arg(long, env = "SHARDCAST_PLAN_ITERATIONS")]
    pub(crate) iterations: Option<u64>,
    #[command(flatten)]
    pub(crate) options: Options,
    /// Append decisions to this file instead of printing them.
    #[arg(long, env = "SHARDCAST_PLAN_OUT")]
    pub(crate) out: Option<PathBuf>,
    /// `json` (one object per line) or `text` (one sentence per decision).
    #[arg(long, env = "SHARDCAST_PLAN_FORMAT", default_value = "json")]
    pub(crate) format: Format,
    /// Serve KEDA's external scaler API on this address (port 0 picks one;
    /// the bound address is printed on stderr).
    #[arg(long, env = "SHARDCAST_KEDA_LISTEN")]
    pub(crate) keda_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus `GET /metrics` on this address: per shard type the
    /// current, desired and warm counts, the forecast at the lead time,
    /// fallbacks by cause; round time (port 0 picks one; printed on stderr).
    #[arg(long, env = "SHARDCAST_PLAN_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
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
    /// Publish the forecasts of the series whose `app/shard_type/metric/series`
    /// matches one of these globs as gauges on the metrics address
    /// (`shardcast_forecast{…,quantile,steps_ahead}`), renewed with new
    /// data; comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        env = "SHARDCAST_PUBLISH_FORECASTS",
        requires = "metrics_listen"
    )]
    pub(crate) publish_forecasts: Vec<String>,
    /// Quantile levels of the published forecasts.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.5,0.95")]
    pub(crate) publish_levels: Vec<f64>,
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
    #[command(flatten)]
    pub(crate) batch: shardcast_server::batcher::BatchConfig,
    #[command(flatten)]
    pub(crate) limits: shardcast_server::Limits,
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

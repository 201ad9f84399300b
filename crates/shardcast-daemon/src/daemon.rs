//! The planning loop: read the state, ask for forecasts, plan, publish.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shardcast_core::{Decision, FallbackCause, ShardType, Timestamp};
use shardcast_planner::scale::{Recommendation, ScaleState, plan_scale_or};
use tokio::sync::watch;

use crate::client::{Fetched, ForecastClient, Provenance};
use crate::config::{Clock, PlanConfig};
use crate::error::{Error, Result};
use crate::keda::{Target, Targets};
use crate::metrics::DaemonMetrics;
use crate::placement::{self, PlacementRecord, Wanted};
use crate::state::{Observed, StateFile};

/// How the daemon runs beside its configuration; as command-line flags,
/// those of `shardcast plan`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// Plan and print, but publish nothing: KEDA is answered UNAVAILABLE
    /// (so it keeps the replicas it has), no targets file is written, and
    /// the assumed state does not follow the decisions.
    #[arg(long, env = "SHARDCAST_PLAN_DRY_RUN")]
    pub dry_run: bool,
    /// The state file read every round (JSON: shard_types.<name>.ready,
    /// pending, unhealthy, observed_demand); without one the daemon assumes
    /// its own decisions were carried out.
    #[arg(long = "state", env = "SHARDCAST_PLAN_STATE")]
    pub state_file: Option<PathBuf>,
    /// Where to write the desired counts (atomically) after every round.
    #[arg(long = "targets", env = "SHARDCAST_PLAN_TARGETS")]
    pub targets_file: Option<PathBuf>,
}

/// Where the state behind a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateOrigin {
    /// The state file, read this round.
    File,
    /// The last state file that read cleanly (this round's did not).
    LastGood,
    /// The daemon's own belief: the initial count, then its decisions.
    Assumed,
}

/// One line of the daemon's output: a decision and what it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The decision and its reason.
    #[serde(flatten)]
    pub decision: Decision,
    /// The application of the shard type.
    pub app: String,
    /// True when nothing was published.
    pub dry_run: bool,
    /// The forecast used, when there was a usable one.
    pub forecast: Option<Provenance>,
    /// Where the state came from.
    pub state: StateOrigin,
    /// Why the state file could not be used this round, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
    /// The decision in one sentence.
    pub explain: String,
}

/// How records are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// One sentence per line.
    Text,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("unknown format `{other}`, expected json or text")),
        }
    }
}

struct TypeState {
    shard_type: ShardType,
    assumed: Observed,
    recommendations: Vec<Recommendation>,
    /// Whether a round has planned this type since the daemon started.
    planned: bool,
}

/// The planner daemon: one [`Daemon::tick`] per interval.
pub struct Daemon {
    cfg: PlanConfig,
    opts: Options,
    client: ForecastClient,
    types: Vec<TypeState>,
    last_good: Option<StateFile>,
    data_now: Option<Timestamp>,
    targets: watch::Sender<Targets>,
    placement: Option<PlacementRecord>,
    metrics: Arc<DaemonMetrics>,
}

impl Daemon {
    /// A daemon for a checked configuration. Reads the state file once, so
    /// a missing or malformed one is an error at start rather than a
    /// silent fallback.
    pub fn new(cfg: PlanConfig, opts: Options) -> Result<Self> {
        cfg.validate().map_err(|detail| Error::Config {
            path: PathBuf::from("(configuration given in code)"),
            detail,
        })?;
        let client = ForecastClient::new(&cfg)?;
        let last_good = match &opts.state_file {
            Some(p) => Some(StateFile::load(p, &names(&cfg))?),
            None => None,
        };
        // Without a state file, a restart resumes from the counts the last
        // run published, if it wrote a targets file.
        let previous: Option<TargetsFile> = opts
            .targets_file
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let types = cfg
            .shard_types
            .iter()
            .map(|t| {
                let published = previous
                    .as_ref()
                    .and_then(|p| p.shard_types.get(&t.shard_type))
                    .map(|c| c.desired);
                TypeState {
                    shard_type: ShardType::new(t.shard_type.clone()).expect("validated"),
                    assumed: Observed {
                        ready: published.or(t.initial_shards).unwrap_or(t.scale.min_shards),
                        ..Observed::default()
                    },
                    recommendations: Vec::new(),
                    planned: false,
                }
            })
            .collect();
        let daemon = Self {
            cfg,
            opts,
            client,
            types,
            last_good,
            data_now: None,
            targets: watch::Sender::new(Arc::default()),
            placement: None,
            metrics: Arc::default(),
        };
        let initial = daemon.initial_targets();
        daemon.targets.send_replace(Arc::new(initial));
        Ok(daemon)
    }

    /// The counts KEDA is told, updated after every round.
    pub fn targets(&self) -> watch::Receiver<Targets> {
        self.targets.subscribe()
    }

    /// The metrics every round updates, for a `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<DaemonMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The configuration.
    pub fn config(&self) -> &PlanConfig {
        &self.cfg
    }

    /// Before any decision: nothing to publish.
    fn initial_targets(&self) -> BTreeMap<String, Target> {
        self.cfg
            .shard_types
            .iter()
            .map(|c| {
                let target = Target {
                    app: c.app.clone(),
                    shards: Err("no planning round has finished yet"),
                    per_replica: c.keda_target,
                };
                (c.shard_type.clone(), target)
            })
            .collect()
    }

    /// One planning round: read the state, fetch every shard type's
    /// forecast concurrently, plan each (the reactive rule where a forecast
    /// is missing, late or unusable), publish, and return the records.
    pub async fn tick(&mut self) -> Vec<DecisionRecord> {
        let started = std::time::Instant::now();
        let (origin, state_error) = self.read_state();
        let fetched: Vec<Result<Fetched, String>> = futures::future::join_all(
            self.cfg
                .shard_types
                .iter()
                .map(|t| self.client.shard_type(t)),
        )
        .await;
        let now = self.now(&fetched);
        let mut records = Vec::with_capacity(fetched.len());
        let mut targets = BTreeMap::new();
        for ((cfg, ts), got) in self
            .cfg
            .shard_types
            .iter()
            .zip(&mut self.types)
            .zip(fetched)
        {
            let observed = match origin {
                StateOrigin::Assumed => ts.assumed.clone(),
                _ => self
                    .last_good
                    .as_ref()
                    .and_then(|s| s.shard_types.get(&cfg.shard_type).cloned())
                    .unwrap_or_else(|| ts.assumed.clone()),
            };
            let mut state = ScaleState {
                ready: observed.ready,
                pending: observed.pending,
                unhealthy: observed.unhealthy,
                observed_demand: observed.observed_demand,
                recommendations: ts.recommendations.clone(),
            };
            if !ts.planned {
                // A daemon that has just started remembers no stabilisation
                // window: it takes the healthy count it found as its
                // recommendation of a moment ago, so neither a start nor a
                // restart releases shards until one window has passed.
                state.recommendations.push(Recommendation {
                    at: Timestamp(now.millis().saturating_sub(1)),
                    shards: state.healthy(),
                });
                ts.planned = true;
            }
            let forecast =
                got.as_ref()
                    .map(|f| &f.forecast)
                    .map_err(|detail| FallbackCause::Unavailable {
                        detail: detail.clone(),
                    });
            match &got {
                Err(detail) => {
                    tracing::warn!(shard_type = %cfg.shard_type, "reactive fallback: {detail}");
                }
                Ok(f) if f.provenance.stale_series > 0 => tracing::warn!(
                    shard_type = %cfg.shard_type,
                    stale = f.provenance.stale_series,
                    "series whose data ends earlier are left out of the summed demand"
                ),
                Ok(_) => {}
            }
            let outcome = match plan_scale_or(now, &ts.shard_type, &cfg.scale, &state, forecast) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(shard_type = %cfg.shard_type, "cannot plan: {e}");
                    continue;
                }
            };
            ts.recommendations = outcome.recommendations;
            let d = outcome.decision;
            if !self.opts.dry_run {
                ts.assumed = Observed {
                    ready: d.desired,
                    ..Observed::default()
                };
            }
            targets.insert(
                cfg.shard_type.clone(),
                Target {
                    app: cfg.app.clone(),
                    shards: if self.opts.dry_run {
                        Err("dry run")
                    } else {
                        Ok(d.desired)
                    },
                    per_replica: cfg.keda_target,
                },
            );
            self.metrics.decision(
                &cfg.app,
                &d,
                got.as_ref().ok().map(|f| &f.forecast),
                i64::try_from(cfg.scale.lead_time_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            );
            records.push(DecisionRecord {
                explain: d.explain(),
                decision: d,
                app: cfg.app.clone(),
                dry_run: self.opts.dry_run,
                forecast: got.ok().map(|f| f.provenance),
                state: origin,
                state_error: state_error.clone(),
            });
        }
        self.placement = self.place(now, origin, &records);
        if !self.opts.dry_run
            && let Some(path) = &self.opts.targets_file
            && let Err(e) = write_targets(path, now, &records)
        {
            tracing::error!("{e}");
        }
        // Keep serving the previous count for a shard type that could not
        // be planned this round.
        let mut all = (**self.targets.borrow()).clone();
        all.extend(targets);
        self.targets.send_replace(Arc::new(all));
        self.metrics.round(started.elapsed().as_secs_f64());
        records
    }

    /// Runs rounds every `interval_secs` (the first at once) until
    /// `iterations` rounds are done or `shutdown` resolves, writing every
    /// record to `out` and flushing after each round. Returns the rounds
    /// run.
    pub async fn run(
        &mut self,
        out: &mut dyn Write,
        format: Format,
        iterations: Option<u64>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<u64> {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(self.cfg.interval_secs));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut rounds = 0;
        while iterations.is_none_or(|n| rounds < n) {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = interval.tick() => {}
            }
            let records = self.tick().await;
            write_round(out, format, &records, self.placement.as_ref())?;
            rounds += 1;
        }
        Ok(rounds)
    }

    /// The placement of the round's desired shards on the state file's
    /// hosts, for the shard types that have a placement template.
    fn place(
        &self,
        now: Timestamp,
        origin: StateOrigin,
        records: &[DecisionRecord],
    ) -> Option<PlacementRecord> {
        let state = self
            .last_good
            .as_ref()
            .filter(|_| origin != StateOrigin::Assumed)?;
        if state.hosts.is_empty() {
            return None;
        }
        let wanted: Vec<Wanted<'_>> = self
            .cfg
            .shard_types
            .iter()
            .filter_map(|c| {
                let template = c.placement.as_ref()?;
                let record = records
                    .iter()
                    .find(|r| r.decision.shard_type.as_str() == c.shard_type)?;
                let running = state
                    .shard_types
                    .get(&c.shard_type)
                    .map_or(&[][..], |o| &o.shards[..]);
                Some(Wanted {
                    shard_type: &c.shard_type,
                    desired: record.decision.desired,
                    template,
                    running,
                })
            })
            .collect();
        if wanted.is_empty() {
            return None;
        }
        match placement::plan(now, &state.hosts, &wanted, &self.cfg.placement) {
            Ok(p) => {
                if !p.placement.unplaced.is_empty() {
                    tracing::warn!(
                        unplaced = p.placement.unplaced.len(),
                        "shards could not be placed"
                    );
                }
                Some(p)
            }
            Err(e) => {
                tracing::error!("cannot place: {e}");
                None
            }
        }
    }

    /// The placement of the latest round, if it placed shards.
    pub fn placement(&self) -> Option<&PlacementRecord> {
        self.placement.as_ref()
    }

    fn read_state(&mut self) -> (StateOrigin, Option<String>) {
        let Some(path) = &self.opts.state_file else {
            return (StateOrigin::Assumed, None);
        };
        match StateFile::load(path, &names(&self.cfg)) {
            Ok(s) => {
                self.last_good = Some(s);
                (StateOrigin::File, None)
            }
            Err(e) => {
                tracing::warn!("{e}; planning on the last good state");
                (StateOrigin::LastGood, Some(e.to_string()))
            }
        }
    }

    fn now(&mut self, fetched: &[Result<Fetched, String>]) -> Timestamp {
        let wall = || {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))
        };
        match self.cfg.clock {
            Clock::Wall => wall(),
            Clock::Data => {
                let newest = fetched
                    .iter()
                    .filter_map(|f| f.as_ref().ok())
                    .map(|f| f.forecast.start())
                    .max();
                // Time follows the data only: a round without forecasts
                // keeps the last data time, and time never runs backwards.
                let now = match (newest, self.data_now) {
                    (Some(n), Some(d)) => n.max(d),
                    (Some(n), None) => n,
                    (None, Some(d)) => d,
                    (None, None) => wall(),
                };
                self.data_now = Some(now);
                now
            }
        }
    }
}

/// Writes one round's output: a line per decision, then the placement's
/// line if there is one, and flushes.
pub fn write_round(
    out: &mut dyn Write,
    format: Format,
    records: &[DecisionRecord],
    placement: Option<&PlacementRecord>,
) -> Result<()> {
    let mut lines: Vec<String> = Vec::with_capacity(records.len() + 1);
    for r in records {
        lines.push(match format {
            Format::Json => json_line(r)?,
            Format::Text => format!("{} {}", r.decision.at, r.explain),
        });
    }
    if let Some(p) = placement {
        lines.push(match format {
            Format::Json => json_line(p)?,
            Format::Text => format!("{} {}", p.at, describe_placement(p)),
        });
    }
    for l in lines {
        writeln!(out, "{l}").map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)
}

fn json_line(v: &impl Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Output(e.into()))
}

/// A placement in one sentence.
fn describe_placement(p: &PlacementRecord) -> String {
    let pl = &p.placement;
    let mut s = format!(
        "placement: {} assigned, {} launched, {} released, {} moved",
        pl.assignments.len(),
        p.launched.len(),
        p.released.len(),
        pl.moves.len()
    );
    for u in &pl.unplaced {
        s.push_str(&format!("; {} not placed: {}", u.shard, u.message));
    }
    s
}

fn names(cfg: &PlanConfig) -> Vec<&str> {
    cfg.shard_types
        .iter()
        .map(|t| t.shard_type.as_str())
        .collect()
}

/// The targets file: the desired counts of the latest round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetsFile {
    /// When the round planned.
    pub at: Timestamp,
    /// Keyed by shard type.
    pub shard_types: BTreeMap<String, TargetCounts>,
}

/// What to run for one shard type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCounts {
    /// Healthy shards wanted.
    pub desired: u32,
    /// Spare shards to keep warm beyond `desired`.
    pub warm_pool: u32,
    /// Unhealthy shards to replace.
    pub rollback: u32,
}

/// Writes the file atomically, so a reader sees the previous round's file or
/// this one, never a mix.
fn write_targets(path: &Path, at: Timestamp, records: &[DecisionRecord]) -> Result<()> {
    let file = TargetsFile {
        at,
        shard_types: records
            .iter()
            .map(|r| {
                let d = &r.decision;
                let counts = TargetCounts {
                    desired: d.desired,
                    warm_pool: d.warm_pool,
                    rollback: d.rollback,
                };
                (d.shard_type.as_str().to_owned(), counts)
            })
            .collect(),
    };
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(&file).map_err(|e| io(e.into()))?;
    json.push(b'\n');
    shardcast_fs::write_bytes(path, &json).map_err(io)
}

//! The daemon's configuration file (TOML or JSON, unknown fields refused).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shardcast_core::ShardType;
use shardcast_planner::placement::PlacementPolicy;
use shardcast_planner::scale::ScalePolicy;

use crate::placement::ShardTemplate;

use crate::error::{Error, Result};

/// Where the planner's `now` comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// The machine's clock: forecasts older than the policy's
    /// `max_forecast_age_secs` fall back to the reactive rule.
    #[default]
    Wall,
    /// The data's clock: `now` is the start of the newest forecast's first
    /// step (the end of the last observed bin). For replayed traces.
    Data,
}

impl std::str::FromStr for Clock {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "wall" => Ok(Self::Wall),
            "data" => Ok(Self::Data),
            other => Err(format!("unknown clock `{other}`, expected wall or data")),
        }
    }
}

/// The planner daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// The inference server, e.g. `http://127.0.0.1:50051`.
    #[serde(default = "default_server")]
    pub server: String,
    /// Bearer token the server asks for, if any.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM file of the CA that signed an `https://` server's certificate.
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Name the server's certificate must carry (default: the URI's host).
    #[serde(default)]
    pub tls_domain: Option<String>,
    /// Seconds between planning rounds.
    #[serde(default = "default_interval")]
    pub interval_secs: f64,
    /// Longest wait for one forecast, in milliseconds; past it the shard
    /// type falls back to the reactive rule for this round.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Where `now` comes from.
    #[serde(default)]
    pub clock: Clock,
    /// How shards are placed on the state file's hosts.
    #[serde(default)]
    pub placement: PlacementPolicy,
    /// The shard types to plan, each once.
    pub shard_types: Vec<ShardTypeConfig>,
}

/// One shard type: where its demand forecast comes from and its policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTypeConfig {
    /// The application whose series make up the demand.
    pub app: String,
    /// The shard type (as stored with the series).
    pub shard_type: String,
    /// The metric to sum, when the shard type has several.
    #[serde(default)]
    pub metric: Option<String>,
    /// Healthy shards assumed at start when no state file is given.
    #[serde(default)]
    pub initial_shards: Option<u32>,
    /// Metric value per replica in the KEDA metric spec; the scaler
    /// reports `shards × keda_target` so the HPA runs `shards` replicas.
    #[serde(default = "default_keda_target")]
    pub keda_target: f64,
    /// The scale policy (service level, capacity, lead time, limits, …).
    #[serde(default)]
    pub scale: ScalePolicy,
    /// What one shard asks of a host; with it (and hosts in the state file)
    /// the shard type's shards are placed every round.
    #[serde(default)]
    pub placement: Option<ShardTemplate>,
}

fn default_server() -> String {
    "http://127.0.0.1:50051".to_owned()
}

fn default_interval() -> f64 {
    60.0
}

fn default_timeout() -> u64 {
    2000
}

fn default_keda_target() -> f64 {
    1.0
}

/// Settings given beside the config file that win over its own; as
/// command-line flags, those of `shardcast plan`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ConfigOverrides {
    /// Inference server address, instead of the config's (`host:port`
    /// means `http://host:port`).
    #[arg(long, env = "SHARDCAST_SERVER")]
    pub server: Option<String>,
    /// Seconds between rounds, instead of the config's.
    #[arg(long, env = "SHARDCAST_PLAN_INTERVAL")]
    pub interval: Option<f64>,
    /// Where `now` comes from, instead of the config's: `wall` (the
    /// machine's clock) or `data` (the end of the last observed bin, for
    /// replayed data).
    #[arg(long, env = "SHARDCAST_PLAN_CLOCK")]
    pub clock: Option<Clock>,
}

impl PlanConfig {
    /// Reads a TOML file, or JSON when the name ends in `.json`, and checks
    /// it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let json = path.extension().is_some_and(|e| e == "json");
        Self::parse(&text, json).map_err(|detail| Error::Config {
            path: path.to_owned(),
            detail,
        })
    }

    /// Parses and checks TOML text (JSON when `json`); the error says
    /// what is wrong and where.
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        let cfg: Self = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config with `over` applied, checked again.
    pub fn with(mut self, over: &ConfigOverrides) -> Result<Self, String> {
        if let Some(s) = &over.server {
            self.server = if s.contains("://") {
                s.clone()
            } else {
                format!("http://{s}")
            };
        }
        self.interval_secs = over.interval.unwrap_or(self.interval_secs);
        self.clock = over.clock.unwrap_or(self.clock);
        self.validate()?;
        Ok(self)
    }

    /// Checks the rules serde cannot: ranges, names, one entry per shard
    /// type, valid policies.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.001..=86_400.0).contains(&self.interval_secs) {
            return Err(format!(
                "interval_secs = {} must lie between 0.001 and 86400 seconds",
                self.interval_secs
            ));
        }
        if !(1..=3_600_000).contains(&self.timeout_ms) {
            return Err(format!(
                "timeout_ms = {} must lie between 1 and 3600000",
                self.timeout_ms
            ));
        }
        if self.shard_types.is_empty() {
            return Err("shard_types is empty: nothing to plan".into());
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.shard_types.iter().enumerate() {
            let at = format!("shard_types[{i}]");
            ShardType::new(t.shard_type.clone()).map_err(|e| format!("{at}.shard_type: {e}"))?;
            if t.app.trim().is_empty() {
                return Err(format!("{at}.app is empty"));
            }
            if !seen.insert(t.shard_type.as_str()) {
                return Err(format!(
                    "{at}.shard_type {:?} appears twice; plan each shard type once",
                    t.shard_type
                ));
            }
            if !(t.keda_target.is_finite() && t.keda_target > 0.0) {
                return Err(format!("{at}.keda_target must be positive"));
            }
            t.scale.validate().map_err(|e| format!("{at}.{e}"))?;
        }
        Ok(())
    }
}

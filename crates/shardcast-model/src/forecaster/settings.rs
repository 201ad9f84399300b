//! A user's settings on top of the defaults for the data: the model and
//! training configuration as `train`, `backtest` and `simulate` build it.
//! The model crate's defaults for the data's shape come first, then a
//! configuration file, then single settings ([`Overrides`]), so a library
//! caller and the command line get the same model from the same inputs.

use std::path::Path;

use crate::error::{Error, Result};
use crate::forecaster::{
    CellKind, ComputeDevice, DataShape, ModelConfig, TrainConfig, default_baselines,
};

/// Which seasonal baselines the network is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineChoice {
    /// Chosen from the season, horizon and history length.
    Auto,
    /// No baselines.
    None,
}

impl std::str::FromStr for BaselineChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            other => Err(format!("unknown baselines `{other}`: `auto` or `none`")),
        }
    }
}

/// Settings that win over the defaults and the file; `None` keeps them. As
/// command-line flags, those of `shardcast train`, `backtest` and `simulate`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Overrides {
    /// Recurrent cell.
    #[arg(long)]
    pub cell: Option<CellKind>,
    /// Recurrent state width; by default 16 on under 8192 points of
    /// training data (all series together), else 64.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Context steps read by the encoder.
    #[arg(long)]
    pub context: Option<usize>,
    /// Lag inputs in steps, comma-separated (default: a day, and a week
    /// when the history is long enough).
    #[arg(long, value_delimiter = ',')]
    pub lags: Option<Vec<usize>>,
    /// Seasonal baselines fed to the network as known features: `auto`
    /// (daily and, with enough history, weekly shapes with two level
    /// estimates) or `none`. A config file can list them explicitly.
    #[arg(long)]
    pub baselines: Option<BaselineChoice>,
    /// Ensemble members (seeds); by default 3 on under 8192 points of
    /// training data (all series together), else 1.
    #[arg(long)]
    pub members: Option<usize>,
    /// Most optimiser steps per member.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device to train on: `cpu` (the default; the fused recurrent
    /// kernels) or `cuda` (the first GPU; needs a build with the `cuda`
    /// feature). The trained model runs on the CPU either way.
    #[arg(long)]
    pub device: Option<ComputeDevice>,
}

/// A configuration file: `{"model": {...}, "train": {...}}` in JSON, or
/// `[model]` and `[train]` tables in TOML.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    model: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    train: TrainConfig,
}

/// The model and training configuration for data of shape `data`: the
/// defaults for the data ([`ModelConfig::for_data`]), then the fields the
/// configuration file at `file` sets (TOML when its name ends in `.toml`,
/// else JSON; unknown fields are refused), then `over`; both checked.
pub fn configure(
    data: &DataShape,
    file: Option<&Path>,
    over: &Overrides,
) -> Result<(ModelConfig, TrainConfig)> {
    let mut model = ModelConfig::for_data(data);
    let mut train = TrainConfig::default();
    if let Some(path) = file {
        let bad = |reason: String| Error::ConfigFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let parsed: std::result::Result<ConfigFile, String> =
            if path.extension().is_some_and(|e| e == "toml") {
                toml::from_str(&text).map_err(|e| e.to_string())
            } else {
                serde_json::from_str(&text).map_err(|e| e.to_string())
            };
        let parsed = parsed.map_err(|e| bad(format!("bad training config: {e}")))?;
        model = shardcast_core::overlay::overlaid(&model, serde_json::Value::Object(parsed.model))
            .map_err(|e| bad(format!("bad training config: in `model`: {e}")))?;
        train = parsed.train;
    }
    if let Some(v) = over.cell {
        model.cell = v;
    }
    if let Some(v) = over.hidden {
        model.hidden_size = v;
    }
    if let Some(v) = over.context {
        model.context = v;
    }
    if let Some(v) = &over.lags {
        model.lags = v.clone();
    }
    match over.baselines {
        Some(BaselineChoice::Auto) => {
            model.baselines = default_baselines(model.season, model.horizon, data.shortest);
        }
        Some(BaselineChoice::None) => model.baselines.clear(),
        None => {}
    }
    if let Some(v) = over.members {
        model.members = v;
    }
    if let Some(v) = over.max_steps {
        train.max_steps = v;
    }
    if let Some(v) = over.seed {
        train.seed = v;
    }
    if let Some(v) = over.device {
        train.device = v;
    }
    model.validate()?;
    train.validate()?;
    Ok((model, train))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecaster::SMALL_DATA_MEMBERS;

    fn hourly(horizon: usize) -> DataShape {
        DataShape {
            per_day: Some(24),
            horizon,
            season: None,
            shortest: 552,
            total: 552,
        }
    }

    #[test]
    fn overrides_win_over_the_defaults_for_the_data() {
        let (c, _) = configure(&hourly(24), None, &Overrides::default()).unwrap();
        assert_eq!(c, ModelConfig::for_data(&hourly(24)));
        let over = Overrides {
            members: Some(2),
            hidden: Some(24),
            baselines: Some(BaselineChoice::None),
            ..Overrides::default()
        };
        let (c, _) = configure(&hourly(12), None, &over).unwrap();
        assert_eq!((c.members, c.hidden_size, c.horizon), (2, 24, 12));
        assert!(c.baselines.is_empty());
        let zero = Overrides {
            members: Some(0),
            ..Overrides::default()
        };
        let e = configure(&hourly(12), None, &zero).unwrap_err().to_string();
        assert!(e.contains("members"), "{e}");
    }

    #[test]
    fn the_config_file_overlays_the_model_and_refuses_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.toml");
        std::fs::write(&file, "[model]\nhidden_size = 8\n").unwrap();
        let (c, _) = configure(&hourly(12), Some(&file), &Overrides::default()).unwrap();
        assert_eq!((c.hidden_size, c.members), (8, SMALL_DATA_MEMBERS));
        std::fs::write(&file, "[model]\nwidth = 8\n").unwrap();
        let e = configure(&hourly(12), Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.toml") && e.contains("unknown field `width`"),
            "{e}"
        );
        let json = dir.path().join("train.json");
        std::fs::write(&json, r#"{"train": {"max_steps": 7}}"#).unwrap();
        let (_, t) = configure(&hourly(12), Some(&json), &Overrides::default()).unwrap();
        assert_eq!(t.max_steps, 7);
        std::fs::write(&json, "{").unwrap();
        let e = configure(&hourly(12), Some(&json), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.json") && e.contains("bad training config"),
            "{e}"
        );
        let missing = dir.path().join("none.toml");
        let e = configure(&hourly(12), Some(&missing), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.toml") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn device_comes_from_the_override_or_the_config_file() {
        let (_, t) = configure(&hourly(12), None, &Overrides::default()).unwrap();
        assert_eq!(t.device, ComputeDevice::Cpu);
        let cuda = Overrides {
            device: Some(ComputeDevice::Cuda),
            ..Overrides::default()
        };
        assert_eq!(
            configure(&hourly(12), None, &cuda).unwrap().1.device,
            ComputeDevice::Cuda
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.toml");
        std::fs::write(&file, "[train]\ndevice = \"cuda\"\n").unwrap();
        let (_, t) = configure(&hourly(12), Some(&file), &Overrides::default()).unwrap();
        assert_eq!(t.device, ComputeDevice::Cuda);
        // The override wins over the file.
        let cpu = Overrides {
            device: Some(ComputeDevice::Cpu),
            ..Overrides::default()
        };
        assert_eq!(
            configure(&hourly(12), Some(&file), &cpu).unwrap().1.device,
            ComputeDevice::Cpu
        );
        std::fs::write(&file, "[train]\ndevice = \"gpu\"\n").unwrap();
        let e = configure(&hourly(12), Some(&file), &cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpu"), "{e}");
        assert_eq!("none".parse::<BaselineChoice>(), Ok(BaselineChoice::None));
        assert!(
            "some"
                .parse::<BaselineChoice>()
                .unwrap_err()
                .contains("`auto` or `none`")
        );
    }
}

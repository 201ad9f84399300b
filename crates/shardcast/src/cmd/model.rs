//! `shardcast train` and `shardcast backtest`: series from the store onto a
//! grid, into the model crate, results out as a model directory or the
//! protocol F forecast CSV and a metrics table.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use shardcast_core::overlay::overlaid;
use shardcast_core::{GridStep, Timestamp};
use shardcast_model::backtest::{self, Backtest, BacktestSeries, BacktestSpec};
use shardcast_model::forecaster::{
    DataShape, Model, ModelConfig, Progress, TrainConfig, TrainSeries, default_baselines,
};
use shardcast_model::versions;
use shardcast_store::query::SeriesFilter;
use shardcast_store::resample::{Agg, GapFill, event_indicator, resample};

use crate::cli::{AggArg, BacktestArgs, BaselineChoice, GridArgs, ModelArgs, TrainArgs};

/// One series on the grid, with its event indicator.
pub(crate) struct GridSeries {
    /// The full key (`app/shard_type/metric/series`): the model's series id.
    pub(crate) name: String,
    /// The series id alone, as protocol F's CSV names series.
    pub(crate) label: String,
    pub(crate) shard_type: String,
    pub(crate) start: i64,
    pub(crate) values: Vec<f32>,
    pub(crate) events: Vec<f32>,
}

/// Loads the selected series and puts each on the grid.
pub(crate) async fn load_grids(args: &GridArgs) -> Result<(Vec<GridSeries>, GridStep)> {
    let store = super::open(&args.store.store)?;
    let apps: Vec<&str> = args.app.iter().flat_map(|a| a.split(',')).collect();
    let filter = SeriesFilter {
        app: (apps.len() == 1).then(|| apps[0].to_owned()),
        shard_type: args.shard_type.clone(),
        metric: args.metric.clone(),
        ..SeriesFilter::default()
    };
    let patterns = match &args.series {
        Some(p) => p
            .split(',')
            .map(|p| glob::Pattern::new(p).with_context(|| format!("bad --series pattern `{p}`")))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let agg = match args.agg {
        AggArg::Mean => Agg::Mean,
        AggArg::Sum => Agg::Sum,
        AggArg::Max => Agg::Max,
    };
    let events = store.load_events().await?;
    let mut out = Vec::new();
    for s in store.load_series(&filter).await? {
        if !patterns.is_empty() && !patterns.iter().any(|p| p.matches(&s.key.series)) {
            continue;
        }
        if !apps.is_empty() && !apps.contains(&s.key.app.as_str()) {
            continue;
        }
        let grid = match args.base_grid {
            Some(base) => {
                resample(&s.ts, &s.value, base, agg, GapFill::Linear)?.coarsen(args.grid, agg)?
            }
            None => resample(&s.ts, &s.value, args.grid, agg, GapFill::Linear)?,
        };
        let start = grid.start.millis();
        let step = args.grid.millis();
        let ind = event_indicator(&events, &s.key, start, step, grid.values.len());
        out.push(GridSeries {
            name: s.key.to_string(),
            label: s.key.series.clone(),
            shard_type: s.key.shard_type.clone(),
            start,
            values: grid.to_f32(),
            events: ind,
        });
    }
    if out.is_empty() {
        bail!("no series in the store match the selection");
    }
    Ok((out, args.grid))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    model: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    train: TrainConfig,
}

/// Horizon of `train` and `backtest` when `--horizon` is not given.
pub(crate) const DEFAULT_HORIZON: usize = 12;

/// The model and training configuration: the model crate's defaults for
/// the data (the grid, the shortest series, the `total` points over all
/// series, `default_horizon` when `--horizon` is absent), then the config
/// file, then flags.
pub(crate) fn configure(
    args: &ModelArgs,
    step: GridStep,
    shortest: usize,
    total: usize,
    default_horizon: usize,
) -> Result<(ModelConfig, TrainConfig)> {
    let mut model = ModelConfig::for_data(&DataShape {
        per_day: step.per_day(),
        horizon: args.horizon.unwrap_or(default_horizon),
        season: args.season,
        shortest,
        total,
    });
    let mut train = TrainConfig::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: ConfigFile = if path.extension().is_some_and(|e| e == "toml") {
            let value: serde_json::Value = toml::from_str(&text)
                .with_context(|| format!("bad training config {}", path.display()))?;
            serde_json::from_value(value)
        } else {
            serde_json::from_str(&text)
        }
        .with_context(|| format!("bad training config {}", path.display()))?;
        model = overlaid(&model, serde_json::Value::Object(file.model))
            .with_context(|| format!("bad training config {}: in `model`", path.display()))?;
        train = file.train;
    }
    if let Some(v) = args.cell {
        model.cell = v;
    }
    if let Some(v) = args.hidden {
        model.hidden_size = v;
    }
    if let Some(v) = args.context {
        model.context = v;
    }
    if let Some(v) = &args.lags {
        model.lags = v.clone();
    }
    match args.baselines {
        Some(BaselineChoice::Auto) => {
            model.baselines = default_baselines(model.season, model.horizon, shortest);
        }
        Some(BaselineChoice::None) => model.baselines.clear(),
        None => {}
    }
    if let Some(v) = args.members {
        model.members = v;
    }
    if let Some(v) = args.max_steps {
        train.max_steps = v;
    }
    if let Some(v) = args.seed {
        train.seed = v;
    }
    if let Some(v) = args.device {
        train.device = v;
    }
    model.validate()?;
    train.validate()?;
    Ok((model, train))
}

/// Training progress on stderr: a progress bar (indicatif) on a terminal, a
/// line per validation pass otherwise. The bar is cleared when the returned
/// closure is dropped, that is when training ends.
pub(crate) fn progress_printer(eval_every: usize) -> impl FnMut(&Progress) + Send + 'static {
    let bar = ClearOnDrop(if std::io::stderr().is_terminal() {
        let style = ProgressStyle::with_template("{msg} [{bar:30}] step {pos}/{len}")
            .expect("a valid template")
            .progress_chars("=> ");
        ProgressBar::new(0).with_style(style)
    } else {
        ProgressBar::hidden()
    });
    move |p: &Progress| {
        let member = format!("member {}/{}", p.member + 1, p.members);
        let loss = format!(
            "loss {:.4} best val {:.4} {:>6.1}s",
            p.train_loss, p.best_val_loss, p.seconds
        );
        if !bar.0.is_hidden() {
            bar.0.set_length(p.max_steps as u64);
            bar.0.set_position(p.step as u64);
            bar.0.set_message(format!("{member} {loss}"));
        } else if p.step.is_multiple_of(eval_every) {
            eprintln!("{member} step {:>5}/{} {loss}", p.step, p.max_steps);
        }
    }
}

/// Clears a progress bar when dropped.
struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

pub(crate) async fn backtest(args: BacktestArgs) -> Result<()> {
    let started = Instant::now();
    let (grids, step) = load_grids(&args.grid).await?;
    let shortest = grids.iter().map(|g| g.values.len()).min().unwrap_or(0);
    let total = grids
        .iter()
        .map(|g| g.values.len().saturating_sub(args.test_points))
        .sum();
    let (config, train) = configure(
        &args.model,
        step,
        shortest.saturating_sub(args.test_points),
        total,
        DEFAULT_HORIZON,
    )?;
    let spec = BacktestSpec {
        step_ms: step.millis(),
        horizon: config.horizon,
        test_points: args.test_points,
        season: config.season,
    };
    let labels: Vec<String> = grids.iter().map(|g| g.label.clone()).collect();
    let data: Vec<BacktestSeries> = grids
        .into_iter()
        .map(|g| BacktestSeries {
            name: g.name,
            shard_type: g.shard_type,
            start: g.start,
            values: g.values,
            events: Some(g.events),
        })
        .collect();
    eprintln!(
        "backtest: {} series on a {step} grid, horizon {}, {} held-out points each; {:?} cell, context {}, lags {:?}",
        data.len(),
        config.horizon,
        args.test_points,
        config.cell,
        config.context,
        config.lags
    );
    let eval_every = train.eval_every;
    let bt = tokio::task::spawn_blocking(move || {
        backtest::run(&config, &train, spec, &data, progress_printer(eval_every)).map(|b| (b, data))
    })
    .await??;
    let (bt, data) = bt;
    let wall = started.elapsed().as_secs_f64();
    if let Some(out) = &args.out {
        write_forecasts(out, &bt, &data, &labels, spec.step_ms)?;
    }
    print_backtest(&bt, &labels, wall);
    if let Some(dir) = &args.save_model {
        let metrics = serde_json::json!({
            "fit": bt.fit,
            "backtest": { "summary": bt.summary(), "seasonal_naive": bt.naive_summary() },
        });
        bt.model.save(dir, &metrics)?;
        println!("model saved to {}", dir.display());
    }
    if let Some(out) = &args.out {
        println!("forecasts written to {}", out.display());
    }
    Ok(())
}

/// Writes protocol F's CSV: one row per held-out point.
fn write_forecasts(
    path: &Path,
    bt: &Backtest,
    data: &[BacktestSeries],
    labels: &[String],
    step: i64,
) -> Result<()> {
    let levels = &bt.model.config().quantiles;
    shardcast_fs::write_file(path, |w| {
        let mut csv = csv::Writer::from_writer(w);
        let head = ["series", "ts", "step"].map(String::from);
        csv.write_record(
            head.into_iter()
                .chain(levels.iter().map(|q| format!("q{q}"))),
        )?;
        for ((r, s), label) in bt.series.iter().zip(data).zip(labels) {
            for (i, st) in r.steps.iter().enumerate() {
                let ts = Timestamp(s.start + step * (r.first + i) as i64);
                let values = &r.forecasts[i * levels.len()..][..levels.len()];
                let row = [label.clone(), ts.to_string(), st.to_string()];
                csv.write_record(row.into_iter().chain(values.iter().map(f32::to_string)))?;
            }
        }
        csv.flush()
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

fn print_backtest(bt: &Backtest, labels: &[String], wall: f64) {
    println!(
        "{:<34} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>8} {:>7}",
        "series", "WQL", "MASE", "cov80", "cov95", "sn WQL", "sn MASE", "sn cov80"
    );
    for (r, label) in bt.series.iter().zip(labels) {
        println!(
            "{:<34} {:>8.4} {:>8.4} {:>7.3} {:>7.3} | {:>8.4} {:>8.4} {:>7.3}",
            label,
            r.model.wql,
            r.model.mase,
            r.model.cov80,
            r.model.cov95,
            r.naive.wql,
            r.naive.mase,
            r.naive.cov80
        );
    }
    let (s, n) = (bt.summary(), bt.naive_summary());
    println!();
    println!(
        "{:<36} {:>12} {:>15}",
        "metric", "shardcast", "seasonal naive"
    );
    for (name, a, b) in [
        (
            "relWQL_vs_seasonal_naive_gmean",
            s.rel_wql_gmean,
            n.rel_wql_gmean,
        ),
        (
            "relMASE_vs_seasonal_naive_gmean",
            s.rel_mase_gmean,
            n.rel_mase_gmean,
        ),
        ("WQL_median", s.wql_median, n.wql_median),
        ("MASE_median", s.mase_median, n.mase_median),
        ("cov80_mean", s.cov80_mean, n.cov80_mean),
        ("cov95_mean", s.cov95_mean, n.cov95_mean),
        ("quantile_crossings", s.crossings as f64, n.crossings as f64),
    ] {
        println!("{name:<36} {a:>12.4} {b:>15.4}");
    }
    println!(
        "\nwall time {wall:.1}s (fit {:.1}s over {} windows, {} members; forecast {:.2}s)",
        bt.fit.seconds,
        bt.fit.train_windows,
        bt.fit.members.len(),
        bt.forecast_seconds
    );
    print_hybrid(&bt.model);
}

/// The quantile widening, and the statistical half and the reversion the
/// fit chose if the model has them.
fn print_hybrid(model: &Model) {
    let c = model.calibration();
    println!(
        "calibration: distances from the median widened by {:.3} below, {:.3} above",
        c.lower, c.upper
    );
    if let Some(r) = model.reversion() {
        println!(
            "reversion: after a shock day, weight {} on last week's values",
            r.weight
        );
    }
    if let Some(h) = model.hybrid() {
        let s = &h.statistical;
        println!(
            "hybrid: statistical forecaster (daily shape over {} days, weekly over {} weeks at share {}, \
             level of the last {} points at share {}) blended at network weight {}",
            s.days, s.weeks, s.weekly_share, s.recent, s.recent_share, h.weight
        );
    }
}

pub(crate) async fn train(args: TrainArgs) -> Result<()> {
    let (grids, step) = load_grids(&args.grid).await?;
    let shortest = grids.iter().map(|g| g.values.len()).min().unwrap_or(0);
    let total = grids.iter().map(|g| g.values.len()).sum();
    let (config, train) = configure(&args.model, step, shortest, total, DEFAULT_HORIZON)?;
    let dir = args.models_dir.join(&args.name);
    let version = match args.version {
        Some(v) => v,
        None => versions::next_version(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?,
    };
    let out = dir.join(version.to_string());
    if out.exists() {
        bail!("{} already exists; pick another --version", out.display());
    }
    let data: Vec<TrainSeries> = grids
        .into_iter()
        .map(|g| TrainSeries {
            name: g.name,
            shard_type: g.shard_type,
            start: g.start,
            values: g.values,
            events: Some(g.events),
        })
        .collect();
    let from = args.from.clone();
    eprintln!(
        "train: {} series on a {step} grid, horizon {}; {:?} cell, hidden {}, context {}, lags {:?}",
        data.len(),
        config.horizon,
        config.cell,
        config.hidden_size,
        config.context,
        config.lags
    );
    let eval_every = train.eval_every;
    let (model, report) = tokio::task::spawn_blocking(move || -> Result<_> {
        let warm = from
            .as_deref()
            .map(|p| {
                Model::load(p).with_context(|| format!("cannot warm start from {}", p.display()))
            })
            .transpose()?;
        Ok(Model::fit_from(
            &config,
            &train,
            step.millis(),
            &data,
            warm.as_ref(),
            progress_printer(eval_every),
        )?)
    })
    .await??;
    model.save(&out, &serde_json::json!({ "fit": report }))?;
    for m in &report.members {
        println!(
            "member seed {}: {} steps, kept step {} (val loss {:.4}){}, {:.1}s",
            m.seed,
            m.steps,
            m.best_step,
            m.best_val_loss,
            if m.stopped_early {
                ", stopped early"
            } else {
                ""
            },
            m.seconds
        );
    }
    print_hybrid(&model);
    println!("model written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use shardcast_model::forecaster::{ComputeDevice, SMALL_DATA_MEMBERS};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    #[test]
    fn flags_win_over_the_defaults_for_the_data() {
        let hourly = GridStep::from_millis(3_600_000).unwrap();
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).unwrap().model;
        let args = parse(&["shardcast", "--horizon", "24"]);
        let (c, _) = configure(&args, hourly, 552, 552, DEFAULT_HORIZON).unwrap();
        let shape = DataShape {
            per_day: Some(24),
            horizon: 24,
            season: None,
            shortest: 552,
            total: 552,
        };
        assert_eq!(c, ModelConfig::for_data(&shape));
        let args = parse(&["shardcast", "--members", "2", "--hidden", "24"]);
        let (c, _) = configure(&args, hourly, 552, 552, DEFAULT_HORIZON).unwrap();
        assert_eq!((c.members, c.hidden_size), (2, 24));
        assert_eq!(c.horizon, DEFAULT_HORIZON);
    }

    #[test]
    fn the_config_file_overlays_the_model_and_refuses_unknown_fields() {
        let hourly = GridStep::from_millis(3_600_000).unwrap();
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).unwrap().model;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.toml");
        std::fs::write(&file, "[model]\nhidden_size = 8\n").unwrap();
        let args = parse(&["shardcast", "--config", file.to_str().unwrap()]);
        let (c, _) = configure(&args, hourly, 552, 552, DEFAULT_HORIZON).unwrap();
        assert_eq!((c.hidden_size, c.members), (8, SMALL_DATA_MEMBERS));
        std::fs::write(&file, "[model]\nwidth = 8\n").unwrap();
        let e = format!(
            "{:#}",
            configure(&args, hourly, 552, 552, DEFAULT_HORIZON).unwrap_err()
        );
        assert!(
            e.contains("train.toml") && e.contains("unknown field `width`"),
            "{e}"
        );
    }

    #[test]
    fn device_comes_from_the_flag_or_the_config_file() {
        let hourly = GridStep::from_millis(3_600_000).unwrap();
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).map(|c| c.model);
        let args = parse(&["shardcast"]).unwrap();
        let (_, t) = configure(&args, hourly, 1000, 1000, DEFAULT_HORIZON).unwrap();
        assert_eq!(t.device, ComputeDevice::Cpu);
        let args = parse(&["shardcast", "--device", "cuda"]).unwrap();
        let (_, t) = configure(&args, hourly, 1000, 1000, DEFAULT_HORIZON).unwrap();
        assert_eq!(t.device, ComputeDevice::Cuda);
        let e = parse(&["shardcast", "--device", "tpu"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tpu") && e.contains("`cpu` or `cuda`"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.toml");
        std::fs::write(&file, "[train]\ndevice = \"cuda\"\n").unwrap();
        let path = file.to_str().unwrap();
        let args = parse(&["shardcast", "--config", path]).unwrap();
        let (_, t) = configure(&args, hourly, 1000, 1000, DEFAULT_HORIZON).unwrap();
        assert_eq!(t.device, ComputeDevice::Cuda);
        // The flag wins over the file.
        let args = parse(&["shardcast", "--config", path, "--device", "cpu"]).unwrap();
        let (_, t) = configure(&args, hourly, 1000, 1000, DEFAULT_HORIZON).unwrap();
        assert_eq!(t.device, ComputeDevice::Cpu);
        std::fs::write(&file, "[train]\ndevice = \"gpu\"\n").unwrap();
        let e = format!(
            "{:#}",
            configure(&args, hourly, 1000, 1000, DEFAULT_HORIZON).unwrap_err()
        );
        assert!(e.contains("gpu"), "{e}");
    }
}

//! `shardcast train` and `shardcast backtest`: series from the store onto a
//! grid, into the model crate, results out as a model directory or the
//! protocol F forecast CSV and a metrics table.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use shardcast_core::GridStep;
use shardcast_model::backtest::{self, BacktestSeries, BacktestSpec};
use shardcast_model::forecaster::{
    self, DataShape, FitReport, Model, ModelConfig, Progress, TrainConfig, TrainSeries,
};
use shardcast_model::versions;
use shardcast_store::grids::GridSeries;

use crate::cli::{BacktestArgs, GridArgs, ModelArgs, RetrainArgs, TrainArgs};

/// Horizon of `train` and `backtest` when `--horizon` is not given.
pub(crate) const DEFAULT_HORIZON: usize = 12;

/// The selected series on their grid; a selection that matches nothing is
/// an error.
pub(crate) async fn load_grids(args: &GridArgs) -> Result<(Vec<GridSeries>, GridStep)> {
    let store = super::open(&args.store.store)?;
    Ok((
        store.load_grids(&args.selection).await?,
        args.selection.step,
    ))
}

/// The model and training configuration for the data (the grid, the
/// shortest series, the `total` points over all series, `default_horizon`
/// when `--horizon` is absent): the model crate's defaults, the config
/// file, then flags.
pub(crate) fn configure(
    args: &ModelArgs,
    step: GridStep,
    shortest: usize,
    total: usize,
    default_horizon: usize,
) -> Result<(ModelConfig, TrainConfig)> {
    let shape = DataShape {
        per_day: step.per_day(),
        horizon: args.horizon.unwrap_or(default_horizon),
        season: args.season,
        shortest,
        total,
    };
    Ok(forecaster::configure(
        &shape,
        args.config.as_deref(),
        &args.overrides,
    )?)
}

/// The model crate's training input of a grid series.
pub(crate) fn train_series(g: GridSeries) -> TrainSeries {
    TrainSeries {
        name: g.key.to_string(),
        shard_type: g.key.shard_type,
        start: g.start,
        values: g.values,
        events: Some(g.events),
    }
}

/// Fits a model on the blocking pool, warm-started from the model in
/// `warm` if given, after saying on stderr what it fits (`what`) and how;
/// progress goes to stderr while it trains.
pub(crate) async fn fit(
    what: String,
    config: ModelConfig,
    train: TrainConfig,
    step: GridStep,
    data: Vec<TrainSeries>,
    warm: Option<PathBuf>,
) -> Result<(Model, FitReport)> {
    eprintln!(
        "train: {what} on a {step} grid; {:?} cell, hidden {}, context {}, horizon {}, lags {:?}",
        config.cell, config.hidden_size, config.context, config.horizon, config.lags
    );
    tokio::task::spawn_blocking(move || -> Result<_> {
        let warm = warm
            .as_deref()
            .map(|p| {
                Model::load(p).with_context(|| format!("cannot warm start from {}", p.display()))
            })
            .transpose()?;
        let progress = progress_printer(train.eval_every);
        Ok(Model::fit_from(
            &config,
            &train,
            step.millis(),
            &data,
            warm.as_ref(),
            progress,
        )?)
    })
    .await?
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
    let labels: Vec<String> = grids.iter().map(|g| g.key.series.clone()).collect();
    let data: Vec<BacktestSeries> = grids.into_iter().map(train_series).collect();
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
        shardcast_fs::write_file(out, |w| bt.write_csv(w, &data, &labels))
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    print!("{}", bt.table(&labels));
    println!(
        "\nwall time {wall:.1}s (fit {:.1}s over {} windows, {} members; forecast {:.2}s)",
        bt.fit.seconds,
        bt.fit.train_windows,
        bt.fit.members.len(),
        bt.forecast_seconds
    );
    print!("{}", bt.model.fitted_parts());
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
    let data: Vec<TrainSeries> = grids.into_iter().map(train_series).collect();
    let what = format!("{} series", data.len());
    let (model, report) = fit(what, config, train, step, data, args.from).await?;
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
    print!("{}", model.fitted_parts());
    println!("model written to {}", out.display());
    Ok(())
}

pub(crate) async fn retrain(args: RetrainArgs) -> Result<()> {
    let (grids, step) = load_grids(&args.grid).await?;
    let data: Vec<TrainSeries> = grids.into_iter().map(train_series).collect();
    eprintln!("retrain: {} on {} series", args.job.name, data.len());
    let eval_every = TrainConfig::default().eval_every;
    let record = tokio::task::spawn_blocking(move || {
        args.job
            .run(step.millis(), &data, progress_printer(eval_every))
    })
    .await??;
    println!("{record}");
    Ok(())
}

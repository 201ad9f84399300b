//! `shardcast simulate`: protocol P on a series from the store. The series
//! goes on its grid, the model is trained on (or checked to predate) the
//! points before the simulated range, its forecasts (or those of its
//! statistical half, or of seasonal naive: `--forecaster`) feed the
//! planner's simulator, and the sweep comes out as the
//! per-step CSV, a summary table with the targets, and a PNG.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use shardcast_core::{SeasonalNaive, Timestamp};
use shardcast_model::forecaster::{Model, TrainSeries};
use shardcast_planner::simulator::{
    Demand, SimConfig, SweepSpec, Targets, Trace, collect_forecasts, lead_steps, shard_capacity,
    simulated_range, sweep,
};
use shardcast_store::grids::GridSeries;
use shardcast_store::query::SeriesFilter;

use crate::cli::{ForecasterChoice, SimulateArgs};

pub(crate) async fn run(args: SimulateArgs) -> Result<()> {
    let started = Instant::now();
    let spec = SweepSpec {
        target_utilisations: args.target_utilisations.clone(),
        service_levels: args.service_levels.clone(),
    };
    spec.validate()
        .context("check --target-utilisations and --service-levels")?;
    let mut cfg = match &args.sim_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            SimConfig::from_json(&text).with_context(|| path.display().to_string())?
        }
        None => SimConfig::default(),
    };
    let series = load(&args).await?;
    let label = &series.key.series;
    let range = simulated_range(
        Timestamp(series.start),
        series.step,
        series.values.len(),
        args.from,
        args.to,
    )
    .with_context(|| format!("series `{label}`"))?;
    let (first, end) = (range.start, range.end);
    // Whole seconds, rounded up (the lead is then rounded up to grid steps).
    let secs = |d: std::time::Duration| d.as_millis().div_ceil(1000) as u64;
    let lead = lead_steps(secs(args.lead), series.step);
    cfg.lead_steps = lead;
    cfg.shardcast.hold_secs = secs(args.hold);
    let demand: Vec<f64> = series.values[range].iter().map(|&v| f64::from(v)).collect();
    let peak = demand.iter().copied().fold(0.0, f64::max);
    let capacity = shard_capacity(&demand, args.capacity, args.peak_shards)
        .with_context(|| format!("series `{label}` from {}", series.time_of(first)))?;
    let trace = Trace::from_demand(series.time_of(first), series.step, &demand, capacity)
        .with_context(|| format!("series `{label}` cannot be replayed"))?;
    eprintln!(
        "simulate: `{}` on a {} grid, {} .. {} ({} steps); {} points before it; lead {}s = {lead} step(s), hold {}s; \
         one shard serves {capacity:.4} (peak {peak:.4} = {:.1} shards)",
        series.key,
        series.step,
        series.time_of(first),
        series.time_of(end),
        end - first,
        first,
        secs(args.lead),
        cfg.shardcast.hold_secs,
        peak / capacity
    );
    let horizon = cfg.lead_steps + lead_steps(cfg.shardcast.hold_secs, series.step) + 1;
    let model = match args.forecaster {
        ForecasterChoice::Naive => None,
        ForecasterChoice::Model | ForecasterChoice::Statistical => {
            Some(model_for(&args, &series, first, horizon).await?)
        }
    };
    let name = series.key.to_string();
    let demand = Demand {
        series: &name,
        shard_type: &series.key.shard_type,
        start: Timestamp(series.start),
        values: &series.values,
        events: Some(&series.events),
        capacity,
    };
    let (forecasts, forecast_secs) = tokio::task::block_in_place(|| -> Result<_> {
        let t = Instant::now();
        let forecasts = match (args.forecaster, &model) {
            (ForecasterChoice::Model, Some(model)) => {
                collect_forecasts(&trace, &cfg, model, &demand)
            }
            (ForecasterChoice::Statistical, Some(model)) => {
                let half = model
                    .statistical()
                    .context("the model has no statistical half (it was trained without one)")?;
                collect_forecasts(&trace, &cfg, &half, &demand)
            }
            _ => {
                let season = series.step.per_day().unwrap_or(1);
                let naive = SeasonalNaive::new(season, 7 * season, horizon);
                collect_forecasts(&trace, &cfg, &naive, &demand)
            }
        }
        .with_context(|| format!("forecasting `{label}` failed"))?;
        Ok((forecasts, t.elapsed().as_secs_f64()))
    })?;
    let result = sweep(&trace, &cfg, &spec, Some(&forecasts)).context("simulation failed")?;

    shardcast_fs::write_file(&args.out, |w| w.write_all(result.to_csv().as_bytes()))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    print!("{result}");
    let targets = Targets::of(&result);
    print!("\n{targets}");
    if !args.no_png {
        let png = args
            .png
            .clone()
            .unwrap_or_else(|| args.out.with_extension("png"));
        let shown = targets.shown_level();
        shardcast_plot::simulation::draw(&png, label, &trace, &cfg, &result, &forecasts, shown)?;
        println!("chart written to {}", png.display());
    }
    println!(
        "per-step records written to {} ({:.1}s in all; {} forecasts in {forecast_secs:.2}s)",
        args.out.display(),
        started.elapsed().as_secs_f64(),
        forecasts.iter().flatten().count()
    );
    Ok(())
}

/// Finds the one stored series named `--series` and puts it on its grid.
async fn load(args: &SimulateArgs) -> Result<GridSeries> {
    let store = super::open(&args.store.store)?;
    let within = SeriesFilter {
        app: args.app.clone(),
        shard_type: args.shard_type.clone(),
        metric: args.metric.clone(),
        ..SeriesFilter::default()
    };
    let key = store
        .find_series(&args.series, &within)
        .await
        .with_context(|| {
            format!(
                "the store at {} (--app, --shard-type and --metric narrow the search)",
                args.store.store
            )
        })?;
    Ok(store.load_grid(&key, args.grid, args.agg).await?)
}

/// The model: loaded with `--model` (checked to predate the range), else
/// trained on the points before it.
async fn model_for(
    args: &SimulateArgs,
    s: &GridSeries,
    first: usize,
    horizon: usize,
) -> Result<Model> {
    let from = s.time_of(first);
    let model = if let Some(dir) = &args.model {
        let model =
            Model::load(dir).with_context(|| format!("cannot load the model {}", dir.display()))?;
        model
            .check_fitted_before(s.step.millis(), from)
            .with_context(|| {
                format!(
                    "the model {} cannot simulate the range from {from}: simulate a later range, \
                     or let simulate train a model",
                    dir.display()
                )
            })?;
        eprintln!(
            "model: {} (trained on {} series)",
            dir.display(),
            model.series().len()
        );
        model
    } else {
        let (config, train) =
            super::model::configure(&args.model_args, s.step, first, first, horizon)?;
        config.check_trainable(first).with_context(|| {
            format!(
                "the points of `{}` before the simulated range: start it later with --from, \
                 or pass --model",
                s.key.series
            )
        })?;
        let data = vec![TrainSeries {
            values: s.values[..first].to_vec(),
            events: Some(s.events[..first].to_vec()),
            ..super::model::train_series(s.clone())
        }];
        let what = format!("{first} points of `{}` before {from}", s.key.series);
        let (model, report) = super::model::fit(what, config, train, s.step, data, None)
            .await
            .with_context(|| format!("training on `{}` failed", s.key.series))?;
        eprintln!(
            "train: {} windows, kept step {} of {}, {:.1}s",
            report.train_windows,
            report.members.first().map_or(0, |m| m.best_step),
            report.members.first().map_or(0, |m| m.steps),
            report.seconds
        );
        if let Some(dir) = &args.save_model {
            model.save(dir, &serde_json::json!({ "fit": report }))?;
            eprintln!("model saved to {}", dir.display());
        }
        model
    };
    if model.config().horizon < horizon {
        bail!(
            "the model forecasts {} steps; the planner needs {horizon} (lead plus hold plus one): \
             pass --horizon {horizon} or more",
            model.config().horizon
        );
    }
    Ok(model)
}

//! `shardcast simulate`: protocol P on a series from the store. The series
//! goes on its grid, the model is trained on (or checked to predate) the
//! points before the simulated range, its forecasts (or those of its
//! statistical half, or of seasonal naive: `--forecaster`) feed the
//! planner's simulator, and the sweep comes out as the
//! per-step CSV, a summary table with the targets, and a PNG.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use shardcast_core::overlay::overlaid;
use shardcast_core::{GridStep, QuantileForecast, SeasonalNaive, Timestamp};
use shardcast_model::forecaster::{Model, TrainSeries};
use shardcast_planner::simulator::{
    Demand, ORACLE_SLACK, PROTOCOL_UTILISATION, PolicyKind, SimConfig, SimRun, Summary, Sweep,
    SweepSpec, Targets, Trace, collect_forecasts, lead_steps, sweep,
};
use shardcast_store::resample::{Agg, GapFill, resample};

use crate::cli::{AggArg, ForecasterChoice, SimulateArgs};
use shardcast_plot::{
    self as plot, Axis, Band, Corner, FanChart, INK, Line, LineChart, PALETTE, Panel,
};

/// Default length of the simulated range.
const DEFAULT_DAYS: i64 = 7;

/// The series being replayed, on its grid.
struct Loaded {
    name: String,
    label: String,
    shard_type: String,
    step: GridStep,
    start: i64,
    values: Vec<f32>,
    events: Vec<f32>,
}

impl Loaded {
    fn time_of(&self, i: usize) -> Timestamp {
        Timestamp(self.start + self.step.millis() * i as i64)
    }
}

pub(crate) async fn run(args: SimulateArgs) -> Result<()> {
    let started = Instant::now();
    check_knobs(&args)?;
    let series = load(&args).await?;
    let (first, end) = sim_range(&args, &series)?;
    let lead = lead_steps(args.lead.0, series.step);
    let mut cfg = sim_config(args.sim_config.as_deref())?;
    cfg.lead_steps = lead;
    cfg.shardcast.hold_secs = args.hold.0;
    let demand: Vec<f64> = series.values[first..end]
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let peak = demand.iter().copied().fold(0.0, f64::max);
    let capacity = match args.capacity {
        Some(c) if c.is_finite() && c > 0.0 => c,
        Some(c) => bail!("--capacity {c}: the demand one shard serves must be positive"),
        None if args.peak_shards == 0 => bail!("--peak-shards must be at least 1"),
        None if peak > 0.0 => peak / f64::from(args.peak_shards),
        None => bail!(
            "series `{}` has no positive demand between {} and {}; pass --capacity",
            series.label,
            series.time_of(first),
            series.time_of(end)
        ),
    };
    let trace = Trace::from_demand(series.time_of(first), series.step, &demand, capacity)
        .with_context(|| format!("series `{}` cannot be replayed", series.label))?;
    eprintln!(
        "simulate: `{}` on a {} grid, {} .. {} ({} steps); {} points before it; lead {}s = {lead} step(s), hold {}s; \
         one shard serves {capacity:.4} (peak {peak:.4} = {:.1} shards)",
        series.name,
        series.step,
        series.time_of(first),
        series.time_of(end),
        end - first,
        first,
        args.lead.0,
        args.hold.0,
        peak / capacity
    );
    let horizon = cfg.lead_steps + lead_steps(cfg.shardcast.hold_secs, series.step) + 1;
    let model = match args.forecaster {
        ForecasterChoice::Naive => None,
        ForecasterChoice::Model | ForecasterChoice::Statistical => {
            Some(model_for(&args, &series, first, horizon).await?)
        }
    };
    let spec = SweepSpec {
        target_utilisations: args.target_utilisations.clone(),
        service_levels: args.service_levels.clone(),
    };
    let demand = Demand {
        series: &series.name,
        shard_type: &series.shard_type,
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
        .with_context(|| format!("forecasting `{}` failed", series.label))?;
        Ok((forecasts, t.elapsed().as_secs_f64()))
    })?;
    let result = sweep(&trace, &cfg, &spec, Some(&forecasts)).context("simulation failed")?;

    write_csv(&args.out, &result)?;
    print_summary(&result);
    let targets = Targets::of(&result);
    print_targets(&targets);
    if !args.no_png {
        let png = args
            .png
            .clone()
            .unwrap_or_else(|| args.out.with_extension("png"));
        let shown = targets.shown_level();
        draw(
            &png,
            &series.label,
            &trace,
            &cfg,
            &result,
            &forecasts,
            shown,
        )?;
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

/// Refuses knob values the simulator would refuse, before any work.
fn check_knobs(args: &SimulateArgs) -> Result<()> {
    if args.target_utilisations.is_empty() && args.service_levels.is_empty() {
        bail!("nothing to sweep: give --target-utilisations or --service-levels");
    }
    for &u in &args.target_utilisations {
        if !(u.is_finite() && u > 0.0 && u <= 1.0) {
            bail!("--target-utilisations: {u} is not a utilisation in (0, 1]");
        }
    }
    for &s in &args.service_levels {
        if !(s.is_finite() && s > 0.0 && s < 1.0) {
            bail!("--service-levels: {s} is not a probability strictly between 0 and 1");
        }
    }
    Ok(())
}

/// Finds the one stored series named `--series` and puts it on its grid.
async fn load(args: &SimulateArgs) -> Result<Loaded> {
    let store = super::open(&args.store.store)?;
    let all = store.list_series().await?;
    let wanted = |k: &shardcast_core::SeriesKey| {
        k.series == args.series
            && args.app.as_ref().is_none_or(|a| &k.app == a)
            && args.shard_type.as_ref().is_none_or(|t| &k.shard_type == t)
            && args.metric.as_ref().is_none_or(|m| &k.metric == m)
    };
    let matches: Vec<_> = all.iter().filter(|s| wanted(&s.key)).collect();
    let info = match matches.as_slice() {
        [one] => *one,
        [] => {
            let mut ids: Vec<&str> = all.iter().map(|s| s.key.series.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let shown = ids.iter().take(20).copied().collect::<Vec<_>>().join(", ");
            bail!(
                "no series `{}`{} in the store at {} (it holds {} series: {shown}{})",
                args.series,
                if args.app.is_some() || args.shard_type.is_some() || args.metric.is_some() {
                    " with the given --app/--shard-type/--metric"
                } else {
                    ""
                },
                args.store.store,
                ids.len(),
                if ids.len() > 20 { ", …" } else { "" }
            )
        }
        many => bail!(
            "{} series are named `{}`: {}; pick one with --app, --shard-type or --metric",
            many.len(),
            args.series,
            many.iter()
                .map(|s| s.key.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let data = store.load_one(&info.key).await?;
    let step = args
        .grid
        .unwrap_or_else(|| shardcast_store::resample::infer_step(&data.ts));
    let agg = match args.agg {
        AggArg::Mean => Agg::Mean,
        AggArg::Sum => Agg::Sum,
        AggArg::Max => Agg::Max,
    };
    let grid = resample(&data.ts, &data.value, step, agg, GapFill::Linear)
        .with_context(|| format!("cannot put `{}` on a {step} grid", info.key))?;
    let events = store.load_events().await?;
    let start = grid.start.millis();
    let events = shardcast_store::resample::event_indicator(
        &events,
        &info.key,
        start,
        step.millis(),
        grid.values.len(),
    );
    Ok(Loaded {
        name: info.key.to_string(),
        label: info.key.series.clone(),
        shard_type: info.key.shard_type.clone(),
        step,
        start,
        values: grid.to_f32(),
        events,
    })
}

/// The simulated range as grid indices `[first, end)`.
fn sim_range(args: &SimulateArgs, s: &Loaded) -> Result<(usize, usize)> {
    let n = s.values.len();
    let step = s.step.millis();
    // Index of the first grid point at or after `ms`, within 0..=n.
    let index = |ms: i64| -> usize {
        let i = (ms - s.start + step - 1).div_euclid(step);
        i.clamp(0, n as i64) as usize
    };
    let end = args.to.map_or(n, |t| index(t.0));
    let first = match args.from {
        Some(t) => index(t.0),
        None => {
            let week = (DEFAULT_DAYS * Timestamp::DAY_MS / step) as usize;
            end.saturating_sub(week).max(end / 2)
        }
    };
    if first >= end {
        bail!(
            "the simulated range {} .. {} holds no point of `{}` (its {} grid runs from {} to {})",
            args.from.map_or_else(
                || s.time_of(first).to_string(),
                |t| Timestamp(t.0).to_string()
            ),
            args.to.map_or_else(
                || s.time_of(end).to_string(),
                |t| Timestamp(t.0).to_string()
            ),
            s.label,
            s.step,
            s.time_of(0),
            s.time_of(n.saturating_sub(1))
        );
    }
    Ok((first, end))
}

/// The simulator settings: defaults, then the `--sim-config` file.
fn sim_config(path: Option<&Path>) -> Result<SimConfig> {
    let Some(path) = path else {
        return Ok(SimConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("bad simulator config {}", path.display()))?;
    if value.get("lead_steps").is_some() {
        bail!(
            "bad simulator config {}: set the lead time with --lead, not `lead_steps`",
            path.display()
        );
    }
    if value.pointer("/shardcast/hold_secs").is_some() {
        bail!(
            "bad simulator config {}: set the hold with --hold, not `shardcast.hold_secs`",
            path.display()
        );
    }
    // Fields the file leaves out keep the simulator's defaults, also inside
    // nested policies.
    overlaid(&SimConfig::default(), value)
        .with_context(|| format!("bad simulator config {}", path.display()))
}

/// The model: loaded with `--model` (checked to predate the range), else
/// trained on the points before it.
async fn model_for(args: &SimulateArgs, s: &Loaded, first: usize, horizon: usize) -> Result<Model> {
    let from = s.time_of(first);
    let model = if let Some(dir) = &args.model {
        let model =
            Model::load(dir).with_context(|| format!("cannot load the model {}", dir.display()))?;
        if model.step_ms() != s.step.millis() {
            bail!(
                "the model {} forecasts a {} ms grid, the series is on {}",
                dir.display(),
                model.step_ms(),
                s.step
            );
        }
        if let Some(late) = model.series().iter().find(|m| m.last_ts >= from.0) {
            bail!(
                "the model {} was trained on `{}` up to {}, not before the simulated range starting {from}; \
                 simulate a later range or let simulate train a model",
                dir.display(),
                late.name,
                Timestamp(late.last_ts)
            );
        }
        eprintln!(
            "model: {} (trained on {} series)",
            dir.display(),
            model.series().len()
        );
        model
    } else {
        let (config, train) =
            super::model::configure(&args.model_args, s.step, first, first, horizon)?;
        let least = config.history_needed() + 4 * config.horizon;
        if first < least {
            bail!(
                "only {first} points of `{}` precede the simulated range, too few to train on (at least {least} \
                 for context {}, lags {:?} and horizon {}); start the range later with --from, \
                 or pass --model",
                s.label,
                config.context,
                config.lags,
                config.horizon
            );
        }
        let data = vec![TrainSeries {
            name: s.name.clone(),
            shard_type: s.shard_type.clone(),
            start: s.start,
            values: s.values[..first].to_vec(),
            events: Some(s.events[..first].to_vec()),
        }];
        eprintln!(
            "train: {first} points before {from}; {:?} cell, hidden {}, context {}, horizon {}, lags {:?}",
            config.cell, config.hidden_size, config.context, config.horizon, config.lags
        );
        let eval_every = train.eval_every;
        let step_ms = s.step.millis();
        let (model, report) = tokio::task::spawn_blocking(move || {
            Model::fit(
                &config,
                &train,
                step_ms,
                &data,
                super::model::progress_printer(eval_every),
            )
        })
        .await?
        .with_context(|| format!("training on `{}` failed", s.label))?;
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

/// Every run, the oracle first, in knob order.
fn runs(s: &Sweep) -> impl Iterator<Item = &SimRun> {
    std::iter::once(&s.oracle).chain(&s.runs)
}

fn write_csv(path: &Path, s: &Sweep) -> Result<()> {
    shardcast_fs::write_file(path, |w| {
        let mut csv = csv::Writer::from_writer(w);
        csv.write_record([
            "ts",
            "policy",
            "knob",
            "demand",
            "shards_ready",
            "shards_requested",
        ])?;
        for run in runs(s) {
            for r in &run.records {
                csv.write_record([
                    r.ts.to_string(),
                    r.policy.as_str().to_owned(),
                    r.knob.map(|k| k.to_string()).unwrap_or_default(),
                    format!("{:.6}", r.demand),
                    r.shards_ready.to_string(),
                    r.shards_requested.to_string(),
                ])?;
            }
        }
        csv.flush()
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

fn knob_text(s: &Summary) -> String {
    s.knob.map_or_else(|| "-".into(), |k| k.to_string())
}

fn print_summary(s: &Sweep) {
    println!(
        "{:<10} {:>6} {:>7} {:>11} {:>10} {:>11} {:>10} {:>8} {:>9}",
        "policy",
        "knob",
        "steps",
        "under-prov%",
        "unserved%",
        "shard-hours",
        "vs oracle",
        "actions",
        "fallback"
    );
    for r in s.summaries() {
        println!(
            "{:<10} {:>6} {:>7} {:>11.2} {:>10.3} {:>11.1} {:>10.3} {:>8} {:>9}",
            r.policy.as_str(),
            knob_text(r),
            r.steps,
            r.under_provisioned_pct,
            r.unserved_demand_pct,
            r.shard_hours,
            r.shard_hours_vs_oracle.unwrap_or(f64::NAN),
            r.scale_actions,
            r.fallback_steps
        );
    }
}

fn print_targets(t: &Targets<'_>) {
    let Some(re) = t.reference else {
        println!(
            "\ntargets: not checked, the sweep lacks the protocol's reactive target utilisation {PROTOCOL_UTILISATION}"
        );
        return;
    };
    if t.shardcast.is_empty() {
        println!("\ntargets: not checked, no shardcast service level was swept");
        return;
    }
    let vs = |r: &Summary| r.shard_hours_vs_oracle.unwrap_or(f64::NAN);
    println!(
        "\ntargets against the reactive rule at target utilisation {PROTOCOL_UTILISATION}: \
         {} under-provisioned steps ({:.2}%), {:.1} shard-hours ({:.3} x oracle)",
        re.under_provisioned_steps,
        re.under_provisioned_pct,
        re.shard_hours,
        vs(re)
    );
    let allowed = re.under_provisioned_steps / 2;
    match t.cheaper {
        Some(r) => {
            let met = t.cheaper_met() == Some(true);
            println!(
                "  1. at no more shard-hours, at most half its under-provisioned steps (<= {allowed}): \
                 shardcast {} has {} ({:.2}%) at {:.3} x oracle: {}",
                knob_text(r),
                r.under_provisioned_steps,
                r.under_provisioned_pct,
                vs(r),
                if met {
                    "met".to_owned()
                } else {
                    format!(
                        "MISSED by {} steps ({:.2} of the reactive rule's, target 0.5)",
                        r.under_provisioned_steps - allowed,
                        r.under_provisioned_steps as f64 / re.under_provisioned_steps.max(1) as f64
                    )
                }
            );
        }
        None => {
            let cheapest = t
                .shardcast
                .iter()
                .min_by(|a, b| a.shard_hours.total_cmp(&b.shard_hours))
                .copied();
            println!(
                "  1. at no more shard-hours, at most half its under-provisioned steps: MISSED, every swept \
                 service level costs more (cheapest: {} at {:.3} x oracle)",
                cheapest.map_or_else(|| "-".into(), knob_text),
                cheapest.map_or(f64::NAN, vs)
            );
        }
    }
    match t.as_safe {
        Some(r) => {
            let met = t.as_safe_met() == Some(true);
            println!(
                "  2. at its under-provisioned level (<= {} steps), shard-hours within 15% of the oracle's: \
                 shardcast {} has {} steps at {:.3} x oracle: {}",
                re.under_provisioned_steps,
                knob_text(r),
                r.under_provisioned_steps,
                vs(r),
                if met {
                    "met".to_owned()
                } else {
                    format!(
                        "MISSED by {:.1}% of the oracle's shard-hours",
                        100.0 * (vs(r) - ORACLE_SLACK)
                    )
                }
            );
        }
        None => {
            let safest = t
                .shardcast
                .iter()
                .min_by_key(|r| r.under_provisioned_steps)
                .copied();
            println!(
                "  2. at its under-provisioned level, shard-hours within 15% of the oracle's: MISSED, no swept \
                 service level is as safe (safest: {} with {} steps at {:.3} x oracle)",
                safest.map_or_else(|| "-".into(), knob_text),
                safest.map_or(0, |r| r.under_provisioned_steps),
                safest.map_or(f64::NAN, vs)
            );
        }
    }
}

/// The chart: demand against ready shards per policy, the forecast fan at
/// the lead time, and the cost/violation curves.
fn draw(
    path: &Path,
    label: &str,
    trace: &Trace,
    cfg: &SimConfig,
    s: &Sweep,
    forecasts: &[Option<QuantileForecast>],
    shown: Option<f64>,
) -> Result<()> {
    let n = trace.values.len();
    let x = |t: usize| trace.time_of(t).0 as f64;
    let find = |kind: PolicyKind, knob: Option<f64>| {
        runs(s).find(|r| {
            r.summary.policy == kind
                && match (r.summary.knob, knob) {
                    (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                    (None, None) => true,
                    _ => false,
                }
        })
    };
    let ready = |run: &SimRun| -> Vec<(f64, f64)> {
        run.records
            .iter()
            .enumerate()
            .map(|(t, r)| (x(t), f64::from(r.shards_ready)))
            .collect()
    };
    let mut lines = vec![Line {
        width: 2,
        ..Line::new(
            "demand (shard units)",
            INK,
            trace
                .values
                .iter()
                .enumerate()
                .map(|(t, &d)| (x(t), d))
                .collect(),
        )
    }];
    let mut add = |run: Option<&SimRun>, name: String, colour| {
        if let Some(run) = run {
            lines.push(Line {
                steps: true,
                ..Line::new(name, colour, ready(run))
            });
        }
    };
    add(find(PolicyKind::Oracle, None), "oracle".into(), PALETTE[2]);
    add(
        find(PolicyKind::Reactive, Some(PROTOCOL_UTILISATION)),
        format!("reactive, target utilisation {PROTOCOL_UTILISATION}"),
        PALETTE[1],
    );
    if let Some(level) = shown {
        add(
            find(PolicyKind::Shardcast, Some(level)),
            format!("shardcast, service level {level}"),
            PALETTE[0],
        );
    }
    let mut panels = vec![Panel::Line(LineChart {
        title: format!(
            "{label}: demand and ready shards (lead {} step(s))",
            cfg.lead_steps
        ),
        x_axis: Axis::Time,
        x_label: "time (UTC)".into(),
        y_label: "shards".into(),
        lines,
        y_from_zero: false,
        legend: Corner::UpperLeft,
    })];

    // What the planner saw: the forecast made at t for the step t + lead.
    let k = cfg.lead_steps;
    let mut times = Vec::new();
    let (mut lo95, mut hi95, mut lo80, mut hi80, mut med, mut actual) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (t, f) in forecasts.iter().enumerate() {
        let Some(f) = f else { continue };
        if t + k >= n || k >= f.horizon() {
            continue;
        }
        let q = |level: f64| f64::from(f.interpolate(k, level));
        times.push(trace.time_of(t + k).0);
        lo95.push(q(0.025));
        hi95.push(q(0.975));
        lo80.push(q(0.1));
        hi80.push(q(0.9));
        med.push(q(0.5));
        actual.push(trace.values[t + k]);
    }
    if times.len() >= 2 {
        panels.push(Panel::Fan(FanChart {
            title: format!(
                "{label}: the model's forecast {k} step(s) ahead, made only from earlier points"
            ),
            y_label: "demand (shard units)".into(),
            times,
            bands: vec![
                Band {
                    label: "95% (p2.5-p97.5)".into(),
                    lower: lo95,
                    upper: hi95,
                },
                Band {
                    label: "80% (p10-p90)".into(),
                    lower: lo80,
                    upper: hi80,
                },
            ],
            median: Some(med),
            actual: Some(actual),
            history: Vec::new(),
            colour: PALETTE[0],
        }));
    }

    let curve = |kind: PolicyKind, name: &str, colour, prefix: &str| {
        let pts: Vec<&Summary> = s.summaries().filter(|r| r.policy == kind).collect();
        (!pts.is_empty()).then(|| Line {
            width: 2,
            markers: Some(
                pts.iter()
                    .map(|r| {
                        r.knob
                            .map_or_else(|| name.to_owned(), |k| format!("{prefix}{k}"))
                    })
                    .collect(),
            ),
            ..Line::new(
                name,
                colour,
                pts.iter()
                    .map(|r| {
                        (
                            r.shard_hours_vs_oracle.unwrap_or(f64::NAN),
                            r.under_provisioned_pct,
                        )
                    })
                    .collect(),
            )
        })
    };
    panels.push(Panel::Line(LineChart {
        title: format!("{label}: cost against violations, sweeping each policy's knob"),
        x_axis: Axis::Linear,
        x_label: "shard-hours relative to the oracle".into(),
        y_label: "under-provisioned steps (%)".into(),
        lines: [
            curve(
                PolicyKind::Reactive,
                "reactive (target utilisation)",
                PALETTE[1],
                "u=",
            ),
            curve(
                PolicyKind::Shardcast,
                "shardcast (service level)",
                PALETTE[0],
                "s=",
            ),
            curve(PolicyKind::Oracle, "oracle", PALETTE[2], ""),
        ]
        .into_iter()
        .flatten()
        .collect(),
        y_from_zero: true,
        legend: Corner::UpperRight,
    }));
    plot::write_png(path, 1600, 460, &panels)
}

//! Protocol F's rolling-origin backtest on grids handed in by the caller:
//! fit on every point before the first held-out one, forecast the held-out
//! points in consecutive windows of the horizon (each window sees every
//! point before it, with no refit), and score the model beside seasonal
//! naive on the same windows.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use shardcast_core::{Forecaster, GridStep, Timestamp, Window};

use crate::forecaster::{FitReport, Model, ModelConfig, Progress, TrainConfig, TrainSeries};
use crate::metrics::{self, Score};

/// One series on its grid, training range and held-out points together:
/// a training series whose last points the backtest holds out.
pub type BacktestSeries = TrainSeries;

/// What to hold out and how far to forecast.
#[derive(Debug, Clone, Copy)]
pub struct BacktestSpec {
    /// Grid step (ms).
    pub step_ms: i64,
    /// Steps per forecast window.
    pub horizon: usize,
    /// Held-out points at the end of each series.
    pub test_points: usize,
    /// Seasonal period for MASE and seasonal naive.
    pub season: usize,
}

/// The forecasts and scores of one series.
#[derive(Debug, Clone)]
pub struct SeriesResult {
    /// Series id.
    pub name: String,
    /// Index of the first held-out point.
    pub first: usize,
    /// Step (1-based) within its window of every held-out point.
    pub steps: Vec<usize>,
    /// `[test_points, levels]` model quantiles.
    pub forecasts: Vec<f32>,
    /// Score of the model.
    pub model: Score,
    /// Score of seasonal naive on the same windows.
    pub naive: Score,
}

/// Summary over series, as the protocol's scorer prints it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Geometric mean over series of WQL relative to seasonal naive.
    pub rel_wql_gmean: f64,
    /// Same for MASE.
    pub rel_mase_gmean: f64,
    /// Median WQL.
    pub wql_median: f64,
    /// Median MASE.
    pub mase_median: f64,
    /// Mean 80% coverage.
    pub cov80_mean: f64,
    /// Mean 95% coverage.
    pub cov95_mean: f64,
    /// Quantile crossings in all.
    pub crossings: usize,
}

/// A finished backtest.
#[derive(Debug)]
pub struct Backtest {
    /// Per series, in input order.
    pub series: Vec<SeriesResult>,
    /// The fitted model.
    pub model: Model,
    /// How fitting went.
    pub fit: FitReport,
    /// Seconds spent forecasting the held-out windows.
    pub forecast_seconds: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

impl Backtest {
    /// Writes protocol F's forecast CSV to `w`: a header `series,ts,step,q…`
    /// and one row per held-out point of each series of `data` (the data
    /// backtested, in the same order), named by `labels`.
    pub fn write_csv<W: std::io::Write>(
        &self,
        w: W,
        data: &[BacktestSeries],
        labels: &[String],
    ) -> std::io::Result<()> {
        let levels = &self.model.config().quantiles;
        let step = self.model.step_ms();
        let mut csv = csv::Writer::from_writer(w);
        let head = ["series", "ts", "step"].map(String::from);
        csv.write_record(
            head.into_iter()
                .chain(levels.iter().map(|q| format!("q{q}"))),
        )?;
        for ((r, s), label) in self.series.iter().zip(data).zip(labels) {
            for (i, st) in r.steps.iter().enumerate() {
                let ts = Timestamp(s.start + step * (r.first + i) as i64);
                let values = &r.forecasts[i * levels.len()..][..levels.len()];
                let row = [label.clone(), ts.to_string(), st.to_string()];
                csv.write_record(row.into_iter().chain(values.iter().map(f32::to_string)))?;
            }
        }
        csv.flush()
    }

    /// The scores as a table: one line per series (named by `labels`)
    /// against seasonal naive, then the summary metrics of both.
    pub fn table(&self, labels: &[String]) -> String {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<34} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>8} {:>7}",
            "series", "WQL", "MASE", "cov80", "cov95", "sn WQL", "sn MASE", "sn cov80"
        );
        for (r, label) in self.series.iter().zip(labels) {
            let (m, n) = (&r.model, &r.naive);
            let _ = writeln!(
                t,
                "{label:<34} {:>8.4} {:>8.4} {:>7.3} {:>7.3} | {:>8.4} {:>8.4} {:>7.3}",
                m.wql, m.mase, m.cov80, m.cov95, n.wql, n.mase, n.cov80
            );
        }
        let (s, n) = (self.summary(), self.naive_summary());
        let _ = writeln!(
            t,
            "\n{:<36} {:>12} {:>15}",
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
            let _ = writeln!(t, "{name:<36} {a:>12.4} {b:>15.4}");
        }
        t
    }

    /// Summary of the model's scores relative to seasonal naive.
    pub fn summary(&self) -> Summary {
        summarise(&self.series, |r| r.model)
    }

    /// Summary of seasonal naive itself.
    pub fn naive_summary(&self) -> Summary {
        summarise(&self.series, |r| r.naive)
    }
}

/// Summary of the model's scores in `results` relative to seasonal naive.
pub fn summarise_results(results: &[SeriesResult]) -> Summary {
    summarise(results, |r| r.model)
}

fn summarise(rs: &[SeriesResult], pick: impl Fn(&SeriesResult) -> Score) -> Summary {
    let col = |f: &dyn Fn(&Score) -> f64| rs.iter().map(|r| f(&pick(r))).collect::<Vec<_>>();
    let naive = |f: &dyn Fn(&Score) -> f64| rs.iter().map(|r| f(&r.naive)).collect::<Vec<_>>();
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Summary {
        rel_wql_gmean: metrics::gmean_ratio(&col(&|s| s.wql), &naive(&|s| s.wql)),
        rel_mase_gmean: metrics::gmean_ratio(&col(&|s| s.mase), &naive(&|s| s.mase)),
        wql_median: median(col(&|s| s.wql)),
        mase_median: median(col(&|s| s.mase)),
        cov80_mean: mean(col(&|s| s.cov80)),
        cov95_mean: mean(col(&|s| s.cov95)),
        crossings: rs.iter().map(|r| pick(r).crossings).sum(),
    }
}

/// Runs the backtest: fits `config`/`train` on the training ranges, then
/// forecasts and scores every held-out window.
pub fn run(
    config: &ModelConfig,
    train: &TrainConfig,
    spec: BacktestSpec,
    data: &[BacktestSeries],
    progress: impl FnMut(&Progress),
) -> Result<Backtest> {
    if spec.horizon != config.horizon {
        return Err(Error::Invalid(format!(
            "backtest horizon {} differs from the model's {}",
            spec.horizon, config.horizon
        )));
    }
    for s in data {
        if s.values.len() <= spec.test_points {
            return Err(Error::Invalid(format!(
                "series {}: {} points, cannot hold out {}",
                s.name,
                s.values.len(),
                spec.test_points
            )));
        }
    }
    let train_data: Vec<TrainSeries> = data
        .iter()
        .map(|s| {
            let n = s.values.len() - spec.test_points;
            TrainSeries {
                name: s.name.clone(),
                shard_type: s.shard_type.clone(),
                start: s.start,
                values: s.values[..n].to_vec(),
                events: s.events.clone(),
            }
        })
        .collect();
    let (model, fit) = Model::fit(config, train, spec.step_ms, &train_data, progress)?;
    let started = std::time::Instant::now();
    let results = evaluate(&model, spec, data)?;
    let forecast_seconds = started.elapsed().as_secs_f64();
    Ok(Backtest {
        series: results,
        model,
        fit,
        forecast_seconds,
    })
}

/// Forecasts the held-out points of every series with `forecaster`, in
/// consecutive windows of its horizon (each sees every point before it),
/// and scores them beside seasonal naive on the same windows. A window
/// without a forecast fails the backtest.
pub fn evaluate<F: Forecaster + ?Sized>(
    forecaster: &F,
    spec: BacktestSpec,
    data: &[BacktestSeries],
) -> Result<Vec<SeriesResult>, F::Error> {
    let fspec = forecaster.spec();
    let (h, levels) = (fspec.horizon, fspec.levels);
    let quantiles: Vec<f64> = levels.levels().iter().map(|l| l.get()).collect();
    let step = GridStep::from_millis(spec.step_ms)?;
    let mut windows = Vec::new();
    let mut owner = Vec::new();
    for (i, s) in data.iter().enumerate() {
        let first = s.values.len().saturating_sub(spec.test_points);
        for origin in (first..s.values.len()).step_by(h.max(1)) {
            windows.push(Window {
                series: &s.name,
                shard_type: &s.shard_type,
                start: Timestamp(s.start),
                step,
                history: &s.values[..origin],
                events: s.events.as_deref(),
            });
            owner.push(i);
        }
    }
    let forecasts = forecaster.forecast_batch(&windows)?;
    let mut results: Vec<SeriesResult> = data
        .iter()
        .map(|s| SeriesResult {
            name: s.name.clone(),
            first: s.values.len().saturating_sub(spec.test_points),
            steps: Vec::new(),
            forecasts: Vec::new(),
            model: empty_score(),
            naive: empty_score(),
        })
        .collect();
    for ((&i, w), f) in owner.iter().zip(&windows).zip(forecasts) {
        let f = f?;
        let steps = h.min(data[i].values.len() - w.history.len());
        let r = &mut results[i];
        r.steps.extend(1..=steps);
        r.forecasts
            .extend_from_slice(&f.values()[..steps * levels.len()]);
    }
    for (r, s) in results.iter_mut().zip(data) {
        let train_part = &s.values[..r.first];
        let actual = &s.values[r.first..];
        let scale = metrics::mase_scale(train_part, spec.season);
        r.model = metrics::score(actual, &r.forecasts, &quantiles, scale);
        let mut naive = Vec::with_capacity(r.forecasts.len());
        for origin in (r.first..s.values.len()).step_by(h.max(1)) {
            let steps = h.min(s.values.len() - origin);
            naive.extend(metrics::seasonal_naive(
                &s.values,
                r.first,
                spec.season,
                origin,
                steps,
                &quantiles,
            ));
        }
        r.naive = metrics::score(actual, &naive, &quantiles, scale);
    }
    Ok(results)
}

fn empty_score() -> Score {
    Score {
        wql: f64::NAN,
        mase: f64::NAN,
        cov80: f64::NAN,
        cov95: f64::NAN,
        crossings: 0,
    }
}

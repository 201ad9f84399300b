//! Retraining with a promotion rule (`shardcast retrain`, a batch job for
//! cron or a Kubernetes CronJob).
//!
//! A candidate is warm-started from the serving model (same shape, its
//! weights as the starting point) and trained on every series up to the
//! last `test_points`. Both models then forecast those most recent points
//! in consecutive windows of the horizon and are scored as in protocol F.
//! The candidate is published as the next version only when its WQL
//! (geometric mean over series, relative to seasonal naive on the same
//! windows) is not worse than the serving model's by more than the margin
//! and its mean 80% coverage lies within bounds; otherwise it is kept
//! aside, with the reason. The model published is the one that was scored.
//!
//! The serving model's score is out of sample only when it was trained
//! before the test windows; the verdict says whether it was (when it saw
//! them, its score flatters it, so the rule errs toward keeping it).

use std::path::PathBuf;

use serde::Serialize;

use crate::backtest::{self, BacktestSeries, BacktestSpec, Summary};
use crate::error::{Error, Result};
use crate::forecaster::{FitReport, Model, Progress, TrainConfig, TrainSeries};
use crate::versions;

/// When a candidate replaces the serving model; as command-line flags,
/// those of `shardcast retrain`.
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct PromotionRule {
    /// Held-out points at the end of each series on which both models are
    /// scored (default: two horizons of the serving model).
    #[arg(long)]
    pub test_points: Option<usize>,
    /// How much worse the candidate's relative WQL may be than the serving
    /// model's and still be published: 0.02 allows 2% worse, a negative
    /// margin asks for an improvement.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub margin: f64,
    /// Lowest mean 80% coverage a published candidate may have.
    #[arg(long, default_value_t = 0.7)]
    pub min_coverage80: f64,
    /// Highest mean 80% coverage a published candidate may have.
    #[arg(long, default_value_t = 0.9)]
    pub max_coverage80: f64,
}

/// A retraining job: which model, the promotion rule and the candidate's
/// training; as command-line flags, those of `shardcast retrain`.
#[derive(Debug, Clone, clap::Args)]
pub struct RetrainJob {
    /// When the candidate is published.
    #[command(flatten)]
    pub rule: PromotionRule,
    /// Model name: its newest version under `--models-dir` is retrained.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory of model directories; a kept-aside candidate goes to
    /// `<name>.candidates/<unix seconds>/` there.
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Most optimiser steps of the candidate per member.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Random seed of the candidate's training.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl RetrainJob {
    /// Retrains the newest version on `data` (on a grid of `step_ms`) and
    /// saves the candidate where the verdict puts it: the next version
    /// when promoted, else aside. Its `metrics.json` holds the fit and the
    /// returned record (serving version, verdict, directory).
    pub fn run(
        &self,
        step_ms: i64,
        data: &[BacktestSeries],
        progress: impl FnMut(&Progress),
    ) -> Result<serde_json::Value> {
        let dir = self.models_dir.join(&self.name);
        let (version, serving_dir) = versions::newest(&self.models_dir, &self.name)
            .ok_or_else(|| Error::Invalid(format!("no version of a model in {}", dir.display())))?;
        let serving = Model::load(&serving_dir)?;
        if serving.step_ms() != step_ms {
            return Err(Error::Invalid(format!(
                "{} forecasts a {} ms grid, the data is on a {step_ms} ms grid",
                serving_dir.display(),
                serving.step_ms()
            )));
        }
        let mut train = TrainConfig::default();
        train.max_steps = self.max_steps.unwrap_or(train.max_steps);
        train.seed = self.seed.unwrap_or(train.seed);
        let (candidate, fit, verdict) = retrain(&serving, &train, &self.rule, data, progress)?;
        let out = if verdict.promote {
            let next = versions::next_version(&dir).map_err(|e| Error::Artifact {
                path: dir.clone(),
                reason: format!("cannot list the versions: {e}"),
            })?;
            dir.join(next.to_string())
        } else {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.models_dir
                .join(format!("{}.candidates", self.name))
                .join(secs.to_string())
        };
        let record = serde_json::json!({
            "serving_version": version,
            "verdict": verdict,
            "dir": out,
        });
        candidate.save(&out, &serde_json::json!({ "fit": fit, "retrain": record }))?;
        Ok(record)
    }
}

/// The decision and the figures behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Whether the candidate is published.
    pub promote: bool,
    /// Why, in one sentence.
    pub reason: String,
    /// The candidate's scores on the test windows.
    pub candidate: Summary,
    /// The serving model's scores on the same windows.
    pub serving: Summary,
    /// Held-out points per series.
    pub test_points: usize,
    /// Whether the serving model was trained on data reaching into the
    /// test windows (its score is then optimistic).
    pub serving_saw_test_windows: bool,
}

impl PromotionRule {
    /// The verdict on `candidate` against `serving`.
    pub fn judge(&self, candidate: &Summary, serving: &Summary) -> (bool, String) {
        let (c, s) = (candidate.rel_wql_gmean, serving.rel_wql_gmean);
        let cov = candidate.cov80_mean;
        if !c.is_finite() {
            return (false, format!("the candidate's relative WQL is {c}"));
        }
        if !(self.min_coverage80..=self.max_coverage80).contains(&cov) {
            return (
                false,
                format!(
                    "the candidate's 80% coverage {cov:.3} lies outside {:.3}..{:.3}",
                    self.min_coverage80, self.max_coverage80
                ),
            );
        }
        let limit = s * (1.0 + self.margin);
        if s.is_finite() && c > limit {
            return (
                false,
                format!(
                    "the candidate's relative WQL {c:.4} is worse than the serving model's \
                     {s:.4} by more than the margin {} (limit {limit:.4})",
                    self.margin
                ),
            );
        }
        (
            true,
            format!(
                "the candidate's relative WQL {c:.4} against the serving model's {s:.4} \
                 (margin {}), 80% coverage {cov:.3}",
                self.margin
            ),
        )
    }
}

/// Trains a candidate from `serving` on `data` up to the test windows,
/// scores both there, and judges by `rule`. `train` sets the candidate's
/// training (seed, steps, …); the shape is the serving model's.
pub fn retrain(
    serving: &Model,
    train: &TrainConfig,
    rule: &PromotionRule,
    data: &[BacktestSeries],
    progress: impl FnMut(&Progress),
) -> Result<(Model, FitReport, Verdict)> {
    let config = serving.config().clone();
    let test_points = rule.test_points.unwrap_or(2 * config.horizon);
    let spec = BacktestSpec {
        step_ms: serving.step_ms(),
        horizon: config.horizon,
        test_points,
        season: config.season,
    };
    let least = config.history_needed() + 4 * config.horizon + test_points;
    if let Some(s) = data.iter().find(|s| s.values.len() < least) {
        return Err(Error::Invalid(format!(
            "series {} has {} points; retraining needs at least {least} (history, training \
             windows and {test_points} test points)",
            s.name,
            s.values.len()
        )));
    }
    let train_data: Vec<TrainSeries> = data
        .iter()
        .map(|s| TrainSeries {
            values: s.values[..s.values.len() - test_points].to_vec(),
            ..s.clone()
        })
        .collect();
    let (candidate, fit) = Model::fit_from(
        &config,
        train,
        spec.step_ms,
        &train_data,
        Some(serving),
        progress,
    )?;
    let summary = |m: &Model| -> Result<Summary> {
        Ok(backtest::summarise_results(&backtest::evaluate(
            m, spec, data,
        )?))
    };
    let (c, s) = (summary(&candidate)?, summary(serving)?);
    let first_test = data
        .iter()
        .map(|s| s.start + (s.values.len() - test_points) as i64 * spec.step_ms)
        .min()
        .unwrap_or(i64::MAX);
    let saw = serving
        .check_fitted_before(spec.step_ms, shardcast_core::Timestamp(first_test))
        .is_err();
    let (promote, reason) = rule.judge(&c, &s);
    Ok((
        candidate,
        fit,
        Verdict {
            promote,
            reason,
            candidate: c,
            serving: s,
            test_points,
            serving_saw_test_windows: saw,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rel_wql: f64, cov80: f64) -> Summary {
        Summary {
            rel_wql_gmean: rel_wql,
            rel_mase_gmean: rel_wql,
            wql_median: 0.1,
            mase_median: 1.0,
            cov80_mean: cov80,
            cov95_mean: 0.95,
            crossings: 0,
        }
    }

    #[test]
    fn a_candidate_is_promoted_only_when_not_worse_and_calibrated() {
        let rule = PromotionRule {
            test_points: None,
            margin: 0.02,
            min_coverage80: 0.7,
            max_coverage80: 0.9,
        };
        let serving = summary(0.50, 0.8);
        assert!(rule.judge(&summary(0.45, 0.8), &serving).0);
        // Worse, but within the margin.
        assert!(rule.judge(&summary(0.509, 0.8), &serving).0);
        let (ok, why) = rule.judge(&summary(0.52, 0.8), &serving);
        assert!(!ok && why.contains("worse"), "{why}");
        let (ok, why) = rule.judge(&summary(0.40, 0.95), &serving);
        assert!(!ok && why.contains("coverage 0.950"), "{why}");
        let (ok, why) = rule.judge(&summary(f64::NAN, 0.8), &serving);
        assert!(!ok && why.contains("NaN"), "{why}");
        // A serving model without a finite score is replaced by any
        // calibrated candidate.
        assert!(rule.judge(&summary(0.6, 0.8), &summary(f64::NAN, 0.8)).0);
        let stricter = PromotionRule {
            margin: -0.1,
            ..rule
        };
        assert!(!stricter.judge(&summary(0.46, 0.8), &serving).0);
        assert!(stricter.judge(&summary(0.44, 0.8), &serving).0);
    }
}

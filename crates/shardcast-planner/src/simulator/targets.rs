//! Protocol P's targets, read off a [`Sweep`]: against the reactive rule at
//! the protocol's target utilisation, shardcast must (1) at no more
//! shard-hours have at most half its under-provisioned steps, and (2) at no
//! more under-provisioned steps need shard-hours within [`ORACLE_SLACK`] of
//! the oracle's. Only the swept runs count; nothing is interpolated.

use std::fmt;

use super::{PolicyKind, Summary, Sweep};

/// The reactive rule's target utilisation the targets are measured against.
pub const PROTOCOL_UTILISATION: f64 = 0.7;
/// Target 2: shard-hours within this factor of the oracle's.
pub const ORACLE_SLACK: f64 = 1.15;

/// The runs of a sweep that the targets look at.
#[derive(Debug, Clone)]
pub struct Targets<'a> {
    /// The reactive rule at [`PROTOCOL_UTILISATION`], when swept.
    pub reference: Option<&'a Summary>,
    /// The oracle.
    pub oracle: &'a Summary,
    /// The shardcast run with the fewest under-provisioned steps among those
    /// with no more shard-hours than the reference (target 1's candidate).
    pub cheaper: Option<&'a Summary>,
    /// The shardcast run with the fewest shard-hours among those with no
    /// more under-provisioned steps than the reference (target 2's).
    pub as_safe: Option<&'a Summary>,
    /// Every shardcast run, in knob order.
    pub shardcast: Vec<&'a Summary>,
}

impl<'a> Targets<'a> {
    /// The candidates of `sweep`.
    pub fn of(sweep: &'a Sweep) -> Self {
        let of = |kind| {
            sweep
                .runs
                .iter()
                .map(|r| &r.summary)
                .filter(move |r| r.policy == kind)
        };
        let reference = of(PolicyKind::Reactive).find(|r| {
            r.knob
                .is_some_and(|k| (k - PROTOCOL_UTILISATION).abs() < 1e-9)
        });
        let shardcast: Vec<&Summary> = of(PolicyKind::Shardcast).collect();
        let cheaper = reference.and_then(|re| {
            shardcast
                .iter()
                .filter(|r| r.shard_hours <= re.shard_hours * (1.0 + 1e-12))
                .min_by(|a, b| {
                    a.under_provisioned_steps
                        .cmp(&b.under_provisioned_steps)
                        .then(a.shard_hours.total_cmp(&b.shard_hours))
                })
                .copied()
        });
        let as_safe = reference.and_then(|re| {
            shardcast
                .iter()
                .filter(|r| r.under_provisioned_steps <= re.under_provisioned_steps)
                .min_by(|a, b| a.shard_hours.total_cmp(&b.shard_hours))
                .copied()
        });
        Self {
            reference,
            oracle: &sweep.oracle.summary,
            cheaper,
            as_safe,
            shardcast,
        }
    }

    /// Target 1's bound: half the reference's under-provisioned steps.
    pub fn allowed_steps(&self) -> Option<usize> {
        self.reference.map(|r| r.under_provisioned_steps / 2)
    }

    /// Whether target 1 is met; `None` when it cannot be checked.
    pub fn cheaper_met(&self) -> Option<bool> {
        let allowed = self.allowed_steps()?;
        Some(
            self.cheaper
                .is_some_and(|r| r.under_provisioned_steps <= allowed),
        )
    }

    /// Whether target 2 is met; `None` when it cannot be checked.
    pub fn as_safe_met(&self) -> Option<bool> {
        self.reference?;
        Some(
            self.as_safe
                .is_some_and(|r| r.shard_hours_vs_oracle.is_some_and(|v| v <= ORACLE_SLACK)),
        )
    }

    /// The service level to draw: the one that meets target 1, else 2, else
    /// the middle of the sweep.
    pub fn shown_level(&self) -> Option<f64> {
        self.cheaper
            .or(self.as_safe)
            .and_then(|r| r.knob)
            .or_else(|| {
                let levels: Vec<f64> = self.shardcast.iter().filter_map(|r| r.knob).collect();
                levels.get(levels.len() / 2).copied()
            })
    }
}

/// A run's knob as the tables print it (`-` for the oracle).
fn knob_text(s: &Summary) -> String {
    s.knob.map_or_else(|| "-".into(), |k| k.to_string())
}

/// Shard-hours relative to the oracle's (NaN when the oracle has none).
fn vs_oracle(r: &Summary) -> f64 {
    r.shard_hours_vs_oracle.unwrap_or(f64::NAN)
}

/// The sweep as a table: one line per run, the oracle first.
impl fmt::Display for Sweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
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
        )?;
        for r in self.summaries() {
            writeln!(
                f,
                "{:<10} {:>6} {:>7} {:>11.2} {:>10.3} {:>11.1} {:>10.3} {:>8} {:>9}",
                r.policy.as_str(),
                knob_text(r),
                r.steps,
                r.under_provisioned_pct,
                r.unserved_demand_pct,
                r.shard_hours,
                vs_oracle(r),
                r.scale_actions,
                r.fallback_steps
            )?;
        }
        Ok(())
    }
}

/// The targets, each with the run that decides it and whether it is met.
impl fmt::Display for Targets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(re) = self.reference else {
            return writeln!(
                f,
                "targets: not checked, the sweep lacks the protocol's reactive target utilisation {PROTOCOL_UTILISATION}"
            );
        };
        if self.shardcast.is_empty() {
            return writeln!(
                f,
                "targets: not checked, no shardcast service level was swept"
            );
        }
        writeln!(
            f,
            "targets against the reactive rule at target utilisation {PROTOCOL_UTILISATION}: \
             {} under-provisioned steps ({:.2}%), {:.1} shard-hours ({:.3} x oracle)",
            re.under_provisioned_steps,
            re.under_provisioned_pct,
            re.shard_hours,
            vs_oracle(re)
        )?;
        let allowed = re.under_provisioned_steps / 2;
        match self.cheaper {
            Some(r) => {
                let verdict = if self.cheaper_met() == Some(true) {
                    "met".to_owned()
                } else {
                    format!(
                        "MISSED by {} steps ({:.2} of the reactive rule's, target 0.5)",
                        r.under_provisioned_steps - allowed,
                        r.under_provisioned_steps as f64 / re.under_provisioned_steps.max(1) as f64
                    )
                };
                writeln!(
                    f,
                    "  1. at no more shard-hours, at most half its under-provisioned steps (<= {allowed}): \
                     shardcast {} has {} ({:.2}%) at {:.3} x oracle: {verdict}",
                    knob_text(r),
                    r.under_provisioned_steps,
                    r.under_provisioned_pct,
                    vs_oracle(r),
                )?;
            }
            None => {
                let cheapest = self
                    .shardcast
                    .iter()
                    .min_by(|a, b| a.shard_hours.total_cmp(&b.shard_hours))
                    .copied();
                writeln!(
                    f,
                    "  1. at no more shard-hours, at most half its under-provisioned steps: MISSED, every swept \
                     service level costs more (cheapest: {} at {:.3} x oracle)",
                    cheapest.map_or_else(|| "-".into(), knob_text),
                    cheapest.map_or(f64::NAN, vs_oracle)
                )?;
            }
        }
        match self.as_safe {
            Some(r) => {
                let verdict = if self.as_safe_met() == Some(true) {
                    "met".to_owned()
                } else {
                    format!(
                        "MISSED by {:.1}% of the oracle's shard-hours",
                        100.0 * (vs_oracle(r) - ORACLE_SLACK)
                    )
                };
                writeln!(
                    f,
                    "  2. at its under-provisioned level (<= {} steps), shard-hours within 15% of the oracle's: \
                     shardcast {} has {} steps at {:.3} x oracle: {verdict}",
                    re.under_provisioned_steps,
                    knob_text(r),
                    r.under_provisioned_steps,
                    vs_oracle(r),
                )
            }
            None => {
                let safest = self
                    .shardcast
                    .iter()
                    .min_by_key(|r| r.under_provisioned_steps)
                    .copied();
                writeln!(
                    f,
                    "  2. at its under-provisioned level, shard-hours within 15% of the oracle's: MISSED, no swept \
                     service level is as safe (safest: {} with {} steps at {:.3} x oracle)",
                    safest.map_or_else(|| "-".into(), knob_text),
                    safest.map_or(0, |r| r.under_provisioned_steps),
                    safest.map_or(f64::NAN, vs_oracle)
                )
            }
        }
    }
}

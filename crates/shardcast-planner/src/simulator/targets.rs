//! Protocol P's targets, read off a [`Sweep`]: against the reactive rule at
//! the protocol's target utilisation, shardcast must (1) at no more
//! shard-hours have at most half its under-provisioned steps, and (2) at no
//! more under-provisioned steps need shard-hours within [`ORACLE_SLACK`] of
//! the oracle's. Only the swept runs count; nothing is interpolated.

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

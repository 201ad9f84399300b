//! Migration: when actual usage leaves the forecast, move few shards.
//!
//! Shards were placed on their forecast requests. When the usage of any
//! shard deviates from its forecast by more than the threshold (relative,
//! in any dimension), the planner re-evaluates the current placement with
//! the actual usage and moves shards one at a time, each time taking the
//! move that helps most:
//! 1. while hard constraints are broken (a host over capacity, a shadow
//!    next to its primary, …), the move that reduces the breach most;
//! 2. then, while a move lowers the placement cost (imbalance, stranded
//!    capacity, latency, price; each move itself costs `weights.moves`) by
//!    at least `min_gain`, that move.
//!
//! It stops at the move budget (counted in distinct shards moved). Greedy
//! steepest descent uses few moves in practice; it is not guaranteed to be
//! the minimum, which is NP-hard in general.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shardcast_core::Resources;

use crate::error::{Error, Result, check_range};
use crate::placement::{
    Assignment, CostBreakdown, Model, Move, PlacementPolicy, PlacementProblem, Role, State,
    Violation, violations,
};

/// When and how much to migrate. Data: parse it from TOML or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationPolicy {
    /// Relative deviation of usage from forecast that triggers a plan.
    pub deviation_threshold: f64,
    /// Most shards moved by one plan.
    pub move_budget: u32,
    /// Smallest cost improvement that justifies a balancing move.
    pub min_gain: f64,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        Self {
            deviation_threshold: 0.2,
            move_budget: 5,
            min_gain: 0.01,
        }
    }
}

/// How far one shard's usage is from its forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deviation {
    /// Shard id.
    pub shard: String,
    /// Forecast usage (the request it was placed with).
    pub forecast: Resources,
    /// Actual usage.
    pub actual: Resources,
    /// Largest relative deviation over the dimensions.
    pub relative: f64,
}

/// A migration plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationPlan {
    /// Whether any deviation passed the threshold.
    pub triggered: bool,
    /// Deviations above the threshold, largest first.
    pub deviations: Vec<Deviation>,
    /// Moves to make, in order.
    pub moves: Vec<Move>,
    /// Hard constraints broken by the current placement under actual usage.
    pub violations_before: Vec<Violation>,
    /// Those still broken after the moves (the budget may be too small).
    pub violations_after: Vec<Violation>,
    /// Cost of the current placement under actual usage.
    pub cost_before: CostBreakdown,
    /// Cost after the moves.
    pub cost_after: CostBreakdown,
}

/// Plans migrations. `problem` holds the forecast requests and each
/// shard's `current_host` (and `current_shadow_host`); `actual` maps shard
/// ids to observed usage (shards not in it are taken at their forecast).
pub fn plan_migration(
    problem: &PlacementProblem,
    actual: &BTreeMap<String, Resources>,
    placement: &PlacementPolicy,
    policy: &MigrationPolicy,
) -> Result<MigrationPlan> {
    check_range(
        "migration.deviation_threshold",
        policy.deviation_threshold,
        0.0,
        f64::MAX,
        "must be finite and not negative",
    )?;
    check_range(
        "migration.min_gain",
        policy.min_gain,
        0.0,
        f64::MAX,
        "must be finite and not negative",
    )?;
    for (id, r) in actual {
        if !r.is_valid() {
            return Err(Error::InvalidValue {
                field: "migration.actual",
                value: r.to_array().into_iter().fold(f64::NAN, f64::min),
                reason: "must be finite and not negative",
            });
        }
        if !problem.shards.iter().any(|s| &s.id == id) {
            return Err(Error::UnknownId {
                kind: "usage",
                from: id.clone(),
                target_kind: "shard",
                id: id.clone(),
            });
        }
    }
    let mut deviations: Vec<Deviation> = problem
        .shards
        .iter()
        .filter_map(|s| {
            let a = *actual.get(&s.id)?;
            let relative = s
                .request
                .to_array()
                .iter()
                .zip(a.to_array())
                .map(|(f, a)| (a - f).abs() / f.max(1e-9))
                .fold(0.0, f64::max);
            (relative > policy.deviation_threshold).then(|| Deviation {
                shard: s.id.clone(),
                forecast: s.request,
                actual: a,
                relative,
            })
        })
        .collect();
    deviations.sort_by(|a, b| b.relative.total_cmp(&a.relative));

    let mut observed = problem.clone();
    for s in &mut observed.shards {
        if let Some(a) = actual.get(&s.id) {
            s.request = *a;
        }
    }
    let model = Model::compile(&observed, placement)?;
    let mut st = model.empty_state();
    for (i, it) in model.items.iter().enumerate() {
        if let Some(h) = it.current {
            model.add(&mut st, i, h);
        }
    }
    let before = render(&model, &observed, &st);
    let violations_before = violations(&observed, placement, &before);
    let cost_before = model.cost(&st);
    let triggered = !deviations.is_empty();
    let mut moved_items: Vec<usize> = Vec::new();
    if triggered {
        let mut score = (breach(&model, &st), model.cost(&st).total);
        // Every step strictly improves the score; the cap only guards
        // against float noise with `min_gain = 0`.
        for _ in 0..10_000 {
            let mut best: Option<(usize, usize, (f64, f64))> = None;
            for i in 0..model.items.len() {
                let Some(from) = st.assign[i] else { continue };
                let fresh = !moved_items.contains(&i) && model.items[i].current == Some(from);
                if fresh && moved_items.len() >= policy.move_budget as usize {
                    continue;
                }
                for h in (0..model.hosts()).filter(|&h| h != from) {
                    model.remove(&mut st, i);
                    model.add(&mut st, i, h);
                    let s = (breach(&model, &st), model.cost(&st).total);
                    model.remove(&mut st, i);
                    model.add(&mut st, i, from);
                    if best.is_none_or(|(_, _, b)| better(s, b)) {
                        best = Some((i, h, s));
                    }
                }
            }
            let Some((i, h, s)) = best else { break };
            let fixes = s.0 < score.0 - 1e-9;
            let balances = score.0 <= 1e-9 && s.0 <= 1e-9 && s.1 < score.1 - policy.min_gain;
            if !(fixes || balances) {
                break;
            }
            model.remove(&mut st, i);
            model.add(&mut st, i, h);
            score = s;
            if !moved_items.contains(&i) {
                moved_items.push(i);
            }
        }
    }
    let after = render(&model, &observed, &st);
    let moves = moved_items
        .iter()
        .filter_map(|&i| {
            let it = &model.items[i];
            let from = it.current?;
            let to = st.assign[i]?;
            (from != to).then(|| Move {
                shard: observed.shards[it.shard].id.clone(),
                role: it.role,
                from: observed.hosts[from].id.clone(),
                to: Some(observed.hosts[to].id.clone()),
            })
        })
        .collect();
    tracing::debug!(
        triggered,
        deviations = deviations.len(),
        moved = moved_items.len(),
        "migration plan"
    );
    Ok(MigrationPlan {
        triggered,
        deviations,
        moves,
        violations_before,
        violations_after: violations(&observed, placement, &after),
        cost_before,
        cost_after: model.cost(&st),
    })
}

fn better(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.0 - 1e-9 || (a.0 <= b.0 + 1e-9 && a.1 < b.1 - 1e-12)
}

/// How badly a state breaks the hard constraints: overload in host
/// fractions plus one per other broken constraint.
fn breach(model: &Model, st: &State) -> f64 {
    let mut b = 0.0;
    for h in 0..model.hosts() {
        for d in 0..3 {
            let over = st.used[h][d] - model.cap[h][d];
            if over > 1e-9 {
                b += over / model.cap[h][d].max(1e-9);
            }
        }
    }
    let mut anti: BTreeMap<(usize, usize), u32> = BTreeMap::new();
    for (i, it) in model.items.iter().enumerate() {
        let Some(h) = st.assign[i] else { continue };
        if !model.allowed[i][h] {
            b += 1.0;
        }
        if let Some(g) = it.anti {
            *anti.entry((g, h)).or_default() += 1;
        }
        if let (Role::Shadow, Some(p)) = (it.role, it.partner) {
            match st.assign[p] {
                Some(hp) if hp != h && model.zone[hp] != model.zone[h] => {}
                _ => b += 1.0,
            }
        }
    }
    b += anti
        .values()
        .map(|&n| f64::from(n.saturating_sub(1)))
        .sum::<f64>();
    let groups: Vec<usize> = (0..model.spread_zones.len()).collect();
    for g in groups {
        if !model.spread_ok(st, &[g]) {
            b += 1.0;
        }
    }
    b
}

fn render(model: &Model, problem: &PlacementProblem, st: &State) -> Vec<Assignment> {
    model
        .items
        .iter()
        .zip(&st.assign)
        .filter_map(|(it, h)| {
            Some(Assignment {
                shard: problem.shards[it.shard].id.clone(),
                role: it.role,
                host: problem.hosts[(*h)?].id.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::placement::{Host, ShardSpec};

    fn host(id: &str, zone: &str) -> Host {
        Host {
            id: id.into(),
            capacity: Resources::new(8.0, 32.0, 10.0),
            zone: zone.into(),
            provider: "p".into(),
            pricing: Default::default(),
            reliability: 1.0,
        }
    }

    fn shard(id: &str, cpu: f64, on: &str) -> ShardSpec {
        ShardSpec {
            id: id.into(),
            request: Resources::new(cpu, 4.0, 1.0),
            anti_affinity: None,
            spread: None,
            zones: vec![],
            affinity: vec![],
            depends_on: vec![],
            shadow: false,
            current_host: Some(on.into()),
            current_shadow_host: None,
        }
    }

    fn problem() -> PlacementProblem {
        PlacementProblem {
            hosts: vec![host("h1", "a"), host("h2", "a"), host("h3", "b")],
            shards: vec![
                shard("s1", 2.0, "h1"),
                shard("s2", 2.0, "h1"),
                shard("s3", 2.0, "h2"),
                shard("s4", 2.0, "h3"),
            ],
        }
    }

    #[test]
    fn no_deviation_no_moves() {
        let usage: BTreeMap<String, Resources> =
            [("s1".to_string(), Resources::new(2.2, 4.0, 1.0))].into();
        let plan = plan_migration(
            &problem(),
            &usage,
            &PlacementPolicy::default(),
            &MigrationPolicy::default(),
        )
        .unwrap();
        assert!(!plan.triggered);
        assert!(plan.moves.is_empty());
    }

    #[test]
    fn overload_is_fixed_with_one_move() {
        // s1 uses 5 cpu instead of 2: h1 needs 7 of 8, fine; s2 also jumps
        // to 5: h1 is over capacity and one move fixes it.
        let usage: BTreeMap<String, Resources> = [
            ("s1".to_string(), Resources::new(5.0, 4.0, 1.0)),
            ("s2".to_string(), Resources::new(5.0, 4.0, 1.0)),
        ]
        .into();
        let policy = MigrationPolicy {
            min_gain: 1.0,
            ..MigrationPolicy::default()
        };
        let plan =
            plan_migration(&problem(), &usage, &PlacementPolicy::default(), &policy).unwrap();
        assert!(plan.triggered);
        assert_eq!(plan.deviations.len(), 2);
        assert!(matches!(
            plan.violations_before.as_slice(),
            [Violation::Capacity { .. }]
        ));
        assert!(plan.violations_after.is_empty());
        assert_eq!(plan.moves.len(), 1, "{:?}", plan.moves);
        assert_eq!(plan.moves[0].from, "h1");
    }

    #[test]
    fn budget_of_zero_moves_nothing() {
        let usage: BTreeMap<String, Resources> =
            [("s1".to_string(), Resources::new(7.0, 4.0, 1.0))].into();
        let policy = MigrationPolicy {
            move_budget: 0,
            ..MigrationPolicy::default()
        };
        let plan =
            plan_migration(&problem(), &usage, &PlacementPolicy::default(), &policy).unwrap();
        assert!(plan.triggered);
        assert!(plan.moves.is_empty());
        assert!(!plan.violations_after.is_empty());
        let unknown: BTreeMap<String, Resources> =
            [("zz".to_string(), Resources::new(1.0, 1.0, 1.0))].into();
        assert!(
            plan_migration(&problem(), &unknown, &PlacementPolicy::default(), &policy).is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn moves_stay_within_budget_and_never_add_breaches(
            cpus in prop::collection::vec(0.5f64..7.0, 4),
            budget in 0u32..4,
        ) {
            let usage: BTreeMap<String, Resources> = cpus
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("s{}", i + 1), Resources::new(c, 4.0, 1.0)))
                .collect();
            let policy = MigrationPolicy { move_budget: budget, ..MigrationPolicy::default() };
            let plan = plan_migration(&problem(), &usage, &PlacementPolicy::default(), &policy).unwrap();
            prop_assert!(plan.moves.len() <= budget as usize);
            prop_assert!(plan.violations_after.len() <= plan.violations_before.len());
            if !plan.triggered {
                prop_assert!(plan.moves.is_empty());
            }
        }
    }
}

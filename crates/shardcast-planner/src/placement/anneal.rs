//! Simulated annealing over placements, then steepest descent.
//!
//! Only feasible states are visited: a move that breaks a hard constraint
//! is refused, not penalised. Moves relocate one item (or place an unplaced
//! one), swap the hosts of two items, or move a primary and its shadow
//! together. Cooling is geometric from a temperature calibrated on the
//! typical cost change of a move down to a ten-thousandth of it.

use super::{CostBreakdown, Model, PlacementPolicy, State};
use shardcast_core::rng::{SplitMix64, mix64};

/// Weight of one unplaced item in an annealing step: far above any soft
/// cost, so a move that unplaces an item is never accepted in practice.
const UNPLACED: f64 = 1e9;

/// Items and the hosts they go to (`None`: left out).
type Changes = Vec<(usize, Option<usize>)>;

/// Largest item count for which descent tries every pair swap.
const SWAP_DESCENT_LIMIT: usize = 120;

pub(super) fn improve(model: &Model, start: State, policy: &PlacementPolicy) -> State {
    let mut best = start;
    let mut best_cost = model.cost(&best);
    if model.items.is_empty() || model.hosts() == 0 {
        return best;
    }
    let restarts = u64::from(policy.restarts.max(1));
    let per_run = policy.iterations / restarts;
    for r in 0..restarts {
        if per_run == 0 {
            break;
        }
        let mut rng = SplitMix64::new(policy.seed ^ mix64(r + 1));
        let mut cur = best.clone();
        let mut cur_cost = best_cost.clone();
        let t0 = calibrate(model, &mut cur, &cur_cost, &mut rng);
        let t_end = t0 * 1e-4;
        // While annealing, leaving an item out costs a few typical moves,
        // so the chain can pass through partial placements to reach
        // packings that single moves cannot; the best state is still
        // compared by unplaced count first.
        let penalty = 4.0 * t0;
        let mut accepted = 0u64;
        for k in 0..per_run {
            let temp = t0 * (t_end / t0).powf(k as f64 / per_run as f64);
            let undo = if rng.unit() < 0.15 {
                let Some(undo) = ruin_and_recreate(model, &mut cur, &mut rng) else {
                    continue;
                };
                undo
            } else {
                let Some(changes) = propose(model, &cur, &mut rng) else {
                    continue;
                };
                let undo: Vec<(usize, Option<usize>)> =
                    changes.iter().map(|&(i, _)| (i, cur.assign[i])).collect();
                if !model.try_move(&mut cur, &changes) {
                    continue;
                }
                undo
            };
            let c = model.cost(&cur);
            let delta = (c.unplaced as f64 - cur_cost.unplaced as f64) * penalty
                + (c.total - cur_cost.total);
            if delta <= 0.0 || rng.unit() < (-delta / temp).exp() {
                accepted += 1;
                cur_cost = c;
                if cur_cost.better_than(&best_cost) {
                    best = cur.clone();
                    best_cost = cur_cost.clone();
                }
            } else {
                force(model, &mut cur, &undo);
            }
        }
        tracing::trace!(run = r, accepted, best = best_cost.total, "annealing run");
    }
    descend(model, &mut best, &mut best_cost);
    best
}

/// Takes two or three random items out (with their shadow or primary) and
/// puts them back one by one, in random order, each on a random host that
/// takes it (or leaves it out when none does). Returns the undo list, or
/// `None` (with the state restored) when the result would break zone
/// spread because an item could not go back.
fn ruin_and_recreate(
    model: &Model,
    st: &mut State,
    rng: &mut SplitMix64,
) -> Option<Vec<(usize, Option<usize>)>> {
    let n = model.items.len();
    let k = 2 + rng.below(2);
    let mut picked: Vec<usize> = Vec::new();
    for _ in 0..k {
        let i = rng.below(n);
        for j in std::iter::once(i).chain(model.items[i].partner) {
            if !picked.contains(&j) {
                picked.push(j);
            }
        }
    }
    let undo: Vec<(usize, Option<usize>)> = picked.iter().map(|&i| (i, st.assign[i])).collect();
    for &i in &picked {
        model.remove(st, i);
    }
    // Primaries before shadows so a shadow can follow its primary.
    let mut order = picked;
    for a in (1..order.len()).rev() {
        order.swap(a, rng.below(a + 1));
    }
    order.sort_by_key(|&i| model.items[i].role);
    let mut feasible = Vec::new();
    for i in order {
        feasible.clear();
        for h in 0..model.hosts() {
            if model.block(st, i, h).is_none() && model.try_move(st, &[(i, Some(h))]) {
                model.remove(st, i);
                feasible.push(h);
            }
        }
        if !feasible.is_empty() {
            let h = feasible[rng.below(feasible.len())];
            model.add(st, i, h);
        }
    }
    let groups: Vec<usize> = undo
        .iter()
        .filter_map(|&(i, _)| model.items[i].spread)
        .collect();
    if model.spread_ok(st, &groups) {
        Some(undo)
    } else {
        force(model, st, &undo);
        None
    }
}

fn delta(from: &CostBreakdown, to: &CostBreakdown) -> f64 {
    (to.unplaced as f64 - from.unplaced as f64) * UNPLACED + (to.total - from.total)
}

/// Puts items back where they were, without checks (the old state was
/// feasible).
fn force(model: &Model, st: &mut State, undo: &[(usize, Option<usize>)]) {
    for &(i, _) in undo {
        model.remove(st, i);
    }
    for &(i, h) in undo {
        if let Some(h) = h {
            model.add(st, i, h);
        }
    }
}

fn propose(model: &Model, st: &State, rng: &mut SplitMix64) -> Option<Vec<(usize, Option<usize>)>> {
    let n = model.items.len();
    let hosts = model.hosts();
    let i = rng.below(n);
    let roll = rng.unit();
    if let (Some(p), true) = (model.items[i].partner, roll < 0.1) {
        // Move a primary and its shadow together.
        let (a, b) = (rng.below(hosts), rng.below(hosts));
        return Some(vec![(i, Some(a)), (p, Some(b))]);
    }
    if roll < 0.55 || n == 1 {
        let h = rng.below(hosts);
        return (st.assign[i] != Some(h)).then(|| vec![(i, Some(h))]);
    }
    let j = rng.below(n);
    (st.assign[i] != st.assign[j]).then(|| vec![(i, st.assign[j]), (j, st.assign[i])])
}

/// Mean absolute soft-cost change of feasible random moves.
fn calibrate(model: &Model, st: &mut State, cost: &CostBreakdown, rng: &mut SplitMix64) -> f64 {
    let (mut sum, mut count) = (0.0, 0u32);
    for _ in 0..200 {
        let Some(changes) = propose(model, st, rng) else {
            continue;
        };
        let undo: Vec<(usize, Option<usize>)> =
            changes.iter().map(|&(i, _)| (i, st.assign[i])).collect();
        if !model.try_move(st, &changes) {
            continue;
        }
        let c = model.cost(st);
        let d = (c.total - cost.total).abs();
        if c.unplaced == cost.unplaced && d > 1e-12 {
            sum += d;
            count += 1;
        }
        force(model, st, &undo);
    }
    if count == 0 {
        1.0
    } else {
        sum / f64::from(count)
    }
}

/// Steepest descent over relocations and (for small instances) swaps until
/// no move improves.
pub(super) fn descend(model: &Model, st: &mut State, cost: &mut CostBreakdown) {
    let n = model.items.len();
    for _pass in 0..100 {
        let mut best: Option<(Changes, CostBreakdown)> = None;
        let consider = |st: &mut State,
                        changes: Vec<(usize, Option<usize>)>,
                        best: &mut Option<(Changes, CostBreakdown)>| {
            let undo: Vec<(usize, Option<usize>)> =
                changes.iter().map(|&(i, _)| (i, st.assign[i])).collect();
            if model.try_move(st, &changes) {
                let c = model.cost(st);
                let target = best.as_ref().map_or(&*cost, |(_, b)| b);
                if delta(target, &c) < -1e-12 {
                    *best = Some((changes, c));
                }
                force(model, st, &undo);
            }
        };
        for i in 0..n {
            for h in 0..model.hosts() {
                if st.assign[i] != Some(h) {
                    consider(st, vec![(i, Some(h))], &mut best);
                }
            }
        }
        if n <= SWAP_DESCENT_LIMIT {
            for i in 0..n {
                for j in i + 1..n {
                    if st.assign[i] != st.assign[j] {
                        consider(st, vec![(i, st.assign[j]), (j, st.assign[i])], &mut best);
                    }
                }
            }
        }
        match best {
            Some((changes, c)) => {
                let moved = model.try_move(st, &changes);
                debug_assert!(moved);
                *cost = c;
            }
            None => return,
        }
    }
}

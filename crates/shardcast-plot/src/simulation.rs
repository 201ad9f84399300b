//! The simulator's chart: demand against the shards each policy had
//! ready, the forecast fan the planner read at the lead time, and each
//! policy's cost against its violations over the swept knob.

use std::path::Path;

use anyhow::Result;
use shardcast_core::QuantileForecast;
use shardcast_planner::simulator::{
    PROTOCOL_UTILISATION, PolicyKind, SimConfig, SimRun, Summary, Sweep, Trace,
};

use crate::{self as plot, Axis, Corner, FanChart, INK, Line, LineChart, PALETTE, Panel};

/// Draws the chart of the sweep `s` of `trace` into `path`: demand against
/// ready shards per policy (shardcast at service level `shown`), the
/// forecast fan at the lead time, and the cost/violation curves.
pub fn draw(
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
        s.all_runs().find(|r| {
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
    let shown: Vec<(usize, &QuantileForecast)> = forecasts
        .iter()
        .enumerate()
        .filter_map(|(t, f)| f.as_ref().map(|f| (t, f)))
        .filter(|&(t, f)| t + k < n && k < f.horizon())
        .collect();
    if shown.len() >= 2 {
        let mut fan = FanChart::central(
            format!(
                "{label}: the model's forecast {k} step(s) ahead, made only from earlier points"
            ),
            "demand (shard units)".into(),
            shown.iter().map(|&(t, _)| trace.time_of(t + k).0).collect(),
            |i, level| f64::from(shown[i].1.interpolate(k, level)),
        );
        fan.actual = Some(shown.iter().map(|&(t, _)| trace.values[t + k]).collect());
        panels.push(Panel::Fan(fan));
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

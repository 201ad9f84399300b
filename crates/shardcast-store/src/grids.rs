//! Stored series on a regular grid with their event covariate: what
//! training, backtests and the simulator read. A [`GridSelection`] picks
//! series by key (apps, shard type, metric, globs on the series id); a
//! series can also be found by its id alone ([`Store::find_series`]), the
//! way a user names one on the command line.

use shardcast_core::{GridStep, SeriesKey, Timestamp};

use crate::error::{Error, Result};
use crate::query::SeriesFilter;
use crate::resample::{Agg, GapFill, event_indicator, infer_step, resample};
use crate::store::Store;

/// Which stored series to put on a grid, and how. As command-line flags,
/// those of `shardcast train` and `backtest`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct GridSelection {
    /// Only series of these apps (comma-separated); none for every app.
    #[arg(long = "app", value_delimiter = ',')]
    pub apps: Vec<String>,
    /// Only series of this shard type.
    #[arg(long)]
    pub shard_type: Option<String>,
    /// Only series of this metric.
    #[arg(long)]
    pub metric: Option<String>,
    /// Only series whose id matches one of these globs (e.g. `ec2_*`;
    /// comma-separated); none for every series.
    #[arg(long = "series", value_delimiter = ',')]
    pub series: Vec<String>,
    /// Grid step: `5m`, `30m`, `1h`, …
    #[arg(long = "grid", default_value = "5m")]
    pub step: GridStep,
    /// Resample to this finer grid first, then aggregate it to `--grid`
    /// (protocol F's hourly NAB grid is the hourly mean of the 5-minute grid).
    #[arg(long = "base-grid")]
    pub base_step: Option<GridStep>,
    /// Aggregation per bin (mean, sum, max, min or pNN); empty bins are
    /// linearly interpolated.
    #[arg(long, default_value = "mean")]
    pub agg: Agg,
}

impl GridSelection {
    /// Every stored series on a grid of `step`, bins averaged.
    pub fn all(step: GridStep) -> Self {
        Self {
            apps: Vec::new(),
            shard_type: None,
            metric: None,
            series: Vec::new(),
            step,
            base_step: None,
            agg: Agg::Mean,
        }
    }
}

/// One series on its grid, with its event indicator.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSeries {
    /// The series' key.
    pub key: SeriesKey,
    /// The grid step.
    pub step: GridStep,
    /// Start of the first bin (ms).
    pub start: i64,
    /// One value per bin (empty bins linearly interpolated).
    pub values: Vec<f32>,
    /// 1 for bins that overlap an event in the series' scope, else 0.
    pub events: Vec<f32>,
}

impl GridSeries {
    /// Start time of bin `i`.
    pub fn time_of(&self, i: usize) -> Timestamp {
        Timestamp(self.start + self.step.millis() * i as i64)
    }
}

/// How many series ids an error message lists.
const SHOWN_IDS: usize = 20;

impl Store {
    /// The selected series, each on the selection's grid, sorted by key;
    /// a selection that matches nothing is an error.
    pub async fn load_grids(&self, sel: &GridSelection) -> Result<Vec<GridSeries>> {
        let patterns = sel
            .series
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|source| Error::BadPattern {
                    pattern: p.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let filter = SeriesFilter {
            app: match sel.apps.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            shard_type: sel.shard_type.clone(),
            metric: sel.metric.clone(),
            ..SeriesFilter::default()
        };
        let events = self.load_events().await?;
        let mut out = Vec::new();
        for s in self.load_series(&filter).await? {
            if !patterns.is_empty() && !patterns.iter().any(|p| p.matches(&s.key.series)) {
                continue;
            }
            if !sel.apps.is_empty() && !sel.apps.contains(&s.key.app) {
                continue;
            }
            let grid = match sel.base_step {
                Some(base) => resample(&s.ts, &s.value, base, sel.agg, GapFill::Linear)?
                    .coarsen(sel.step, sel.agg)?,
                None => resample(&s.ts, &s.value, sel.step, sel.agg, GapFill::Linear)?,
            };
            out.push(on_grid(&s.key, &grid, &events));
        }
        if out.is_empty() {
            return Err(Error::Selection {
                reason: "no series in the store match the selection".into(),
            });
        }
        Ok(out)
    }

    /// The one stored series whose id is `series`, narrowed by the key
    /// fields given in `within` (its `series` field is ignored). None, or
    /// several, is an error that lists what the store holds.
    pub async fn find_series(&self, series: &str, within: &SeriesFilter) -> Result<SeriesKey> {
        let all = self.list_series().await?;
        let wanted = |k: &SeriesKey| {
            k.series == series
                && within.app.as_ref().is_none_or(|a| &k.app == a)
                && within
                    .shard_type
                    .as_ref()
                    .is_none_or(|t| &k.shard_type == t)
                && within.metric.as_ref().is_none_or(|m| &k.metric == m)
        };
        let matches: Vec<&SeriesKey> = all.iter().map(|s| &s.key).filter(|k| wanted(k)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                let mut ids: Vec<&str> = all.iter().map(|s| s.key.series.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                let shown = ids.iter().take(SHOWN_IDS).copied().collect::<Vec<_>>();
                let narrowed =
                    within.app.is_some() || within.shard_type.is_some() || within.metric.is_some();
                Err(Error::Selection {
                    reason: format!(
                        "no series `{series}`{} in the store (it holds {} series: {}{})",
                        if narrowed {
                            " with the given app, shard type and metric"
                        } else {
                            ""
                        },
                        ids.len(),
                        shown.join(", "),
                        if ids.len() > SHOWN_IDS { ", …" } else { "" }
                    ),
                })
            }
            many => Err(Error::Selection {
                reason: format!(
                    "{} series are named `{series}`: {}; pick one by app, shard type or metric",
                    many.len(),
                    many.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// One series on a grid of `step`, or of the step it was sampled at
    /// ([`infer_step`]) when `step` is `None`.
    pub async fn load_grid(
        &self,
        key: &SeriesKey,
        step: Option<GridStep>,
        agg: Agg,
    ) -> Result<GridSeries> {
        let data = self.load_one(key).await?;
        let step = step.unwrap_or_else(|| infer_step(&data.ts));
        let grid = resample(&data.ts, &data.value, step, agg, GapFill::Linear).map_err(|e| {
            Error::Selection {
                reason: format!("cannot put `{key}` on a {step} grid: {e}"),
            }
        })?;
        let events = self.load_events().await?;
        Ok(on_grid(key, &grid, &events))
    }
}

fn on_grid(
    key: &SeriesKey,
    grid: &crate::resample::Grid,
    events: &[crate::ingest::Event],
) -> GridSeries {
    let start = grid.start.millis();
    let step = grid.step;
    GridSeries {
        key: key.clone(),
        step,
        start,
        values: grid.to_f32(),
        events: event_indicator(events, key, start, step.millis(), grid.values.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Event, PointBatch};

    fn key(app: &str, series: &str) -> SeriesKey {
        SeriesKey {
            app: app.into(),
            shard_type: "web".into(),
            metric: "cpu".into(),
            series: series.into(),
        }
    }

    async fn store(dir: &std::path::Path) -> Store {
        let store = Store::open(&dir.to_string_lossy()).unwrap();
        let mut batch = PointBatch::default();
        for (k, base) in [
            (key("a", "x1"), 0.0),
            (key("a", "y"), 10.0),
            (key("b", "x1"), 20.0),
        ] {
            for i in 0..12 {
                batch.push(&k, i * 300_000, base + i as f64);
            }
        }
        store.write_points(batch).await.unwrap();
        let event = Event {
            start: 600_000,
            end: 900_000,
            kind: "deploy".into(),
            scope: "a".into(),
            name: Some("release".into()),
        };
        store.write_events(vec![event]).await.unwrap();
        store
    }

    #[tokio::test]
    async fn a_selection_filters_by_app_and_glob_and_marks_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let step = GridStep::from_millis(600_000).unwrap();
        let sel = GridSelection {
            apps: vec!["a".into()],
            series: vec!["x*".into()],
            ..GridSelection::all(step)
        };
        let grids = store.load_grids(&sel).await.unwrap();
        assert_eq!(grids.len(), 1);
        let g = &grids[0];
        assert_eq!(g.key, key("a", "x1"));
        assert_eq!(g.values, [0.5, 2.5, 4.5, 6.5, 8.5, 10.5]);
        assert_eq!(g.events, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let both = GridSelection {
            apps: vec!["a".into(), "b".into()],
            series: vec!["x1".into()],
            ..GridSelection::all(step)
        };
        let grids = store.load_grids(&both).await.unwrap();
        assert_eq!(grids.len(), 2);
        assert_eq!(
            grids[1].events, [0.0; 6],
            "app b is outside the event's scope"
        );

        let none = GridSelection {
            series: vec!["z*".into()],
            ..GridSelection::all(step)
        };
        let e = store.load_grids(&none).await.unwrap_err().to_string();
        assert!(e.contains("no series"), "{e}");
        let bad = GridSelection {
            series: vec!["[".into()],
            ..GridSelection::all(step)
        };
        let e = store.load_grids(&bad).await.unwrap_err().to_string();
        assert!(e.contains("\"[\""), "{e}");
    }

    #[tokio::test]
    async fn a_series_is_found_by_its_id_alone_unless_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let any = SeriesFilter::default();
        assert_eq!(store.find_series("y", &any).await.unwrap(), key("a", "y"));
        let e = store.find_series("x1", &any).await.unwrap_err().to_string();
        assert!(e.contains("2 series are named `x1`"), "{e}");
        let in_b = SeriesFilter {
            app: Some("b".into()),
            ..SeriesFilter::default()
        };
        assert_eq!(
            store.find_series("x1", &in_b).await.unwrap(),
            key("b", "x1")
        );
        let e = store
            .find_series("nope", &any)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no series `nope`") && e.contains("2 series: x1, y"),
            "{e}"
        );
        // The grid step is inferred from the points' spacing.
        let g = store
            .load_grid(&key("a", "y"), None, Agg::Mean)
            .await
            .unwrap();
        assert_eq!((g.step.millis(), g.values.len()), (300_000, 12));
        assert_eq!(g.time_of(2), Timestamp(600_000));
    }
}

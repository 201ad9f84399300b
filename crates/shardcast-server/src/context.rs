//! Forecast context read from the store, cached per store version.
//!
//! A [`StoreView`] is one version of the store as the server sees it: the
//! series with their time ranges, and the events. The server refreshes it
//! when the store's manifest version changes (a background poll, and right
//! after its own writes), and subscribers to [`StoreContext::changes`] learn
//! of every new version. Grids of the recent history of a series are cached
//! for the version they were read at, so a forecast does not query Parquet
//! unless new data landed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use shardcast_core::{GridStep, SeriesKey};
use shardcast_store::Store;
use shardcast_store::ingest::Event;
use shardcast_store::query::{SeriesFilter, SeriesInfo};
use shardcast_store::resample::{Agg, GapFill, event_indicator, resample};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// One version of the store: its series and events.
#[derive(Debug, Default)]
pub struct StoreView {
    /// The manifest version.
    pub version: u64,
    /// Every series, by key.
    pub series: HashMap<SeriesKey, SeriesInfo>,
    /// Every event.
    pub events: Vec<Event>,
}

impl StoreView {
    /// The series of one app's shard type (and metric, when given), sorted.
    pub fn shard_type_series(
        &self,
        app: &str,
        shard_type: &str,
        metric: Option<&str>,
    ) -> Vec<SeriesKey> {
        let mut keys: Vec<SeriesKey> = self
            .series
            .keys()
            .filter(|k| {
                k.app == app && k.shard_type == shard_type && metric.is_none_or(|m| k.metric == m)
            })
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

/// The recent history of one series on a grid, with its event covariate
/// running `horizon` bins past the last value.
#[derive(Debug, Clone, PartialEq)]
pub struct GridTail {
    /// Time of `values[0]` (ms).
    pub start: i64,
    /// Grid spacing (ms).
    pub step: i64,
    /// Values, oldest first; the last one is the newest observed bin.
    pub values: Vec<f32>,
    /// Event indicator, `values.len() + horizon` long.
    pub events: Vec<f32>,
}

impl GridTail {
    /// Time of the newest value (ms).
    pub fn last_observed(&self) -> i64 {
        self.start + self.step * (self.values.len() as i64 - 1)
    }
}

type TailKey = (SeriesKey, i64, usize, usize);

/// The store as the forecast service reads it.
#[derive(Debug)]
pub struct StoreContext {
    store: Store,
    agg: Agg,
    view: RwLock<Arc<StoreView>>,
    tails: Mutex<(u64, HashMap<TailKey, Arc<GridTail>>)>,
    changes: watch::Sender<u64>,
    refresh: tokio::sync::Mutex<()>,
}

impl StoreContext {
    /// A context over `store`, resampling with `agg` (the aggregation the
    /// models were trained with). Call [`refresh`](Self::refresh) before use.
    pub fn new(store: Store, agg: Agg) -> Self {
        Self {
            store,
            agg,
            view: RwLock::new(Arc::new(StoreView::default())),
            tails: Mutex::new((0, HashMap::new())),
            changes: watch::channel(0).0,
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The current view.
    pub fn view(&self) -> Arc<StoreView> {
        Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// A receiver told the new version whenever the view changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Reads the store's manifest; when its version changed, rebuilds the
    /// view, drops cached grids and notifies subscribers. Returns whether it
    /// changed.
    pub async fn refresh(&self) -> Result<bool> {
        let _one_at_a_time = self.refresh.lock().await;
        let version = self.store.manifest().await?.version;
        if version == self.view().version && version != 0 {
            return Ok(false);
        }
        let series = if version == 0 {
            HashMap::new()
        } else {
            self.store
                .list_series()
                .await?
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect()
        };
        let events = if version == 0 {
            Vec::new()
        } else {
            self.store.load_events().await?
        };
        let changed = version != self.view().version;
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(StoreView {
            version,
            series,
            events,
        });
        if changed {
            tracing::debug!(version, "store view refreshed");
            self.changes.send_replace(version);
        }
        Ok(changed)
    }

    /// The last `points` grid bins of `key` at `step` (fewer when the series
    /// is shorter), with events `horizon` bins ahead.
    pub async fn tail(
        &self,
        key: &SeriesKey,
        step: GridStep,
        points: usize,
        horizon: usize,
    ) -> Result<Arc<GridTail>> {
        let view = self.view();
        let cache_key = (key.clone(), step.millis(), points, horizon);
        {
            let tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
            if tails.0 == view.version
                && let Some(t) = tails.1.get(&cache_key)
            {
                return Ok(Arc::clone(t));
            }
        }
        let info = view.series.get(key).ok_or_else(|| Error::UnknownSeries {
            key: key.to_string(),
        })?;
        let s = step.millis();
        // Start the read on a bin boundary so the first bin is whole.
        let last_bin = info.last.div_euclid(s) * s;
        let from = last_bin - s * (points as i64 - 1);
        let filter = SeriesFilter {
            from: Some(from),
            ..SeriesFilter::key(key)
        };
        let data = self
            .store
            .load_series(&filter)
            .await?
            .pop()
            .ok_or_else(|| Error::UnknownSeries {
                key: key.to_string(),
            })?;
        let grid = resample(&data.ts, &data.value, step, self.agg, GapFill::Linear)?;
        let mut values = grid.to_f32();
        let mut start = grid.start.millis();
        if values.len() > points {
            let cut = values.len() - points;
            values.drain(..cut);
            start += s * cut as i64;
        }
        let events = event_indicator(&view.events, key, start, s, values.len() + horizon);
        let tail = Arc::new(GridTail {
            start,
            step: s,
            values,
            events,
        });
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        if tails.0 != view.version {
            *tails = (view.version, HashMap::new());
        }
        tails.1.insert(cache_key, Arc::clone(&tail));
        Ok(tail)
    }

    /// The event covariate for an arbitrary grid (context overrides).
    pub fn events_for(&self, key: &SeriesKey, start: i64, step: i64, len: usize) -> Vec<f32> {
        event_indicator(&self.view().events, key, start, step, len)
    }
}

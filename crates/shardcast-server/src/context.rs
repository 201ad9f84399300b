//! Forecast context read from the store, cached per store version.
//!
//! A [`StoreView`] is one version of the store as the server sees it: the
//! series with their time ranges, and the events. The server refreshes it
//! when the store's manifest version changes (a background poll, and right
//! after its own writes), and subscribers to [`StoreContext::changes`] learn
//! of every new version. Grids of the recent history of a series are cached
//! for the version they were read at, so a forecast does not query Parquet
//! unless new data landed.
//!
//! Reads are shared and bounded: concurrent callers asking for the same
//! grid of the same version wait for one read (single flight), and at most
//! [`StoreContext::read_limit`] reads run at once, so open file handles and
//! the memory of scans in flight stay bounded however many requests and
//! streams ask. A read nobody waits for any more (its callers were
//! cancelled) is dropped at once; the next caller starts a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use prometheus_client::metrics::gauge::Gauge;
use shardcast_core::{GridStep, SeriesKey};
use shardcast_store::Store;
use shardcast_store::ingest::Event;
use shardcast_store::query::{SeriesFilter, SeriesInfo};
use shardcast_store::resample::{Agg, GapFill, event_indicator, resample};
use tokio::sync::{Semaphore, watch};

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

/// A read of one grid, shared by every caller that waits for it. Errors are
/// shared too, so they are behind an `Arc`.
type Read = Shared<BoxFuture<'static, Result<Arc<GridTail>, Arc<Error>>>>;

/// A cached grid, or the read that is fetching it. The cache holds reads
/// weakly: when every caller has gone, the read is dropped with them.
enum Slot {
    Ready(Arc<GridTail>),
    Reading(WeakShared<BoxFuture<'static, Result<Arc<GridTail>, Arc<Error>>>>),
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(t) => f.debug_tuple("Ready").field(&t.values.len()).finish(),
            Self::Reading(_) => f.write_str("Reading"),
        }
    }
}

/// Most grid reads running at once by default.
pub const DEFAULT_READS: usize = 4;

/// The store as the forecast service reads it.
#[derive(Debug)]
pub struct StoreContext {
    store: Store,
    agg: Agg,
    view: RwLock<Arc<StoreView>>,
    tails: Mutex<(u64, HashMap<TailKey, Slot>)>,
    changes: watch::Sender<u64>,
    refresh: tokio::sync::Mutex<()>,
    reads: Arc<Semaphore>,
    read_limit: usize,
    reading: Gauge,
    started: AtomicU64,
}

/// Counts a read in flight for as long as it lives.
struct Reading(Gauge);

impl Reading {
    fn start(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl StoreContext {
    /// A context over `store`, resampling with `agg` (the aggregation the
    /// models were trained with), running at most [`DEFAULT_READS`] reads at
    /// once. Call [`refresh`](Self::refresh) before use.
    pub fn new(store: Store, agg: Agg) -> Self {
        Self::with_reads(store, agg, DEFAULT_READS, Gauge::default())
    }

    /// [`new`](Self::new) with at most `reads` grid reads running at once
    /// (at least one), counting the reads in flight in `reading`.
    pub fn with_reads(store: Store, agg: Agg, reads: usize, reading: Gauge) -> Self {
        let reads = reads.max(1);
        Self {
            store,
            agg,
            view: RwLock::new(Arc::new(StoreView::default())),
            tails: Mutex::new((0, HashMap::new())),
            changes: watch::channel(0).0,
            refresh: tokio::sync::Mutex::new(()),
            reads: Arc::new(Semaphore::new(reads)),
            read_limit: reads,
            reading,
            started: AtomicU64::new(0),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Most grid reads that run at once.
    pub fn read_limit(&self) -> usize {
        self.read_limit
    }

    /// Grid reads running or waiting for their turn now.
    pub fn reads_in_flight(&self) -> i64 {
        self.reading.get()
    }

    /// Grid reads started since the context was made (shared reads count
    /// once, however many callers waited for them).
    pub fn reads_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
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
    /// is shorter), with events `horizon` bins ahead. Concurrent callers of
    /// the same grid share one read; a grid read at this store version is
    /// answered from the cache.
    pub async fn tail(
        &self,
        key: &SeriesKey,
        step: GridStep,
        points: usize,
        horizon: usize,
    ) -> Result<Arc<GridTail>> {
        let cache_key = (key.clone(), step.millis(), points, horizon);
        let (version, read) = {
            let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
            // Views only move forward: one newer than the cache empties it.
            let view = self.view();
            if tails.0 != view.version {
                *tails = (view.version, HashMap::new());
            }
            let shared = match tails.1.get(&cache_key) {
                Some(Slot::Ready(t)) => return Ok(Arc::clone(t)),
                Some(Slot::Reading(weak)) => weak.upgrade(),
                None => None,
            };
            let read = match shared {
                Some(r) => r,
                None => {
                    let info = view.series.get(key).ok_or_else(|| Error::UnknownSeries {
                        key: key.to_string(),
                    })?;
                    let read = self.read(&view, key, info.last, step, points, horizon);
                    if let Some(weak) = read.downgrade() {
                        tails.1.insert(cache_key.clone(), Slot::Reading(weak));
                    }
                    read
                }
            };
            (view.version, read)
        };
        let out = read.clone().await;
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        if tails.0 == version {
            let ours = matches!(
                tails.1.get(&cache_key),
                Some(Slot::Reading(w)) if w.upgrade().is_some_and(|r| r.ptr_eq(&read))
            );
            match &out {
                // The first caller back stores the grid.
                Ok(t) if ours => {
                    tails.1.insert(cache_key, Slot::Ready(Arc::clone(t)));
                }
                // A failed read is not cached: the next caller tries again.
                Err(_) if ours => {
                    tails.1.remove(&cache_key);
                }
                _ => {}
            }
        }
        out.map_err(Error::Shared)
    }

    /// The shared read of one grid: waits for a read slot, loads the points
    /// from the read's start on, and puts them on the grid.
    fn read(
        &self,
        view: &Arc<StoreView>,
        key: &SeriesKey,
        last: i64,
        step: GridStep,
        points: usize,
        horizon: usize,
    ) -> Read {
        let (store, agg, reads) = (self.store.clone(), self.agg, Arc::clone(&self.reads));
        let (view, key) = (Arc::clone(view), key.clone());
        let counted = Reading::start(&self.reading);
        self.started.fetch_add(1, Ordering::Relaxed);
        async move {
            let _counted = counted;
            let _turn = reads
                .acquire_owned()
                .await
                .map_err(|_| Arc::new(Error::ShuttingDown))?;
            let s = step.millis();
            // Start the read on a bin boundary so the first bin is whole.
            let last_bin = last.div_euclid(s) * s;
            let from = last_bin - s * (points as i64 - 1);
            let filter = SeriesFilter {
                from: Some(from),
                ..SeriesFilter::key(&key)
            };
            let data = store
                .load_series(&filter)
                .await
                .map_err(|e| Arc::new(Error::Store(e)))?
                .pop()
                .ok_or_else(|| {
                    Arc::new(Error::UnknownSeries {
                        key: key.to_string(),
                    })
                })?;
            let grid = resample(&data.ts, &data.value, step, agg, GapFill::Linear)
                .map_err(|e| Arc::new(Error::Store(e)))?;
            let mut values = grid.to_f32();
            let mut start = grid.start.millis();
            if values.len() > points {
                let cut = values.len() - points;
                values.drain(..cut);
                start += s * cut as i64;
            }
            let events = event_indicator(&view.events, &key, start, s, values.len() + horizon);
            Ok(Arc::new(GridTail {
                start,
                step: s,
                values,
                events,
            }))
        }
        .boxed()
        .shared()
    }

    /// The event covariate for an arbitrary grid (context overrides).
    pub fn events_for(&self, key: &SeriesKey, start: i64, step: i64, len: usize) -> Vec<f32> {
        event_indicator(&self.view().events, key, start, step, len)
    }
}

//! A real server for the tests: a store in a temporary directory with
//! synthetic series on the bundled model's 5-minute grid, the bundled model
//! as version 1, and `shardcast_server::serve` on a free loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_core::SeriesKey;
use shardcast_proto::forecast::v1 as pb;
use shardcast_server::{ServerConfig, State};
use shardcast_store::Store;
use shardcast_store::ingest::PointBatch;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// The bundled model's grid (ms).
pub(crate) const STEP_MS: i64 = 300_000;
/// First point of every series (a whole day, so on every grid).
pub(crate) const T0: i64 = 1_699_920_000_000;
pub(crate) const APP: &str = "app";
pub(crate) const SHARD_TYPE: &str = "web";
pub(crate) const METRIC: &str = "requests";

/// The bundled model's directory.
pub(crate) fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/1")
}

/// The name of series `i`.
pub(crate) fn series(i: usize) -> String {
    format!("s{i:04}")
}

/// The wire key of series `i`.
pub(crate) fn key(i: usize) -> pb::SeriesKey {
    pb::SeriesKey {
        app: APP.into(),
        shard_type: SHARD_TYPE.into(),
        metric: METRIC.into(),
        series: series(i),
    }
}

/// A `StreamForecasts` request for the first `keys` series.
pub(crate) fn stream_request(keys: usize) -> pb::StreamForecastsRequest {
    pb::StreamForecastsRequest {
        keys: (0..keys).map(key).collect(),
        horizon: 0,
        quantiles: vec![0.1, 0.5, 0.9],
    }
}

/// A unary `Forecast` request for one stored series.
pub(crate) fn unary_request() -> pb::ForecastRequest {
    pb::ForecastRequest {
        key: Some(key(7)),
        ..Default::default()
    }
}

/// A temporary store and models directory.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
}

impl Fixture {
    /// `series` series of `points` points each (a daily cycle plus a level
    /// per series), written in two batches, and the bundled model as
    /// version 1.
    pub(crate) async fn new(series_count: usize, points: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Self { dir };
        let store = Store::open(f.store().to_str().unwrap()).unwrap();
        let keys: Vec<SeriesKey> = (0..series_count)
            .map(|i| SeriesKey::new(APP, SHARD_TYPE, METRIC, series(i)).unwrap())
            .collect();
        let half = points / 2;
        for range in [0..half, half..points] {
            let mut batch = PointBatch {
                keys: keys.clone(),
                ..PointBatch::default()
            };
            for k in 0..series_count {
                for p in range.clone() {
                    let day = (p % 288) as f64 / 288.0 * std::f64::consts::TAU;
                    batch.key_idx.push(k as u32);
                    batch.ts.push(T0 + STEP_MS * p as i64);
                    batch
                        .value
                        .push(100.0 + k as f64 + 40.0 * day.sin() + (p % 7) as f64);
                }
            }
            store.write_points(batch).await.unwrap();
        }
        f.add_version(1, &["config.json", "model.safetensors", "metrics.json"]);
        f
    }

    pub(crate) fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub(crate) fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// Copies `files` of the bundled model into version `version`'s
    /// directory (in place, not renamed: as a slow copy would).
    pub(crate) fn add_version(&self, version: u32, files: &[&str]) -> PathBuf {
        let dst = self.models().join("default").join(version.to_string());
        std::fs::create_dir_all(&dst).unwrap();
        for f in files {
            std::fs::copy(bundled().join(f), dst.join(f)).unwrap();
        }
        dst
    }

    /// A config over this store and models directory, polling often.
    pub(crate) fn config(&self) -> ServerConfig {
        let mut cfg = ServerConfig::new(self.store().to_str().unwrap(), self.models());
        cfg.model_poll = Duration::from_millis(50);
        cfg.store_poll = Duration::from_millis(100);
        cfg
    }
}

/// A server running in this process on a free loopback port.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<State>,
    server: shardcast_server::Running,
}

impl Running {
    pub(crate) async fn start(cfg: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = State::open(&cfg).await.unwrap();
        let server =
            shardcast_server::Running::spawn(listener, None, Arc::clone(&state), cfg).unwrap();
        Self {
            addr: server.addr(),
            state,
            server,
        }
    }

    /// A new connection.
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Shuts the server down and waits for it.
    pub(crate) async fn stop(self) {
        self.server.stop().await.unwrap();
    }
}

/// Waits, polling, until `done` holds; panics with `what` (and what
/// `state` says at the end) if it does not within `limit`. The limit is a
/// bound on a hang, far above what the condition needs, not a measurement.
pub(crate) async fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < until,
            "{what} did not happen within {limit:?}: {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

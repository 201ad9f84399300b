//! `shardcast serve` on loopback: forecasts equal the model crate's own,
//! bad requests are refused without harming others, new data and new model
//! versions are picked up under load, and the operational endpoints work.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use shardcast_core::{GridStep, SeriesKey};
use shardcast_model::forecaster::{Model, SeriesInput};
use shardcast_proto::forecast::v1 as pb;
use shardcast_proto::forecast::v1::forecast_service_client::ForecastServiceClient;
use shardcast_proto::ingest::v1 as ipb;
use shardcast_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use shardcast_proto::model::v1 as mpb;
use shardcast_proto::model::v1::model_service_client::ModelServiceClient;
use shardcast_store::Store;
use shardcast_store::resample::{Agg, GapFill, resample};
use tonic::Code;
use tonic::transport::Channel;

use super::{ok, repo};

const SERIES: [&str; 2] = ["ec2_cpu_utilization_5f5533", "ec2_cpu_utilization_825cc2"];

/// A store with the bundled EC2 traces and a models dir with the bundled
/// model as version 1.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        ok(&[
            "ingest",
            "--store",
            store.to_str().unwrap(),
            "--app",
            "aws",
            "--shard-type",
            "ec2-cpu",
            "data/sample/nab/ec2_cpu_*.csv",
        ]);
        let f = Self { dir };
        f.add_version(1);
        f
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// Copies the bundled model in as `version`, written aside and renamed
    /// into place as `shardcast train` does.
    fn add_version(&self, version: u32) -> PathBuf {
        self.add_version_with(version, |_| {})
    }

    /// [`add_version`](Self::add_version), with `edit` applied to the files
    /// before they are published.
    fn add_version_with(&self, version: u32, edit: impl FnOnce(&std::path::Path)) -> PathBuf {
        let root = self.models().join("default");
        let tmp = root.join(format!(".tmp-{version}"));
        std::fs::create_dir_all(&tmp).unwrap();
        for f in ["config.json", "model.safetensors", "metrics.json"] {
            std::fs::copy(repo().join("models/default/1").join(f), tmp.join(f)).unwrap();
        }
        edit(&tmp);
        let dst = root.join(version.to_string());
        std::fs::rename(&tmp, &dst).unwrap();
        dst
    }

    pub(crate) fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "serve".to_owned(),
            "--store".into(),
            self.store().to_str().unwrap().into(),
            "--models-dir".into(),
            self.models().to_str().unwrap().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--model-poll-ms".into(),
            "50".into(),
            "--store-poll-ms".into(),
            "50".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Server::start(&args)
    }
}

/// A running `shardcast serve`, killed on drop. Its log goes to a file,
/// so a failing test can show it.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    metrics: Option<String>,
    log: tempfile::NamedTempFile,
}

impl Server {
    pub(crate) fn start(args: &[String]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(args)
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut metrics) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(m) = line.strip_prefix("metrics on http://") {
                metrics = Some(m.trim_end_matches("/metrics").to_owned());
            }
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.to_owned());
                if args.iter().all(|a| a != "--metrics-listen") || metrics.is_some() {
                    break;
                }
            }
            if metrics.is_some() && addr.is_some() {
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = child.wait();
            panic!(
                "server did not start: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            metrics,
            log,
        }
    }

    /// What the server has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn forecasts(&self) -> ForecastServiceClient<Channel> {
        ForecastServiceClient::new(self.channel().await)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(series: &str) -> pb::SeriesKey {
    pb::SeriesKey {
        app: "aws".into(),
        shard_type: "ec2-cpu".into(),
        metric: "value".into(),
        series: series.into(),
    }
}

fn request(series: &str) -> pb::ForecastRequest {
    pb::ForecastRequest {
        key: Some(key(series)),
        ..Default::default()
    }
}

/// The model crate's own forecast of the newest horizon of `series`.
async fn direct(f: &Fixture, series: &str) -> Vec<f32> {
    let model = Model::load(&f.models().join("default/1")).unwrap();
    let store = Store::open(f.store().to_str().unwrap()).unwrap();
    let k = SeriesKey::new("aws", "ec2-cpu", "value", series).unwrap();
    let data = store.load_one(&k).await.unwrap();
    let step = GridStep::from_millis(model.step_ms()).unwrap();
    let grid = resample(&data.ts, &data.value, step, Agg::Mean, GapFill::Linear).unwrap();
    let values = grid.to_f32();
    let events = vec![0f32; values.len() + model.config().horizon];
    let input = SeriesInput {
        series: model.series_row(&k.to_string()),
        shard_type: model.shard_type_row("ec2-cpu"),
        start: grid.start.millis(),
        step: model.step_ms(),
        values: &values,
        events: Some(&events),
    };
    assert!(input.series > 0, "the bundled model knows {series}");
    model.forecast(&[(input, values.len())]).unwrap()
}

fn flat(f: &pb::Forecast) -> Vec<f32> {
    f.steps.iter().flat_map(|s| s.values.clone()).collect()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * y.abs().max(1.0),
            "value {i}: {x} vs {y}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_equal_the_model_crate_and_bad_requests_are_refused() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let mut c = server.forecasts().await;

    // One series: the same numbers as the model crate on the same history.
    let got = c.forecast(request(SERIES[0])).await.unwrap().into_inner();
    let fc = got.forecast.unwrap();
    assert_eq!(
        (fc.model.as_str(), fc.model_version, fc.step_ms),
        ("default", 1, 300_000)
    );
    assert_eq!(fc.quantiles.len(), 13);
    assert_eq!(fc.steps.len(), 12);
    assert_eq!(
        fc.steps[0].timestamp_unix_ms,
        fc.last_observed_unix_ms + 300_000
    );
    let want = direct(&f, SERIES[0]).await;
    assert_close(&flat(&fc), &want);

    // A subset of the levels and a shorter horizon.
    let mut r = request(SERIES[0]);
    r.horizon = 3;
    r.quantiles = vec![0.1, 0.5, 0.9];
    let sub = c.forecast(r).await.unwrap().into_inner().forecast.unwrap();
    assert_eq!(sub.steps.len(), 3);
    for (i, s) in sub.steps.iter().enumerate() {
        // 0.1, 0.5 and 0.9 are levels 2, 6 and 10 of the protocol's 13.
        let row = &want[i * 13..(i + 1) * 13];
        assert_close(&s.values, &[row[2], row[6], row[10]]);
    }

    // Batches answer in request order, with the same numbers.
    let batch = c
        .forecast_batch(pb::ForecastBatchRequest {
            requests: vec![request(SERIES[1]), request(SERIES[0])],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.forecasts.len(), 2);
    assert_eq!(batch.forecasts[1].key.as_ref().unwrap().series, SERIES[0]);
    assert_close(&flat(&batch.forecasts[1]), &want);
    assert_close(&flat(&batch.forecasts[0]), &direct(&f, SERIES[1]).await);

    // The shard type's total is the level-by-level sum of its series that
    // end at the newest bin; the bundled EC2 traces end on different days,
    // so the older one is reported stale, not added to other times.
    let st = c
        .forecast_shard_type(pb::ForecastShardTypeRequest {
            app: "aws".into(),
            shard_type: "ec2-cpu".into(),
            per_series: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.series.len(), st.stale.len()), (1, 1));
    let total = st.total.as_ref().unwrap();
    assert_eq!(
        total.steps[0].timestamp_unix_ms,
        st.series[0].steps[0].timestamp_unix_ms
    );
    assert_close(&flat(total), &flat(&st.series[0]));
    assert_ne!(
        st.stale[0].series,
        st.series[0].key.as_ref().unwrap().series
    );

    // Shard demand: a proper CDF and a sentence.
    let d = c
        .shard_demand(pb::ShardDemandRequest {
            key: Some(pb::SeriesKey {
                series: String::new(),
                ..key("")
            }),
            shard_capacity: 20.0,
            current_shards: 2,
            lookahead_steps: 12,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        d.cdf
            .windows(2)
            .all(|w| w[1].shards == w[0].shards + 1 && w[1].probability >= w[0].probability)
    );
    assert!(d.cdf.last().unwrap().probability >= 0.999);
    assert!(d.shards_p50 <= d.shards_p80 && d.shards_p80 <= d.shards_p99);
    assert!(
        d.summary.contains("within the next 1 h") || d.summary.contains("cover the next 1 h"),
        "{}",
        d.summary
    );

    // Bad requests: the right code and a message naming the field.
    let bad = |r: pb::ForecastRequest| {
        let mut c = c.clone();
        async move { c.forecast(r).await.unwrap_err() }
    };
    let mut r = request(SERIES[0]);
    r.horizon = 99;
    let e = bad(r).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("horizon") && e.message().contains("at most 12"),
        "{e}"
    );
    let mut r = request(SERIES[0]);
    r.quantiles = vec![0.5, 1.5];
    let e = bad(r).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("quantiles"), "{e}");
    let e = bad(request("no_such_series")).await;
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("no_such_series"), "{e}");
    let e = bad(pb::ForecastRequest::default()).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("key: missing"), "{e}");
    let mut r = request(SERIES[0]);
    r.context = Some(pb::ContextOverride {
        start_unix_ms: 0,
        values: vec![1.0, f32::NAN, 3.0],
    });
    let e = bad(r).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("context.values[1]"), "{e}");
    let e = c
        .forecast_batch(pb::ForecastBatchRequest { requests: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("empty batch"), "{e}");
    let e = c
        .forecast_batch(pb::ForecastBatchRequest {
            requests: vec![request(SERIES[0]); 300],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 256"), "{e}");
    let e = c
        .shard_demand(pb::ShardDemandRequest {
            key: Some(key(SERIES[0])),
            shard_capacity: -1.0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A context override forecasts from the given values instead.
    let mut r = request(SERIES[0]);
    r.context = Some(pb::ContextOverride {
        start_unix_ms: 1_400_000_000_000,
        values: vec![50.0; 300],
    });
    let o = c.forecast(r).await.unwrap().into_inner().forecast.unwrap();
    assert_eq!(o.last_observed_unix_ms, 1_400_000_000_000 + 299 * 300_000);

    // Concurrent good and bad requests share batches; the bad ones cannot
    // spoil the good ones.
    let mut tasks = Vec::new();
    for i in 0..48 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = request(SERIES[i % 2]);
            if i % 3 == 0 {
                r.quantiles = vec![f64::NAN];
            }
            (i, c.forecast(r).await)
        }));
    }
    let want1 = direct(&f, SERIES[1]).await;
    for t in tasks {
        let (i, out) = t.await.unwrap();
        if i % 3 == 0 {
            assert_eq!(out.unwrap_err().code(), Code::InvalidArgument);
        } else {
            let fc = out.unwrap().into_inner().forecast.unwrap();
            assert_close(&flat(&fc), if i % 2 == 0 { &want } else { &want1 });
        }
    }

    // Prometheus metrics are not served unless asked for.
    assert!(server.metrics.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_versions_serve_the_same_forecasts() {
    let f = Fixture::new();
    let dir = f.models().join("default/1");
    ok(&["export-onnx", "--model", dir.to_str().unwrap()]);
    let server = f.serve(&["--format", "onnx"]);
    let mut c = server.forecasts().await;
    for s in SERIES {
        let fc = c
            .forecast(request(s))
            .await
            .unwrap()
            .into_inner()
            .forecast
            .unwrap();
        assert_close(&flat(&fc), &direct(&f, s).await);
    }
    // A new version without model.onnx is passed over, not served.
    f.add_version(2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fc = c
        .forecast(request(SERIES[0]))
        .await
        .unwrap()
        .into_inner()
        .forecast
        .unwrap();
    assert_eq!(fc.model_version, 1);
    let mut m = ModelServiceClient::new(server.channel().await);
    let list = m
        .list_models(mpb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.versions[0].cell, "onnx");
    let st = m.reload(mpb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(
        st.refused.is_empty(),
        "passed over, not refused: {:?}",
        st.refused
    );
}

fn point(series: &str, ts: i64, value: f64) -> ipb::Point {
    ipb::Point {
        key: Some(key(series)),
        timestamp_unix_ms: ts,
        value,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_in_the_store_and_streams_follow_them() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let mut c = server.forecasts().await;
    let mut ingest = IngestServiceClient::new(server.channel().await);
    let first = c
        .forecast(request(SERIES[0]))
        .await
        .unwrap()
        .into_inner()
        .forecast
        .unwrap();
    let last = first.last_observed_unix_ms;

    // A stream answers at once, then again when new data lands.
    let mut stream = c
        .stream_forecasts(pb::StreamForecastsRequest {
            keys: vec![key(SERIES[0])],
            horizon: 6,
            quantiles: vec![0.5],
        })
        .await
        .unwrap()
        .into_inner();
    let s1 = stream.message().await.unwrap().unwrap();
    assert_eq!(s1.last_observed_unix_ms, last);
    assert_eq!((s1.steps.len(), s1.quantiles.len()), (6, 1));

    // An invalid point fails the whole write; nothing is stored.
    let bad = vec![ipb::WriteRequest {
        points: vec![
            point(SERIES[0], last + 300_000, 1.0),
            point(SERIES[0], last + 600_000, f64::INFINITY),
        ],
    }];
    let e = ingest.write(tokio_stream::iter(bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("messages[0].points[1].value"), "{e}");
    let again = c
        .forecast(request(SERIES[0]))
        .await
        .unwrap()
        .into_inner()
        .forecast
        .unwrap();
    assert_eq!(again.last_observed_unix_ms, last);

    // Two messages, one atomic batch: the existing series grows and a new
    // series appears.
    let msgs = vec![
        ipb::WriteRequest {
            points: (1..=3)
                .map(|i| point(SERIES[0], last + i * 300_000, 55.0))
                .collect(),
        },
        ipb::WriteRequest {
            points: (0..400)
                .map(|i| point("fresh", i * 300_000, 10.0 + (i % 7) as f64))
                .collect(),
        },
    ];
    let w = ingest
        .write(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.rows, 403);
    let s2 = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a new forecast after the write")
        .unwrap()
        .unwrap();
    assert_eq!(s2.last_observed_unix_ms, last + 3 * 300_000);
    let fresh = c
        .forecast(request("fresh"))
        .await
        .unwrap()
        .into_inner()
        .forecast
        .unwrap();
    assert_eq!(fresh.last_observed_unix_ms, 399 * 300_000);
    let e = ingest
        .write(tokio_stream::iter(Vec::<ipb::WriteRequest>::new()))
        .await
        .unwrap_err();
    assert!(e.message().contains("no points"), "{e}");
}

/// What [`load`] returns: the client tasks, each client's newest version,
/// and the count of failed calls.
type Load = (
    Vec<tokio::task::JoinHandle<Vec<u32>>>,
    Vec<Arc<AtomicU32>>,
    Arc<AtomicUsize>,
);

/// Runs `clients` loops of forecasts until `stop`. Each task returns the
/// model versions it was answered by, repeats collapsed; `latest[i]` holds
/// the version of client `i`'s newest answer (0 before its first);
/// `failures` counts failed calls.
fn load(server: &Server, clients: usize, stop: Arc<AtomicBool>) -> Load {
    let failures = Arc::new(AtomicUsize::new(0));
    let latest: Vec<_> = (0..clients).map(|_| Arc::new(AtomicU32::new(0))).collect();
    let addr = format!("http://{}", server.addr);
    let tasks = (0..clients)
        .map(|i| {
            let (stop, failures, latest, addr) = (
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&latest[i]),
                addr.clone(),
            );
            tokio::spawn(async move {
                let ch = Channel::from_shared(addr).unwrap().connect().await.unwrap();
                let mut c = ForecastServiceClient::new(ch);
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match c.forecast(request(SERIES[i % 2])).await {
                        Ok(r) => {
                            let v = r.into_inner().forecast.unwrap().model_version;
                            latest.store(v, Ordering::Relaxed);
                            if seen.last() != Some(&v) {
                                seen.push(v);
                            }
                        }
                        Err(e) => {
                            eprintln!("failed under load: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                seen
            })
        })
        .collect();
    (tasks, latest, failures)
}

/// Waits until `ready` holds, checking every 20 ms; fails after a minute
/// (a guard against hanging, not a timing requirement).
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every client's newest answer came from `version`.
async fn all_served_by(latest: &[Arc<AtomicU32>], version: u32) {
    until(
        &format!("every client answered by version {version}"),
        || latest.iter().all(|l| l.load(Ordering::Relaxed) == version),
    )
    .await;
}

/// The value of an unlabelled counter or gauge in `/metrics`' text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_model_versions_are_served_under_load_without_a_failed_request() {
    let f = Fixture::new();
    let server = f.serve(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics.clone().unwrap();
    let polls = || {
        metric(
            &http_get(&metrics, "/metrics"),
            "shardcast_model_polls_total",
        )
    };
    let mut models = ModelServiceClient::new(server.channel().await);
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, latest, failures) = load(&server, 4, Arc::clone(&stop));
    all_served_by(&latest, 1).await;

    // A corrupt version 3 is refused; a good version 2 is picked up.
    f.add_version_with(3, |dir| {
        let w = dir.join("model.safetensors");
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..100]).unwrap();
    });
    f.add_version(2);
    all_served_by(&latest, 2).await;

    // Roll back to 1 under load: it stays pinned through two passes of the
    // poller, then a reload serves 2 again (3 still refused).
    let st = models
        .rollback(mpb::RollbackRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.serving.unwrap().version, 1);
    all_served_by(&latest, 1).await;
    let after_rollback = polls();
    until("two model polls after the rollback", || {
        polls() >= after_rollback + 2.0
    })
    .await;
    let st = models
        .reload(mpb::ReloadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.serving.unwrap().version, 2);
    assert!(
        st.refused.iter().any(|r| r.starts_with("version 3")),
        "{:?}",
        st.refused
    );
    all_served_by(&latest, 2).await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        // Every client saw each switch once, in order: 1 stayed pinned
        // until the reload.
        assert_eq!(t.await.unwrap(), vec![1, 2, 1, 2]);
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request may fail during reloads"
    );

    let list = models
        .list_models(mpb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let vs: Vec<(u32, bool)> = list
        .versions
        .iter()
        .map(|v| (v.version, v.serving))
        .collect();
    assert_eq!(vs, vec![(1, false), (2, true), (3, false)]);
    assert_eq!(list.versions[1].cell, "gru");
    let e = models
        .rollback(mpb::RollbackRequest { version: 7 })
        .await
        .unwrap_err();
    assert!(e.message().contains("version 7"), "{e}");

    // The metrics endpoint counts what happened.
    let text = http_get(server.metrics.as_deref().unwrap(), "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for want in [
        "shardcast_grpc_requests_total{method=\"Forecast\",code=\"Ok\"}",
        "shardcast_grpc_request_duration_seconds_bucket",
        "shardcast_inference_batch_size_count",
        "shardcast_model_version 2",
        "shardcast_inference_queue_depth",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
    assert!(http_get(server.metrics.as_deref().unwrap(), "/nope").starts_with("HTTP/1.1 404"));
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_auth_tls_health_and_graceful_shutdown() {
    let f = Fixture::new();

    // A queue of 2 with one forecast per batch overflows on a big batch:
    // RESOURCE_EXHAUSTED, and the server keeps serving.
    let server = f.serve(&[
        "--queue",
        "2",
        "--max-batch",
        "1",
        "--max-wait-us",
        "0",
        "--max-series",
        "1000",
    ]);
    let mut c = server.forecasts().await;
    c.forecast(request(SERIES[0])).await.unwrap();
    let e = c
        .forecast_batch(pb::ForecastBatchRequest {
            requests: vec![request(SERIES[0]); 500],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("overloaded"), "{e}");
    c.forecast(request(SERIES[0])).await.unwrap();
    c.forecast(request(SERIES[0])).await.unwrap();
    drop(server);

    // A passed deadline is answered with an error, not a late forecast, and
    // the server goes on. Batches here wait 2 s to fill, so a call with a
    // 200 ms deadline is certain to pass it while queued.
    let server = f.serve(&[
        "--max-batch",
        "4096",
        "--max-wait-us",
        "2000000",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut c = server.forecasts().await;
    let mut r = tonic::Request::new(pb::ForecastBatchRequest {
        requests: vec![request(SERIES[0]); 100],
    });
    r.set_timeout(Duration::from_millis(200));
    let e = c.forecast_batch(r).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e}"
    );
    c.forecast(request(SERIES[0])).await.unwrap();
    // The call dropped at its deadline is counted.
    let text = http_get(server.metrics.as_deref().unwrap(), "/metrics");
    assert!(
        text.contains(
            "shardcast_grpc_requests_total{method=\"ForecastBatch\",code=\"Cancelled\"} 1"
        ),
        "{text}"
    );
    drop(server);

    // Bearer tokens, from a file (never the command line); refusals are
    // counted.
    let token = f.dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let server = f.serve(&[
        "--token-file",
        token.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut c = server.forecasts().await;
    let e = c.forecast(request(SERIES[0])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut r = tonic::Request::new(request(SERIES[0]));
    r.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        c.forecast(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut r = tonic::Request::new(request(SERIES[0]));
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    c.forecast(r).await.unwrap();
    let text = http_get(server.metrics.as_deref().unwrap(), "/metrics");
    assert!(
        text.contains("shardcast_grpc_requests_total{method=\"*\",code=\"Unauthenticated\"} 2"),
        "{text}"
    );
    // Health needs no token.
    let mut h = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "shardcast.forecast.v1.ForecastService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(server);

    // TLS with a self-signed certificate.
    let tls = repo().join("tests/fixtures/tls");
    let server = f.serve(&[
        "--tls-cert",
        tls.join("server.pem").to_str().unwrap(),
        "--tls-key",
        tls.join("server.key").to_str().unwrap(),
    ]);
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(tls.join("ca.pem")).unwrap());
    let ch = Channel::from_shared(format!("https://localhost:{}", port(&server.addr)))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    ForecastServiceClient::new(ch)
        .forecast(request(SERIES[0]))
        .await
        .unwrap();
    // Plain text to a TLS port fails.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            ForecastServiceClient::new(ch)
                .forecast(request(SERIES[0]))
                .await
                .is_err()
        );
    }
    drop(server);

    // SIGTERM with an open stream: the stream ends with UNAVAILABLE and the
    // server stops cleanly.
    let mut server = f.serve(&[]);
    let mut c = server.forecasts().await;
    c.forecast(request(SERIES[0])).await.unwrap();
    let mut stream = c
        .stream_forecasts(pb::StreamForecastsRequest {
            keys: vec![key(SERIES[0])],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let end = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the stream ends on shutdown");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "server exit status {status}");
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn serve_refuses_a_missing_model_and_a_bad_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = super::shardcast(&[
        "serve",
        "--store",
        dir.path().join("s").to_str().unwrap(),
        "--models-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no loadable model"), "{err}");
    let out = super::shardcast(&["serve", "--listen", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

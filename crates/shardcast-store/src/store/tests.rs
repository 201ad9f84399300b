use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    PutMultipartOptions, PutResult,
};

use super::*;

#[test]
fn segments_are_path_safe() {
    assert_eq!(encode_segment("shop-eu_1.x"), "shop-eu_1.x");
    assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
}

#[test]
fn partition_sorts_by_key_then_time_and_keeps_duplicates() {
    let k1 = SeriesKey::new("a", "t", "m", "s1").unwrap();
    let k2 = SeriesKey::new("a", "t", "m", "s0").unwrap();
    let mut b = PointBatch::default();
    for (k, ts, v) in [
        (&k1, 5, 1.0),
        (&k2, 3, 2.0),
        (&k1, 1, 3.0),
        (&k1, 5, 4.0),
        (&k2, 86_400_001, 5.0),
    ] {
        b.push(k, ts, v);
    }
    let parts = partition(&b);
    assert_eq!(parts.len(), 2);
    let vals: Vec<f64> = parts[0].rows.iter().map(|&r| b.value[r as usize]).collect();
    assert_eq!(vals, vec![2.0, 3.0, 1.0, 4.0]);
    assert_eq!(parts[1].rows.len(), 1);
    assert_eq!((parts[0].min_ts, parts[0].max_ts), (1, 5));
}

/// An object store that fails every put after the first `allowed`.
#[derive(Debug)]
struct FailingStore {
    inner: InMemory,
    allowed: AtomicUsize,
}

impl std::fmt::Display for FailingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailingStore")
    }
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let left = self.allowed.load(Ordering::SeqCst);
        if left == 0 {
            return Err(object_store::Error::Generic {
                store: "FailingStore",
                source: "injected put failure".into(),
            });
        }
        self.allowed.store(left - 1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn key(series: &str) -> SeriesKey {
    SeriesKey::new("app", "web", "cpu", series).unwrap()
}

/// Points of two series over two days, 5-minute spacing.
fn sample(value: f64) -> PointBatch {
    let mut b = PointBatch::default();
    for i in 0..600i64 {
        b.push(&key("a"), i * 300_000, value + i as f64);
        b.push(&key("b"), i * 300_000, -value);
    }
    b
}

fn memory_store() -> Store {
    Store::with_object_store(
        Arc::new(InMemory::new()),
        Url::parse("memory:///").unwrap(),
        "root",
    )
}

async fn snapshot(store: &Store) -> BTreeMap<String, Vec<u8>> {
    let (objects, _) = store.objects();
    let metas: Vec<ObjectMeta> = objects.list(None).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in metas {
        let bytes = objects
            .get(&m.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.insert(m.location.to_string(), bytes.to_vec());
    }
    out
}

async fn count(store: &Store) -> i64 {
    let b = store.sql("SELECT count(*) FROM metrics").await.unwrap();
    b[0].column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

#[tokio::test]
async fn writes_partitions_and_reads_back() {
    let store = memory_store();
    let s = store.write_points(sample(1.0)).await.unwrap();
    assert_eq!((s.version, s.rows, s.replaced), (1, 1200, 0));
    // 600 points × 5 min = 50 hours: three UTC days.
    assert_eq!(s.files_written, 3);
    assert_eq!(count(&store).await, 1200);
    let series = store.list_series().await.unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].points, 600);
    assert_eq!((series[0].first, series[0].last), (0, 599 * 300_000));
    let a = store.load_one(&key("a")).await.unwrap();
    assert_eq!(a.ts.len(), 600);
    assert!(a.ts.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a.value[10], 11.0);
    assert!(matches!(
        store.load_one(&key("zzz")).await,
        Err(Error::UnknownSeries { .. })
    ));
}

#[tokio::test]
async fn reingest_is_idempotent_and_last_write_wins() {
    let store = memory_store();
    store.write_points(sample(1.0)).await.unwrap();
    let before = store.load_series(&Default::default()).await.unwrap();
    let s = store.write_points(sample(1.0)).await.unwrap();
    assert_eq!(s.replaced, 1200);
    assert_eq!(count(&store).await, 1200);
    assert_eq!(
        store.load_series(&Default::default()).await.unwrap(),
        before
    );
    // A new value at an existing (key, ts) replaces the stored one; other
    // points stay.
    let mut update = PointBatch::default();
    update.push(&key("a"), 300_000, 99.0);
    let s = store.write_points(update).await.unwrap();
    assert_eq!((s.rows, s.replaced), (1, 1));
    assert_eq!(count(&store).await, 1200);
    let a = store.load_one(&key("a")).await.unwrap();
    assert_eq!(a.value[1], 99.0);
    assert_eq!(a.value[2], 3.0);
}

#[tokio::test]
async fn duplicates_within_a_batch_are_kept_and_replaced_together() {
    let store = memory_store();
    let mut b = PointBatch::default();
    for v in [1.0, 2.0, 3.0] {
        b.push(&key("a"), 1000, v);
    }
    store.write_points(b.clone()).await.unwrap();
    assert_eq!(count(&store).await, 3);
    store.write_points(b).await.unwrap();
    assert_eq!(count(&store).await, 3);
}

#[tokio::test]
async fn appends_do_not_rewrite_and_compaction_merges() {
    let store = memory_store();
    let mut first = PointBatch::default();
    let mut second = PointBatch::default();
    for i in 0..100i64 {
        first.push(&key("a"), i * 60_000, i as f64);
        second.push(&key("a"), (100 + i) * 60_000, i as f64);
    }
    store.write_points(first).await.unwrap();
    let s = store.write_points(second).await.unwrap();
    assert_eq!(s.replaced, 0);
    let m = store.manifest().await.unwrap();
    assert_eq!(m.files_of(TableKind::Metrics).count(), 2);
    let c = store.compact(Duration::ZERO).await.unwrap();
    assert_eq!((c.partitions, c.files_before, c.files_after), (1, 2, 1));
    assert_eq!(count(&store).await, 200);
    let a = store.load_one(&key("a")).await.unwrap();
    assert!(a.ts.windows(2).all(|w| w[0] < w[1]));
    // Old files and manifests are gone; a second compaction has nothing to do.
    let c = store.compact(Duration::ZERO).await.unwrap();
    assert_eq!(c.partitions, 0);
    let objects = snapshot(&store).await;
    assert_eq!(
        objects.keys().filter(|k| k.contains("/metrics/")).count(),
        1
    );
}

#[tokio::test]
async fn events_round_trip_with_replacement() {
    let store = memory_store();
    let ev = |start, name: &str| Event {
        start,
        end: start + 10,
        kind: "holiday".into(),
        scope: "*".into(),
        name: Some(name.into()),
    };
    store
        .write_events(vec![ev(0, "a"), ev(100, "b")])
        .await
        .unwrap();
    let s = store.write_events(vec![ev(100, "c")]).await.unwrap();
    assert_eq!(s.replaced, 1);
    let all = store.load_events().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].name.as_deref(), Some("c"));
    assert_eq!(count(&store).await, 0);
}

#[tokio::test]
async fn a_failed_write_leaves_the_store_readable_and_unchanged() {
    for allowed in 0..5 {
        let failing = Arc::new(FailingStore {
            inner: InMemory::new(),
            allowed: AtomicUsize::new(usize::MAX),
        });
        let store =
            Store::with_object_store(failing.clone(), Url::parse("memory:///").unwrap(), "root");
        store.write_points(sample(1.0)).await.unwrap();
        let before = store.load_series(&Default::default()).await.unwrap();
        // The next batch touches three partitions (three data puts, then the
        // manifest); fail at every point of it.
        failing.allowed.store(allowed, Ordering::SeqCst);
        let result = store.write_points(sample(5.0)).await;
        failing.allowed.store(usize::MAX, Ordering::SeqCst);
        let after = store.load_series(&Default::default()).await.unwrap();
        if allowed < 4 {
            assert!(result.is_err(), "allowed {allowed}");
            assert_eq!(
                after, before,
                "a failed batch must leave no trace (allowed {allowed})"
            );
        } else {
            result.unwrap();
            assert_eq!(after[1].value[0], -5.0);
        }
        // Whatever the failure left behind is garbage that compaction removes.
        store.compact(Duration::ZERO).await.unwrap();
        assert_eq!(store.load_series(&Default::default()).await.unwrap(), after);
    }
}

#[tokio::test]
async fn concurrent_commit_is_detected() {
    let store = memory_store();
    store.write_points(sample(1.0)).await.unwrap();
    let m = store.manifest().await.unwrap();
    // Another writer publishes the same next version first.
    let mut other = m.clone();
    other.version += 1;
    store.publish(&other).await.unwrap();
    assert!(matches!(
        store.publish(&other).await,
        Err(Error::Conflict { version: 2, .. })
    ));
}

#[tokio::test]
async fn corrupt_manifest_is_reported() {
    let store = memory_store();
    store.write_points(sample(1.0)).await.unwrap();
    let (objects, _) = store.objects();
    objects
        .put(
            &store.path(&manifest_name(2)),
            PutPayload::from_static(b"{not json"),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.manifest().await,
        Err(Error::Manifest { .. })
    ));
    objects
        .put(
            &store.path(&manifest_name(3)),
            PutPayload::from_static(b"{\"format\": 99, \"version\": 3, \"files\": []}"),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.manifest().await,
        Err(Error::ManifestFormat { found: 99, .. })
    ));
}

#[tokio::test]
async fn queries_prune_by_app_and_time() {
    let store = memory_store();
    store.write_points(sample(1.0)).await.unwrap();
    let other = SeriesKey::new("other", "web", "cpu", "a").unwrap();
    let mut b = PointBatch::default();
    b.push(&other, 0, 1.0);
    store.write_points(b).await.unwrap();
    let q = "SELECT count(*) FROM metrics WHERE app = 'app' AND ts >= '1970-01-02T00:00:00Z' AND ts < '1970-01-03T00:00:00Z'";
    let r = store.sql(q).await.unwrap();
    assert_eq!(
        r[0].column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        2 * 288
    );
    let plan = store.sql(&format!("EXPLAIN {q}")).await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    // Only the one matching day's file is scanned.
    assert_eq!(text.matches(".parquet").count(), 1, "{text}");
}

/// Writer `w`'s batch `j`: 50 points of its own series, each batch
/// overlapping the previous one's time range by 43 points (so batches
/// merge and replace), all writers in the same `(app, day)` partition.
fn writer_batch(w: usize, j: usize) -> PointBatch {
    let mut b = PointBatch::default();
    for i in 0..50 {
        b.push(
            &key(&format!("w{w}")),
            ((j * 7 + i) * 300_000) as i64,
            (w * 1000 + j) as f64,
        );
    }
    b
}

/// What the store must hold once every writer's batches committed.
fn expected_content(writers: usize, batches: usize) -> Vec<(String, Vec<i64>, Vec<f64>)> {
    (0..writers)
        .map(|w| {
            let n = (batches - 1) * 7 + 50;
            let ts = (0..n).map(|t| (t * 300_000) as i64).collect();
            // The newest batch that covers a time wins.
            let value = (0..n)
                .map(|t| {
                    let j = (t / 7).min(batches - 1);
                    (w * 1000 + j) as f64
                })
                .collect();
            (format!("w{w}"), ts, value)
        })
        .collect()
}

async fn content(store: &Store) -> Vec<(String, Vec<i64>, Vec<f64>)> {
    let mut all = store.load_series(&Default::default()).await.unwrap();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all.into_iter()
        .map(|s| (s.key.series, s.ts, s.value))
        .collect()
}

/// Four writers, each with a store handle of its own (as separate processes
/// have), write overlapping batches into one partition while a fifth task
/// compacts and another writes events. Before writers had file names of
/// their own, the loser of a race overwrote the winner's files.
async fn concurrent_writers_keep_exactly_the_committed_batches(handle: impl Fn() -> Store) {
    const WRITERS: usize = 4;
    const BATCHES: usize = 12;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = handle();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for j in 0..BATCHES {
                let s = store.write_points(writer_batch(w, j)).await.unwrap();
                assert_eq!(s.rows, 50);
                retries += s.retries;
            }
            retries
        }));
    }
    let compactor = {
        let store = handle();
        tokio::spawn(async move {
            for _ in 0..6 {
                store.compact(DEFAULT_GRACE).await.unwrap();
            }
        })
    };
    let events = {
        let store = handle();
        tokio::spawn(async move {
            for start in 0..6 {
                let e = Event {
                    start,
                    end: start + 1,
                    kind: "batch-job".into(),
                    scope: "*".into(),
                    name: None,
                };
                store.write_events(vec![e]).await.unwrap();
            }
        })
    };
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    compactor.await.unwrap();
    events.await.unwrap();
    let store = handle();
    assert_eq!(content(&store).await, expected_content(WRITERS, BATCHES));
    assert_eq!(store.load_events().await.unwrap().len(), 6);
    // Every live file exists, and one more compaction keeps the content.
    store.compact(Duration::ZERO).await.unwrap();
    assert_eq!(content(&store).await, expected_content(WRITERS, BATCHES));
    eprintln!("{retries} commits lost a race and were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_in_memory() {
    let objects = Arc::new(InMemory::new());
    concurrent_writers_keep_exactly_the_committed_batches(|| {
        Store::with_object_store(objects.clone(), Url::parse("memory:///").unwrap(), "root")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    concurrent_writers_keep_exactly_the_committed_batches(|| {
        Store::open(path.to_str().unwrap()).unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_lost_race_rebases_when_its_merge_still_holds_and_redoes_it_otherwise() {
    let store = memory_store();
    store.write_points(writer_batch(0, 0)).await.unwrap();
    let attempt = |batch: PointBatch| {
        let store = store.clone();
        async move {
            let base = store.manifest().await.unwrap();
            let batch = Arc::new(batch);
            let parts = Arc::new(partition(&batch));
            let (staged, _) = store.stage_points(&base, &batch, &parts).await.unwrap();
            (base, batch, parts, staged)
        }
    };
    // Another day: the files it merged with are unchanged, so it rebases
    // and publishes the files it already put.
    let mut later = PointBatch::default();
    later.push(&key("w0"), 3 * Timestamp::DAY_MS, 1.0);
    let (mut base, batch, parts, staged) = attempt(later).await;
    store.write_points(writer_batch(1, 0)).await.unwrap();
    let mut retries = 0;
    let still = |m: &Manifest| merge_still_holds(m, &batch, &parts, &staged);
    let v = store
        .publish_staged(&staged, &mut base, &mut retries, still)
        .await
        .unwrap();
    assert_eq!((v, retries), (Some(3), 1));
    let live = store.manifest().await.unwrap();
    assert!(live.files.iter().any(|f| f.path == staged.uploaded[0]));
    // The same partition as a commit that landed meanwhile: abandoned (its
    // files deleted), to be merged again on the newer manifest.
    let (mut base, batch, parts, staged) = attempt(writer_batch(0, 1)).await;
    store.write_points(writer_batch(0, 2)).await.unwrap();
    let still = |m: &Manifest| merge_still_holds(m, &batch, &parts, &staged);
    let v = store
        .publish_staged(&staged, &mut base, &mut retries, still)
        .await
        .unwrap();
    assert_eq!(v, None);
    assert_eq!(base.version, 4);
    let objects = snapshot(&store).await;
    assert!(!objects.keys().any(|k| k.ends_with(&staged.uploaded[0])));
    // The whole write, retried internally, keeps both batches.
    let s = store.write_points(writer_batch(0, 1)).await.unwrap();
    assert_eq!(s.version, 5);
}

#[tokio::test]
async fn out_of_range_timestamps_are_refused_before_anything_is_stored() {
    let store = memory_store();
    store.write_points(sample(1.0)).await.unwrap();
    let before = snapshot(&store).await;
    for ts in [i64::MAX, i64::MIN, Timestamp::MAX.millis() + 1] {
        let mut b = sample(2.0);
        b.push(&key("c"), ts, 1.0);
        let err = store.write_points(b).await.unwrap_err();
        assert!(matches!(err, Error::TimestampOutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("years 1 to 9999"), "{err}");
    }
    assert_eq!(snapshot(&store).await, before);
}

#[tokio::test]
async fn compaction_clears_crash_leftovers_in_a_directory_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open(root.to_str().unwrap()).unwrap();
    store.write_points(sample(1.0)).await.unwrap();
    // What a kill -9 during the write phase leaves: staging files of
    // interrupted puts (hidden from the object-store listing), an
    // unreferenced data file, and empty day directories.
    let day = root.join("metrics/app=app/day=1970-01-05");
    std::fs::create_dir_all(&day).unwrap();
    std::fs::create_dir_all(root.join("metrics/app=gone/day=1970-01-06")).unwrap();
    let leftovers = [
        day.join("v2-605.parquet#1"),
        root.join("metrics/app=app/day=1970-01-01/v2-1.parquet#3"),
        root.join("metrics/app=app/day=1970-01-01/v2-orphan-0.parquet"),
        root.join("_manifest/00000000000000000002.json#7"),
    ];
    for f in &leftovers {
        std::fs::write(f, b"partial").unwrap();
    }
    let before = content(&store).await;
    // Young leftovers may belong to a writer still at work: kept.
    let c = store.compact(DEFAULT_GRACE).await.unwrap();
    assert_eq!(c.deleted, 0);
    assert!(leftovers.iter().all(|f| f.exists()));
    let c = store.compact(Duration::ZERO).await.unwrap();
    assert!(leftovers.iter().all(|f| !f.exists()));
    assert!(!day.exists() && !root.join("metrics/app=gone").exists());
    assert_eq!(c.deleted, 7, "4 files, 3 directories");
    assert_eq!(content(&store).await, before);
    // Live files and the directories holding them stay.
    let live = store.manifest().await.unwrap();
    for f in &live.files {
        assert!(root.join(&f.path).is_file(), "{}", f.path);
    }
}

#[tokio::test]
async fn a_reader_on_the_previous_manifest_keeps_its_files_through_the_grace() {
    let store = memory_store();
    store.write_points(sample(1.0)).await.unwrap();
    let old = store.manifest().await.unwrap();
    store.write_points(sample(2.0)).await.unwrap();
    // Version 2 replaced version 1's files a moment ago: a reader still on
    // version 1 can read them until the grace has passed.
    store.compact(DEFAULT_GRACE).await.unwrap();
    for f in &old.files {
        store.read_parquet(&f.path).await.unwrap();
    }
    store.compact(Duration::ZERO).await.unwrap();
    assert!(store.read_parquet(&old.files[0].path).await.is_err());
}

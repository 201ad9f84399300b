//! The store: Parquet files through `object_store`, a manifest that makes
//! every batch atomic, merge-on-write deduplication and compaction.
//!
//! Layout under the root:
//! `metrics/app=<app>/day=<YYYY-MM-DD>/v<version>-<n>.parquet` (one app and
//! one UTC day per file, rows sorted by series then time),
//! `events/v<version>.parquet`, and `_manifest/<version>.json`.
//!
//! Deduplication rule (last write wins per series and timestamp): for every
//! `(series key, timestamp)` that a batch contains, the batch's rows replace
//! all stored rows at that key and timestamp. Rows of one batch that share
//! a key and timestamp are all kept (sources such as NAB repeat a timestamp
//! across a DST change; the resampler averages them). Re-ingesting the same
//! file therefore leaves the store as it was.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Float64Array, Int32Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{Float64Type, Int32Type, TimestampMillisecondType};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;
use shardcast_core::{SeriesKey, Timestamp};
use url::Url;

use crate::error::{Error, Result};
use crate::ingest::{Event, PointBatch};
use crate::manifest::{
    FileEntry, MANIFEST_FORMAT, Manifest, TableKind, manifest_name, parse_manifest_name,
};
use crate::schema::{UTC, events_schema, metrics_schema};

/// A metric store rooted in a directory or an object-store prefix.
#[derive(Debug, Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// The root prefix inside `objects`.
    root: ObjPath,
    /// The URL that `objects` answers for (registered with DataFusion).
    base_url: Url,
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// The manifest version published (unchanged when nothing was written).
    pub version: u64,
    /// Rows written by the batch.
    pub rows: u64,
    /// Stored rows the batch replaced (same key and timestamp).
    pub replaced: u64,
    /// Data files written.
    pub files_written: usize,
    /// Bytes written.
    pub bytes_written: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactSummary {
    /// The manifest version published.
    pub version: u64,
    /// Partitions rewritten.
    pub partitions: usize,
    /// Live files before.
    pub files_before: usize,
    /// Live files after.
    pub files_after: usize,
    /// Unreferenced objects deleted (replaced files, failed batches, old
    /// manifests).
    pub deleted: usize,
}

impl Store {
    /// Opens a store: a local directory (created if missing), a `file://`
    /// URL, or another object-store URL supported by this build.
    pub fn open(location: &str) -> Result<Self> {
        let bad = |reason: String| Error::Location {
            location: location.to_string(),
            reason,
        };
        let path = match Url::parse(location) {
            Ok(url) if url.scheme() == "file" => url
                .to_file_path()
                .map_err(|()| bad("not a local file URL".into()))?,
            Ok(url) if url.scheme() == "s3" => return Self::open_s3(&url).map_err(bad),
            Ok(url) if url.scheme().len() > 1 => {
                return Err(bad(format!(
                    "scheme {:?} is not supported by this build (local paths, file:// and s3:// are)",
                    url.scheme()
                )));
            }
            _ => std::path::PathBuf::from(location),
        };
        std::fs::create_dir_all(&path).map_err(|e| bad(e.to_string()))?;
        let abs = std::fs::canonicalize(&path).map_err(|e| bad(e.to_string()))?;
        let root = ObjPath::from_filesystem_path(&abs).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            objects: Arc::new(LocalFileSystem::new()),
            root,
            base_url: Url::parse("file:///").expect("static URL"),
        })
    }

    /// A store in an S3 (or S3-compatible) bucket, `s3://bucket/prefix`,
    /// configured from the `AWS_*` environment variables (credentials,
    /// `AWS_REGION`, `AWS_ENDPOINT` for compatible servers, `AWS_ALLOW_HTTP`
    /// for plain-HTTP ones). Manifests are published with S3's conditional
    /// put (`If-None-Match: *`), which the server must support.
    fn open_s3(url: &Url) -> std::result::Result<Self, String> {
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or("an s3:// URL names a bucket: s3://bucket/prefix")?;
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| e.to_string())?;
        let base_url = Url::parse(&format!("s3://{bucket}/")).map_err(|e| e.to_string())?;
        Ok(Self::with_object_store(
            Arc::new(s3),
            base_url,
            url.path().trim_matches('/'),
        ))
    }

    /// A store over any object store; `base_url` is the URL DataFusion uses
    /// to reach it (e.g. `s3://bucket/`, or `memory:///` for tests) and
    /// `root` the prefix of the store inside it.
    pub fn with_object_store(objects: Arc<dyn ObjectStore>, base_url: Url, root: &str) -> Self {
        Self {
            objects,
            root: ObjPath::from(root),
            base_url,
        }
    }

    /// The object store and its base URL, for registering with DataFusion.
    pub(crate) fn objects(&self) -> (&Arc<dyn ObjectStore>, &Url) {
        (&self.objects, &self.base_url)
    }

    /// The full object path of a path relative to the root.
    pub(crate) fn path(&self, rel: &str) -> ObjPath {
        rel.split('/')
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// The URL of a file relative to the root.
    pub(crate) fn url_of(&self, rel: &str) -> String {
        format!("{}{}", self.base_url, self.path(rel))
    }

    /// The newest manifest (the empty one for a new store).
    pub async fn manifest(&self) -> Result<Manifest> {
        let prefix = self.path("_manifest");
        let mut newest: Option<(u64, ObjPath)> = None;
        let mut listing = self.objects.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if let Some(v) = meta.location.filename().and_then(parse_manifest_name)
                && newest.as_ref().is_none_or(|(n, _)| v > *n)
            {
                newest = Some((v, meta.location));
            }
        }
        let Some((_, path)) = newest else {
            return Ok(Manifest::empty());
        };
        let bytes = self.objects.get(&path).await?.bytes().await?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| Error::Manifest {
                path: path.to_string(),
                source,
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(Error::ManifestFormat {
                path: path.to_string(),
                found: manifest.format,
                expected: MANIFEST_FORMAT,
            });
        }
        Ok(manifest)
    }

    /// Publishes `next` unless another writer got there first.
    async fn publish(&self, next: &Manifest) -> Result<()> {
        let body = serde_json::to_vec_pretty(next).expect("manifest serialises");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(
                &self.path(&manifest_name(next.version)),
                PutPayload::from(body),
                opts,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict {
                version: next.version,
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_files(&self, files: Vec<(String, Bytes)>) -> Result<()> {
        futures::stream::iter(files)
            .map(|(rel, bytes)| async move {
                self.objects
                    .put(&self.path(&rel), PutPayload::from(bytes))
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn read_parquet(&self, rel: &str) -> Result<Vec<RecordBatch>> {
        let bytes = self.objects.get(&self.path(rel)).await?.bytes().await?;
        decode_parquet(rel, bytes)
    }

    /// Writes a batch of points atomically (see the module docs for the
    /// deduplication rule).
    pub async fn write_points(&self, batch: PointBatch) -> Result<WriteSummary> {
        let base = self.manifest().await?;
        if batch.is_empty() {
            return Ok(WriteSummary {
                version: base.version,
                ..Default::default()
            });
        }
        let version = base.version + 1;
        let batch = Arc::new(batch);
        let parts = tokio::task::spawn_blocking({
            let batch = batch.clone();
            move || partition(&batch)
        })
        .await
        .expect("partitioning does not panic");

        // Stored files whose time range overlaps a partition's new rows may
        // hold rows the batch replaces: read them for the merge.
        let mut overlapping: Vec<Vec<FileEntry>> = Vec::with_capacity(parts.len());
        let mut reads = Vec::new();
        for p in &parts {
            let app = &batch.keys[p.key_idx_any as usize].app;
            let files: Vec<FileEntry> = base
                .files_of(TableKind::Metrics)
                .filter(|f| f.app.as_deref() == Some(app.as_str()) && f.day == Some(p.day))
                .filter(|f| f.min_ts <= p.max_ts && f.max_ts >= p.min_ts)
                .cloned()
                .collect();
            for f in &files {
                reads.push(f.path.clone());
            }
            overlapping.push(files);
        }
        let existing: HashMap<String, Vec<RecordBatch>> = futures::stream::iter(reads)
            .map(|rel| async move { self.read_parquet(&rel).await.map(|b| (rel, b)) })
            .buffer_unordered(8)
            .try_collect()
            .await?;

        let encoded = tokio::task::spawn_blocking(move || {
            parts
                .into_par_iter()
                .zip(overlapping)
                .enumerate()
                .map(|(n, (part, files))| {
                    encode_partition(&batch, part, files, &existing, version, n)
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .expect("encoding does not panic")?;

        let mut summary = WriteSummary {
            version,
            ..Default::default()
        };
        let mut next = base.clone();
        next.version = version;
        let mut uploads = Vec::new();
        for e in encoded {
            summary.rows += e.new_rows;
            summary.replaced += e.replaced;
            summary.files_written += 1;
            summary.bytes_written += e.entry.bytes;
            next.files.retain(|f| !e.replaces.contains(&f.path));
            next.files.push(e.entry.clone());
            uploads.push((e.entry.path, e.bytes));
        }
        self.put_files(uploads).await?;
        self.publish(&next).await?;
        tracing::debug!(
            version,
            rows = summary.rows,
            files = summary.files_written,
            "published batch"
        );
        Ok(summary)
    }

    /// Writes events atomically. An event with the same kind, scope and
    /// start as a stored one replaces it.
    pub async fn write_events(&self, events: Vec<Event>) -> Result<WriteSummary> {
        let base = self.manifest().await?;
        if events.is_empty() {
            return Ok(WriteSummary {
                version: base.version,
                ..Default::default()
            });
        }
        let version = base.version + 1;
        let mut all: Vec<Event> = Vec::new();
        let old: Vec<FileEntry> = base.files_of(TableKind::Events).cloned().collect();
        for f in &old {
            all.extend(decode_events(&self.read_parquet(&f.path).await?)?);
        }
        let new_rows = events.len() as u64;
        let new_ids: HashSet<(String, String, i64)> = events
            .iter()
            .map(|e| (e.kind.clone(), e.scope.clone(), e.start))
            .collect();
        let before = all.len();
        all.retain(|e| !new_ids.contains(&(e.kind.clone(), e.scope.clone(), e.start)));
        let replaced = (before - all.len()) as u64;
        all.extend(events);
        all.sort_by(|a, b| (a.start, &a.kind, &a.scope).cmp(&(b.start, &b.kind, &b.scope)));
        let rel = format!("events/v{version}.parquet");
        let bytes = encode_parquet(&rel, &events_batch(&all)?)?;
        let entry = FileEntry {
            table: TableKind::Events,
            path: rel.clone(),
            app: None,
            day: None,
            rows: all.len() as u64,
            bytes: bytes.len() as u64,
            min_ts: all.iter().map(|e| e.start).min().unwrap_or(0),
            max_ts: all.iter().map(|e| e.end).max().unwrap_or(0),
        };
        let mut next = base.clone();
        next.version = version;
        next.files.retain(|f| f.table != TableKind::Events);
        next.files.push(entry.clone());
        self.put_files(vec![(rel, bytes)]).await?;
        self.publish(&next).await?;
        Ok(WriteSummary {
            version,
            rows: new_rows,
            replaced,
            files_written: 1,
            bytes_written: entry.bytes,
        })
    }

    /// Merges the files of every partition that has more than one into one,
    /// then deletes objects no manifest needs any more.
    pub async fn compact(&self) -> Result<CompactSummary> {
        let base = self.manifest().await?;
        let version = base.version + 1;
        let mut groups: HashMap<(String, i64), Vec<FileEntry>> = HashMap::new();
        for f in base.files_of(TableKind::Metrics) {
            if let (Some(app), Some(day)) = (&f.app, f.day) {
                groups
                    .entry((app.clone(), day))
                    .or_default()
                    .push(f.clone());
            }
        }
        let mut groups: Vec<_> = groups.into_iter().filter(|(_, v)| v.len() > 1).collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let mut summary = CompactSummary {
            version: base.version,
            files_before: base.files.len(),
            files_after: base.files.len(),
            partitions: groups.len(),
            ..Default::default()
        };
        if !groups.is_empty() {
            let mut next = base.clone();
            next.version = version;
            let mut uploads = Vec::new();
            for (n, (_, files)) in groups.into_iter().enumerate() {
                let mut points = PointBatch::default();
                for f in &files {
                    points.append(decode_points(&self.read_parquet(&f.path).await?)?);
                }
                let points = Arc::new(points);
                let part = tokio::task::spawn_blocking({
                    let points = points.clone();
                    move || partition(&points).pop().expect("one partition")
                })
                .await
                .expect("partitioning does not panic");
                let e = encode_partition(&points, part, Vec::new(), &HashMap::new(), version, n)?;
                next.files
                    .retain(|f| !files.iter().any(|g| g.path == f.path));
                next.files.push(e.entry.clone());
                uploads.push((e.entry.path, e.bytes));
            }
            self.put_files(uploads).await?;
            self.publish(&next).await?;
            summary.version = version;
            summary.files_after = next.files.len();
        }
        summary.deleted = self.vacuum().await?;
        Ok(summary)
    }

    /// Deletes data files that the newest manifest does not list and all
    /// manifests but the newest two. Returns how many objects it deleted.
    async fn vacuum(&self) -> Result<usize> {
        let current = self.manifest().await?;
        let live: HashSet<String> = current
            .files
            .iter()
            .map(|f| self.path(&f.path).to_string())
            .collect();
        let mut doomed = Vec::new();
        for dir in ["metrics", "events"] {
            let mut listing = self.objects.list(Some(&self.path(dir)));
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                if !live.contains(meta.location.as_ref()) {
                    doomed.push(meta.location);
                }
            }
        }
        let mut listing = self.objects.list(Some(&self.path("_manifest")));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            match meta.location.filename().and_then(parse_manifest_name) {
                Some(v) if v + 1 < current.version => doomed.push(meta.location),
                _ => {}
            }
        }
        let n = doomed.len();
        for path in doomed {
            match self.objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }
}

/// The rows of one batch that fall in one `(app, day)` partition.
struct Partition {
    day: i64,
    /// Any key of the partition (they share the app).
    key_idx_any: u32,
    min_ts: i64,
    max_ts: i64,
    /// Row indices into the batch, sorted by series key then time.
    rows: Vec<u32>,
}

/// Splits a batch into `(app, day)` partitions with rows sorted by key and
/// time (stable, so duplicates keep their input order).
fn partition(batch: &PointBatch) -> Vec<Partition> {
    // Rank keys so that sorting rows by rank sorts them by key.
    let mut order: Vec<u32> = (0..batch.keys.len() as u32).collect();
    order.sort_by(|&a, &b| batch.keys[a as usize].cmp(&batch.keys[b as usize]));
    let mut rank = vec![0u32; batch.keys.len()];
    for (r, &k) in order.iter().enumerate() {
        rank[k as usize] = r as u32;
    }
    // Counting sort of rows by key rank: stable, linear.
    let mut counts = vec![0usize; batch.keys.len() + 1];
    for &k in &batch.key_idx {
        counts[rank[k as usize] as usize + 1] += 1;
    }
    for i in 1..counts.len() {
        counts[i] += counts[i - 1];
    }
    let mut rows = vec![0u32; batch.len()];
    for (i, &k) in batch.key_idx.iter().enumerate() {
        let slot = &mut counts[rank[k as usize] as usize];
        rows[*slot] = i as u32;
        *slot += 1;
    }
    // Within each key, sort by time unless already sorted; then cut into
    // days. Keys of one app are contiguous because keys sort by app first.
    let mut by_part: HashMap<(String, i64), Partition> = HashMap::new();
    // Per-row work stays allocation-free: the partition is looked up once
    // per run of rows of one key and one day.
    let mut start = 0;
    while start < rows.len() {
        let key = batch.key_idx[rows[start] as usize];
        let mut end = start + 1;
        while end < rows.len() && batch.key_idx[rows[end] as usize] == key {
            end += 1;
        }
        let run = &mut rows[start..end];
        if !run
            .windows(2)
            .all(|w| batch.ts[w[0] as usize] <= batch.ts[w[1] as usize])
        {
            run.sort_by_key(|&r| batch.ts[r as usize]);
        }
        let app = &batch.keys[key as usize].app;
        let mut i = 0;
        while i < run.len() {
            let day = Timestamp(batch.ts[run[i] as usize]).day();
            let day_end = (day + 1) * Timestamp::DAY_MS;
            let mut j = i + 1;
            while j < run.len() && batch.ts[run[j] as usize] < day_end {
                j += 1;
            }
            let p = by_part
                .entry((app.clone(), day))
                .or_insert_with(|| Partition {
                    day,
                    key_idx_any: key,
                    min_ts: i64::MAX,
                    max_ts: i64::MIN,
                    rows: Vec::new(),
                });
            // The run is sorted by time: its first and last rows bound it.
            p.min_ts = p.min_ts.min(batch.ts[run[i] as usize]);
            p.max_ts = p.max_ts.max(batch.ts[run[j - 1] as usize]);
            p.rows.extend_from_slice(&run[i..j]);
            i = j;
        }
        start = end;
    }
    let mut parts: Vec<_> = by_part.into_iter().collect();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    parts.into_iter().map(|(_, p)| p).collect()
}

/// One partition's new file.
struct Encoded {
    entry: FileEntry,
    bytes: Bytes,
    /// Paths of stored files this file supersedes.
    replaces: Vec<String>,
    new_rows: u64,
    replaced: u64,
}

/// Percent-encodes an app name for use as a path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_partition(
    batch: &PointBatch,
    part: Partition,
    overlapping: Vec<FileEntry>,
    existing: &HashMap<String, Vec<RecordBatch>>,
    version: u64,
    n: usize,
) -> Result<Encoded> {
    let app = batch.keys[part.key_idx_any as usize].app.clone();
    let (y, m, d) = Timestamp(part.min_ts).date();
    let rel = format!(
        "metrics/app={}/day={y:04}-{m:02}-{d:02}/v{version}-{n}.parquet",
        encode_segment(&app)
    );
    let new_rows = part.rows.len() as u64;
    let mut replaced = 0;
    let mut replaces = Vec::new();
    let record = if overlapping.is_empty() {
        points_batch(batch, &part.rows)?
    } else {
        // Merge: stored rows not at a (key, ts) of the batch survive.
        let index: HashMap<&SeriesKey, u32> = batch
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k, i as u32))
            .collect();
        let fresh: HashSet<(u32, i64)> = part
            .rows
            .iter()
            .map(|&r| (batch.key_idx[r as usize], batch.ts[r as usize]))
            .collect();
        let mut stored = PointBatch::default();
        for f in &overlapping {
            stored.append(decode_points(&existing[&f.path])?);
        }
        let stored_to_batch: Vec<Option<u32>> =
            stored.keys.iter().map(|k| index.get(k).copied()).collect();
        let mut kept = PointBatch {
            keys: stored.keys.clone(),
            ..Default::default()
        };
        for i in 0..stored.len() {
            let k = stored.key_idx[i];
            let hit =
                stored_to_batch[k as usize].is_some_and(|b| fresh.contains(&(b, stored.ts[i])));
            if hit {
                replaced += 1;
            } else {
                kept.key_idx.push(k);
                kept.ts.push(stored.ts[i]);
                kept.value.push(stored.value[i]);
            }
        }
        if replaced == 0 {
            // Nothing collides: leave the stored files alone, add a new one.
            points_batch(batch, &part.rows)?
        } else {
            replaces = overlapping.iter().map(|f| f.path.clone()).collect();
            let mut merged = PointBatch {
                keys: batch.keys.clone(),
                ..Default::default()
            };
            for &r in &part.rows {
                merged.key_idx.push(batch.key_idx[r as usize]);
                merged.ts.push(batch.ts[r as usize]);
                merged.value.push(batch.value[r as usize]);
            }
            merged.append(kept);
            let p = partition(&merged).pop().expect("one partition");
            points_batch(&merged, &p.rows)?
        }
    };
    let rows = record.num_rows() as u64;
    let ts = record.column(0).as_primitive::<TimestampMillisecondType>();
    let (min_ts, max_ts) = (
        arrow::compute::min(ts).unwrap_or(part.min_ts),
        arrow::compute::max(ts).unwrap_or(part.max_ts),
    );
    let bytes = encode_parquet(&rel, &record)?;
    Ok(Encoded {
        entry: FileEntry {
            table: TableKind::Metrics,
            path: rel,
            app: Some(app),
            day: Some(part.day),
            rows,
            bytes: bytes.len() as u64,
            min_ts,
            max_ts,
        },
        bytes,
        replaces,
        new_rows,
        replaced,
    })
}

/// Builds a metrics record batch of the given rows (in that order).
fn points_batch(batch: &PointBatch, rows: &[u32]) -> Result<RecordBatch> {
    // Local dictionaries: one entry per distinct key of these rows.
    let mut local = vec![-1i32; batch.keys.len()];
    let mut local_keys: Vec<u32> = Vec::new();
    let mut key_of_row = Vec::with_capacity(rows.len());
    for &r in rows {
        let k = batch.key_idx[r as usize];
        let slot = &mut local[k as usize];
        if *slot < 0 {
            local_keys.push(k);
            *slot = (local_keys.len() - 1) as i32;
        }
        key_of_row.push(*slot);
    }
    let column = |field: fn(&SeriesKey) -> &str| -> Result<ArrayRef> {
        let mut values: Vec<&str> = Vec::new();
        let mut index: HashMap<&str, i32> = HashMap::new();
        let map: Vec<i32> = local_keys
            .iter()
            .map(|&k| {
                let s = field(&batch.keys[k as usize]);
                *index.entry(s).or_insert_with(|| {
                    values.push(s);
                    (values.len() - 1) as i32
                })
            })
            .collect();
        let keys = Int32Array::from_iter_values(key_of_row.iter().map(|&l| map[l as usize]));
        let dict =
            DictionaryArray::<Int32Type>::try_new(keys, Arc::new(StringArray::from(values)))?;
        Ok(Arc::new(dict))
    };
    let ts =
        TimestampMillisecondArray::from_iter_values(rows.iter().map(|&r| batch.ts[r as usize]))
            .with_timezone(UTC);
    let value = Float64Array::from_iter_values(rows.iter().map(|&r| batch.value[r as usize]));
    Ok(RecordBatch::try_new(
        metrics_schema(),
        vec![
            Arc::new(ts),
            column(|k| &k.app)?,
            column(|k| &k.shard_type)?,
            column(|k| &k.metric)?,
            column(|k| &k.series)?,
            Arc::new(value),
        ],
    )?)
}

/// Reads metric record batches back into points.
pub(crate) fn decode_points(batches: &[RecordBatch]) -> Result<PointBatch> {
    let mut out = PointBatch::default();
    let mut index: HashMap<SeriesKey, u32> = HashMap::new();
    for b in batches {
        let ts = b
            .column_by_name("ts")
            .map(|c| c.as_primitive::<TimestampMillisecondType>());
        let value = b
            .column_by_name("value")
            .map(|c| c.as_primitive::<Float64Type>());
        let (Some(ts), Some(value)) = (ts, value) else {
            return Err(Error::Arrow(arrow::error::ArrowError::SchemaError(
                "metrics file lacks ts or value".into(),
            )));
        };
        let strings = |name: &str| -> Result<ArrayRef> {
            let col = b.column_by_name(name).ok_or_else(|| {
                Error::Arrow(arrow::error::ArrowError::SchemaError(format!(
                    "metrics file lacks {name}"
                )))
            })?;
            Ok(arrow::compute::cast(
                col,
                &arrow::datatypes::DataType::Utf8,
            )?)
        };
        let cols = [
            strings("app")?,
            strings("shard_type")?,
            strings("metric")?,
            strings("series")?,
        ];
        let cols: Vec<&StringArray> = cols.iter().map(|c| c.as_string::<i32>()).collect();
        // Rows come sorted by key: a key is looked up (and allocated) only
        // when it differs from the previous row's.
        let mut last: Option<u32> = None;
        for i in 0..b.num_rows() {
            let parts = [
                cols[0].value(i),
                cols[1].value(i),
                cols[2].value(i),
                cols[3].value(i),
            ];
            let same = last.is_some_and(|k| {
                let key = &out.keys[k as usize];
                parts == [key.app.as_str(), &key.shard_type, &key.metric, &key.series]
            });
            let k = match last {
                Some(k) if same => k,
                _ => {
                    let key = SeriesKey {
                        app: parts[0].to_string(),
                        shard_type: parts[1].to_string(),
                        metric: parts[2].to_string(),
                        series: parts[3].to_string(),
                    };
                    let next = index.len() as u32;
                    *index.entry(key.clone()).or_insert_with(|| {
                        out.keys.push(key);
                        next
                    })
                }
            };
            last = Some(k);
            out.key_idx.push(k);
            out.ts.push(ts.value(i));
            out.value.push(value.value(i));
        }
    }
    Ok(out)
}

fn events_batch(events: &[Event]) -> Result<RecordBatch> {
    let ts = |f: fn(&Event) -> i64| {
        Arc::new(
            TimestampMillisecondArray::from_iter_values(events.iter().map(f)).with_timezone(UTC),
        ) as ArrayRef
    };
    Ok(RecordBatch::try_new(
        events_schema(),
        vec![
            ts(|e| e.start),
            ts(|e| e.end),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.kind.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.scope.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                events.iter().map(|e| e.name.as_deref()),
            )),
        ],
    )?)
}

/// Reads event record batches back.
pub(crate) fn decode_events(batches: &[RecordBatch]) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for b in batches {
        let col = |i: usize| b.column(i);
        let start = col(0).as_primitive::<TimestampMillisecondType>();
        let end = col(1).as_primitive::<TimestampMillisecondType>();
        let kind = col(2).as_string::<i32>();
        let scope = col(3).as_string::<i32>();
        let name = col(4).as_string::<i32>();
        for i in 0..b.num_rows() {
            out.push(Event {
                start: start.value(i),
                end: end.value(i),
                kind: kind.value(i).to_string(),
                scope: scope.value(i).to_string(),
                name: name.is_valid(i).then(|| name.value(i).to_string()),
            });
        }
    }
    Ok(out)
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_column_dictionary_enabled("ts".into(), false)
        .set_column_encoding("ts".into(), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled("value".into(), false)
        .build()
}

fn encode_parquet(rel: &str, batch: &RecordBatch) -> Result<Bytes> {
    let err = |source| Error::Parquet {
        path: rel.to_string(),
        source,
    };
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2);
    // The Arrow schema is not embedded: readers take the key columns'
    // types from Parquet (strings, dictionary-encoded on disk), so DataFusion
    // reads them straight into string views instead of rebuilding the
    // in-memory dictionaries row by row (see `schema::metrics_sql_schema`).
    let options = ArrowWriterOptions::new()
        .with_properties(writer_properties())
        .with_skip_arrow_metadata(true);
    let mut writer =
        ArrowWriter::try_new_with_options(&mut buf, batch.schema(), options).map_err(err)?;
    writer.write(batch).map_err(err)?;
    writer.close().map_err(err)?;
    Ok(Bytes::from(buf))
}

fn decode_parquet(rel: &str, bytes: Bytes) -> Result<Vec<RecordBatch>> {
    let err = |source| Error::Parquet {
        path: rel.to_string(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(err)?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(err)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests;

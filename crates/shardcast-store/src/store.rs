//! The store: Parquet files through `object_store`, a manifest that makes
//! every batch atomic, merge-on-write deduplication and compaction.
//!
//! Layout under the root:
//! `metrics/app=<app>/day=<YYYY-MM-DD>/v<version>-<writer>-<n>.parquet` (one
//! app and one UTC day per file, rows sorted by series then time),
//! `events/v<version>-<writer>.parquet`, and `_manifest/<version>.json`.
//! `<version>` is the version a file was first written for and `<writer>` a
//! random token of the attempt that wrote it, so no two writers ever put the
//! same path.
//!
//! Concurrency: any number of writers (processes, threads, gRPC streams)
//! may write at once. Each commit is optimistic: data files go up under
//! names of their own, then manifest `v + 1` is created only if absent.
//! The loser of a race re-reads the newest manifest; when the files its
//! batch merged with are unchanged it publishes the same files on top of it
//! (a rebase), otherwise it deletes its files and redoes the merge. After
//! [`MAX_COMMIT_ATTEMPTS`] attempts it gives up with [`Error::Conflict`] and
//! nothing of the batch is visible.
//!
//! Garbage (files of failed or superseded batches, staging files that a
//! crash left, old manifests) is deleted by [`Store::compact`] once it is
//! older than the grace period, so neither a writer that has put its files
//! but not yet published them nor a reader still on a recent manifest loses
//! a file under it. A writer never publishes files it put more than
//! [`COMMIT_DEADLINE`] ago: it puts them again.
//!
//! Deduplication rule (last write wins per series and timestamp): for every
//! `(series key, timestamp)` that a batch contains, the batch's rows replace
//! all stored rows at that key and timestamp. Rows of one batch that share
//! a key and timestamp are all kept (sources such as NAB repeat a timestamp
//! across a DST change; the resampler averages them). Re-ingesting the same
//! file therefore leaves the store as it was.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How many times a commit is tried before [`Error::Conflict`] is returned.
pub const MAX_COMMIT_ATTEMPTS: u32 = 64;

/// The longest time between putting a batch's data files and publishing the
/// manifest that names them; an attempt that takes longer puts its files
/// again. Compaction with a grace period longer than this never deletes the
/// files of a commit in flight.
pub const COMMIT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// The default grace period of [`Store::compact`]: unreferenced objects
/// younger than this, and files that a manifest superseded less than this
/// long ago, are kept.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);

/// A metric store rooted in a directory or an object-store prefix.
#[derive(Debug, Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// The root prefix inside `objects`.
    root: ObjPath,
    /// The URL that `objects` answers for (registered with DataFusion).
    base_url: Url,
    /// The root directory when the store is on the local file system
    /// (where a crash can leave staging files and empty directories that
    /// the object-store listing does not show).
    local_root: Option<std::path::PathBuf>,
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
    /// Commits that lost a race with another writer before this one won.
    pub retries: u32,
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
            objects: Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)),
            root,
            base_url: Url::parse("file:///").expect("static URL"),
            local_root: Some(abs),
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
            local_root: None,
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
        self.read_manifest(&path).await
    }

    /// Reads and checks one manifest object.
    async fn read_manifest(&self, path: &ObjPath) -> Result<Manifest> {
        let bytes = self.objects.get(path).await?.bytes().await?;
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
                attempts: 1,
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

    /// Deletes objects a failed attempt put (best effort: what stays is
    /// garbage that compaction removes).
    async fn delete_quietly(&self, rels: &[String]) {
        for rel in rels {
            if let Err(e) = self.objects.delete(&self.path(rel)).await {
                tracing::debug!(path = %rel, error = %e, "could not delete a failed attempt's file");
            }
        }
    }

    /// Publishes a staged attempt on `base`, rebasing it on newer
    /// manifests while `still_valid` says its files still apply (see the
    /// module docs). Returns the version published, or `None` when the
    /// attempt was abandoned and must be staged again on `base` (which then
    /// holds the newest manifest).
    async fn publish_staged(
        &self,
        staged: &Staged,
        base: &mut Manifest,
        retries: &mut u32,
        still_valid: impl Fn(&Manifest) -> bool,
    ) -> Result<Option<u64>> {
        loop {
            if staged.put_at.elapsed() > COMMIT_DEADLINE {
                // Compaction may treat files this old as garbage.
                self.delete_quietly(&staged.uploaded).await;
                *base = self.manifest().await?;
                return Ok(None);
            }
            let next = staged.apply(base);
            match self.publish(&next).await {
                Ok(()) => return Ok(Some(next.version)),
                Err(Error::Conflict { version, .. }) => {
                    *retries += 1;
                    if *retries >= MAX_COMMIT_ATTEMPTS {
                        self.delete_quietly(&staged.uploaded).await;
                        return Err(Error::Conflict {
                            version,
                            attempts: *retries,
                        });
                    }
                    backoff(*retries).await;
                    *base = self.manifest().await?;
                    if !still_valid(base) {
                        self.delete_quietly(&staged.uploaded).await;
                        return Ok(None);
                    }
                    tracing::debug!(version = base.version + 1, "rebasing a batch");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_parquet(&self, rel: &str) -> Result<Vec<RecordBatch>> {
        let bytes = self.objects.get(&self.path(rel)).await?.bytes().await?;
        decode_parquet(rel, bytes)
    }

    /// Writes a batch of points atomically (see the module docs for the
    /// deduplication rule and for concurrent writers).
    pub async fn write_points(&self, batch: PointBatch) -> Result<WriteSummary> {
        if let Some(i) = batch
            .ts
            .iter()
            .position(|&t| Timestamp::checked(t).is_none())
        {
            return Err(Error::TimestampOutOfRange {
                key: batch.keys[batch.key_idx[i] as usize].to_string(),
                ts: batch.ts[i],
            });
        }
        let mut base = self.manifest().await?;
        if batch.is_empty() {
            return Ok(WriteSummary {
                version: base.version,
                ..Default::default()
            });
        }
        let batch = Arc::new(batch);
        let parts = Arc::new(
            tokio::task::spawn_blocking({
                let batch = batch.clone();
                move || partition(&batch)
            })
            .await
            .expect("partitioning does not panic"),
        );
        let mut retries = 0;
        loop {
            let (staged, mut summary) = self.stage_points(&base, &batch, &parts).await?;
            let overlaps = |m: &Manifest| merge_still_holds(m, &batch, &parts, &staged);
            if let Some(version) = self
                .publish_staged(&staged, &mut base, &mut retries, overlaps)
                .await?
            {
                summary.version = version;
                summary.retries = retries;
                tracing::debug!(
                    version,
                    rows = summary.rows,
                    files = summary.files_written,
                    retries,
                    "published batch"
                );
                return Ok(summary);
            }
        }
    }

    /// Merges a batch with the stored files of `base` that it overlaps and
    /// puts the resulting data files.
    async fn stage_points(
        &self,
        base: &Manifest,
        batch: &Arc<PointBatch>,
        parts: &Arc<Vec<Partition>>,
    ) -> Result<(Staged, WriteSummary)> {
        let version = base.version + 1;
        // Stored files whose time range overlaps a partition's new rows may
        // hold rows the batch replaces: read them for the merge.
        let overlapping: Vec<Vec<FileEntry>> = parts
            .iter()
            .map(|p| overlapping(base, batch, p).cloned().collect())
            .collect();
        let reads: Vec<String> = overlapping
            .iter()
            .flatten()
            .map(|f| f.path.clone())
            .collect();
        let existing: HashMap<String, Vec<RecordBatch>> = futures::stream::iter(reads)
            .map(|rel| async move { self.read_parquet(&rel).await.map(|b| (rel, b)) })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let read: Vec<Vec<String>> = overlapping
            .iter()
            .map(|files| files.iter().map(|f| f.path.clone()).collect())
            .collect();
        let prefix = file_prefix(version);
        let encoded = tokio::task::spawn_blocking({
            let (batch, parts) = (batch.clone(), parts.clone());
            move || {
                parts
                    .par_iter()
                    .zip(overlapping)
                    .enumerate()
                    .map(|(n, (part, files))| {
                        encode_partition(&batch, part, files, &existing, &format!("{prefix}-{n}"))
                    })
                    .collect::<Result<Vec<_>>>()
            }
        })
        .await
        .expect("encoding does not panic")?;

        let mut summary = WriteSummary::default();
        let mut staged = Staged::new(read);
        let mut uploads = Vec::new();
        for e in encoded {
            summary.rows += e.new_rows;
            summary.replaced += e.replaced;
            summary.files_written += 1;
            summary.bytes_written += e.entry.bytes;
            staged.removed.extend(e.replaces);
            staged.uploaded.push(e.entry.path.clone());
            staged.added.push(e.entry.clone());
            uploads.push((e.entry.path, e.bytes));
        }
        self.put_files(uploads).await?;
        Ok((staged, summary))
    }

    /// Writes events atomically. An event with the same kind, scope and
    /// start as a stored one replaces it.
    pub async fn write_events(&self, events: Vec<Event>) -> Result<WriteSummary> {
        if let Some(e) = events
            .iter()
            .find(|e| Timestamp::checked(e.start).is_none() || Timestamp::checked(e.end).is_none())
        {
            let ts = if Timestamp::checked(e.start).is_none() {
                e.start
            } else {
                e.end
            };
            return Err(Error::TimestampOutOfRange {
                key: format!("event {}/{}", e.kind, e.scope),
                ts,
            });
        }
        let mut base = self.manifest().await?;
        if events.is_empty() {
            return Ok(WriteSummary {
                version: base.version,
                ..Default::default()
            });
        }
        let events_of = |m: &Manifest| -> Vec<String> {
            m.files_of(TableKind::Events)
                .map(|f| f.path.clone())
                .collect()
        };
        let mut retries = 0;
        loop {
            let old: Vec<FileEntry> = base.files_of(TableKind::Events).cloned().collect();
            let mut all: Vec<Event> = Vec::new();
            for f in &old {
                all.extend(decode_events(&self.read_parquet(&f.path).await?)?);
            }
            let new_rows = events.len() as u64;
            let new_ids: HashSet<(&str, &str, i64)> = events
                .iter()
                .map(|e| (e.kind.as_str(), e.scope.as_str(), e.start))
                .collect();
            let before = all.len();
            all.retain(|e| !new_ids.contains(&(e.kind.as_str(), e.scope.as_str(), e.start)));
            let replaced = (before - all.len()) as u64;
            all.extend(events.iter().cloned());
            all.sort_by(|a, b| (a.start, &a.kind, &a.scope).cmp(&(b.start, &b.kind, &b.scope)));
            let rel = format!("events/{}.parquet", file_prefix(base.version + 1));
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
            let read = events_of(&base);
            let mut staged = Staged::new(vec![read.clone()]);
            staged.removed.extend(read.iter().cloned());
            staged.uploaded.push(rel.clone());
            staged.added.push(entry.clone());
            self.put_files(vec![(rel, bytes)]).await?;
            let same_events = |m: &Manifest| events_of(m) == read;
            if let Some(version) = self
                .publish_staged(&staged, &mut base, &mut retries, same_events)
                .await?
            {
                return Ok(WriteSummary {
                    version,
                    rows: new_rows,
                    replaced,
                    files_written: 1,
                    bytes_written: entry.bytes,
                    retries,
                });
            }
        }
    }

    /// Merges the files of every partition that has more than one into one,
    /// then deletes what no manifest needs any more and is older than
    /// `grace` ([`DEFAULT_GRACE`] is safe beside running writers and
    /// readers; a grace under [`COMMIT_DEADLINE`] is safe only when nothing
    /// else uses the store). A compaction that races a writer is redone on
    /// the newer manifest, like a write.
    pub async fn compact(&self, grace: Duration) -> Result<CompactSummary> {
        let mut base = self.manifest().await?;
        let mut retries = 0;
        let mut summary = loop {
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
            if groups.is_empty() {
                break summary;
            }
            let prefix = file_prefix(base.version + 1);
            let mut staged = Staged::new(Vec::new());
            let mut uploads = Vec::new();
            for (n, (_, files)) in groups.into_iter().enumerate() {
                let mut points = PointBatch::default();
                for f in &files {
                    points.append(decode_points(&self.read_parquet(&f.path).await?)?);
                }
                let prefix = format!("{prefix}-{n}");
                let e = tokio::task::spawn_blocking(move || {
                    let part = partition(&points).pop().expect("one partition");
                    encode_partition(&points, &part, Vec::new(), &HashMap::new(), &prefix)
                })
                .await
                .expect("encoding does not panic")?;
                staged
                    .read
                    .push(files.iter().map(|f| f.path.clone()).collect());
                staged.removed.extend(files.iter().map(|f| f.path.clone()));
                staged.uploaded.push(e.entry.path.clone());
                staged.added.push(e.entry.clone());
                uploads.push((e.entry.path, e.bytes));
            }
            self.put_files(uploads).await?;
            // A rebase is valid while every merged file is still live and
            // nothing was added beside them in their partitions.
            let same_partitions = |m: &Manifest| {
                let mut now: HashMap<(&str, i64), Vec<&str>> = HashMap::new();
                for f in m.files_of(TableKind::Metrics) {
                    if let (Some(app), Some(day)) = (&f.app, f.day) {
                        now.entry((app, day)).or_default().push(&f.path);
                    }
                }
                staged.added.iter().zip(&staged.read).all(|(e, read)| {
                    let key = (
                        e.app.as_deref().unwrap_or_default(),
                        e.day.unwrap_or_default(),
                    );
                    let mut files = now.remove(&key).unwrap_or_default();
                    files.sort_unstable();
                    let mut expected: Vec<&str> = read.iter().map(String::as_str).collect();
                    expected.sort_unstable();
                    files == expected
                })
            };
            if let Some(version) = self
                .publish_staged(&staged, &mut base, &mut retries, same_partitions)
                .await?
            {
                summary.version = version;
                summary.files_after = base.files.len() + staged.added.len() - staged.removed.len();
                break summary;
            }
        };
        summary.deleted = self.vacuum(grace).await?;
        Ok(summary)
    }

    /// Deletes what no recent manifest needs and is older than `grace`:
    /// data files that neither the newest manifest nor one superseded less
    /// than `grace` ago lists, manifests but the newest two that were
    /// superseded longer ago, and, in a local directory, the staging files
    /// a crash left (`*.parquet#N`, `*.json#N`) and empty directories.
    /// Returns how many objects it deleted.
    async fn vacuum(&self, grace: Duration) -> Result<usize> {
        let now = std::time::SystemTime::now();
        let cutoff = chrono::DateTime::<chrono::Utc>::from(now)
            - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let mut manifests = Vec::new();
        let mut listing = self.objects.list(Some(&self.path("_manifest")));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if let Some(v) = meta.location.filename().and_then(parse_manifest_name) {
                manifests.push((v, meta));
            }
        }
        manifests.sort_by_key(|(v, _)| *v);
        // A manifest is still needed when it is the newest, or when its
        // successor was published within the grace period (a reader may
        // still be on it).
        let mut live: HashSet<String> = HashSet::new();
        let mut doomed = Vec::new();
        let newest = manifests.last().map_or(0, |(v, _)| *v);
        for (i, (v, meta)) in manifests.iter().enumerate() {
            let superseded_at = manifests.get(i + 1).map(|(_, next)| next.last_modified);
            let needed = superseded_at.is_none_or(|t| t > cutoff);
            if needed {
                // A concurrent compaction may have deleted an old one.
                let m = match self.read_manifest(&meta.location).await {
                    Err(Error::ObjectStore(object_store::Error::NotFound { .. })) => continue,
                    m => m?,
                };
                live.extend(m.files.iter().map(|f| self.path(&f.path).to_string()));
            } else if *v + 1 < newest {
                doomed.push(meta.location.clone());
            }
        }
        for dir in ["metrics", "events"] {
            let mut listing = self.objects.list(Some(&self.path(dir)));
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                if !live.contains(meta.location.as_ref()) && meta.last_modified <= cutoff {
                    doomed.push(meta.location);
                }
            }
        }
        let mut n = doomed.len();
        for path in doomed {
            match self.objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(root) = &self.local_root {
            let root = root.clone();
            let cutoff = now.checked_sub(grace).unwrap_or(std::time::UNIX_EPOCH);
            n += tokio::task::spawn_blocking(move || sweep_local(&root, cutoff))
                .await
                .expect("the sweep does not panic")
                .map_err(|source| Error::Io {
                    path: source.0,
                    source: source.1,
                })?;
        }
        Ok(n)
    }
}

/// One attempt's data files, put and ready to publish.
struct Staged {
    /// Entries it adds to the manifest.
    added: Vec<FileEntry>,
    /// Live files it supersedes.
    removed: HashSet<String>,
    /// What it put (deleted when the attempt is abandoned).
    uploaded: Vec<String>,
    /// Per partition, the stored files its merge read.
    read: Vec<Vec<String>>,
    /// When it started putting files.
    put_at: Instant,
}

impl Staged {
    fn new(read: Vec<Vec<String>>) -> Self {
        Self {
            added: Vec::new(),
            removed: HashSet::new(),
            uploaded: Vec::new(),
            read,
            put_at: Instant::now(),
        }
    }

    /// The manifest that follows `base` with this attempt applied.
    fn apply(&self, base: &Manifest) -> Manifest {
        let mut next = base.clone();
        next.version = base.version + 1;
        next.files.retain(|f| !self.removed.contains(&f.path));
        next.files.extend(self.added.iter().cloned());
        next
    }
}

/// The stored metric files of `base` that a partition's rows may collide
/// with: same app and day, overlapping time range.
fn overlapping<'a>(
    base: &'a Manifest,
    batch: &'a PointBatch,
    p: &'a Partition,
) -> impl Iterator<Item = &'a FileEntry> + 'a {
    let app = &batch.keys[p.key_idx_any as usize].app;
    base.files_of(TableKind::Metrics)
        .filter(move |f| f.app.as_deref() == Some(app.as_str()) && f.day == Some(p.day))
        .filter(move |f| f.min_ts <= p.max_ts && f.max_ts >= p.min_ts)
}

/// Whether the stored files a staged batch merged with are still exactly
/// the ones of `m` in its partitions, so its files can be published on `m`
/// unchanged (a rebase).
fn merge_still_holds(
    m: &Manifest,
    batch: &PointBatch,
    parts: &[Partition],
    staged: &Staged,
) -> bool {
    parts
        .iter()
        .map(|p| overlapping(m, batch, p).map(|f| f.path.clone()).collect())
        .collect::<Vec<Vec<String>>>()
        == staged.read
}

/// The name prefix of an attempt's files: the version it is written for and
/// a random token, so concurrent writers never put the same path.
fn file_prefix(version: u64) -> String {
    format!("v{version}-{}", uuid::Uuid::new_v4().simple())
}

/// Sleeps before the next commit attempt: exponential with full jitter,
/// capped at a quarter of a second.
async fn backoff(retry: u32) {
    let cap_ms = (2u64 << retry.min(7)).min(250);
    let ms = (uuid::Uuid::new_v4().as_u128() % u128::from(cap_ms)) as u64 + 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Deletes, under a local store's root, the staging files of interrupted
/// puts (`name#digits`, which the object-store listing hides) and the empty
/// directories, when older than `cutoff`. Returns how many it deleted.
fn sweep_local(
    root: &std::path::Path,
    cutoff: std::time::SystemTime,
) -> std::result::Result<usize, (std::path::PathBuf, std::io::Error)> {
    fn walk(
        dir: &std::path::Path,
        cutoff: std::time::SystemTime,
        top: bool,
    ) -> std::result::Result<usize, (std::path::PathBuf, std::io::Error)> {
        let err = |e| (dir.to_path_buf(), e);
        let mut n = 0;
        // The directory's age before its children go (deleting them
        // touches it).
        let old_dir = std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t <= cutoff);
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(err(e)),
        };
        for entry in entries {
            let entry = entry.map_err(err)?;
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta.modified().is_ok_and(|t| t <= cutoff);
            if meta.is_dir() {
                n += walk(&path, cutoff, false)?;
            } else if old && is_staging_name(&entry.file_name().to_string_lossy()) {
                match std::fs::remove_file(&path) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err((path, e)),
                }
            }
        }
        // An empty directory goes; one that a writer fills meanwhile stays
        // (removal of a non-empty directory fails, which is fine).
        if !top && old_dir && std::fs::remove_dir(dir).is_ok() {
            n += 1;
        }
        Ok(n)
    }
    ["metrics", "events", "_manifest"]
        .iter()
        .map(|d| walk(&root.join(d), cutoff, true))
        .sum()
}

/// True for the name of an object store's staging file: `<name>#<digits>`.
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
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
    part: &Partition,
    overlapping: Vec<FileEntry>,
    existing: &HashMap<String, Vec<RecordBatch>>,
    name: &str,
) -> Result<Encoded> {
    let app = batch.keys[part.key_idx_any as usize].app.clone();
    let (y, m, d) = Timestamp(part.min_ts).date();
    let rel = format!(
        "metrics/app={}/day={y:04}-{m:02}-{d:02}/{name}.parquet",
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

//! Ingestion: CSV and NDJSON files, with columns mapped by settings, parsed
//! into columnar batches of points or events ready for the store.
//!
//! Parsing is all-or-nothing per batch: every file is read and validated
//! before the store is touched, so a malformed row leaves the store as it
//! was (unless invalid rows are skipped on request).

mod parse;
mod reader;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardcast_core::{SeriesKey, Timestamp};

use crate::error::{Error, Result, RowError, snippet};
pub use parse::TimestampFormat;
use reader::{ColumnRef, ReadOptions, RowSink, read_rows};
pub use reader::{InputFormat, SkippedRow};

/// Where one part of a series key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// A column of the file.
    Column(String),
    /// The same text for every row.
    Constant(String),
    /// The file name without its extension.
    FileStem,
    /// The value column's name, spaces replaced by underscores.
    ValueColumn,
}

/// How to read metric files: which columns hold what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricMapping {
    /// The timestamp column.
    pub timestamp_col: String,
    /// How timestamps are written.
    pub timestamp_format: TimestampFormat,
    /// One or more value columns; each becomes its own series.
    pub value_cols: Vec<String>,
    /// Source of the `app` key part.
    pub app: KeySource,
    /// Source of the `shard_type` key part.
    pub shard_type: KeySource,
    /// Source of the `metric` key part.
    pub metric: KeySource,
    /// Source of the `series` key part.
    pub series: KeySource,
}

impl MetricMapping {
    /// The usual mapping: `timestamp` and `value` columns, the given app and
    /// shard type, metric `value`, and the series from the file stem when
    /// there is one value column or from the column names when several.
    pub fn new(app: &str, shard_type: &str, value_cols: &[&str]) -> Self {
        Self {
            timestamp_col: "timestamp".into(),
            timestamp_format: TimestampFormat::Auto,
            value_cols: value_cols.iter().map(|s| s.to_string()).collect(),
            app: KeySource::Constant(app.into()),
            shard_type: KeySource::Constant(shard_type.into()),
            metric: KeySource::Constant("value".into()),
            series: if value_cols.len() > 1 {
                KeySource::ValueColumn
            } else {
                KeySource::FileStem
            },
        }
    }
}

/// How to read event files (holidays, campaigns, batch jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMapping {
    /// Column with the start time.
    pub start_col: String,
    /// Column with the end time; events without one are instants.
    pub end_col: Option<String>,
    /// How timestamps are written.
    pub timestamp_format: TimestampFormat,
    /// Source of the event kind (`holiday`, `campaign`, …).
    pub kind: KeySource,
    /// Source of the scope: an app, `app/shard_type`, or `*` for all.
    pub scope: KeySource,
    /// Optional column with a free-text name.
    pub name_col: Option<String>,
}

/// How columns become series keys and event fields; as command-line
/// flags, those of `shardcast ingest`. A key part is a constant or a
/// column; the series id may also come from the file stem or the value
/// column's name.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ColumnMapping {
    /// Column with the timestamp (metrics).
    #[arg(long, default_value = "timestamp", env = "SHARDCAST_TIMESTAMP_COL")]
    pub timestamp_col: String,
    /// How timestamps are written: `auto`, `iso`, `unix-s` or `unix-ms`.
    #[arg(long, default_value = "auto", env = "SHARDCAST_TIMESTAMP_FORMAT")]
    pub timestamp_format: TimestampFormat,
    /// Value column(s); each becomes a series. Repeat or comma-separate.
    #[arg(long = "value-col", default_value = "value", value_delimiter = ',')]
    pub value_cols: Vec<String>,
    /// App of every row.
    #[arg(
        long,
        default_value = "default",
        conflicts_with = "app_col",
        env = "SHARDCAST_APP"
    )]
    pub app: String,
    /// Column holding the app.
    #[arg(long)]
    pub app_col: Option<String>,
    /// Shard type of every row.
    #[arg(
        long,
        default_value = "default",
        conflicts_with = "shard_type_col",
        env = "SHARDCAST_SHARD_TYPE"
    )]
    pub shard_type: String,
    /// Column holding the shard type.
    #[arg(long)]
    pub shard_type_col: Option<String>,
    /// Metric name of every row.
    #[arg(long, default_value = "value", conflicts_with = "metric_col")]
    pub metric: String,
    /// Column holding the metric name.
    #[arg(long)]
    pub metric_col: Option<String>,
    /// Series id of every row.
    #[arg(long, conflicts_with_all = ["series_col", "series_from"])]
    pub series: Option<String>,
    /// Column holding the series id.
    #[arg(long, conflicts_with = "series_from")]
    pub series_col: Option<String>,
    /// Derive the series id (default: file stem with one value column,
    /// value column names with several).
    #[arg(long, value_enum)]
    pub series_from: Option<SeriesFrom>,
    /// Events: column with the start time.
    #[arg(long, default_value = "start")]
    pub start_col: String,
    /// Events: column with the end time (instants when absent).
    #[arg(long)]
    pub end_col: Option<String>,
    /// Events: kind of every row (holiday, campaign, batch-job, …).
    #[arg(long, conflicts_with = "kind_col")]
    pub kind: Option<String>,
    /// Events: column holding the kind.
    #[arg(long)]
    pub kind_col: Option<String>,
    /// Events: scope of every row (an app, app/shard_type, or *).
    #[arg(long, default_value = "*", conflicts_with = "scope_col")]
    pub scope: String,
    /// Events: column holding the scope.
    #[arg(long)]
    pub scope_col: Option<String>,
    /// Events: column holding a free-text name.
    #[arg(long)]
    pub name_col: Option<String>,
}

/// Where `ColumnMapping`'s series id comes from when no constant or
/// column gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeriesFrom {
    /// The file name without extension.
    FileStem,
    /// The value column's name (spaces become underscores).
    ValueCol,
}

impl ColumnMapping {
    /// The metric mapping: the series id from `--series`, `--series-col`,
    /// `--series-from`, else the file stem with one value column and the
    /// column names with several.
    pub fn metrics(&self) -> MetricMapping {
        let series = match (&self.series, &self.series_col, self.series_from) {
            (Some(s), _, _) => KeySource::Constant(s.clone()),
            (_, Some(c), _) => KeySource::Column(c.clone()),
            (_, _, Some(SeriesFrom::FileStem)) => KeySource::FileStem,
            (_, _, Some(SeriesFrom::ValueCol)) => KeySource::ValueColumn,
            _ if self.value_cols.len() > 1 => KeySource::ValueColumn,
            _ => KeySource::FileStem,
        };
        MetricMapping {
            timestamp_col: self.timestamp_col.clone(),
            timestamp_format: self.timestamp_format,
            value_cols: self.value_cols.clone(),
            app: KeySource::either(&self.app, &self.app_col),
            shard_type: KeySource::either(&self.shard_type, &self.shard_type_col),
            metric: KeySource::either(&self.metric, &self.metric_col),
            series,
        }
    }

    /// The event mapping: the kind from `--kind`, `--kind-col`, else the
    /// column `kind`.
    pub fn events(&self) -> EventMapping {
        EventMapping {
            start_col: self.start_col.clone(),
            end_col: self.end_col.clone(),
            timestamp_format: self.timestamp_format,
            kind: match (&self.kind, &self.kind_col) {
                (_, Some(c)) => KeySource::Column(c.clone()),
                (Some(k), None) => KeySource::Constant(k.clone()),
                (None, None) => KeySource::Column("kind".into()),
            },
            scope: KeySource::either(&self.scope, &self.scope_col),
            name_col: self.name_col.clone(),
        }
    }
}

impl KeySource {
    /// The column when one is named, else the constant.
    fn either(constant: &str, column: &Option<String>) -> Self {
        match column {
            Some(c) => KeySource::Column(c.clone()),
            None => KeySource::Constant(constant.to_owned()),
        }
    }
}

/// Settings shared by metric and event ingestion; as command-line flags,
/// those of `shardcast ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ReadSettings {
    /// Input format, `csv` or `ndjson`; guessed from each file's extension
    /// (.json/.jsonl/.ndjson) if absent.
    #[arg(long, env = "SHARDCAST_FORMAT")]
    pub format: Option<InputFormat>,
    /// Skip malformed rows (and report them) instead of failing the batch.
    #[arg(long, env = "SHARDCAST_SKIP_INVALID")]
    pub skip_invalid: bool,
    /// Longest accepted line, in bytes.
    #[arg(long, default_value_t = READ.max_line_bytes)]
    pub max_line_bytes: usize,
}

/// The default settings.
const READ: ReadSettings = ReadSettings {
    format: None,
    skip_invalid: false,
    max_line_bytes: 1 << 20,
};

impl Default for ReadSettings {
    fn default() -> Self {
        READ
    }
}

/// Points parsed from one or more files, columnar: `key_idx[i]` indexes
/// `keys` for the point `(ts[i], value[i])`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointBatch {
    /// Distinct series keys.
    pub keys: Vec<SeriesKey>,
    /// Key of each point.
    pub key_idx: Vec<u32>,
    /// Timestamps, milliseconds since the epoch, UTC.
    pub ts: Vec<i64>,
    /// Values.
    pub value: Vec<f64>,
}

impl PointBatch {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// True when there is no point.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Adds a point.
    pub fn push(&mut self, key: &SeriesKey, ts: i64, value: f64) {
        let idx = match self.keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key.clone());
                self.keys.len() - 1
            }
        };
        self.key_idx.push(idx as u32);
        self.ts.push(ts);
        self.value.push(value);
    }

    /// The points in order, each as `(key, ts, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, i64, f64)> + '_ {
        self.key_idx
            .iter()
            .zip(&self.ts)
            .zip(&self.value)
            .map(|((&k, &ts), &v)| (&self.keys[k as usize], ts, v))
    }

    /// Splits the batch in two, in order: the points `pick` refuses, and
    /// those it picks.
    pub fn partition(self, pick: impl Fn(&SeriesKey, i64) -> bool) -> (PointBatch, PointBatch) {
        let (mut kept, mut picked) = (PointBatch::default(), PointBatch::default());
        for (key, ts, value) in self.iter() {
            let side = if pick(key, ts) {
                &mut picked
            } else {
                &mut kept
            };
            side.push(key, ts, value);
        }
        (kept, picked)
    }

    /// Appends another batch, merging the key tables.
    pub fn append(&mut self, other: PointBatch) {
        let mut index: HashMap<SeriesKey, u32> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i as u32))
            .collect();
        let remap: Vec<u32> = other
            .keys
            .into_iter()
            .map(|k| {
                let next = index.len() as u32;
                *index.entry(k.clone()).or_insert_with(|| {
                    self.keys.push(k);
                    next
                })
            })
            .collect();
        self.key_idx
            .extend(other.key_idx.iter().map(|&i| remap[i as usize]));
        self.ts.extend_from_slice(&other.ts);
        self.value.extend_from_slice(&other.value);
    }
}

/// One external event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Start, milliseconds since the epoch.
    pub start: i64,
    /// End (inclusive instant when equal to start).
    pub end: i64,
    /// Kind: `holiday`, `campaign`, `batch-job`, …
    pub kind: String,
    /// Which series it concerns: an app, `app/shard_type`, or `*`.
    pub scope: String,
    /// Free-text name, if any.
    pub name: Option<String>,
}

/// What a parse produced besides the rows: skipped rows per file.
#[derive(Debug, Clone, Default)]
pub struct ParseReport {
    /// Files read, with rows kept and rows skipped.
    pub files: Vec<FileReport>,
}

/// Per-file outcome of a parse.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Rows (points or events) kept.
    pub rows: u64,
    /// Rows skipped as invalid.
    pub skipped: u64,
    /// The first skipped rows, with their line and reason.
    pub skipped_examples: Vec<SkippedRow>,
}

impl ParseReport {
    /// Total rows skipped.
    pub fn skipped(&self) -> u64 {
        self.files.iter().map(|f| f.skipped).sum()
    }
}

/// The skipped rows, per file, each as `file:line: field "name" reason`
/// (nothing when no row was skipped).
impl std::fmt::Display for ParseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.skipped() == 0 {
            return Ok(());
        }
        writeln!(f, "skipped {} invalid rows:", self.skipped())?;
        for file in self.files.iter().filter(|r| r.skipped > 0) {
            let path = file.path.display();
            writeln!(f, "  {path}: {} skipped", file.skipped)?;
            for s in &file.skipped_examples {
                writeln!(f, "    {path}:{}: field {:?} {}", s.line, s.field, s.reason)?;
            }
            let more = (file.skipped as usize).saturating_sub(file.skipped_examples.len());
            if more > 0 {
                writeln!(f, "    … and {more} more")?;
            }
        }
        Ok(())
    }
}

/// Expands file names and glob patterns, in sorted order; a pattern that
/// matches nothing is an error.
pub fn expand_inputs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in patterns {
        if Path::new(p).is_file() {
            out.push(PathBuf::from(p));
            continue;
        }
        if Path::new(p).is_dir() {
            return Err(Error::IsDirectory { path: p.into() });
        }
        let mut matched: Vec<PathBuf> = glob::glob(p)
            .map_err(|source| Error::BadPattern {
                pattern: p.clone(),
                source,
            })?
            .filter_map(|r| r.ok())
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            return Err(Error::NoFiles { pattern: p.clone() });
        }
        matched.sort();
        out.append(&mut matched);
    }
    Ok(out)
}

/// Reads a whole file as one consistent snapshot: its size and modification
/// time are taken before and after the read and must agree with each other
/// and with the bytes read, so a file truncated, grown or rewritten while it
/// is read is refused rather than half ingested.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    read_file_checked(path, || {})
}

/// [`read_file`] with a hook run after the first look at the file and
/// before its bytes are read (tests change the file there).
fn read_file_checked(path: &Path, before_read: impl FnOnce()) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let stamp = |file: &std::fs::File| {
        file.metadata()
            .and_then(|m| Ok((m.len(), m.modified()?)))
            .map_err(io)
    };
    let before = stamp(&file)?;
    before_read();
    let mut bytes = Vec::with_capacity(usize::try_from(before.0).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(io)?;
    let after = stamp(&file)?;
    let changed = |what: String| Error::FileChanged {
        path: path.to_path_buf(),
        what,
    };
    if after.0 != before.0 {
        return Err(changed(format!("size {} -> {} bytes", before.0, after.0)));
    }
    if bytes.len() as u64 != before.0 {
        return Err(changed(format!(
            "{} bytes read of {}",
            bytes.len(),
            before.0
        )));
    }
    if after.1 != before.1 {
        return Err(changed("modified during the read".into()));
    }
    Ok(bytes)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One key part, resolved for one file and value column.
#[derive(Debug, Clone)]
enum Part {
    Fixed(String),
    /// Index into the sink's requested fields.
    Field(usize),
}

/// Parses metric files into a batch of points.
pub fn parse_metric_files(
    paths: &[PathBuf],
    mapping: &MetricMapping,
    settings: &ReadSettings,
) -> Result<(PointBatch, ParseReport)> {
    if mapping.value_cols.is_empty() {
        return Err(Error::Spec {
            reason: "at least one value column is required".into(),
        });
    }
    let mut batch = PointBatch::default();
    let mut report = ParseReport::default();
    for path in paths {
        let bytes = read_file(path)?;
        let (points, file_report) = parse_metric_bytes(path, &bytes, mapping, settings)?;
        batch.append(points);
        report.files.push(file_report);
    }
    Ok((batch, report))
}

/// Parses one file's bytes (`path` names it in errors and gives its stem).
pub fn parse_metric_bytes(
    path: &Path,
    bytes: &[u8],
    mapping: &MetricMapping,
    settings: &ReadSettings,
) -> Result<(PointBatch, FileReport)> {
    let mut columns = vec![ColumnRef {
        name: mapping.timestamp_col.clone(),
        flag: "--timestamp-col",
    }];
    for v in &mapping.value_cols {
        columns.push(ColumnRef {
            name: v.clone(),
            flag: "--value-col",
        });
    }
    let stem = file_stem(path);
    let mut templates = Vec::with_capacity(mapping.value_cols.len());
    for value_col in &mapping.value_cols {
        let mut parts = Vec::with_capacity(4);
        for (source, flag) in [
            (&mapping.app, "--app-col"),
            (&mapping.shard_type, "--shard-type-col"),
            (&mapping.metric, "--metric-col"),
            (&mapping.series, "--series-col"),
        ] {
            parts.push(match source {
                KeySource::Constant(c) => Part::Fixed(c.clone()),
                KeySource::FileStem => Part::Fixed(stem.clone()),
                KeySource::ValueColumn => Part::Fixed(value_col.replace(' ', "_")),
                KeySource::Column(name) => {
                    let at = columns
                        .iter()
                        .position(|c| &c.name == name)
                        .unwrap_or_else(|| {
                            columns.push(ColumnRef {
                                name: name.clone(),
                                flag,
                            });
                            columns.len() - 1
                        });
                    Part::Field(at)
                }
            });
        }
        templates.push(parts);
    }
    let format = settings
        .format
        .unwrap_or_else(|| InputFormat::from_path(path));
    let opts = ReadOptions {
        skip_invalid: settings.skip_invalid,
        max_line_bytes: settings.max_line_bytes,
    };
    let make = || PointSink {
        templates: &templates,
        ts_format: mapping.timestamp_format,
        interner: HashMap::default(),
        scratch: Vec::new(),
        last_ts: (Vec::new(), 0),
        points: PointBatch::default(),
    };
    let rows = read_rows(path, bytes, format, &columns, opts, &make)?;
    let mut points = PointBatch::default();
    for sink in rows.sinks {
        if points.is_empty() {
            points = sink.points;
        } else {
            points.append(sink.points);
        }
    }
    let report = FileReport {
        path: path.to_path_buf(),
        rows: points.len() as u64,
        skipped: rows.skipped_count,
        skipped_examples: rows.skipped,
    };
    Ok((points, report))
}

struct PointSink<'a> {
    templates: &'a [Vec<Part>],
    ts_format: TimestampFormat,
    /// Maps the bytes of the row-dependent key parts (and the value column)
    /// to an index in `points.keys`.
    interner: HashMap<Vec<u8>, u32, foldhash::fast::RandomState>,
    scratch: Vec<u8>,
    /// The last timestamp field and its value: rows often share a time.
    last_ts: (Vec<u8>, i64),
    points: PointBatch,
}

impl PointSink<'_> {
    fn key_index(
        &mut self,
        col: usize,
        fields: &[&[u8]],
    ) -> Result<u32, (Option<usize>, RowError)> {
        let parts = &self.templates[col];
        self.scratch.clear();
        self.scratch.extend_from_slice(&(col as u32).to_le_bytes());
        for p in parts {
            if let Part::Field(i) = p {
                self.scratch.extend_from_slice(fields[*i]);
                self.scratch.push(0);
            }
        }
        if let Some(&i) = self.interner.get(self.scratch.as_slice()) {
            return Ok(i);
        }
        let mut text = Vec::with_capacity(4);
        for p in parts {
            text.push(match p {
                Part::Fixed(s) => s.clone(),
                Part::Field(i) => std::str::from_utf8(parse::trim(fields[*i]))
                    .map_err(|_| (Some(*i), RowError::InvalidUtf8))?
                    .to_string(),
            });
        }
        let [app, shard_type, metric, series]: [String; 4] =
            text.try_into().expect("four key parts");
        let key = SeriesKey::new(app, shard_type, metric, series).map_err(|e| {
            // Name the column the bad part came from, if it came from one.
            let field = parts.iter().find_map(|p| match p {
                Part::Field(i) => Some(*i),
                Part::Fixed(_) => None,
            });
            (field, RowError::Key(e))
        })?;
        let idx = self.points.keys.len() as u32;
        self.points.keys.push(key);
        self.interner.insert(self.scratch.clone(), idx);
        Ok(idx)
    }
}

impl RowSink for PointSink<'_> {
    fn row(&mut self, fields: &[&[u8]]) -> Result<(), (Option<usize>, RowError)> {
        let ts = if !self.last_ts.0.is_empty() && self.last_ts.0 == fields[0] {
            self.last_ts.1
        } else {
            let ts = timestamp(fields[0], self.ts_format).map_err(|e| (Some(0), e))?;
            self.last_ts.0.clear();
            self.last_ts.0.extend_from_slice(fields[0]);
            self.last_ts.1 = ts;
            ts
        };
        // A row is kept whole or not at all: on any error the points it
        // already pushed are taken back.
        let before = self.points.len();
        let result = (0..self.templates.len()).try_for_each(|col| {
            let f = fields[col + 1];
            let v = parse::parse_value(f).map_err(|not_finite| {
                let text = snippet(f);
                let reason = if not_finite {
                    RowError::NotFinite { text }
                } else if parse::trim(f).is_empty() {
                    RowError::Missing
                } else {
                    RowError::NotANumber { text }
                };
                (Some(col + 1), reason)
            })?;
            let k = self.key_index(col, fields)?;
            self.points.key_idx.push(k);
            self.points.ts.push(ts);
            self.points.value.push(v);
            Ok(())
        });
        if result.is_err() {
            self.points.key_idx.truncate(before);
            self.points.ts.truncate(before);
            self.points.value.truncate(before);
        }
        result
    }
}

/// Parses event files.
pub fn parse_event_files(
    paths: &[PathBuf],
    mapping: &EventMapping,
    settings: &ReadSettings,
) -> Result<(Vec<Event>, ParseReport)> {
    let mut events = Vec::new();
    let mut report = ParseReport::default();
    for path in paths {
        let bytes = read_file(path)?;
        let (mut ev, r) = parse_event_bytes(path, &bytes, mapping, settings)?;
        events.append(&mut ev);
        report.files.push(r);
    }
    Ok((events, report))
}

/// Parses one event file's bytes.
pub fn parse_event_bytes(
    path: &Path,
    bytes: &[u8],
    mapping: &EventMapping,
    settings: &ReadSettings,
) -> Result<(Vec<Event>, FileReport)> {
    let mut columns = vec![ColumnRef {
        name: mapping.start_col.clone(),
        flag: "--start-col",
    }];
    let mut add = |name: &str, flag: &'static str| {
        columns.push(ColumnRef {
            name: name.to_string(),
            flag,
        });
        columns.len() - 1
    };
    let end = mapping.end_col.as_deref().map(|c| add(c, "--end-col"));
    let name = mapping.name_col.as_deref().map(|c| add(c, "--name-col"));
    let stem = file_stem(path);
    let mut part = |source: &KeySource, flag: &'static str| -> Result<Part> {
        Ok(match source {
            KeySource::Constant(c) => Part::Fixed(c.clone()),
            KeySource::FileStem => Part::Fixed(stem.clone()),
            KeySource::Column(c) => Part::Field(add(c, flag)),
            KeySource::ValueColumn => {
                return Err(Error::Spec {
                    reason: format!("{flag}: events have no value column"),
                });
            }
        })
    };
    let kind = part(&mapping.kind, "--kind-col")?;
    let scope = part(&mapping.scope, "--scope-col")?;
    let format = settings
        .format
        .unwrap_or_else(|| InputFormat::from_path(path));
    let opts = ReadOptions {
        skip_invalid: settings.skip_invalid,
        max_line_bytes: settings.max_line_bytes,
    };
    let make = || EventSink {
        end,
        name,
        kind: kind.clone(),
        scope: scope.clone(),
        ts_format: mapping.timestamp_format,
        events: Vec::new(),
    };
    let rows = read_rows(path, bytes, format, &columns, opts, &make)?;
    let events: Vec<Event> = rows.sinks.into_iter().flat_map(|s| s.events).collect();
    let report = FileReport {
        path: path.to_path_buf(),
        rows: events.len() as u64,
        skipped: rows.skipped_count,
        skipped_examples: rows.skipped,
    };
    Ok((events, report))
}

struct EventSink {
    end: Option<usize>,
    name: Option<usize>,
    kind: Part,
    scope: Part,
    ts_format: TimestampFormat,
    events: Vec<Event>,
}

/// Parses a timestamp field and checks it against the one accepted range
/// ([`Timestamp::checked`]: years 1 to 9999).
fn timestamp(field: &[u8], format: TimestampFormat) -> Result<i64, RowError> {
    let ms = parse::parse_timestamp(field, format).ok_or_else(|| RowError::BadTimestamp {
        text: snippet(field),
    })?;
    Timestamp::checked(ms)
        .map(Timestamp::millis)
        .ok_or_else(|| RowError::TimestampOutOfRange {
            text: snippet(field),
        })
}

fn text_field(fields: &[&[u8]], i: usize) -> Result<String, (Option<usize>, RowError)> {
    let t = std::str::from_utf8(parse::trim(fields[i]))
        .map_err(|_| (Some(i), RowError::InvalidUtf8))?;
    if t.is_empty() {
        return Err((Some(i), RowError::Missing));
    }
    Ok(t.to_string())
}

impl RowSink for EventSink {
    fn row(&mut self, fields: &[&[u8]]) -> Result<(), (Option<usize>, RowError)> {
        let ts = |i: usize| timestamp(fields[i], self.ts_format).map_err(|e| (Some(i), e));
        let start = ts(0)?;
        let end = match self.end {
            Some(i) => ts(i)?,
            None => start,
        };
        if end < start {
            return Err((self.end, RowError::EndBeforeStart));
        }
        let part = |p: &Part| match p {
            Part::Fixed(s) => Ok(s.clone()),
            Part::Field(i) => text_field(fields, *i),
        };
        let kind = part(&self.kind)?;
        let scope = part(&self.scope)?;
        let name = match self.name {
            Some(i) => {
                let t = std::str::from_utf8(parse::trim(fields[i]))
                    .map_err(|_| (Some(i), RowError::InvalidUtf8))?;
                (!t.is_empty()).then(|| t.to_string())
            }
            None => None,
        };
        self.events.push(Event {
            start,
            end,
            kind,
            scope,
            name,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;

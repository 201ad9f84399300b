use std::path::PathBuf;

use thiserror::Error;

/// Why one input row was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RowError {
    /// The timestamp field does not parse in the expected format.
    #[error(
        "bad timestamp {text:?} (expected ISO 8601, `YYYY-MM-DD HH:MM:SS`, or unix seconds/millis)"
    )]
    BadTimestamp {
        /// The field's text (cut to 64 characters).
        text: String,
    },
    /// The timestamp parses but lies outside years 1 to 9999 (UTC), the
    /// range every input path accepts.
    #[error("timestamp {text:?} is outside years 1 to 9999 (UTC)")]
    TimestampOutOfRange {
        /// The field's text (cut to 64 characters).
        text: String,
    },
    /// The value field is not a number.
    #[error("value {text:?} is not a number")]
    NotANumber {
        /// The field's text (cut to 64 characters).
        text: String,
    },
    /// The value parses but is NaN or infinite.
    #[error("value {text:?} is not finite")]
    NotFinite {
        /// The field's text.
        text: String,
    },
    /// The row has a different number of fields than the header.
    #[error("has {got} fields, the header has {expected}")]
    ColumnCount {
        /// Fields in the header.
        expected: usize,
        /// Fields in this row.
        got: usize,
    },
    /// The field is absent (NDJSON) or empty.
    #[error("is missing or empty")]
    Missing,
    /// The field is present but of the wrong JSON type.
    #[error("has the wrong type: expected {expected}")]
    WrongType {
        /// What was expected.
        expected: &'static str,
    },
    /// The line is not valid UTF-8.
    #[error("is not valid UTF-8")]
    InvalidUtf8,
    /// The line is longer than the limit.
    #[error("is {len} bytes long, over the limit of {max} bytes")]
    LineTooLong {
        /// Bytes in the line (at least).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The line does not parse (bad JSON or CSV quoting).
    #[error("is malformed: {reason}")]
    Malformed {
        /// The parser's message.
        reason: String,
    },
    /// A key field (app, shard type, metric, series) is invalid.
    #[error("{0}")]
    Key(shardcast_core::Error),
    /// An event ends before it starts.
    #[error("event ends before it starts")]
    EndBeforeStart,
}

/// Errors of the store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A local file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An input pattern matched no file.
    #[error("no input file matches {pattern:?}")]
    NoFiles {
        /// The pattern.
        pattern: String,
    },
    /// An input names a directory, not a file.
    #[error("{path} is a directory; name its files, e.g. '{path}/*.csv'")]
    IsDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// An input file changed (was truncated, grown or rewritten) while it
    /// was being read, so its rows are not one consistent snapshot.
    #[error(
        "{path} changed while it was read ({what}); nothing of it was stored, ingest it again once it is complete"
    )]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// What differed.
        what: String,
    },
    /// An input pattern is not a valid glob.
    #[error("invalid file pattern {pattern:?}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// The cause.
        #[source]
        source: glob::PatternError,
    },
    /// An input file has no bytes at all.
    #[error("{path}: the file is empty (expected a header line)")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// The header line of a CSV file is unusable.
    #[error("{path}:1: header {reason}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A column named by the mapping is not in the file.
    #[error("{path}:1: column {column:?} (from {flag}) is not in the header {header:?}")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The flag or setting that named it.
        flag: &'static str,
        /// The header's columns.
        header: Vec<String>,
    },
    /// One row of an input file is malformed.
    #[error("{path}:{line}: field {field:?} {reason}")]
    Row {
        /// The file.
        path: PathBuf,
        /// One-based line number.
        line: u64,
        /// The field (column name), or `<line>` for the whole line.
        field: String,
        /// What is wrong.
        #[source]
        reason: RowError,
    },
    /// The ingestion settings are inconsistent.
    #[error("invalid ingest settings: {reason}")]
    Spec {
        /// What is wrong.
        reason: String,
    },
    /// A store URL that cannot be opened.
    #[error("invalid store location {location:?}: {reason}")]
    Location {
        /// The location as given.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The object store failed.
    #[error("object store error")]
    ObjectStore(#[from] object_store::Error),
    /// A Parquet file could not be written or read.
    #[error("parquet error in {path}")]
    Parquet {
        /// The object path.
        path: String,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow operation failed.
    #[error("arrow error")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A DataFusion query failed.
    #[error("query failed")]
    Query(#[from] datafusion::error::DataFusionError),
    /// A manifest could not be parsed.
    #[error("manifest {path} is corrupt")]
    Manifest {
        /// The object path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest has a format this version does not read.
    #[error("manifest {path} has format {found}, this build reads format {expected}")]
    ManifestFormat {
        /// The object path.
        path: String,
        /// Format found.
        found: u32,
        /// Format supported.
        expected: u32,
    },
    /// Other writers committed first on every attempt: the store is
    /// written too often for this batch to get in. Nothing of it is
    /// visible; it can be retried as a whole.
    #[error(
        "another writer committed store version {version} first, {attempts} time(s) in a row; nothing of this batch was stored, retry it"
    )]
    Conflict {
        /// The version the last attempt tried to commit.
        version: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// A point or event time outside years 1 to 9999 (UTC), the range every
    /// input path accepts.
    #[error("{key}: timestamp {ts} ms is outside years 1 to 9999 (UTC)")]
    TimestampOutOfRange {
        /// The series or event it belongs to.
        key: String,
        /// The timestamp, ms since the epoch.
        ts: i64,
    },
    /// A series was asked for that the store does not hold.
    #[error("series {key} is not in the store")]
    UnknownSeries {
        /// The key, displayed.
        key: String,
    },
    /// A series selection that matches nothing, or not the one series
    /// asked for.
    #[error("{reason}")]
    Selection {
        /// What was asked and what the store holds.
        reason: String,
    },
    /// A resampling or windowing request that cannot be satisfied.
    #[error("cannot build the grid: {reason}")]
    Grid {
        /// What is wrong.
        reason: String,
    },
    /// An injected fault (tests of atomicity only).
    #[error("injected fault: {0}")]
    Fault(&'static str),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Cuts a field's text for an error message.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > 64 {
        let mut t: String = s.chars().take(61).collect();
        t.push_str("...");
        t
    } else {
        s.into_owned()
    }
}

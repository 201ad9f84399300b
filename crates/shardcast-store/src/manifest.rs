//! The manifest: the list of live data files, published atomically.
//!
//! A store's content is exactly the files named by its newest manifest,
//! `_manifest/<version>.json`. A write puts its data files first, under new
//! names no reader knows, then publishes manifest `version + 1` with a
//! create-if-absent put. Readers therefore see a batch entirely or not at
//! all; files of a batch that failed midway are unreferenced and removed
//! by `compact`.

use serde::{Deserialize, Serialize};

/// Manifest format written by this build.
pub const MANIFEST_FORMAT: u32 = 1;

/// The two stored tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// Metric points.
    Metrics,
    /// External events.
    Events,
}

/// One live Parquet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Which table it belongs to.
    pub table: TableKind,
    /// Path relative to the store root.
    pub path: String,
    /// The app of every row (metrics only).
    pub app: Option<String>,
    /// The UTC day (days since the epoch) of every row (metrics only).
    pub day: Option<i64>,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Smallest timestamp (ms), or event start.
    pub min_ts: i64,
    /// Largest timestamp (ms), or event end.
    pub max_ts: i64,
}

/// A version of the store's file list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format of this document.
    pub format: u32,
    /// Version number, increasing by one per commit; 0 is the empty store.
    pub version: u64,
    /// The live files.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The empty store.
    pub fn empty() -> Self {
        Self {
            format: MANIFEST_FORMAT,
            version: 0,
            files: Vec::new(),
        }
    }

    /// Files of one table.
    pub fn files_of(&self, table: TableKind) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(move |f| f.table == table)
    }

    /// Total rows of one table.
    pub fn rows_of(&self, table: TableKind) -> u64 {
        self.files_of(table).map(|f| f.rows).sum()
    }

    /// Total bytes of all live files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Object name of a manifest version, zero-padded so names sort by version.
pub(crate) fn manifest_name(version: u64) -> String {
    format!("_manifest/{version:020}.json")
}

/// The version of a manifest object name, if it is one.
pub(crate) fn parse_manifest_name(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

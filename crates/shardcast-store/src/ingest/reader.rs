//! Splits CSV and NDJSON input into rows and hands the fields that a
//! [`RowSink`] asked for to it, in parallel chunks when the format allows.

use std::borrow::Cow;
use std::path::Path;

use rayon::prelude::*;

use super::parse::trim;
use crate::error::{Error, Result, RowError};

/// The input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl InputFormat {
    /// Guesses the format from a file extension: `.json`, `.jsonl`, `.ndjson`
    /// are NDJSON, anything else CSV.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json" | "jsonl" | "ndjson") => Self::Ndjson,
            _ => Self::Csv,
        }
    }
}

impl std::str::FromStr for InputFormat {
    type Err = crate::Error;

    /// `csv` or `ndjson`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "csv" => Ok(Self::Csv),
            "ndjson" => Ok(Self::Ndjson),
            other => Err(crate::Error::Spec {
                reason: format!("unknown input format `{other}`: csv or ndjson"),
            }),
        }
    }
}

/// A column a sink needs, and the flag that named it (for error messages).
#[derive(Debug, Clone)]
pub(crate) struct ColumnRef {
    pub(crate) name: String,
    pub(crate) flag: &'static str,
}

/// Receives the requested fields of every row, in the order of the
/// [`ColumnRef`]s.
pub(crate) trait RowSink: Send {
    /// Handles one row; on failure returns the index of the offending field
    /// (or `None` for the whole row) and the reason.
    fn row(&mut self, fields: &[&[u8]]) -> Result<(), (Option<usize>, RowError)>;
}

/// A rejected row kept for the report when invalid rows are skipped.
#[derive(Debug, Clone)]
pub struct SkippedRow {
    /// One-based line number.
    pub line: u64,
    /// The offending field.
    pub field: String,
    /// What was wrong.
    pub reason: RowError,
}

/// How a reader treats bad rows and long lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadOptions {
    pub(crate) skip_invalid: bool,
    pub(crate) max_line_bytes: usize,
}

/// What one chunk produced.
pub(crate) struct Chunk<S> {
    pub(crate) sink: S,
    /// Lines in the chunk (for turning relative line numbers absolute).
    lines: u64,
    skipped: Vec<SkippedRow>,
    skipped_count: u64,
    failure: Option<SkippedRow>,
}

/// The rows of one file, read into sinks.
pub(crate) struct FileRows<S> {
    pub(crate) sinks: Vec<S>,
    pub(crate) skipped: Vec<SkippedRow>,
    pub(crate) skipped_count: u64,
}

/// How many rejected rows are listed by line in a report.
const MAX_LISTED_SKIPS: usize = 20;

/// Reads a whole file's rows into sinks made by `make`.
pub(crate) fn read_rows<S: RowSink>(
    path: &Path,
    bytes: &[u8],
    format: InputFormat,
    columns: &[ColumnRef],
    opts: ReadOptions,
    make: &(dyn Fn() -> S + Sync),
) -> Result<FileRows<S>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if trim(bytes).is_empty() {
        return Err(Error::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let (chunks, mut base) = match format {
        InputFormat::Csv => read_csv(path, bytes, columns, opts, make)?,
        InputFormat::Ndjson => (read_ndjson(bytes, columns, opts, make), 0),
    };
    // Chunks hold line numbers relative to their start: make them absolute
    // and keep the first failure in file order.
    let mut out = FileRows {
        sinks: Vec::with_capacity(chunks.len()),
        skipped: Vec::new(),
        skipped_count: 0,
    };
    for mut chunk in chunks {
        if let Some(mut f) = chunk.failure.take() {
            f.line += base;
            return Err(Error::Row {
                path: path.to_path_buf(),
                line: f.line,
                field: f.field,
                reason: f.reason,
            });
        }
        for mut s in chunk.skipped {
            s.line += base;
            if out.skipped.len() < MAX_LISTED_SKIPS {
                out.skipped.push(s);
            }
        }
        out.skipped_count += chunk.skipped_count;
        base += chunk.lines;
        out.sinks.push(chunk.sink);
    }
    Ok(out)
}

/// Splits `data` into about `parts` pieces at line boundaries.
fn split_lines(data: &[u8], parts: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(parts);
    let target = data.len() / parts.max(1) + 1;
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() <= target {
            out.push(rest);
            break;
        }
        let cut = memchr::memchr(b'\n', &rest[target..]).map_or(rest.len(), |p| target + p + 1);
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

fn chunk_count(len: usize) -> usize {
    // Small files in one piece; large ones in a few pieces per thread so
    // that uneven chunks still balance.
    if len < (1 << 20) {
        1
    } else {
        (rayon::current_num_threads() * 4).min(len >> 18).max(1)
    }
}

/// Iterates the lines of a chunk with their relative one-based numbers,
/// stripping `\r\n`.
fn lines(chunk: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut start = 0;
    let mut n = 0u64;
    std::iter::from_fn(move || {
        if start >= chunk.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &chunk[start..]).map_or(chunk.len(), |p| start + p);
        let mut line = &chunk[start..end];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        start = end + 1;
        n += 1;
        Some((n, line))
    })
}

impl<S> Chunk<S> {
    fn new(sink: S) -> Self {
        Self {
            sink,
            lines: 0,
            skipped: Vec::new(),
            skipped_count: 0,
            failure: None,
        }
    }

    /// Records a bad row; returns false when reading must stop.
    fn reject(&mut self, line: u64, field: String, reason: RowError, skip: bool) -> bool {
        let row = SkippedRow {
            line,
            field,
            reason,
        };
        if skip {
            self.skipped_count += 1;
            if self.skipped.len() < MAX_LISTED_SKIPS {
                self.skipped.push(row);
            }
            true
        } else {
            self.failure = Some(row);
            false
        }
    }
}

fn field_name(columns: &[ColumnRef], idx: Option<usize>) -> String {
    idx.map_or_else(|| "<line>".to_string(), |i| columns[i].name.clone())
}

/// Chunks, and the number of lines before the first chunk's line 1.
type CsvChunks<S> = (Vec<Chunk<S>>, u64);

fn read_csv<S: RowSink>(
    path: &Path,
    bytes: &[u8],
    columns: &[ColumnRef],
    opts: ReadOptions,
    make: &(dyn Fn() -> S + Sync),
) -> Result<CsvChunks<S>> {
    let header_end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
    let header_line = &bytes[..header_end];
    if header_line.len() > opts.max_line_bytes {
        return Err(Error::Row {
            path: path.to_path_buf(),
            line: 1,
            field: "<line>".into(),
            reason: RowError::LineTooLong {
                len: header_line.len(),
                max: opts.max_line_bytes,
            },
        });
    }
    let quoted = memchr::memchr(b'"', bytes).is_some();
    let header = parse_header(path, bytes, quoted)?;
    let idx = resolve_columns(path, &header, columns)?;
    let body = bytes.get(header_end + 1..).unwrap_or(&[]);
    if quoted {
        // Quoted fields may hold newlines, so the file cannot be split at
        // line boundaries: one sequential pass through the csv crate.
        let chunk = read_csv_quoted(bytes, &header, columns, &idx, opts, make());
        return Ok((vec![chunk], 0));
    }
    let width = header.len();
    let pieces = split_lines(body, chunk_count(body.len()));
    let chunks = pieces
        .par_iter()
        .map(|piece| {
            let mut chunk = Chunk::new(make());
            let utf8_ok = std::str::from_utf8(piece).is_ok();
            let mut fields: Vec<&[u8]> = Vec::with_capacity(width);
            let mut wanted: Vec<&[u8]> = vec![&[]; idx.len()];
            for (lineno, line) in lines(piece) {
                chunk.lines = lineno;
                if line.len() > opts.max_line_bytes {
                    let reason = RowError::LineTooLong {
                        len: line.len(),
                        max: opts.max_line_bytes,
                    };
                    if !chunk.reject(lineno, "<line>".into(), reason, opts.skip_invalid) {
                        return chunk;
                    }
                    continue;
                }
                if line.is_empty() {
                    continue;
                }
                if !utf8_ok && std::str::from_utf8(line).is_err() {
                    if !chunk.reject(
                        lineno,
                        "<line>".into(),
                        RowError::InvalidUtf8,
                        opts.skip_invalid,
                    ) {
                        return chunk;
                    }
                    continue;
                }
                fields.clear();
                let mut at = 0;
                for comma in memchr::memchr_iter(b',', line) {
                    fields.push(&line[at..comma]);
                    at = comma + 1;
                }
                fields.push(&line[at..]);
                if fields.len() != width {
                    let reason = RowError::ColumnCount {
                        expected: width,
                        got: fields.len(),
                    };
                    if !chunk.reject(lineno, "<line>".into(), reason, opts.skip_invalid) {
                        return chunk;
                    }
                    continue;
                }
                for (w, &i) in wanted.iter_mut().zip(&idx) {
                    *w = fields[i];
                }
                if let Err((f, reason)) = chunk.sink.row(&wanted)
                    && !chunk.reject(lineno, field_name(columns, f), reason, opts.skip_invalid)
                {
                    return chunk;
                }
            }
            chunk
        })
        .collect::<Vec<_>>();
    // The header is line 1; chunk line numbers start after it.
    Ok((chunks, 1))
}

fn parse_header(path: &Path, bytes: &[u8], quoted: bool) -> Result<Vec<String>> {
    let header_err = |reason: String| Error::Header {
        path: path.to_path_buf(),
        reason,
    };
    let names: Vec<String> = if quoted {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes);
        let mut rec = csv::ByteRecord::new();
        rdr.read_byte_record(&mut rec)
            .map_err(|e| header_err(e.to_string()))?;
        rec.iter()
            .map(|f| {
                std::str::from_utf8(f)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| header_err("is not valid UTF-8".into()))
            })
            .collect::<Result<_>>()?
    } else {
        let line = &bytes[..memchr::memchr(b'\n', bytes).unwrap_or(bytes.len())];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text =
            std::str::from_utf8(line).map_err(|_| header_err("is not valid UTF-8".into()))?;
        text.split(',').map(|s| s.trim().to_string()).collect()
    };
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(header_err(format!("names column {n:?} twice")));
        }
    }
    Ok(names)
}

fn resolve_columns(path: &Path, header: &[String], columns: &[ColumnRef]) -> Result<Vec<usize>> {
    columns
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| *h == c.name)
                .ok_or_else(|| Error::MissingColumn {
                    path: path.to_path_buf(),
                    column: c.name.clone(),
                    flag: c.flag,
                    header: header.to_vec(),
                })
        })
        .collect()
}

fn read_csv_quoted<S: RowSink>(
    bytes: &[u8],
    header: &[String],
    columns: &[ColumnRef],
    idx: &[usize],
    opts: ReadOptions,
    sink: S,
) -> Chunk<S> {
    let mut chunk = Chunk::new(sink);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let mut rec = csv::ByteRecord::new();
    loop {
        let line = rdr.position().line() + 1;
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let reason = RowError::Malformed {
                    reason: e.to_string(),
                };
                chunk.reject(line, "<line>".into(), reason, false);
                return chunk;
            }
        }
        let lineno = rec.position().map_or(line, |p| p.line());
        let len = rec.as_slice().len();
        let reason = if len > opts.max_line_bytes {
            Some(RowError::LineTooLong {
                len,
                max: opts.max_line_bytes,
            })
        } else if rec.len() != header.len() {
            Some(RowError::ColumnCount {
                expected: header.len(),
                got: rec.len(),
            })
        } else if std::str::from_utf8(rec.as_slice()).is_err() {
            Some(RowError::InvalidUtf8)
        } else {
            None
        };
        if let Some(reason) = reason {
            if !chunk.reject(lineno, "<line>".into(), reason, opts.skip_invalid) {
                return chunk;
            }
            continue;
        }
        let wanted: Vec<&[u8]> = idx.iter().map(|&i| &rec[i]).collect();
        if let Err((f, reason)) = chunk.sink.row(&wanted)
            && !chunk.reject(lineno, field_name(columns, f), reason, opts.skip_invalid)
        {
            return chunk;
        }
    }
    chunk.lines = 0;
    chunk
}

fn read_ndjson<S: RowSink>(
    bytes: &[u8],
    columns: &[ColumnRef],
    opts: ReadOptions,
    make: &(dyn Fn() -> S + Sync),
) -> Vec<Chunk<S>> {
    let pieces = split_lines(bytes, chunk_count(bytes.len()));
    pieces
        .par_iter()
        .map(|piece| {
            let mut chunk = Chunk::new(make());
            let mut texts: Vec<Cow<'_, [u8]>> = Vec::with_capacity(columns.len());
            for (lineno, line) in lines(piece) {
                chunk.lines = lineno;
                if line.len() > opts.max_line_bytes {
                    let reason = RowError::LineTooLong {
                        len: line.len(),
                        max: opts.max_line_bytes,
                    };
                    if !chunk.reject(lineno, "<line>".into(), reason, opts.skip_invalid) {
                        return chunk;
                    }
                    continue;
                }
                if trim(line).is_empty() {
                    continue;
                }
                let result = json_fields(line, columns, &mut texts).and_then(|()| {
                    let refs: Vec<&[u8]> = texts.iter().map(|c| c.as_ref()).collect();
                    chunk.sink.row(&refs)
                });
                if let Err((f, reason)) = result
                    && !chunk.reject(lineno, field_name(columns, f), reason, opts.skip_invalid)
                {
                    return chunk;
                }
            }
            chunk
        })
        .collect()
}

/// Extracts the wanted fields of one NDJSON line as text.
fn json_fields(
    line: &[u8],
    columns: &[ColumnRef],
    out: &mut Vec<Cow<'static, [u8]>>,
) -> Result<(), (Option<usize>, RowError)> {
    if std::str::from_utf8(line).is_err() {
        return Err((None, RowError::InvalidUtf8));
    }
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| {
            (
                None,
                RowError::Malformed {
                    reason: e.to_string(),
                },
            )
        })?;
    out.clear();
    for (i, c) in columns.iter().enumerate() {
        let text = match obj.get(&c.name) {
            None | Some(serde_json::Value::Null) => return Err((Some(i), RowError::Missing)),
            Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
            Some(serde_json::Value::Number(n)) => n.to_string().into_bytes(),
            Some(_) => {
                return Err((
                    Some(i),
                    RowError::WrongType {
                        expected: "a string or a number",
                    },
                ));
            }
        };
        out.push(Cow::Owned(text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lines_keeps_every_byte() {
        let data = b"a\nbb\nccc\ndddd\n";
        for parts in 1..6 {
            let pieces = split_lines(data, parts);
            assert_eq!(pieces.concat(), data.to_vec());
            for p in &pieces[..pieces.len() - 1] {
                assert_eq!(p.last(), Some(&b'\n'));
            }
        }
    }

    #[test]
    fn lines_strip_crlf() {
        let got: Vec<_> = lines(b"a\r\nb\nc").map(|(n, l)| (n, l.to_vec())).collect();
        assert_eq!(
            got,
            vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]
        );
    }
}

//! DataFusion over the store: a table provider that prunes files with the
//! manifest before Parquet statistics prune row groups, SQL, series
//! listings and series extraction.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, SchemaRef, TimestampMillisecondType};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::{SessionConfig, SessionContext, col, lit};
use shardcast_core::SeriesKey;

use crate::error::{Error, Result};
use crate::ingest::Event;
use crate::manifest::{FileEntry, Manifest, TableKind};
use crate::schema::{events_schema, metrics_sql_schema};
use crate::store::{Store, decode_events};

/// One table of the store as DataFusion sees it.
#[derive(Debug)]
struct StoreTable {
    schema: SchemaRef,
    files: Vec<FileEntry>,
    /// URL of every file, parallel to `files`.
    urls: Vec<String>,
}

/// Bounds that the filters of a scan put on `app` and `ts`.
#[derive(Debug, Default)]
struct Bounds {
    apps: Option<Vec<String>>,
    min_ts: Option<i64>,
    max_ts: Option<i64>,
}

fn literal_string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        ScalarValue::Dictionary(_, inner) => literal_string(inner),
        _ => None,
    }
}

/// A timestamp literal in whole milliseconds (floored), and whether the
/// literal was exactly that many milliseconds.
fn literal_millis(v: &ScalarValue) -> Option<(i64, bool)> {
    match v {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1000).map(|ms| (ms, true)),
        ScalarValue::TimestampMillisecond(Some(ms), _) => Some((*ms, true)),
        ScalarValue::TimestampMicrosecond(Some(us), _) => {
            Some((us.div_euclid(1000), us % 1000 == 0))
        }
        ScalarValue::TimestampNanosecond(Some(ns), _) => {
            Some((ns.div_euclid(1_000_000), ns % 1_000_000 == 0))
        }
        _ => None,
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column_name(&c.expr),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal(&c.expr),
        _ => None,
    }
}

impl Bounds {
    fn from_filters(filters: &[Expr]) -> Self {
        let mut b = Bounds::default();
        for f in filters {
            b.add(f);
        }
        b
    }

    fn add(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                self.add(left);
                self.add(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (name, value, op) = match (
                    column_name(left),
                    literal(right),
                    column_name(right),
                    literal(left),
                ) {
                    (Some(n), Some(v), _, _) => (n, v, *op),
                    (_, _, Some(n), Some(v)) => (n, v, op.swap().unwrap_or(*op)),
                    _ => return,
                };
                match (name, op) {
                    ("app", Operator::Eq) => {
                        if let Some(s) = literal_string(value) {
                            self.apps = Some(vec![s]);
                        }
                    }
                    // Stored times are whole milliseconds: `ts > x` is
                    // `ts >= floor(x) + 1`, and `ts < x` is `ts <= x - 1`
                    // when x is a whole millisecond.
                    ("ts", Operator::Gt | Operator::GtEq) => {
                        if let Some((ms, _)) = literal_millis(value) {
                            let lo = if op == Operator::Gt { ms + 1 } else { ms };
                            self.min_ts = Some(self.min_ts.map_or(lo, |m| m.max(lo)));
                        }
                    }
                    ("ts", Operator::Lt | Operator::LtEq) => {
                        if let Some((ms, exact)) = literal_millis(value) {
                            let hi = if op == Operator::Lt && exact {
                                ms - 1
                            } else {
                                ms
                            };
                            self.max_ts = Some(self.max_ts.map_or(hi, |m| m.min(hi)));
                        }
                    }
                    _ => {}
                }
            }
            Expr::InList(list) if !list.negated && column_name(&list.expr) == Some("app") => {
                let apps: Option<Vec<String>> = list
                    .list
                    .iter()
                    .map(|e| literal(e).and_then(literal_string))
                    .collect();
                if apps.is_some() {
                    self.apps = apps;
                }
            }
            Expr::Between(b) if !b.negated && column_name(&b.expr) == Some("ts") => {
                if let (Some((lo, _)), Some((hi, _))) = (
                    literal(&b.low).and_then(literal_millis),
                    literal(&b.high).and_then(literal_millis),
                ) {
                    self.min_ts = Some(self.min_ts.map_or(lo, |m| m.max(lo)));
                    self.max_ts = Some(self.max_ts.map_or(hi, |m| m.min(hi)));
                }
            }
            _ => {}
        }
    }

    fn keeps(&self, f: &FileEntry) -> bool {
        if let (Some(apps), Some(app)) = (&self.apps, &f.app)
            && !apps.contains(app)
        {
            return false;
        }
        self.min_ts.is_none_or(|lo| f.max_ts >= lo) && self.max_ts.is_none_or(|hi| f.min_ts <= hi)
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Files are pruned by the filters but rows are not: DataFusion must
        // still apply every filter.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let bounds = Bounds::from_filters(filters);
        let urls: Vec<ListingTableUrl> = self
            .files
            .iter()
            .zip(&self.urls)
            .filter(|(f, _)| bounds.keeps(f))
            .map(|(_, u)| ListingTableUrl::parse(u))
            .collect::<datafusion::error::Result<_>>()?;
        tracing::debug!(
            kept = urls.len(),
            of = self.files.len(),
            "pruned files with the manifest"
        );
        if urls.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(self.schema.clone());
        ListingTable::try_new(config)?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// A listed series: its key, time range and number of points.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    /// The series.
    pub key: SeriesKey,
    /// First timestamp (ms).
    pub first: i64,
    /// Last timestamp (ms).
    pub last: i64,
    /// Number of stored points.
    pub points: u64,
}

/// The points of one series, as columns, sorted by time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeriesData {
    /// The series.
    pub key: SeriesKey,
    /// Timestamps (ms), ascending.
    pub ts: Vec<i64>,
    /// Values.
    pub value: Vec<f64>,
}

/// Which series to load: each field, when set, must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesFilter {
    /// Only this app.
    pub app: Option<String>,
    /// Only this shard type.
    pub shard_type: Option<String>,
    /// Only this metric.
    pub metric: Option<String>,
    /// Only this series id.
    pub series: Option<String>,
    /// Only points at or after this time (ms).
    pub from: Option<i64>,
    /// Only points before this time (ms).
    pub until: Option<i64>,
}

impl SeriesFilter {
    /// A filter matching exactly one key.
    pub fn key(key: &SeriesKey) -> Self {
        Self {
            app: Some(key.app.clone()),
            shard_type: Some(key.shard_type.clone()),
            metric: Some(key.metric.clone()),
            series: Some(key.series.clone()),
            ..Default::default()
        }
    }

    fn predicate(&self) -> Option<Expr> {
        let mut preds = Vec::new();
        for (name, v) in [
            ("app", &self.app),
            ("shard_type", &self.shard_type),
            ("metric", &self.metric),
            ("series", &self.series),
        ] {
            if let Some(v) = v {
                preds.push(col(name).eq(lit(v.as_str())));
            }
        }
        let ts = |ms: i64| {
            lit(ScalarValue::TimestampMillisecond(
                Some(ms),
                Some(crate::schema::UTC.into()),
            ))
        };
        if let Some(from) = self.from {
            preds.push(col("ts").gt_eq(ts(from)));
        }
        if let Some(until) = self.until {
            preds.push(col("ts").lt(ts(until)));
        }
        preds.into_iter().reduce(Expr::and)
    }
}

impl Store {
    /// A DataFusion session with the store's `metrics` and `events` tables
    /// registered, as of the newest manifest.
    pub async fn session(&self) -> Result<SessionContext> {
        let manifest = self.manifest().await?;
        self.session_at(&manifest)
    }

    /// A session over a given manifest.
    pub fn session_at(&self, manifest: &Manifest) -> Result<SessionContext> {
        let config = SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        let (objects, url) = self.objects();
        ctx.register_object_store(url, objects.clone());
        for (name, table, schema) in [
            ("metrics", TableKind::Metrics, metrics_sql_schema()),
            ("events", TableKind::Events, events_schema()),
        ] {
            let files: Vec<FileEntry> = manifest.files_of(table).cloned().collect();
            let urls = files.iter().map(|f| self.url_of(&f.path)).collect();
            ctx.register_table(
                name,
                Arc::new(StoreTable {
                    schema,
                    files,
                    urls,
                }),
            )?;
        }
        Ok(ctx)
    }

    /// Runs a SQL query and collects its result.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let ctx = self.session().await?;
        Ok(ctx.sql(sql).await?.collect().await?)
    }

    /// Every series with its time range and point count, sorted by key.
    pub async fn list_series(&self) -> Result<Vec<SeriesInfo>> {
        let batches = self
            .sql(
                "SELECT CAST(app AS VARCHAR), CAST(shard_type AS VARCHAR), CAST(metric AS VARCHAR), \
                 CAST(series AS VARCHAR), min(ts), max(ts), count(*) FROM metrics \
                 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            )
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            let s = |i: usize| arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8);
            let (a, t, m, se) = (s(0)?, s(1)?, s(2)?, s(3)?);
            let first = b.column(4).as_primitive::<TimestampMillisecondType>();
            let last = b.column(5).as_primitive::<TimestampMillisecondType>();
            let n = b.column(6).as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                out.push(SeriesInfo {
                    key: SeriesKey {
                        app: a.as_string::<i32>().value(i).to_string(),
                        shard_type: t.as_string::<i32>().value(i).to_string(),
                        metric: m.as_string::<i32>().value(i).to_string(),
                        series: se.as_string::<i32>().value(i).to_string(),
                    },
                    first: first.value(i),
                    last: last.value(i),
                    points: n.value(i) as u64,
                });
            }
        }
        Ok(out)
    }

    /// Loads every series matching `filter`, each sorted by time.
    pub async fn load_series(&self, filter: &SeriesFilter) -> Result<Vec<SeriesData>> {
        let ctx = self.session().await?;
        let mut df = ctx.table("metrics").await?;
        if let Some(p) = filter.predicate() {
            df = df.filter(p)?;
        }
        let df = df.sort(vec![
            col("app").sort(true, false),
            col("shard_type").sort(true, false),
            col("metric").sort(true, false),
            col("series").sort(true, false),
            col("ts").sort(true, false),
        ])?;
        let batches = df.collect().await?;
        let points = crate::store::decode_points(&batches)?;
        // Rows arrive sorted by key: cut them into runs.
        let mut out: Vec<SeriesData> = Vec::new();
        for i in 0..points.len() {
            let k = points.key_idx[i] as usize;
            if out.last().is_none_or(|s| s.key != points.keys[k]) {
                out.push(SeriesData {
                    key: points.keys[k].clone(),
                    ..Default::default()
                });
            }
            let s = out.last_mut().expect("pushed above");
            s.ts.push(points.ts[i]);
            s.value.push(points.value[i]);
        }
        Ok(out)
    }

    /// Loads one series; an unknown key is an error.
    pub async fn load_one(&self, key: &SeriesKey) -> Result<SeriesData> {
        self.load_series(&SeriesFilter::key(key))
            .await?
            .pop()
            .ok_or_else(|| Error::UnknownSeries {
                key: key.to_string(),
            })
    }

    /// All stored events, sorted by start.
    pub async fn load_events(&self) -> Result<Vec<Event>> {
        let batches = self
            .sql("SELECT start, \"end\", kind, scope, name FROM events ORDER BY start")
            .await?;
        decode_events(&batches)
    }
}

/// Extracts `(ts, value)` columns of a query result without copying rows
/// into structs; used by callers that run their own SQL.
pub fn ts_value_columns(batches: &[RecordBatch]) -> Result<(Vec<i64>, Vec<f64>)> {
    let mut ts = Vec::new();
    let mut value = Vec::new();
    for b in batches {
        let t = b.column(0).as_primitive::<TimestampMillisecondType>();
        let v = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Float64)?;
        ts.extend_from_slice(t.values());
        value.extend_from_slice(v.as_primitive::<Float64Type>().values());
    }
    Ok((ts, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app: &str, min: i64, max: i64) -> FileEntry {
        FileEntry {
            table: TableKind::Metrics,
            path: String::new(),
            app: Some(app.into()),
            day: Some(0),
            rows: 1,
            bytes: 1,
            min_ts: min,
            max_ts: max,
        }
    }

    #[test]
    fn bounds_prune_by_app_and_time() {
        let ts = |ms| {
            lit(ScalarValue::TimestampMillisecond(
                Some(ms),
                Some("UTC".into()),
            ))
        };
        let filters = vec![
            col("app").eq(lit("a")),
            col("ts").gt_eq(ts(100)).and(col("ts").lt(ts(200))),
        ];
        let b = Bounds::from_filters(&filters);
        assert!(b.keeps(&entry("a", 150, 300)));
        assert!(!b.keeps(&entry("b", 150, 300)));
        assert!(!b.keeps(&entry("a", 201, 300)));
        assert!(
            !b.keeps(&entry("a", 200, 300)),
            "ts < 200 excludes a file starting at 200"
        );
        assert!(b.keeps(&entry("a", 199, 300)));
        assert!(!b.keeps(&entry("a", 0, 99)));
        let b = Bounds::from_filters(&[col("app").in_list(vec![lit("x"), lit("y")], false)]);
        assert!(b.keeps(&entry("y", 0, 1)) && !b.keeps(&entry("z", 0, 1)));
    }
}

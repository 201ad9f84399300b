//! The Arrow schemas of the stored tables.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Time zone of every stored timestamp.
pub const UTC: &str = "UTC";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

fn key_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

static METRICS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), false),
        Field::new("app", key_type(), false),
        Field::new("shard_type", key_type(), false),
        Field::new("metric", key_type(), false),
        Field::new("series", key_type(), false),
        Field::new("value", DataType::Float64, false),
    ]))
});

/// The same columns with the keys as string views: what SQL sees.
static METRICS_SQL: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = METRICS.fields().iter().map(|f| match f.data_type() {
        DataType::Dictionary(_, _) => {
            Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View))
        }
        _ => f.clone(),
    });
    Arc::new(Schema::new(fields.collect::<Vec<_>>()))
});

static EVENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("start", ts_type(), false),
        Field::new("end", ts_type(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("scope", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
    ]))
});

/// The `metrics` table: one row per observed point. Key columns are
/// dictionary encoded, in memory and in Parquet.
pub fn metrics_schema() -> SchemaRef {
    METRICS.clone()
}

/// The `metrics` table as SQL queries see it: the key columns are string
/// views, which the Parquet reader produces without a per-row conversion
/// and DataFusion groups column by column. (With the dictionary type of
/// [`metrics_schema`], every scan rebuilt dictionaries row by row and every
/// `GROUP BY` over keys encoded rows: the resampling query of protocol I
/// took 1.7x DuckDB's time.)
pub fn metrics_sql_schema() -> SchemaRef {
    METRICS_SQL.clone()
}

/// The `events` table: external factors with a start, an end, a kind and a
/// scope (an app, `app/shard_type`, or `*`).
pub fn events_schema() -> SchemaRef {
    EVENTS.clone()
}

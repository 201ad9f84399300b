//! `shardcast.ingest.v1.IngestService`: a client-streaming write of points
//! into the store, committed atomically when the stream ends.

use std::sync::Arc;

use shardcast_proto::ingest::v1 as pb;
use shardcast_proto::ingest::v1::ingest_service_server::IngestService;
use shardcast_proto::key_from_pb;
use shardcast_store::ingest::PointBatch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::State;
use crate::error::{Error, Result};

/// The gRPC service over a shared [`State`].
#[derive(Debug, Clone)]
pub struct IngestApi {
    state: Arc<State>,
}

impl IngestApi {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// Appends the points of message `m`, validating each.
fn append(batch: &mut PointBatch, m: usize, msg: pb::WriteRequest, limit: usize) -> Result<()> {
    for (i, p) in msg.points.into_iter().enumerate() {
        let field = |f: &str| format!("messages[{m}].points[{i}].{f}");
        let key = key_from_pb(p.key.as_ref())
            .map_err(|e| Error::invalid(field("key"), e.to_string()))?
            .ok_or_else(|| Error::invalid(field("key"), "missing"))?;
        if !p.value.is_finite() {
            return Err(Error::invalid(
                field("value"),
                format!("{} is not a finite number", p.value),
            ));
        }
        // The one rule of every input path (the store's ingest too).
        if shardcast_core::Timestamp::checked(p.timestamp_unix_ms).is_none() {
            return Err(Error::invalid(
                field("timestamp_unix_ms"),
                format!("{} is outside years 1 to 9999", p.timestamp_unix_ms),
            ));
        }
        if batch.len() >= limit {
            return Err(Error::invalid(
                field("key"),
                format!("the stream has more than {limit} points; split it into several writes"),
            ));
        }
        batch.push(&key, p.timestamp_unix_ms, p.value);
    }
    Ok(())
}

impl State {
    async fn write(&self, mut stream: Streaming<pb::WriteRequest>) -> Result<pb::WriteResponse> {
        let mut batch = PointBatch::default();
        let mut m = 0;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|s| match s.code() {
                // tonic's decoder: the message is over the size limit.
                tonic::Code::OutOfRange => Error::Exhausted {
                    what: format!("messages[{m}]"),
                    reason: format!("{}; send the points in smaller messages", s.message()),
                },
                _ => Error::invalid(format!("messages[{m}]"), s.message().to_owned()),
            })?;
            append(&mut batch, m, msg, self.limits.max_write_points)?;
            m += 1;
        }
        if batch.is_empty() {
            return Err(Error::invalid("messages", "no points in the stream"));
        }
        let summary = self.context.store().write_points(batch).await?;
        // The write is committed; a failed refresh only delays when
        // forecasts see it (the background poll retries).
        if let Err(e) = self.context.refresh().await {
            tracing::warn!(error = %crate::error::chain(&e), "store refresh after a write failed");
        }
        Ok(pb::WriteResponse {
            rows: summary.rows,
            replaced: summary.replaced,
            store_version: summary.version,
        })
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn write(
        &self,
        request: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let call = self.state.call("Write");
        let out = self.state.write(request.into_inner()).await;
        call.finish(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_proto::forecast::v1::SeriesKey;

    fn point(series: &str, ts: i64, value: f64) -> pb::Point {
        pb::Point {
            key: Some(SeriesKey {
                app: "a".into(),
                shard_type: "t".into(),
                metric: "m".into(),
                series: series.into(),
            }),
            timestamp_unix_ms: ts,
            value,
        }
    }

    #[test]
    fn bad_points_name_message_point_and_field() {
        let mut b = PointBatch::default();
        let ok = pb::WriteRequest {
            points: vec![point("s", 0, 1.0), point("s", 1, 2.0)],
        };
        append(&mut b, 0, ok, 10).unwrap();
        assert_eq!(b.len(), 2);
        let cases = [
            (point("s", 0, f64::NAN), "messages[1].points[0].value"),
            (point("", 0, 1.0), "messages[1].points[0].key"),
            (
                point("s", i64::MAX, 1.0),
                "messages[1].points[0].timestamp_unix_ms",
            ),
            (
                pb::Point {
                    key: None,
                    ..point("s", 0, 1.0)
                },
                "messages[1].points[0].key",
            ),
        ];
        for (p, want) in cases {
            let err = append(&mut b.clone(), 1, pb::WriteRequest { points: vec![p] }, 10)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} should name {want}");
        }
        let many = pb::WriteRequest {
            points: (0..9).map(|i| point("s", i, 1.0)).collect(),
        };
        let err = append(&mut b, 2, many, 10).unwrap_err().to_string();
        assert!(err.contains("more than 10 points"), "{err}");
    }
}

//! Prometheus remote-write (protocol version 1) into store points: the body
//! (a snappy block holding a protobuf `WriteRequest`) decoded within a size
//! limit, and each series' labels mapped to a [`SeriesKey`] by the
//! operator's [`LabelRules`].
//!
//! What Prometheus sends that is not a point to store is skipped and
//! counted, not refused: stale markers (the NaN with bits
//! `0x7ff0000000000002`, sent when a series disappears), other NaN and
//! infinite values, and series the rules do not match (e.g. `up` and the
//! scrape's own series). A body that does not decode, a sample whose time
//! is outside years 1 to 9999, or a label set the rules map to an invalid
//! key refuses the whole request, naming where; nothing of it is stored.

use shardcast_core::Timestamp;
use shardcast_proto::prometheus::WriteRequest;
use shardcast_store::ingest::PointBatch;

use crate::rules::LabelRules;

/// The bits of Prometheus' stale marker.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// What a request held that was not stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Stale markers.
    pub stale: u64,
    /// Other NaN or infinite values.
    pub non_finite: u64,
    /// Samples of series the rules do not match.
    pub unmatched: u64,
}

/// Why a request is refused (answered 400: resending it cannot help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// Decodes a remote-write body: a snappy block of at most `max_decoded`
/// bytes once decompressed, holding a protobuf `WriteRequest`.
pub fn decode(body: &[u8], max_decoded: usize) -> Result<WriteRequest, Rejected> {
    use prost::Message;
    let len = snap::raw::decompress_len(body)
        .map_err(|e| Rejected(format!("the body is not a snappy block: {e}")))?;
    if len > max_decoded {
        return Err(Rejected(format!(
            "the body decompresses to {len} bytes, more than the limit of {max_decoded}"
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| Rejected(format!("the body is not a snappy block: {e}")))?;
    WriteRequest::decode(raw.as_slice())
        .map_err(|e| Rejected(format!("the body is not a remote-write WriteRequest: {e}")))
}

/// The points of a request under `rules`, and what was skipped.
pub fn points(req: &WriteRequest, rules: &LabelRules) -> Result<(PointBatch, Skipped), Rejected> {
    let mut batch = PointBatch::default();
    let mut skipped = Skipped::default();
    for (i, ts) in req.timeseries.iter().enumerate() {
        let labels = ts
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()));
        let key = match rules.key(labels) {
            None => {
                skipped.unmatched += ts.samples.len() as u64;
                continue;
            }
            Some(Err(e)) => return Err(Rejected(format!("timeseries[{i}].labels: {e}"))),
            Some(Ok(key)) => key,
        };
        for (j, s) in ts.samples.iter().enumerate() {
            if s.value.to_bits() == STALE_NAN {
                skipped.stale += 1;
            } else if !s.value.is_finite() {
                skipped.non_finite += 1;
            } else if Timestamp::checked(s.timestamp).is_none() {
                return Err(Rejected(format!(
                    "timeseries[{i}].samples[{j}].timestamp: {} ms is outside years 1 to 9999",
                    s.timestamp
                )));
            } else {
                batch.push(&key, s.timestamp, s.value);
            }
        }
    }
    Ok((batch, skipped))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use shardcast_proto::prometheus::{Label, Sample, TimeSeries};

    use super::*;
    use shardcast_core::SeriesKey;

    fn rules() -> LabelRules {
        LabelRules::from_toml("app = { label = \"job\" }\nshard_type = { value = \"api\" }\n")
            .unwrap()
    }

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(value, timestamp)| Sample { value, timestamp })
                .collect(),
        }
    }

    fn body(req: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap()
    }

    #[test]
    fn labels_map_to_keys_and_markers_are_skipped() {
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[("__name__", "rps"), ("instance", "a:9"), ("job", "web")],
                    &[
                        (1.5, 1_000),
                        (f64::from_bits(STALE_NAN), 2_000),
                        (f64::INFINITY, 3_000),
                    ],
                ),
                series(&[("__name__", "up"), ("instance", "a:9")], &[(1.0, 1_000)]),
            ],
        };
        let decoded = decode(&body(&req), 1 << 20).unwrap();
        // Byte for byte (NaN is not equal to itself): the stale marker's bits
        // survive the round trip.
        assert_eq!(decoded.encode_to_vec(), req.encode_to_vec());
        let (batch, skipped) = points(&decoded, &rules()).unwrap();
        let got: Vec<_> = batch
            .iter()
            .map(|(k, t, v)| (k.to_string(), t, v))
            .collect();
        let key = SeriesKey::new("web", "api", "rps", "instance=a:9").unwrap();
        assert_eq!(got, vec![(key.to_string(), 1_000, 1.5)]);
        assert_eq!(
            skipped,
            Skipped {
                stale: 1,
                non_finite: 1,
                unmatched: 1
            }
        );
    }

    #[test]
    fn malformed_bodies_and_samples_are_refused_naming_where() {
        let e = decode(b"not snappy at all", 1 << 20).unwrap_err();
        assert!(e.0.contains("snappy"), "{e}");
        let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 7]).unwrap();
        let e = decode(&garbage, 1 << 20).unwrap_err();
        assert!(e.0.contains("WriteRequest"), "{e}");
        let big = body(&WriteRequest {
            timeseries: vec![series(&[("job", "web")], &[(1.0, 1); 100])],
        });
        let e = decode(&big, 64).unwrap_err();
        assert!(e.0.contains("limit of 64"), "{e}");
        let req = WriteRequest {
            timeseries: vec![series(
                &[("__name__", "rps"), ("job", "web")],
                &[(1.0, 1), (2.0, i64::MAX)],
            )],
        };
        let e = points(&req, &rules()).unwrap_err();
        assert!(e.0.starts_with("timeseries[0].samples[1].timestamp"), "{e}");
    }
}

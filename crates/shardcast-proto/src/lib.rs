//! The gRPC wire types and services of shardcast, generated at build time
//! from `proto/` (packages `shardcast.forecast.v1`, `shardcast.ingest.v1`,
//! `shardcast.model.v1`), KEDA's `externalscaler`, and their conversions to and from core types.
//!
//! This crate does no I/O. The server (`shardcast-server`) and the planner
//! daemon are its only users; generated types do not travel further.

/// `shardcast.forecast.v1`: forecasts and shard demand.
pub mod forecast {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("shardcast.forecast.v1");
    }
}

/// `shardcast.ingest.v1`: writing points into the store.
pub mod ingest {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("shardcast.ingest.v1");
    }
}

/// `shardcast.model.v1`: listing, reloading and rolling back model versions.
pub mod model {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("shardcast.model.v1");
    }
}

/// `externalscaler`: KEDA's external scaler contract, served by the planner
/// daemon so Kubernetes can act on its shard counts.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod externalscaler {
    tonic::include_proto!("externalscaler");
}

/// `prometheus`: the messages of Prometheus' remote-write protocol (version
/// 1), as the server's `/api/v1/write` receives them.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod prometheus {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// The encoded `FileDescriptorSet` of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shardcast_descriptor.bin"));

mod convert;
pub use convert::*;

#[cfg(test)]
mod remote_write_tests {
    use prost::Message;

    use super::prometheus::{Label, Sample, TimeSeries, WriteRequest};

    /// The bytes a remote-write sender puts on the wire for one series with
    /// one label and one sample, field by field.
    const WIRE: [u8; 23] = [
        0x0a, 21, // WriteRequest.timeseries (1, length-delimited), 21 bytes
        0x0a, 6, 0x0a, 1, b'a', 0x12, 1, b'b', // TimeSeries.labels: name "a", value "b"
        0x12, 11, 0x09, 0, 0, 0, 0, 0, 0, 0xf0,
        0x3f, // TimeSeries.samples: value 1.0 (fixed64)
        0x10, 5, // Sample.timestamp 5 (varint)
    ];

    fn request() -> WriteRequest {
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "a".into(),
                    value: "b".into(),
                }],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 5,
                }],
            }],
        }
    }

    #[test]
    fn field_numbers_and_types_are_the_protocols() {
        assert_eq!(request().encode_to_vec(), WIRE);
        assert_eq!(WriteRequest::decode(&WIRE[..]).unwrap(), request());
    }

    #[test]
    fn metadata_and_other_undeclared_fields_are_skipped() {
        // WriteRequest.metadata (3) with type GAUGE, which Prometheus sends
        // beside the series.
        let mut wire = WIRE.to_vec();
        wire.extend([0x1a, 2, 0x08, 2]);
        assert_eq!(WriteRequest::decode(&wire[..]).unwrap(), request());
        // A truncated body is an error, not an empty request.
        assert!(WriteRequest::decode(&WIRE[..WIRE.len() - 3]).is_err());
    }
}

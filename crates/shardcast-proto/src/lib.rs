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

/// The encoded `FileDescriptorSet` of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shardcast_descriptor.bin"));

mod convert;
pub use convert::*;

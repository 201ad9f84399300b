//! The server's errors and their one mapping to gRPC status codes.

use std::path::PathBuf;

use tonic::Status;

/// What can go wrong serving a request or managing models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field with a bad value.
    #[error("invalid request: {field}: {reason}")]
    InvalidArgument {
        /// The field, e.g. `requests[3].quantiles[0]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A series the store does not hold.
    #[error("series {key} is not in the store")]
    UnknownSeries {
        /// The key, as `app/shard_type/metric/series`.
        key: String,
    },
    /// A shard type with no series in the store.
    #[error("no series of shard type {app}/{shard_type} in the store")]
    UnknownShardType {
        /// The app.
        app: String,
        /// The shard type.
        shard_type: String,
    },
    /// A model version that does not exist or cannot be loaded.
    #[error("model {name} version {version} is not available: {reason}")]
    ModelUnavailable {
        /// The model name.
        name: String,
        /// The version asked for.
        version: u32,
        /// Why it cannot be served.
        reason: String,
    },
    /// A model version that does not exist.
    #[error("model {name} has no version {version}")]
    UnknownVersion {
        /// The model name.
        name: String,
        /// The version asked for.
        version: u32,
    },
    /// No loadable model under the models directory.
    #[error("no loadable model under {}: {reason}", dir.display())]
    NoModel {
        /// The directory searched.
        dir: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The request queue is full.
    #[error("server overloaded: {queued} forecasts queued (limit {limit}); retry later")]
    Overloaded {
        /// Requests waiting.
        queued: usize,
        /// The queue's bound.
        limit: usize,
    },
    /// The model panicked during inference: a bug.
    #[error("inference failed unexpectedly; the request was not answered")]
    InferencePanicked,
    /// The model answered with the wrong number of values: a bug or an
    /// incompatible model.
    #[error("model version {version} gave a malformed answer: {reason}")]
    BadModelOutput {
        /// The model version.
        version: u32,
        /// What was wrong.
        reason: String,
    },
    /// The server is stopping.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error("store error")]
    Store(#[from] shardcast_store::Error),
    /// The model failed on validated input: a bug.
    #[error("model error")]
    Model(#[from] shardcast_model::Error),
    /// A core type refused a value computed by the server: a bug.
    #[error("internal error")]
    Core(#[from] shardcast_core::Error),
    /// A socket or file operation failed.
    #[error("I/O error: {context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("transport error")]
    Transport(#[from] tonic::transport::Error),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An invalid-argument error for `field`.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The message with its chain of causes.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = chain(&e);
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(msg),
            Error::UnknownSeries { .. }
            | Error::UnknownShardType { .. }
            | Error::UnknownVersion { .. } => Status::not_found(msg),
            Error::ModelUnavailable { .. } | Error::NoModel { .. } => {
                Status::failed_precondition(msg)
            }
            Error::Overloaded { .. } => Status::resource_exhausted(msg),
            Error::ShuttingDown => Status::unavailable(msg),
            Error::Store(shardcast_store::Error::Row { .. }) => Status::invalid_argument(msg),
            Error::Store(shardcast_store::Error::UnknownSeries { .. }) => Status::not_found(msg),
            Error::Store(_)
            | Error::InferencePanicked
            | Error::BadModelOutput { .. }
            | Error::Model(_)
            | Error::Core(_)
            | Error::Io { .. }
            | Error::Transport(_) => Status::internal(msg),
        }
    }
}

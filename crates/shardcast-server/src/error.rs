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
    /// A forecast failed inside the server: which series and model version.
    #[error("forecasting {key} with model version {version} failed")]
    Forecasting {
        /// The series, as `app/shard_type/metric/series`.
        key: String,
        /// The model version.
        version: u32,
        /// What failed.
        #[source]
        source: Box<Error>,
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

impl Error {
    /// The gRPC code of this error.
    fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument { .. } | Error::Store(shardcast_store::Error::Row { .. }) => {
                Code::InvalidArgument
            }
            Error::UnknownSeries { .. }
            | Error::UnknownShardType { .. }
            | Error::UnknownVersion { .. }
            | Error::Store(shardcast_store::Error::UnknownSeries { .. }) => Code::NotFound,
            Error::ModelUnavailable { .. } | Error::NoModel { .. } => Code::FailedPrecondition,
            Error::Overloaded { .. } => Code::ResourceExhausted,
            Error::ShuttingDown => Code::Unavailable,
            Error::Forecasting { source, .. } => source.code(),
            Error::Store(_)
            | Error::InferencePanicked
            | Error::BadModelOutput { .. }
            | Error::Model(_)
            | Error::Core(_)
            | Error::Io { .. }
            | Error::Transport(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_keep_the_cause_and_its_code() {
        let wrapped = |source| Error::Forecasting {
            key: "a/t/m/s".into(),
            version: 3,
            source: Box::new(source),
        };
        let s = Status::from(wrapped(Error::InferencePanicked));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(
            s.message().contains("a/t/m/s") && s.message().contains("version 3"),
            "{s}"
        );
        assert!(s.message().contains("inference failed"), "{s}");
        let s = Status::from(wrapped(Error::UnknownSeries { key: "x".into() }));
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s = Status::from(Error::Overloaded {
            queued: 3,
            limit: 3,
        });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let s = Status::from(Error::invalid("requests[2].horizon", "too long"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("requests[2].horizon: too long"), "{s}");
    }
}

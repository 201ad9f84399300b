//! The server's errors and their one mapping to gRPC status codes.

use std::path::PathBuf;
use std::sync::Arc;

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
    /// The server has no room for more of something a client asked for: open
    /// streams, keys in a stream, or a request message's size.
    #[error("{what}: {reason}")]
    Exhausted {
        /// What ran out, e.g. `streams`.
        what: String,
        /// By how much, and what to do.
        reason: String,
    },
    /// A forecast came out non-finite because the history's values are too
    /// large for the model's single-precision arithmetic.
    #[error(
        "{field}: values up to {largest:e} in magnitude overflow the model's single-precision arithmetic (the forecast is not finite); scale the series down"
    )]
    Overflow {
        /// The request field (`context.values`) or the stored series.
        field: String,
        /// The largest magnitude in the history.
        largest: f32,
        /// Whether the values came with the request (else from the store).
        from_request: bool,
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
    /// An error shared by every caller of one read of the store.
    #[error(transparent)]
    Shared(Arc<Error>),
    /// The model failed on validated input: a bug.
    #[error("model error")]
    Model(#[from] shardcast_model::Error),
    /// An ONNX graph failed on validated input: a bug or a bad export.
    #[error("ONNX model error")]
    Onnx(#[from] shardcast_onnx::Error),
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
            Error::Overflow { from_request, .. } => {
                if *from_request {
                    Code::InvalidArgument
                } else {
                    Code::FailedPrecondition
                }
            }
            Error::Overloaded { .. } | Error::Exhausted { .. } => Code::ResourceExhausted,
            // Another writer committed first, and the store's own retries
            // ran out: the client may retry the whole batch.
            Error::Store(shardcast_store::Error::Conflict { .. }) => Code::Aborted,
            Error::ShuttingDown => Code::Unavailable,
            Error::Forecasting { source, .. } => source.code(),
            Error::Shared(e) => e.code(),
            Error::Store(_)
            | Error::InferencePanicked
            | Error::BadModelOutput { .. }
            | Error::Model(_)
            | Error::Onnx(_)
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

    #[test]
    fn a_lost_commit_race_is_aborted_not_internal() {
        let s = Status::from(Error::Store(shardcast_store::Error::Conflict {
            version: 7,
            attempts: 3,
        }));
        assert_eq!(s.code(), tonic::Code::Aborted);
        assert!(s.message().contains("version 7"), "{s}");
        // Other store failures stay INTERNAL.
        let s = Status::from(Error::Store(shardcast_store::Error::Grid {
            reason: "no bins".into(),
        }));
        assert_eq!(s.code(), tonic::Code::Internal);
    }

    #[test]
    fn shared_errors_keep_their_code_and_cause() {
        let shared = |e| Error::Shared(Arc::new(e));
        let s = Status::from(shared(Error::UnknownSeries {
            key: "a/b/c/d".into(),
        }));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().contains("a/b/c/d"), "{s}");
        let s = Status::from(shared(Error::Store(shardcast_store::Error::Grid {
            reason: "no bins".into(),
        })));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(s.message().contains("no bins"), "{s}");
    }

    #[test]
    fn overflow_blames_the_request_or_the_data() {
        let overflow = |from_request| Error::Overflow {
            field: "context.values".into(),
            largest: 3e38,
            from_request,
        };
        let s = Status::from(overflow(true));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message().contains("context.values") && s.message().contains("3e38"),
            "{s}"
        );
        assert_eq!(
            Status::from(overflow(false)).code(),
            tonic::Code::FailedPrecondition
        );
        let s = Status::from(Error::Exhausted {
            what: "streams".into(),
            reason: "all 2 taken".into(),
        });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.message(), "streams: all 2 taken");
    }
}

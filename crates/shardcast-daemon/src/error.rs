use std::path::PathBuf;

/// Errors of the daemon. Each names the file or address it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file does not parse or breaks a rule.
    #[error("config {path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column where the parser gave them.
        detail: String,
    },
    /// The state file does not parse or breaks a rule.
    #[error("state file {path}: {detail}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The decision output could not be written.
    #[error("writing decisions: {0}")]
    Output(std::io::Error),
    /// The server address is not a valid URI.
    #[error("server address {uri:?}: {detail}")]
    Server {
        /// The address given.
        uri: String,
        /// Why it was refused.
        detail: String,
    },
    /// The KEDA scaler could not listen or serve.
    #[error("KEDA scaler: {0}")]
    Keda(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The bearer token a server asks for and a client sends: where it may come
//! from (an environment variable or a file, never a command line, where the
//! process list shows it to every user) and what it may hold (printable
//! ASCII, so that it can travel in a header).

use std::ffi::OsString;
use std::path::Path;

/// The environment variable a token may come from.
pub const TOKEN_ENV: &str = "SHARDCAST_TOKEN";

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

/// The token from `env` (the value of [`TOKEN_ENV`], unset when empty) or
/// from `file`; both is an error, neither is `None`. Surrounding whitespace
/// of a file's content (a trailing newline) is dropped.
pub fn load(env: Option<OsString>, file: Option<&Path>) -> Result<Option<String>, TokenError> {
    let env = match env.filter(|t| !t.is_empty()) {
        Some(t) => Some(
            t.into_string()
                .map_err(|_| TokenError(format!("{TOKEN_ENV} is not valid UTF-8")))?,
        ),
        None => None,
    };
    let (token, source) = match (env, file) {
        (Some(_), Some(f)) => {
            return Err(TokenError(format!(
                "both {TOKEN_ENV} and the token file {} give a bearer token; use one",
                f.display()
            )));
        }
        (Some(t), None) => (t, TOKEN_ENV.to_owned()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                TokenError(format!("cannot read the token file {}: {e}", f.display()))
            })?;
            (
                text.trim().to_owned(),
                format!("the token file {}", f.display()),
            )
        }
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(TokenError(format!("{source} holds an empty token")));
    }
    if !token.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(TokenError(format!(
            "the token in {source} is not printable ASCII, so it cannot travel in a header"
        )));
    }
    Ok(Some(token))
}

/// Where a token comes from on a command line (`shardcast serve` and
/// `plan`): the [`TOKEN_ENV`] variable or a file, never the command line
/// itself.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// File holding the bearer token: `serve` requires it of every call but
    /// health (reflection included) as `authorization: Bearer …`; `plan`
    /// sends it to the server, instead of the config's. Surrounding
    /// whitespace is ignored. The SHARDCAST_TOKEN environment variable may
    /// hold the token instead; it is not accepted on the command line,
    /// where the process list would show it.
    #[arg(long, env = "SHARDCAST_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Refused with a message: a token on the command line shows in the
    /// process list.
    #[arg(long = "token", hide = true)]
    pub token_on_command_line: Option<String>,
}

impl TokenArgs {
    /// The token from [`TOKEN_ENV`] or `--token-file`, if any; `--token` is
    /// refused.
    pub fn load(&self) -> Result<Option<String>, TokenError> {
        if self.token_on_command_line.is_some() {
            return Err(TokenError(format!(
                "--token is not accepted: a token on the command line shows in the process list; \
                 put it in the {TOKEN_ENV} environment variable or in a file named by --token-file"
            )));
        }
        load(std::env::var_os(TOKEN_ENV), self.token_file.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(load(None, None).unwrap(), None);
        assert_eq!(load(Some("".into()), None).unwrap(), None, "empty is unset");
        assert_eq!(
            load(Some("abc".into()), None).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            load(None, Some(&file)).unwrap().as_deref(),
            Some("s3cret"),
            "the trailing newline is dropped"
        );
        let both = load(Some("abc".into()), Some(&file))
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("use one") && both.contains(TOKEN_ENV),
            "{both}"
        );
        std::fs::write(&file, " \n").unwrap();
        let empty = load(None, Some(&file)).unwrap_err().to_string();
        assert!(empty.contains("empty token"), "{empty}");
        std::fs::write(&file, "tab\there").unwrap();
        let odd = load(None, Some(&file)).unwrap_err().to_string();
        assert!(odd.contains("printable ASCII"), "{odd}");
        let missing = dir.path().join("nope");
        let err = load(None, Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("cannot read"), "{err}");
    }
}

//! `shardcast serve`: flags into a server config, sockets bound, serve until
//! Ctrl-C or SIGTERM.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use shardcast_server::batcher::BatchConfig;
use shardcast_server::registry::ModelFormat;
use shardcast_server::{Limits, ServerConfig, TlsFiles};
use shardcast_store::resample::Agg;
use tokio::net::TcpListener;

use crate::cli::{AggArg, FormatChoice, ServeArgs};

/// Where a bearer token may come from: the environment or a file, never
/// the command line (the process list shows it to every user).
pub(crate) const TOKEN_ENV: &str = "SHARDCAST_TOKEN";

/// The bearer token from `env` (the value of [`TOKEN_ENV`]) or the file
/// named by `--token-file`; `on_command_line` is whether `--token` was
/// given, which is refused. Surrounding whitespace of a file's content (a
/// trailing newline) is dropped.
pub(crate) fn token(
    env: Option<std::ffi::OsString>,
    file: Option<&Path>,
    on_command_line: bool,
) -> Result<Option<String>> {
    if on_command_line {
        bail!(
            "--token is not accepted: a token on the command line shows in the process list; \
             put it in the {TOKEN_ENV} environment variable or in a file named by --token-file"
        );
    }
    let env = match env.filter(|t| !t.is_empty()) {
        Some(t) => Some(
            t.into_string()
                .map_err(|_| anyhow::anyhow!("{TOKEN_ENV} is not valid UTF-8"))?,
        ),
        None => None,
    };
    let (token, source) = match (env, file) {
        (Some(_), Some(f)) => bail!(
            "both {TOKEN_ENV} and --token-file {} give a bearer token; use one",
            f.display()
        ),
        (Some(t), None) => (t, TOKEN_ENV.to_owned()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?;
            (
                text.trim().to_owned(),
                format!("the token file {}", f.display()),
            )
        }
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        bail!("{source} holds an empty token");
    }
    if !token.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        bail!("the token in {source} is not printable ASCII, so it cannot travel in a header");
    }
    Ok(Some(token))
}

/// The server config the flags (and [`TOKEN_ENV`]) describe.
pub(crate) fn config(args: &ServeArgs) -> Result<ServerConfig> {
    let mut cfg = ServerConfig::new(args.store.store.clone(), args.models_dir.clone());
    cfg.model = args.model.clone();
    cfg.format = match args.format {
        FormatChoice::Candle => ModelFormat::Candle,
        FormatChoice::Onnx => ModelFormat::Onnx,
    };
    cfg.agg = match args.agg {
        AggArg::Mean => Agg::Mean,
        AggArg::Sum => Agg::Sum,
        AggArg::Max => Agg::Max,
    };
    cfg.batch = BatchConfig {
        max_batch: args.max_batch,
        max_wait: Duration::from_micros(args.max_wait_us),
        queue: args.queue,
        workers: args.workers,
    };
    cfg.limits = Limits {
        max_series: args.max_series,
        max_message_bytes: args.max_message_bytes,
        max_streams: args.max_streams,
        max_stream_keys: args.max_stream_keys,
        store_reads: args.store_reads.max(1),
        ..Limits::default()
    };
    cfg.model_poll = Duration::from_millis(args.model_poll_ms.max(10));
    cfg.store_poll = Duration::from_millis(args.store_poll_ms.max(10));
    cfg.token = token(
        std::env::var_os(TOKEN_ENV),
        args.token_file.as_deref(),
        args.token_on_command_line.is_some(),
    )?;
    cfg.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    Ok(cfg)
}

pub(crate) async fn run(args: ServeArgs) -> Result<()> {
    let cfg = config(&args)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics = match args.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} for metrics"))?,
        ),
        None => None,
    };
    let state = shardcast_server::State::open(&cfg)
        .await
        .context("cannot start the server")?;
    let served = state.registry.current();
    println!(
        "serving model {} v{} ({}, {} series known) from {}",
        served.name,
        served.version,
        served.model.kind(),
        served.model.series_count(),
        served.dir.display()
    );
    println!("listening on {}", listener.local_addr()?);
    if let Some(m) = &metrics {
        println!("metrics on http://{}/metrics", m.local_addr()?);
    }
    shardcast_server::serve(listener, metrics, state, &cfg, super::shutdown_signal())
        .await
        .context("server failed")?;
    println!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["shardcast", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve(a) => *a,
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn the_token_comes_from_the_environment_or_a_file_never_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(token(None, None, false).unwrap(), None);
        assert_eq!(
            token(Some("abc".into()), None, false).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            token(None, Some(&file), false).unwrap().as_deref(),
            Some("s3cret"),
            "the trailing newline is dropped"
        );
        let both = token(Some("abc".into()), Some(&file), false).unwrap_err();
        assert!(both.to_string().contains("use one"), "{both}");
        let flag = token(None, None, true).unwrap_err().to_string();
        assert!(
            flag.contains("process list") && flag.contains(TOKEN_ENV),
            "{flag}"
        );
        std::fs::write(&file, " \n").unwrap();
        let empty = token(None, Some(&file), false).unwrap_err().to_string();
        assert!(
            empty.contains("empty") && empty.contains("token"),
            "{empty}"
        );
        let missing = dir.path().join("nope");
        let err = format!("{:#}", token(None, Some(&missing), false).unwrap_err());
        assert!(err.contains("nope"), "{err}");

        // Through the flags: --token is parsed only to be refused.
        let args = serve_args(&["--token", "s3cret"]);
        let err = config(&args).unwrap_err().to_string();
        assert!(err.contains("--token is not accepted"), "{err}");
        std::fs::write(&file, "from-file").unwrap();
        let args = serve_args(&["--token-file", file.to_str().unwrap()]);
        assert_eq!(args.token_file.as_deref(), Some(file.as_path()));
    }

    #[test]
    fn help_says_where_the_token_comes_from_and_shows_the_stream_limits() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let help = serve.render_long_help().to_string();
        for want in [
            "--token-file",
            "SHARDCAST_TOKEN",
            "process list",
            "--max-streams",
            "--max-stream-keys",
            "--store-reads",
        ] {
            assert!(help.contains(want), "serve --help lacks {want}:\n{help}");
        }
        assert!(
            !help.contains("--token <"),
            "--token is hidden from help:\n{help}"
        );
        let plan = cmd.find_subcommand_mut("plan").unwrap();
        let help = plan.render_long_help().to_string();
        for want in ["--token-file", "SHARDCAST_TOKEN", "process list"] {
            assert!(help.contains(want), "plan --help lacks {want}:\n{help}");
        }
    }

    #[test]
    fn stream_limits_reach_the_server_config() {
        let args = serve_args(&[
            "--max-streams",
            "3",
            "--max-stream-keys",
            "7",
            "--store-reads",
            "2",
        ]);
        let cfg = config(&args).unwrap();
        assert_eq!(
            (
                cfg.limits.max_streams,
                cfg.limits.max_stream_keys,
                cfg.limits.store_reads
            ),
            (3, 7, 2)
        );
    }
}

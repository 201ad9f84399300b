//! `shardcast serve`: flags into a server config, sockets bound, serve until
//! Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result};
use shardcast_server::batcher::BatchConfig;
use shardcast_server::remote_write::LabelRules;
use shardcast_server::{Limits, ServerConfig, TlsFiles};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;

/// The server config the flags (and SHARDCAST_TOKEN) describe.
pub(crate) fn config(args: &ServeArgs) -> Result<ServerConfig> {
    let mut cfg = ServerConfig::new(args.store.store.clone(), args.models_dir.clone());
    cfg.model = args.model.clone();
    cfg.format = args.format;
    cfg.agg = args.agg;
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
    cfg.token = args.token.load()?;
    cfg.remote_write = match &args.remote_write_rules {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Some(LabelRules::from_toml(&text).with_context(|| p.display().to_string())?)
        }
        None => None,
    };
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
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn stream_limits_reach_the_server_config() {
        let argv = [
            "shardcast",
            "serve",
            "--max-streams",
            "3",
            "--max-stream-keys",
            "7",
        ];
        let Command::Serve(args) = Cli::try_parse_from(argv.iter().chain(&["--store-reads", "2"]))
            .unwrap()
            .command
        else {
            unreachable!("parsed as serve");
        };
        let l = super::config(&args).unwrap().limits;
        assert_eq!((l.max_streams, l.max_stream_keys, l.store_reads), (3, 7, 2));
    }

    #[test]
    fn remote_write_rules_come_from_a_file_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("good.toml"), dir.path().join("bad.toml"));
        std::fs::write(
            &good,
            "app = { label = \"job\" }\nshard_type = { value = \"api\" }\n",
        )
        .unwrap();
        std::fs::write(&bad, "app = { label = \"job\" }\n").unwrap();
        let parse = |rules: &std::path::Path| {
            let argv = [
                "shardcast",
                "serve",
                "--metrics-listen",
                "127.0.0.1:0",
                "--remote-write-rules",
            ];
            let Command::Serve(args) =
                Cli::try_parse_from(argv.iter().copied().chain([rules.to_str().unwrap()]))
                    .unwrap()
                    .command
            else {
                unreachable!("parsed as serve");
            };
            super::config(&args)
        };
        assert!(parse(&good).unwrap().remote_write.is_some());
        let err = format!("{:#}", parse(&bad).unwrap_err());
        assert!(
            err.contains("bad.toml") && err.contains("shard_type"),
            "{err}"
        );
        assert!(
            Cli::try_parse_from(["shardcast", "serve", "--remote-write-rules", "x.toml"]).is_err()
        );
    }
}

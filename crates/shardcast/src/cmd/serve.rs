//! `shardcast serve`: flags into a server config, sockets bound, serve until
//! Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result};
use shardcast_prometheus::LabelRules;
use shardcast_server::publish::Publish;
use shardcast_server::{ServerConfig, TlsFiles};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;

/// The server config the flags (and SHARDCAST_TOKEN) describe.
pub(crate) fn config(args: &ServeArgs) -> Result<ServerConfig> {
    let mut cfg = ServerConfig::new(args.store.store.clone(), args.models_dir.clone());
    cfg.model = args.model.clone();
    cfg.format = args.format;
    cfg.agg = args.agg;
    cfg.batch = args.batch;
    cfg.limits = args.limits;
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
    if !args.publish_forecasts.is_empty() {
        let (series, levels) = (args.publish_forecasts.clone(), args.publish_levels.clone());
        cfg.publish = Some(Publish::new(series, levels).map_err(anyhow::Error::msg)?);
    }
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

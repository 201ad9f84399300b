//! `shardcast plan`: flags over the config file, the KEDA socket bound, the
//! daemon's loop until its rounds are done or Ctrl-C / SIGTERM.

use std::io::Write;

use anyhow::{Context, Result};
use shardcast_daemon::{Daemon, KedaServer, PlanConfig};
use shardcast_prometheus::exposition;
use tokio::net::TcpListener;

use crate::cli::PlanArgs;

/// The config file with the flags' overrides applied, checked.
pub(crate) fn config(args: &PlanArgs) -> Result<PlanConfig> {
    let mut cfg = PlanConfig::load(&args.config)?
        .with(&args.overrides)
        .map_err(|e| anyhow::anyhow!("{} with the flags applied: {e}", args.config.display()))?;
    // SHARDCAST_TOKEN or --token-file, over the config's; never a flag.
    if let Some(t) = args.token.load()? {
        cfg.token = Some(t);
    }
    Ok(cfg)
}

pub(crate) async fn run(args: PlanArgs) -> Result<()> {
    let cfg = config(&args)?;
    let opts = args.options.clone();
    let server = cfg.server.clone();
    let mut daemon = Daemon::new(cfg, opts)?;
    let keda = match args.keda_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for KEDA"))?;
            let keda = KedaServer::spawn(listener, daemon.targets())?;
            // Decisions own stdout; the address goes to stderr.
            eprintln!("KEDA external scaler on {}", keda.addr());
            Some(keda)
        }
        None => None,
    };
    let (stop_metrics, metrics) = match args.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
            let m = daemon.metrics();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = exposition::serve(
                listener,
                exposition::router(move || m.render()),
                exposition::Limits::default(),
                async move {
                    let _ = stopped.await;
                },
            );
            (Some(stop), Some(tokio::spawn(serving)))
        }
        None => (None, None),
    };
    eprintln!(
        "planning {} shard type(s) every {} s against {server}{}",
        daemon.config().shard_types.len(),
        daemon.config().interval_secs,
        if args.options.dry_run {
            " (dry run)"
        } else {
            ""
        }
    );
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let rounds = daemon
        .run(
            &mut out,
            args.format,
            args.iterations,
            super::shutdown_signal(),
        )
        .await?;
    drop(out);
    // Streams of IsActive end with the daemon.
    drop(daemon);
    if let Some(k) = keda {
        k.stop().await?;
    }
    drop(stop_metrics);
    if let Some(m) = metrics {
        m.await?;
    }
    eprintln!("stopped after {rounds} round(s)");
    Ok(())
}

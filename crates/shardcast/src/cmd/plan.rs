//! `shardcast plan`: flags over the config file, the KEDA socket bound, the
//! daemon's loop until its rounds are done or Ctrl-C / SIGTERM.

use std::io::Write;

use anyhow::{Context, Result};
use shardcast_daemon::{Daemon, KedaServer, Options, PlanConfig};
use tokio::net::TcpListener;

use crate::cli::PlanArgs;

/// The config file with the flags' overrides applied, checked.
pub(crate) fn config(args: &PlanArgs) -> Result<PlanConfig> {
    let mut cfg = PlanConfig::load(&args.config)?;
    if let Some(s) = &args.server {
        cfg.server = if s.contains("://") {
            s.clone()
        } else {
            format!("http://{s}")
        };
    }
    // SHARDCAST_TOKEN or --token-file, over the config's; never a flag.
    if let Some(t) = args.token.load()? {
        cfg.token = Some(t);
    }
    if let Some(i) = args.interval {
        cfg.interval_secs = i;
    }
    if let Some(c) = args.clock {
        cfg.clock = c;
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{} with the flags applied: {e}", args.config.display()))?;
    Ok(cfg)
}

pub(crate) async fn run(args: PlanArgs) -> Result<()> {
    let cfg = config(&args)?;
    let opts = Options {
        dry_run: args.dry_run,
        state_file: args.state.clone(),
        targets_file: args.targets.clone(),
    };
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
    eprintln!(
        "planning {} shard type(s) every {} s against {server}{}",
        daemon.config().shard_types.len(),
        daemon.config().interval_secs,
        if args.dry_run { " (dry run)" } else { "" }
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
    eprintln!("stopped after {rounds} round(s)");
    Ok(())
}

//! The shardcast planner daemon (`shardcast plan`).
//!
//! It owns the loop that turns the inference server's forecasts into
//! decisions: every interval it reads the shards' state (a state file kept
//! by whoever runs them, or its own decisions assumed carried out), asks
//! the server (`ForecastShardType`, gRPC) for each shard type's summed
//! demand forecast, runs the planner's scale rule, and emits one decision
//! per shard type with its reason, as JSON lines or sentences. With
//! `dry_run` it publishes nothing.
//!
//! It keeps working when the server is unreachable, slow or answers
//! garbage: every forecast is checked ([`shardcast_proto::forecast_from_pb`])
//! and a shard type without a usable one falls back to the reactive rule
//! for that round, the reason saying why.
//!
//! Decisions reach Kubernetes through KEDA's external scaler API
//! ([`keda`]), served on a socket of its own: the metric value is
//! `shards × target`, so KEDA's HPA runs the planned count. Desired counts
//! can also be written to a targets file, atomically. Every round updates
//! [`DaemonMetrics`] (counts, the forecast at the lead time, fallbacks by
//! cause, round time), which the binary serves on `/metrics`.
//!
//! Neighbours: `shardcast-planner` decides (pure), `shardcast-proto`
//! carries the wire types, the `shardcast` binary parses flags and signals.

mod client;
mod config;
mod daemon;
mod error;
pub mod keda;
mod metrics;
mod placement;
mod state;

pub use client::{Fetched, ForecastClient, Provenance};
pub use config::{Clock, ConfigOverrides, PlanConfig, ShardTypeConfig};
pub use daemon::{
    Daemon, DecisionRecord, Format, Options, StateOrigin, TargetCounts, TargetsFile, write_round,
};
pub use error::{Error, Result};
pub use metrics::DaemonMetrics;
pub use placement::{PlacementRecord, RunningShard, ShardTemplate};
pub use state::{Observed, StateFile};

use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// How long KEDA's connections get to close after shutdown before they are
/// dropped (an idle HTTP/2 client can otherwise hold the server open).
const KEDA_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves KEDA's external scaler API for `daemon`'s targets on `listener`
/// until `shutdown` resolves (connections still open a second later are
/// dropped).
pub async fn serve_keda(
    listener: tokio::net::TcpListener,
    targets: tokio::sync::watch::Receiver<keda::Targets>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = Server::builder()
        .add_service(keda::KedaScaler::new(targets).into_service())
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stopped.await;
            },
        );
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => return r.map_err(|e| Error::Keda(e.to_string())),
        () = shutdown => {}
    }
    let _ = stop.send(());
    match tokio::time::timeout(KEDA_GRACE, serving).await {
        Ok(r) => r.map_err(|e| Error::Keda(e.to_string())),
        Err(_) => Ok(()),
    }
}

/// KEDA's external scaler served on a spawned task (as [`serve_keda`]
/// does) until [`KedaServer::stop`].
#[derive(Debug)]
pub struct KedaServer {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl KedaServer {
    /// Starts serving the targets on `listener`.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        targets: tokio::sync::watch::Receiver<keda::Targets>,
    ) -> Result<Self> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Keda(format!("the listener has no address: {e}")))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_keda(listener, targets, async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, task })
    }

    /// The address it serves on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops serving (open connections get a second to close) and returns
    /// how serving ended.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Keda(e.to_string())),
        }
    }
}

//! `StreamForecasts` under a crowd of clients that open streams and go away:
//! the streams past the configured bound are refused with
//! `RESOURCE_EXHAUSTED`, the work of cancelled streams stops, and what the
//! server held for them (work counters, file handles, memory) comes back.
//! A real server on a loopback socket over a real store; no timings are
//! asserted, only that the counters return within a generous bound. The
//! test is alone in its file: it measures the whole process's file handles
//! and memory, so no other test may run beside it.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{Fixture, Running, stream_request, unary_request, wait_until};
use futures::future::join_all;
use shardcast_proto::forecast::v1::forecast_service_client::ForecastServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// Series in the store, and keys per stream.
const KEYS: usize = 256;
/// Streams the clients try to open at once.
const ATTEMPTS: usize = 200;
/// Connections the streams are spread over.
const CONNECTIONS: usize = 4;
/// Bound on a hang, far above what any wait below needs.
const HANG: Duration = Duration::from_secs(120);

/// Open file descriptors of this process (Linux).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory of this process in pages (Linux).
fn rss_pages() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_streams_stop_their_work_and_give_back_what_they_held() {
    let fx = Fixture::new(KEYS, 1200).await;
    // The default bound on open streams.
    let cfg = fx.config();
    let max_streams = cfg.limits.max_streams;
    assert!(max_streams < ATTEMPTS);
    let server = Running::start(cfg).await;
    let state = &server.state;
    let in_flight = || format!("{:?}", state.in_flight());

    // Idle: one call made (lazy setup done), nothing in flight.
    let mut unary = ForecastServiceClient::new(server.channel().await);
    unary.forecast(unary_request()).await.unwrap();
    wait_until(
        "an idle server",
        HANG,
        || state.in_flight().is_idle(),
        in_flight,
    )
    .await;
    let (idle_fds, idle_rss) = (open_fds(), rss_pages());
    let ran = || state.metrics.forecasts_run.get();
    let ran_idle = ran();

    // The crowd: ATTEMPTS streams of KEYS keys at once. Exactly max_streams
    // open; the others are refused with RESOURCE_EXHAUSTED at once.
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(server.channel().await);
    }
    let attempts = join_all((0..ATTEMPTS).map(|i| {
        let mut c = ForecastServiceClient::new(channels[i % CONNECTIONS].clone());
        async move { c.stream_forecasts(stream_request(KEYS)).await }
    }))
    .await;
    let mut streams = Vec::new();
    for a in attempts {
        match a {
            Ok(s) => streams.push(s.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                assert!(e.message().contains("stream"), "{e}");
            }
        }
    }
    assert_eq!(streams.len(), max_streams, "streams past the bound open");
    assert_eq!(state.in_flight().streams, max_streams as i64);

    // The server is at work on them, and they deliver.
    wait_until(
        "the streams' first forecasts",
        HANG,
        || ran() > ran_idle && state.in_flight().stream_work > 0,
        in_flight,
    )
    .await;
    let f = tokio::time::timeout(HANG, streams[0].message())
        .await
        .expect("the first stream answers")
        .unwrap()
        .expect("a forecast, not the end of the stream");
    assert_eq!(f.quantiles, vec![0.1, 0.5, 0.9]);
    // Unary calls are still served while the streams work.
    unary.forecast(unary_request()).await.unwrap();
    let busy = state.in_flight();
    eprintln!(
        "with {max_streams} streams open: {busy:?}, {} fds ({idle_fds} idle), {} pages ({idle_rss} idle)",
        open_fds(),
        rss_pages()
    );

    // One read of the store per series for all the streams (and the unary
    // calls), not one per stream per series.
    let reads = state.context.reads_started();
    assert!(
        reads <= KEYS as u64,
        "{reads} store reads for {max_streams} streams of the same {KEYS} series"
    );

    // Everyone goes away, most of the forecasts asked for still to come.
    let asked = (max_streams * KEYS) as u64;
    let ran_before = ran() - ran_idle;
    let left = asked.saturating_sub(ran_before);
    assert!(
        left >= asked / 2,
        "the streams were nearly done ({ran_before} of {asked} forecasts) before they could be \
         cancelled: the test needs more keys"
    );
    drop(streams);
    drop(channels);
    wait_until(
        "the streams' work stopping",
        HANG,
        || state.in_flight().is_idle(),
        in_flight,
    )
    .await;
    let ran_after = ran() - ran_idle - ran_before;
    eprintln!("{ran_before} of {asked} forecasts run before the cancel, {ran_after} after");
    // What was left is dropped, not computed for nobody: only what was
    // queued or running when the server saw the clients go.
    assert!(
        ran_after < left / 4,
        "{ran_after} forecasts run after the cancel, of the {left} left: \
         the work of cancelled streams went on"
    );
    wait_until(
        "file handles returning to within 2x of idle",
        HANG,
        || open_fds() <= 2 * idle_fds,
        || format!("{} open, {idle_fds} when idle", open_fds()),
    )
    .await;
    let rss = rss_pages();
    assert!(
        rss <= 2 * idle_rss,
        "resident memory {rss} pages after the streams, {idle_rss} when idle"
    );

    // The server serves on: a unary call, and streams again (their places
    // were given back).
    let fc = unary
        .forecast(unary_request())
        .await
        .unwrap()
        .into_inner()
        .forecast
        .unwrap();
    assert_eq!(fc.key.unwrap().series, common::series(7));
    let mut again = unary
        .stream_forecasts(stream_request(4))
        .await
        .unwrap()
        .into_inner();
    again.message().await.unwrap().unwrap();
    drop(again);
    drop(unary);
    wait_until(
        "the last stream closing",
        HANG,
        || state.in_flight().is_idle(),
        in_flight,
    )
    .await;
    server.stop().await;
}

//! `StreamForecasts` bounds: too many keys in one stream or too many
//! streams are `RESOURCE_EXHAUSTED`, places come back when streams close,
//! and a stream bigger than the inference queue is held back, not skipped.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{Fixture, Running, key, stream_request, unary_request, wait_until};
use shardcast_proto::forecast::v1 as pb;
use shardcast_proto::forecast::v1::forecast_service_client::ForecastServiceClient;
use tonic::Code;

/// Bound on a hang, far above what any wait below needs.
const HANG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_keys_in_a_stream_are_resource_exhausted() {
    let fx = Fixture::new(4, 400).await;
    let mut cfg = fx.config();
    cfg.limits.max_stream_keys = 3;
    cfg.limits.max_streams = 1;
    let server = Running::start(cfg).await;
    let mut c = ForecastServiceClient::new(server.channel().await);
    let e = c.stream_forecasts(stream_request(4)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.message().contains("4 series in one stream, at most 3"),
        "{e}"
    );
    // Within the bound: served; a second stream past max_streams = 1 is not.
    let mut s = c
        .stream_forecasts(stream_request(3))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    let e = c.stream_forecasts(stream_request(1)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("stream places"), "{e}");
    // Closing the first gives its place back.
    drop(s);
    let state = &server.state;
    wait_until(
        "the stream's place coming back",
        HANG,
        || state.in_flight().streams == 0,
        || format!("{:?}", state.in_flight()),
    )
    .await;
    let mut s = c
        .stream_forecasts(stream_request(1))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    drop(s);
    drop(c);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_bigger_than_the_queue_is_held_back_not_skipped() {
    // A queue of 2 (the streams' share: 1) and one forecast per batch,
    // against a stream of 40 series: every series gets its forecast.
    let fx = Fixture::new(40, 400).await;
    let mut cfg = fx.config();
    cfg.batch.queue = 2;
    cfg.batch.max_batch = 1;
    let server = Running::start(cfg).await;
    let mut c = ForecastServiceClient::new(server.channel().await);
    // Histories already read, so the stream's 40 forecasts all want the
    // queue at once.
    for i in 0..40 {
        c.forecast(pb::ForecastRequest {
            key: Some(key(i)),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut s = c
        .stream_forecasts(stream_request(40))
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 40 {
        let f = tokio::time::timeout(HANG, s.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of 40 series answered", seen.len()))
            .unwrap()
            .expect("a forecast, not the end of the stream");
        assert!(
            seen.insert(f.key.unwrap().series),
            "each series once until its data changes"
        );
    }
    // Unary calls keep their half of the queue meanwhile.
    c.forecast(unary_request()).await.unwrap();
    drop(s);
    drop(c);
    server.stop().await;
}

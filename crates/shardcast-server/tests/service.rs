//! The server's answers to hostile or unlucky requests, over a real socket:
//! reflection behind the token, oversized messages, values that overflow
//! the model's arithmetic, absurd shard capacities, and a model version
//! copied in slowly.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{Fixture, Running, key, wait_until};
use shardcast_proto::forecast::v1 as pb;
use shardcast_proto::forecast::v1::forecast_service_client::ForecastServiceClient;
use shardcast_proto::ingest::v1 as ipb;
use shardcast_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use shardcast_proto::model::v1 as mpb;
use shardcast_proto::model::v1::model_service_client::ModelServiceClient;
use tonic::Code;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Bound on a hang, far above what any wait below needs.
const HANG: Duration = Duration::from_secs(60);

fn forecast_request(i: usize) -> pb::ForecastRequest {
    pb::ForecastRequest {
        key: Some(key(i)),
        ..Default::default()
    }
}

fn list_services(
    token: Option<&str>,
) -> tonic::Request<tokio_stream::Iter<std::vec::IntoIter<ServerReflectionRequest>>> {
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut r = tonic::Request::new(tokio_stream::iter(vec![ask]));
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn service_names(answer: ServerReflectionResponse) -> Vec<String> {
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_needs_the_token_like_every_service_but_health() {
    let fx = Fixture::new(2, 400).await;
    let mut cfg = fx.config();
    cfg.token = Some("s3cret".into());
    let server = Running::start(cfg).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);

    for wrong in [None, Some("wrong")] {
        let e = reflection
            .server_reflection_info(list_services(wrong))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    }
    let mut answers = reflection
        .server_reflection_info(list_services(Some("s3cret")))
        .await
        .unwrap()
        .into_inner();
    let names = service_names(answers.message().await.unwrap().unwrap());
    assert!(
        names
            .iter()
            .any(|n| n == "shardcast.forecast.v1.ForecastService"),
        "{names:?}"
    );

    // Health still answers without the token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    drop(answers);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_resource_exhausted() {
    let fx = Fixture::new(2, 400).await;
    // The default limit, 16 MiB, against a 64 MiB context.
    let server = Running::start(fx.config()).await;
    let mut c = ForecastServiceClient::new(server.channel().await);
    let mut r = forecast_request(0);
    r.context = Some(pb::ContextOverride {
        start_unix_ms: common::T0,
        values: vec![1.0; 16 << 20],
    });
    let e = c.forecast(r).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("too large"), "{e}");
    c.forecast(forecast_request(0)).await.unwrap();
    server.stop().await;

    // A client-streamed Write meets the limit in its handler: the same code.
    let mut cfg = fx.config();
    cfg.limits.max_message_bytes = 64 << 10;
    let server = Running::start(cfg).await;
    let mut ingest = IngestServiceClient::new(server.channel().await);
    let big = ipb::WriteRequest {
        points: (0..4096)
            .map(|i| ipb::Point {
                key: Some(key(0)),
                timestamp_unix_ms: common::T0 + i * common::STEP_MS,
                value: 1.0,
            })
            .collect(),
    };
    let e = ingest
        .write(tokio_stream::iter(vec![big]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("messages[0]"), "{e}");
    let mut c = ForecastServiceClient::new(server.channel().await);
    c.forecast(forecast_request(1)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_beyond_single_precision_arithmetic_are_an_invalid_argument() {
    let fx = Fixture::new(2, 400).await;
    let server = Running::start(fx.config()).await;
    let mut c = ForecastServiceClient::new(server.channel().await);
    let mut r = forecast_request(0);
    r.context = Some(pb::ContextOverride {
        start_unix_ms: common::T0,
        values: (0..600)
            .map(|i| if i % 2 == 0 { 3e38 } else { -3e38 })
            .collect(),
    });
    let e = c.forecast(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("context.values") && e.message().contains("overflow"),
        "{e}"
    );
    // In a batch, only that request's field is named.
    let mut bad = forecast_request(0);
    bad.context = Some(pb::ContextOverride {
        start_unix_ms: common::T0,
        values: (0..600)
            .map(|i| if i % 2 == 0 { 3e38 } else { -3e38 })
            .collect(),
    });
    let e = c
        .forecast_batch(pb::ForecastBatchRequest {
            requests: vec![forecast_request(1), bad],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("requests[1].context.values"), "{e}");
    // Ordinary values still forecast.
    let mut r = forecast_request(0);
    r.context = Some(pb::ContextOverride {
        start_unix_ms: common::T0,
        values: (0..600).map(|i| 50.0 + (i % 12) as f32).collect(),
    });
    c.forecast(r).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_shard_capacity_is_refused_in_a_short_message() {
    let fx = Fixture::new(2, 400).await;
    let server = Running::start(fx.config()).await;
    let mut c = ForecastServiceClient::new(server.channel().await);
    for capacity in [1e-300, -1e-300] {
        let e = c
            .shard_demand(pb::ShardDemandRequest {
                key: Some(key(0)),
                shard_capacity: capacity,
                current_shards: 1,
                lookahead_steps: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("e-300"), "{e}");
        assert!(
            e.message().len() < 200,
            "{} characters: {e}",
            e.message().len()
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_copied_slowly_is_refused_then_served_once_complete() {
    let fx = Fixture::new(2, 400).await;
    let server = Running::start(fx.config()).await;
    let mut models = ModelServiceClient::new(server.channel().await);
    let mut c = ForecastServiceClient::new(server.channel().await);

    // The config first, then half of the weights: refused, and listed so.
    let dir = fx.add_version(2, &["config.json", "metrics.json"]);
    let weights = std::fs::read(common::bundled().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let mut listed = None;
    let until = std::time::Instant::now() + HANG;
    while listed.is_none() {
        assert!(std::time::Instant::now() < until, "version 2 never refused");
        let list = models
            .list_models(mpb::ListModelsRequest {})
            .await
            .unwrap()
            .into_inner();
        listed = list
            .versions
            .into_iter()
            .find(|v| v.version == 2 && !v.refused_reason.is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v2 = listed.unwrap();
    assert!(!v2.serving);
    assert!(
        v2.refused_reason.contains("version 2"),
        "{}",
        v2.refused_reason
    );
    let fc = c.forecast(forecast_request(0)).await.unwrap().into_inner();
    assert_eq!(fc.forecast.unwrap().model_version, 1);

    // The copy completes: served after a poll, no Reload asked for.
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    let state = &server.state;
    wait_until(
        "version 2 being served",
        HANG,
        || state.registry.current().version == 2,
        || format!("refused: {:?}", state.registry.refused()),
    )
    .await;
    let fc = c.forecast(forecast_request(0)).await.unwrap().into_inner();
    assert_eq!(fc.forecast.unwrap().model_version, 2);
    let list = models
        .list_models(mpb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let v2 = list.versions.iter().find(|v| v.version == 2).unwrap();
    assert!(v2.serving && v2.refused_reason.is_empty(), "{v2:?}");
    server.stop().await;
}

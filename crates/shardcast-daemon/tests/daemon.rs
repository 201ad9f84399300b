//! The daemon against fake inference servers on loopback: good, down,
//! slow and garbage-answering ones, plus its KEDA scaler, files and config.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use shardcast_core::{FallbackCause, ScaleBasis};
use shardcast_daemon::{
    Clock, Daemon, DecisionRecord, Format, KedaServer, Options, PlanConfig, ShardTemplate,
    ShardTypeConfig, StateOrigin, TargetsFile,
};
use shardcast_planner::placement::PlacementPolicy;
use shardcast_planner::scale::{ScalePolicy, WarmPoolPolicy};
use shardcast_proto::externalscaler::{
    GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient,
};
use shardcast_proto::forecast::v1::{
    self as pb,
    forecast_service_server::{ForecastService, ForecastServiceServer},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const STEP_MS: i64 = 300_000;
const T0: i64 = 1_700_000_100_000 - 1_700_000_100_000 % STEP_MS;

/// What the fake server answers.
#[derive(Clone)]
enum Answer {
    Forecast(Box<pb::ForecastShardTypeResponse>),
    /// Never answers: holds every call until the client gives up.
    Hold,
    Fail(tonic::Code),
}

#[derive(Clone)]
struct Fake(Answer);

type Stream = Pin<Box<dyn futures::Stream<Item = Result<pb::Forecast, Status>> + Send>>;

#[tonic::async_trait]
impl ForecastService for Fake {
    async fn forecast(
        &self,
        _: Request<pb::ForecastRequest>,
    ) -> Result<Response<pb::ForecastResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn forecast_shard_type(
        &self,
        request: Request<pb::ForecastShardTypeRequest>,
    ) -> Result<Response<pb::ForecastShardTypeResponse>, Status> {
        assert_eq!(request.get_ref().shard_type, "api");
        match &self.0 {
            Answer::Forecast(r) => Ok(Response::new((**r).clone())),
            Answer::Hold => std::future::pending().await,
            Answer::Fail(code) => Err(Status::new(*code, "the fake refuses")),
        }
    }

    async fn forecast_batch(
        &self,
        _: Request<pb::ForecastBatchRequest>,
    ) -> Result<Response<pb::ForecastBatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type StreamForecastsStream = Stream;

    async fn stream_forecasts(
        &self,
        _: Request<pb::StreamForecastsRequest>,
    ) -> Result<Response<Stream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn shard_demand(
        &self,
        _: Request<pb::ShardDemandRequest>,
    ) -> Result<Response<pb::ShardDemandResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Six 5-minute steps from `T0`, levels 0.5/0.9/0.95; the 0.95 quantile is
/// 25 in the two steps before the lead time ends and 35 in the third.
fn good_response() -> pb::ForecastShardTypeResponse {
    let p95 = [25.0, 25.0, 35.0, 12.0, 12.0, 12.0];
    pb::ForecastShardTypeResponse {
        total: Some(pb::Forecast {
            key: None,
            model: "fake".into(),
            model_version: 7,
            step_ms: STEP_MS,
            quantiles: vec![0.5, 0.9, 0.95],
            steps: p95
                .iter()
                .enumerate()
                .map(|(i, &q)| pb::ForecastStep {
                    timestamp_unix_ms: T0 + STEP_MS * i as i64,
                    values: vec![q * 0.5, q * 0.9, q],
                })
                .collect(),
            last_observed_unix_ms: T0 - STEP_MS,
        }),
        series: vec![],
        stale: vec![],
    }
}

async fn fake_server(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ForecastServiceServer::new(Fake(answer)))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}

/// A TCP server that answers every connection with bytes that are not HTTP/2.
async fn garbage_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\n\r\nthis is not gRPC\x00\xff")
                    .await;
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    format!("http://{addr}")
}

/// An address nothing listens on, kept bound (but not listening) by the
/// returned socket so no other test's server can take the port.
fn closed_port() -> (String, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (format!("http://{addr}"), socket)
}

fn config(server: String) -> PlanConfig {
    PlanConfig {
        server,
        token: None,
        tls_ca: None,
        tls_domain: None,
        interval_secs: 0.05,
        // Generous: a loaded CI machine must not turn a good answer into a
        // fallback. The slow-server test sets its own.
        timeout_ms: 10_000,
        clock: Clock::Data,
        placement: PlacementPolicy::default(),
        shard_types: vec![ShardTypeConfig {
            app: "shop".into(),
            shard_type: "api".into(),
            metric: None,
            initial_shards: Some(2),
            keda_target: 2.5,
            scale: ScalePolicy {
                service_level: 0.95,
                capacity_per_shard: 10.0,
                target_utilisation: 1.0,
                lead_time_secs: 600,
                hold_secs: 0,
                min_shards: 1,
                max_shards: 100,
                warm_pool: WarmPoolPolicy {
                    level: None,
                    min: 0,
                    max: 0,
                },
                ..ScalePolicy::default()
            },
            placement: None,
        }],
    }
}

fn fallback_detail(r: &DecisionRecord) -> String {
    match &r.decision.reason.basis {
        ScaleBasis::Reactive(b) => match &b.cause {
            FallbackCause::Unavailable { detail } => detail.clone(),
            other => panic!("unexpected cause {other:?}"),
        },
        ScaleBasis::Forecast(_) => panic!("expected a fallback: {}", r.explain),
    }
}

#[tokio::test]
async fn the_forecast_drives_the_count_and_replanning_is_stable() {
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let mut daemon = Daemon::new(config(server), Options::default()).unwrap();
    let targets = daemon.targets();
    assert!(
        targets.borrow()["api"].shards.is_err(),
        "nothing to publish before a round"
    );
    let first = daemon.tick().await;
    assert_eq!(first.len(), 1);
    let r = &first[0];
    // The step at now + lead (the third) needs ceil(35 / 10) = 4 shards.
    assert_eq!(
        (r.decision.current, r.decision.desired),
        (2, 4),
        "{}",
        r.explain
    );
    let ScaleBasis::Forecast(b) = &r.decision.reason.basis else {
        panic!("{}", r.explain);
    };
    assert_eq!((b.binding_demand, b.required), (35.0, 4));
    assert_eq!(r.decision.at.millis(), T0, "the data clock");
    let p = r.forecast.as_ref().unwrap();
    assert_eq!((p.model.as_str(), p.version), ("fake", 7));
    assert_eq!(r.state, StateOrigin::Assumed);
    assert_eq!(targets.borrow()["api"].shards, Ok(4));
    // Same inputs, decisions carried out: the same count again.
    let second = daemon.tick().await;
    assert_eq!(
        (second[0].decision.current, second[0].decision.desired),
        (4, 4)
    );
}

#[tokio::test]
async fn an_unreachable_server_falls_back_to_the_reactive_rule() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"shard_types": {"api": {"ready": 2, "observed_demand": 30}}}"#,
    )
    .unwrap();
    let opts = Options {
        state_file: Some(state.clone()),
        ..Options::default()
    };
    let (closed, _held) = closed_port();
    let mut daemon = Daemon::new(config(closed), opts).unwrap();
    for _ in 0..2 {
        let r = &daemon.tick().await[0];
        let detail = fallback_detail(r);
        assert!(detail.starts_with("Unavailable: "), "{detail}");
        assert_eq!(detail.matches("tcp connect error").count(), 1, "{detail}");
        // Utilisation 30 / 20 = 1.5 against 0.7: ceil(2 × 1.5 / 0.7) = 5.
        assert_eq!(r.decision.desired, 5, "{}", r.explain);
        assert_eq!(r.state, StateOrigin::File);
        assert!(r.explain.contains("no usable forecast"), "{}", r.explain);
    }
    // Without observed demand the rule never scales down.
    std::fs::write(&state, r#"{"shard_types": {"api": {"ready": 3}}}"#).unwrap();
    let r = &daemon.tick().await[0];
    assert_eq!(r.decision.desired, 3, "{}", r.explain);
}

#[tokio::test]
async fn a_slow_server_is_cut_off_at_the_timeout() {
    let server = fake_server(Answer::Hold).await;
    let cfg = PlanConfig {
        timeout_ms: 300,
        ..config(server)
    };
    let mut daemon = Daemon::new(cfg, Options::default()).unwrap();
    // The server never answers: the round ends only by the daemon's own
    // timeout. (The minute is a guard against hanging, not a bound.)
    let records = tokio::time::timeout(Duration::from_secs(60), daemon.tick())
        .await
        .expect("the daemon waited for a server that never answers");
    let r = &records[0];
    let detail = fallback_detail(r);
    assert!(
        detail.contains("300 ms")
            || detail.contains("DeadlineExceeded")
            || detail.contains("Cancelled"),
        "{detail}"
    );
    assert_eq!(
        r.decision.desired, 2,
        "floor at the healthy count: {}",
        r.explain
    );
}

#[tokio::test]
async fn garbage_answers_are_refused_with_the_reason() {
    let mut cases: Vec<(pb::ForecastShardTypeResponse, &str)> = Vec::new();
    let mut crossing = good_response();
    crossing.total.as_mut().unwrap().steps[2].values = vec![40.0, 30.0, 20.0];
    cases.push((crossing, "quantiles cross"));
    let mut nan = good_response();
    nan.total.as_mut().unwrap().steps[0].values[1] = f32::NAN;
    cases.push((nan, "not finite"));
    let mut gap = good_response();
    gap.total.as_mut().unwrap().steps[3].timestamp_unix_ms += 1;
    cases.push((gap, "step 3"));
    let mut levels = good_response();
    levels.total.as_mut().unwrap().quantiles = vec![0.5, 1.5, 0.95];
    cases.push((levels, "outside"));
    let mut shifted = good_response();
    shifted.total.as_mut().unwrap().last_observed_unix_ms = T0;
    cases.push((shifted, "last observation"));
    cases.push((
        pb::ForecastShardTypeResponse::default(),
        "no total forecast",
    ));
    for (answer, want) in cases {
        let server = fake_server(Answer::Forecast(Box::new(answer))).await;
        let mut daemon = Daemon::new(config(server), Options::default()).unwrap();
        let detail = fallback_detail(&daemon.tick().await[0]);
        assert!(detail.contains(want), "{detail} lacks {want}");
    }
    let server = fake_server(Answer::Fail(tonic::Code::NotFound)).await;
    let mut daemon = Daemon::new(config(server), Options::default()).unwrap();
    let detail = fallback_detail(&daemon.tick().await[0]);
    assert!(detail.contains("NotFound: the fake refuses"), "{detail}");

    let mut daemon = Daemon::new(config(garbage_server().await), Options::default()).unwrap();
    let r = &daemon.tick().await[0];
    assert!(!fallback_detail(r).is_empty());
    assert_eq!(r.decision.desired, 2);
}

#[tokio::test]
async fn dry_run_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let targets_file = dir.path().join("targets.json");
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let opts = Options {
        dry_run: true,
        targets_file: Some(targets_file.clone()),
        ..Options::default()
    };
    let mut daemon = Daemon::new(config(server), opts).unwrap();
    let targets = daemon.targets();
    for _ in 0..2 {
        let r = &daemon.tick().await[0];
        assert!(r.dry_run);
        assert_eq!((r.decision.current, r.decision.desired), (2, 4));
        assert_eq!(
            targets.borrow()["api"].shards,
            Err("dry run"),
            "KEDA is told nothing"
        );
    }
    assert!(!targets_file.exists());
}

#[tokio::test]
async fn the_targets_file_holds_the_latest_round() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("targets.json");
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let opts = Options {
        targets_file: Some(path.clone()),
        ..Options::default()
    };
    let mut daemon = Daemon::new(config(server), opts).unwrap();
    daemon.tick().await;
    let file: TargetsFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(file.at.millis(), T0);
    assert_eq!(file.shard_types["api"].desired, 4);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
}

fn scaled(metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "api".into(),
        namespace: "shop".into(),
        scaler_metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    }
}

#[tokio::test]
async fn keda_is_told_n_times_the_target() {
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let mut daemon = Daemon::new(config(server), Options::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keda = KedaServer::spawn(listener, daemon.targets()).unwrap();
    let addr = keda.addr();
    let mut client = ExternalScalerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let object = scaled(&[("shardType", "api"), ("app", "shop")]);

    let spec = client
        .get_metric_spec(object.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    let spec = &spec.metric_specs[0];
    assert_eq!(spec.metric_name, "shardcast-api");
    assert_eq!((spec.target_size_float, spec.target_size), (2.5, 3));

    let metrics = |client: &mut ExternalScalerClient<_>| {
        let mut client = client.clone();
        let object = object.clone();
        async move {
            let r = client
                .get_metrics(GetMetricsRequest {
                    scaled_object_ref: Some(object),
                    metric_name: "s0-shardcast-api".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.metric_values[0].metric_name, "s0-shardcast-api");
            r.metric_values[0].metric_value_float
        }
    };
    // Before the first round there is no count: KEDA keeps what runs.
    let early = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object.clone()),
            metric_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), tonic::Code::Unavailable, "{early}");
    let mut active = client
        .stream_is_active(object.clone())
        .await
        .unwrap()
        .into_inner();
    daemon.tick().await;
    assert!(active.message().await.unwrap().unwrap().result);
    assert_eq!(metrics(&mut client).await, 10.0, "4 shards × 2.5");
    let r = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object.clone()),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.metric_values[0].metric_value, 12,
        "older KEDA: 4 shards × the integer target 3"
    );
    assert!(
        client
            .is_active(object.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );

    let missing = client.is_active(scaled(&[])).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert!(
        missing.message().contains("shardType"),
        "{}",
        missing.message()
    );
    let unknown = client
        .get_metric_spec(scaled(&[("shardType", "db")]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("\"api\""),
        "{}",
        unknown.message()
    );
    let other_app = client
        .get_metric_spec(scaled(&[("shardType", "api"), ("app", "blog")]))
        .await
        .unwrap_err();
    assert_eq!(other_app.code(), tonic::Code::NotFound);

    // The stream ends when the daemon goes away.
    drop(daemon);
    let end = tokio::time::timeout(Duration::from_secs(30), active.message())
        .await
        .expect("the stream ends with the daemon");
    assert!(end.map_or(true, |m| m.is_none()));
    keda.stop().await.unwrap();
}

#[tokio::test]
async fn run_writes_json_lines_and_sentences() {
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let mut daemon = Daemon::new(config(server), Options::default()).unwrap();
    let mut out = Vec::new();
    let rounds = daemon
        .run(&mut out, Format::Json, Some(3), std::future::pending())
        .await
        .unwrap();
    assert_eq!(rounds, 3);
    let lines: Vec<DecisionRecord> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2].decision.desired, 4);

    let mut text = Vec::new();
    daemon
        .run(&mut text, Format::Text, Some(1), std::future::pending())
        .await
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("api: hold at 4 shards: the 0.95 quantile"),
        "{text}"
    );

    // Shutdown ends the loop before its rounds are done.
    let rounds = daemon
        .run(&mut Vec::new(), Format::Json, None, std::future::ready(()))
        .await
        .unwrap();
    assert!(rounds <= 1);
}

#[tokio::test]
async fn a_bad_state_file_mid_run_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, r#"{"shard_types": {"api": {"ready": 6}}}"#).unwrap();
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let opts = Options {
        state_file: Some(state.clone()),
        ..Options::default()
    };
    let mut daemon = Daemon::new(config(server), opts).unwrap();
    assert_eq!(daemon.tick().await[0].decision.current, 6);
    std::fs::write(&state, "{\"shard_types\": {\"api\": {\"ready\": 6,").unwrap();
    let r = &daemon.tick().await[0];
    assert_eq!(r.state, StateOrigin::LastGood);
    assert_eq!(r.decision.current, 6);
    let err = r.state_error.as_deref().unwrap();
    assert!(
        err.contains("state.json") && err.contains("line 1"),
        "{err}"
    );
}

fn load_err(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    PlanConfig::load(&p).unwrap_err().to_string()
}

#[test]
fn config_files_are_checked_and_errors_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"
server = "http://127.0.0.1:50051"
interval_secs = 30
clock = "data"

[[shard_types]]
app = "shop"
shard_type = "api"
keda_target = 100

[shard_types.scale]
service_level = 0.9
capacity_per_shard = 50
lead_time_secs = 300
"#;
    let p = dir.path().join("plan.toml");
    std::fs::write(&p, good).unwrap();
    let cfg = PlanConfig::load(&p).unwrap();
    assert_eq!(cfg.clock, Clock::Data);
    assert_eq!(cfg.shard_types[0].scale.service_level, 0.9);
    assert_eq!(
        cfg.shard_types[0].scale.max_shards,
        ScalePolicy::default().max_shards
    );
    let json = serde_json::to_string(&cfg).unwrap();
    let pj = dir.path().join("plan.json");
    std::fs::write(&pj, &json).unwrap();
    assert_eq!(PlanConfig::load(&pj).unwrap(), cfg);

    let typo = load_err(
        dir.path(),
        "typo.toml",
        &good.replace("lead_time_secs", "lead_secs"),
    );
    assert!(
        typo.contains("typo.toml") && typo.contains("lead_secs"),
        "{typo}"
    );
    assert!(typo.contains("line 14"), "{typo}");
    let level = load_err(dir.path(), "level.toml", &good.replace("0.9", "1.5"));
    assert!(
        level.contains("shard_types[0].scale.service_level"),
        "{level}"
    );
    let twice = format!("{good}\n[[shard_types]]\napp = \"shop\"\nshard_type = \"api\"\n");
    let twice = load_err(dir.path(), "twice.toml", &twice);
    assert!(twice.contains("appears twice"), "{twice}");
    let none = load_err(dir.path(), "none.toml", "shard_types = []\n");
    assert!(none.contains("nothing to plan"), "{none}");
    let bad_json = load_err(dir.path(), "bad.json", "{\"shard_types\": [}");
    assert!(
        bad_json.contains("bad.json") && bad_json.contains("line 1"),
        "{bad_json}"
    );
    for bad in ["interval_secs = 0", "interval_secs = 1e20"] {
        let interval = load_err(
            dir.path(),
            "interval.toml",
            &good.replace("interval_secs = 30", bad),
        );
        assert!(interval.contains("interval_secs"), "{interval}");
    }
    let missing = PlanConfig::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(missing.to_string().contains("absent.toml"), "{missing}");
}

#[tokio::test]
async fn bad_state_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"shard_types\": {}}", "no entry for \"api\""),
        (
            "{\"shard_types\": {\"api\": {\"ready\": 1, \"observed_demand\": -3}}}",
            "observed_demand",
        ),
        (
            "{\"shard_types\": {\"api\": {\"ready\": \"two\"}}}",
            "line 1",
        ),
        (
            "{\"shard_types\": {\"api\": {\"ready\": 1, \"extra\": 1}}}",
            "extra",
        ),
    ];
    let (server, _held) = closed_port();
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("state{i}.json"));
        std::fs::write(&p, text).unwrap();
        let opts = Options {
            state_file: Some(p),
            ..Options::default()
        };
        let err = Daemon::new(config(server.clone()), opts)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("state{i}.json")) && err.contains(want),
            "{err}"
        );
    }
    let bad_uri = Daemon::new(config("not a uri".into()), Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(bad_uri.contains("not a uri"), "{bad_uri}");
}

#[test]
fn flags_win_over_the_config_and_are_checked() {
    let cfg = config("http://127.0.0.1:1".into());
    let over = shardcast_daemon::ConfigOverrides {
        server: Some("10.0.0.1:50051".into()),
        interval: Some(5.0),
        clock: Some(shardcast_daemon::Clock::Data),
    };
    let c = cfg.clone().with(&over).unwrap();
    assert_eq!(c.server, "http://10.0.0.1:50051");
    assert_eq!(
        (c.interval_secs, c.clock),
        (5.0, shardcast_daemon::Clock::Data)
    );
    let https = shardcast_daemon::ConfigOverrides {
        server: Some("https://a:1".into()),
        ..Default::default()
    };
    assert_eq!(cfg.clone().with(&https).unwrap().server, "https://a:1");
    let bad = shardcast_daemon::ConfigOverrides {
        interval: Some(0.0),
        ..Default::default()
    };
    assert!(cfg.with(&bad).unwrap_err().contains("interval_secs"));
}

#[test]
fn the_example_config_parses() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plan.toml");
    let cfg = PlanConfig::load(&p).unwrap();
    assert_eq!(cfg.shard_types.len(), 2);
    assert_eq!(cfg.shard_types[0].scale.warm_pool.level, Some(0.975));
    assert_eq!(cfg.placement.seed, 7);
    let template = cfg.shard_types[0].placement.as_ref().unwrap();
    assert_eq!(template.request.cpu, 2.0);
    assert!(cfg.shard_types[1].placement.is_none());
}

#[tokio::test]
async fn the_desired_shards_are_placed_on_the_state_files_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    // Three hosts of 4 CPUs in two zones; two shards run on h1 and h2.
    let hosts = r#"[
        {"id": "h1", "capacity": {"cpu": 4, "memory": 16, "bandwidth": 10}, "zone": "a"},
        {"id": "h2", "capacity": {"cpu": 4, "memory": 16, "bandwidth": 10}, "zone": "b"},
        {"id": "h3", "capacity": {"cpu": 4, "memory": 16, "bandwidth": 10}, "zone": "a"}
    ]"#;
    let write_state = |hosts: &str| {
        std::fs::write(
            &state,
            format!(
                r#"{{"hosts": {hosts}, "shard_types": {{"api": {{"ready": 2,
                    "shards": [{{"id": "api-a", "host": "h1"}}, {{"id": "api-b", "host": "h2"}}]}}}}}}"#
            ),
        )
        .unwrap();
    };
    write_state(hosts);
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let mut cfg = config(server);
    cfg.shard_types[0].placement = Some(ShardTemplate {
        request: shardcast_core::Resources::new(1.5, 4.0, 1.0),
        anti_affinity: None,
        spread: Some("api".into()),
        zones: vec![],
        shadow: false,
    });
    let opts = Options {
        state_file: Some(state.clone()),
        ..Options::default()
    };
    let mut daemon = Daemon::new(cfg, opts).unwrap();
    let r = &daemon.tick().await[0];
    assert_eq!(r.decision.desired, 4, "{}", r.explain);
    let p = daemon
        .placement()
        .expect("a placement with hosts and a template");
    assert_eq!(p.launched, vec!["api-2", "api-3"]);
    assert!(p.released.is_empty());
    let pl = &p.placement;
    assert_eq!(pl.assignments.len(), 4);
    assert!(pl.unplaced.is_empty());
    // At most two 1.5-CPU shards fit a 4-CPU host; the running ones stay.
    for h in ["h1", "h2", "h3"] {
        assert!(pl.assignments.iter().filter(|a| a.host == h).count() <= 2);
    }
    assert!(pl.moves.is_empty(), "{:?}", pl.moves);
    let mut out = Vec::new();
    daemon
        .run(&mut out, Format::Json, Some(1), std::future::pending())
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["placement"]["assignments"].as_array().unwrap().len(),
        4
    );

    // One small host: what does not fit is reported with the reason.
    write_state(
        r#"[{"id": "h1", "capacity": {"cpu": 2, "memory": 16, "bandwidth": 10}, "zone": "a"}]"#,
    );
    daemon.tick().await;
    let p = daemon.placement().unwrap();
    assert_eq!(p.placement.assignments.len(), 1);
    assert_eq!(p.placement.unplaced.len(), 3);
    assert!(!p.placement.unplaced[0].message.is_empty());
}

#[tokio::test]
async fn the_first_round_holds_the_healthy_count_for_a_stabilisation_window() {
    // 7 shards run; the forecast needs 4. A daemon that had run for a while
    // would hold 7 through the scale-down window; a fresh one used to drop
    // to 4 at once, since it remembered no recommendation.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, r#"{"shard_types": {"api": {"ready": 7}}}"#).unwrap();
    let server = fake_server(Answer::Forecast(Box::new(good_response()))).await;
    let opts = || Options {
        state_file: Some(state.clone()),
        ..Options::default()
    };
    let mut daemon = Daemon::new(config(server.clone()), opts()).unwrap();
    let r = &daemon.tick().await[0];
    assert_eq!(
        (r.decision.current, r.decision.desired),
        (7, 7),
        "{}",
        r.explain
    );
    assert!(
        r.decision.reason.adjustments.iter().any(|a| matches!(
            a,
            shardcast_core::Adjustment::Stabilised { from: 4, to: 7, .. }
        )),
        "{}",
        r.explain
    );
    assert_eq!(daemon.tick().await[0].decision.desired, 7);
    // Without a window there is nothing to remember: the forecast rules.
    let mut cfg = config(server);
    cfg.shard_types[0].scale.scale_down_stabilisation_secs = 0;
    let mut daemon = Daemon::new(cfg, opts()).unwrap();
    assert_eq!(daemon.tick().await[0].decision.desired, 4);
}

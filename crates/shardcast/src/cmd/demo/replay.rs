//! The demo's live part: the inference server, KEDA's scaler and the
//! planner daemon on loopback, with the held-back AWS points written
//! through the server's ingest API one 5-minute bin per round, so every
//! round plans on data the previous one had not seen.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use shardcast_core::{ScaleBasis, SeriesKey, Timestamp};
use shardcast_daemon::{Daemon, DecisionRecord, KedaServer, Options, PlanConfig};
use shardcast_proto::externalscaler::{
    GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient,
};
use shardcast_proto::forecast::v1 as pb;
use shardcast_proto::forecast::v1::forecast_service_client::ForecastServiceClient;
use shardcast_proto::ingest::v1 as ipb;
use shardcast_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use shardcast_proto::key_to_pb;
use shardcast_store::ingest::PointBatch;
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::cli::DemoArgs;
use shardcast_plot::{self as plot, FanChart, Panel};

/// The app whose traces are replayed.
const APP: &str = "aws";
/// Rounds of the daemon, one replayed 5-minute bin each.
const ROUNDS: usize = 6;
/// The bins of the replayed traces.
const STEP_MS: i64 = 300_000;
/// The trace protocol P is run on.
pub(super) const SIMULATED: &str = "elb_request_count_8c0756";
/// The shard type drawn in the fan chart.
const CHARTED: &str = "elb-requests";
/// Levels asked of the server for the table and the chart.
const LEVELS: [f64; 5] = [0.025, 0.1, 0.5, 0.9, 0.975];
/// The planner daemon's configuration: the repository's annotated example.
const PLAN_CONFIG: &str = include_str!("../../../../../examples/plan.toml");

/// The first held-back instant: 2014-04-23 23:30 UTC, 35 minutes before
/// the EC2 trace ends and 65 before the ELB one does.
pub(super) fn start() -> Timestamp {
    let day = Timestamp::from_date(2014, 4, 23).expect("a valid date");
    Timestamp(day.0 + (23 * 60 + 30) * 60_000)
}

/// Where the simulated day starts: a day before the replay ends.
pub(super) fn simulate_from() -> Timestamp {
    Timestamp(start().0 + ROUNDS as i64 * STEP_MS - 86_400_000)
}

/// Splits a parsed batch into what is stored now and the replay's points
/// (the replayed app's points from [`start`] on).
pub(super) fn split(batch: PointBatch) -> (PointBatch, PointBatch) {
    let cut = start().0;
    batch.partition(|key, ts| key.app == APP && ts >= cut)
}

/// What the live part wrote.
pub(super) struct Replayed {
    /// The daemon's decisions, JSON lines.
    pub(super) decisions: PathBuf,
    /// The fan chart.
    pub(super) chart: PathBuf,
}

fn bin(ts: i64) -> i64 {
    ts.div_euclid(STEP_MS) * STEP_MS
}

/// Steps 5 and 6: serve, plan while replaying, draw the forecast.
pub(super) async fn run(
    args: &DemoArgs,
    store_dir: &Path,
    models: &Path,
    held: PointBatch,
) -> Result<Replayed> {
    println!("\n[5/7] inference server, KEDA scaler and planner daemon on loopback");
    let mut cfg = shardcast_server::ServerConfig::new(store_dir.to_string_lossy(), models);
    cfg.store_poll = Duration::from_millis(200);
    let state = shardcast_server::State::open(&cfg)
        .await
        .context("cannot start the inference server")?;
    let served = state.registry.current();
    let server = shardcast_server::Running::spawn(
        TcpListener::bind("127.0.0.1:0").await?,
        None,
        state,
        cfg,
    )?;
    let addr = server.addr();
    println!(
        "      gRPC server on {addr}, serving model {} v{} from {}",
        served.name,
        served.version,
        served.dir.display()
    );
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .context("cannot reach the demo's server")?;

    let mut plan = PlanConfig::parse(PLAN_CONFIG, false)
        .map_err(|e| anyhow::anyhow!("examples/plan.toml: {e}"))?;
    plan.server = format!("http://{addr}");
    plan.clock = shardcast_daemon::Clock::Data;
    plan.timeout_ms = 30_000;
    let decisions = args.out.join("decisions.jsonl");
    let mut daemon = Daemon::new(
        plan.clone(),
        Options {
            targets_file: Some(args.out.join("targets.json")),
            ..Options::default()
        },
    )?;
    let keda = KedaServer::spawn(TcpListener::bind("127.0.0.1:0").await?, daemon.targets())?;
    let keda_addr = keda.addr();
    println!(
        "      KEDA external scaler on {keda_addr}; planner daemon with examples/plan.toml ({} shard types, data clock)",
        plan.shard_types.len()
    );

    let mut observed: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let store = super::super::open(&store_dir.to_string_lossy())?;
    for t in &plan.shard_types {
        let filter = shardcast_store::query::SeriesFilter {
            app: Some(t.app.clone()),
            shard_type: Some(t.shard_type.clone()),
            ..Default::default()
        };
        for s in store.load_series(&filter).await? {
            for (&ts, &v) in s.ts.iter().zip(&s.value) {
                *observed.entry((t.shard_type.clone(), bin(ts))).or_default() += v;
            }
        }
    }
    for (key, ts, value) in held.iter() {
        *observed
            .entry((key.shard_type.clone(), bin(ts)))
            .or_default() += value;
    }

    println!(
        "\n[6/7] {ROUNDS} planning rounds; after each, the next 5 minutes of held-back data go through the server's ingest API"
    );
    println!(
        "{:<5} {:<20} {:<13} {:>9} {:>26} {:>9}  {:<9} basis",
        "round",
        "now (UTC)",
        "shard type",
        "last bin",
        "next 5 min p50 [p10, p90]",
        "p97.5 1h",
        "shards"
    );
    let mut forecasts = ForecastServiceClient::new(channel.clone());
    let mut ingest = IngestServiceClient::new(channel.clone());
    let mut lines = std::io::BufWriter::new(
        std::fs::File::create(&decisions)
            .with_context(|| format!("cannot write {}", decisions.display()))?,
    );
    let mut first_forecast = None;
    let mut last_records = Vec::new();
    for round in 1..=ROUNDS {
        let records = daemon.tick().await;
        let Some(now) = records.first().map(|r| r.decision.at) else {
            bail!("the daemon made no decision");
        };
        for r in &records {
            serde_json::to_writer(&mut lines, r)?;
            lines.write_all(b"\n")?;
            let f = forecasts
                .forecast_shard_type(pb::ForecastShardTypeRequest {
                    app: r.app.clone(),
                    shard_type: r.decision.shard_type.as_str().to_owned(),
                    quantiles: LEVELS.to_vec(),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("forecast of {}", r.decision.shard_type))?
                .into_inner()
                .total
                .context("the server sent no total")?;
            let last = observed
                .get(&(r.decision.shard_type.as_str().to_owned(), now.0 - STEP_MS))
                .copied()
                .unwrap_or(f64::NAN);
            println!(
                "{round:<5} {:<20} {:<13} {last:>9.1} {:>26} {:>9.1}  {:<9} {}",
                now.to_string(),
                r.decision.shard_type.as_str(),
                next_step(&f),
                f.steps.iter().map(|s| s.values[4]).fold(f32::MIN, f32::max),
                format!("{} → {}", r.decision.current, r.decision.desired),
                basis(r)
            );
            if round == 1 && r.decision.shard_type.as_str() == CHARTED {
                first_forecast = Some(f);
            }
        }
        // The next bin of every replayed series, as a client would send it;
        // after the last round, the rest, so the store ends complete.
        let points: Vec<ipb::Point> = held
            .iter()
            .filter(|&(_, ts, _)| bin(ts) == now.0 || (round == ROUNDS && ts >= now.0))
            .map(|(key, ts, value)| ipb::Point {
                key: Some(key_to_pb(key)),
                timestamp_unix_ms: ts,
                value,
            })
            .collect();
        if !points.is_empty() {
            let n = points.len();
            let w = ingest
                .write(tokio_stream::iter([ipb::WriteRequest { points }]))
                .await
                .context("replaying through the server")?
                .into_inner();
            if round < ROUNDS {
                println!(
                    "      replayed {n} point(s) of the bin at {now} (store version {})",
                    w.store_version
                );
            } else {
                println!(
                    "      wrote the remaining {n} held-back point(s) (store version {})",
                    w.store_version
                );
            }
        }
        last_records = records;
    }

    println!("\n      the last round's decisions, in words:");
    for r in &last_records {
        println!("      - {}", r.explain);
    }
    let mut scaler = ExternalScalerClient::connect(format!("http://{keda_addr}")).await?;
    for t in &plan.shard_types {
        let object = ScaledObjectRef {
            name: t.shard_type.clone(),
            namespace: "demo".into(),
            scaler_metadata: [("shardType".to_owned(), t.shard_type.clone())].into(),
        };
        let m = scaler
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(object),
                metric_name: String::new(),
            })
            .await?
            .into_inner();
        let v = m.metric_values.first().context("KEDA got no metric")?;
        println!(
            "      KEDA asks {} for {}: {} = {} replicas at target {}",
            keda_addr,
            t.shard_type,
            v.metric_value_float,
            (v.metric_value_float / t.keda_target).ceil(),
            t.keda_target
        );
    }
    let charted = plan
        .shard_types
        .iter()
        .find(|t| t.shard_type == CHARTED)
        .context("the example config plans elb-requests")?;
    let key = SeriesKey::new(APP, CHARTED, "value", SIMULATED)?;
    let demand = forecasts
        .shard_demand(pb::ShardDemandRequest {
            key: Some(key_to_pb(&key)),
            shard_capacity: charted.scale.capacity_per_shard * charted.scale.target_utilisation,
            current_shards: last_records
                .iter()
                .find(|r| r.decision.shard_type.as_str() == CHARTED)
                .map_or(1, |r| r.decision.desired),
            lookahead_steps: 0,
        })
        .await?
        .into_inner();
    println!("      shard demand of {CHARTED}: {}", demand.summary);

    drop(daemon);
    keda.stop().await?;
    server.stop().await?;
    println!("      server, scaler and daemon stopped");

    let chart = args.out.join("forecast.png");
    let f = first_forecast.context("no forecast of elb-requests to draw")?;
    draw(&chart, &f, &observed)?;
    println!(
        "      fan chart of the first round's {CHARTED} forecast: {}",
        chart.display()
    );
    Ok(Replayed { decisions, chart })
}

/// `p50 [p10, p90]` of the first step.
fn next_step(f: &pb::Forecast) -> String {
    f.steps.first().map_or_else(
        || "-".into(),
        |s| {
            format!(
                "{:.1} [{:.1}, {:.1}]",
                s.values[2], s.values[1], s.values[3]
            )
        },
    )
}

/// The decision's basis, short.
fn basis(r: &DecisionRecord) -> String {
    match &r.decision.reason.basis {
        ScaleBasis::Forecast(b) => format!(
            "forecast: p{} at {} is {:.1}, {} per shard",
            b.step_level * 100.0,
            &b.binding_step.to_string()[11..16],
            b.binding_demand,
            b.capacity_per_shard * b.target_utilisation
        ),
        ScaleBasis::Reactive(b) => format!("reactive: {}", b.cause),
    }
}

/// The fan chart: three hours observed, then the forecast's bands, median
/// and what happened.
fn draw(path: &Path, f: &pb::Forecast, observed: &BTreeMap<(String, i64), f64>) -> Result<()> {
    let value = |t: i64| observed.get(&(CHARTED.to_owned(), t)).copied();
    let times: Vec<i64> = f.steps.iter().map(|s| s.timestamp_unix_ms).collect();
    let first = times.first().copied().context("empty forecast")?;
    let history = (1..=36)
        .rev()
        .map(|k| first - k * STEP_MS)
        .filter_map(|t| value(t).map(|v| (t, v)))
        .collect();
    let mut fan = FanChart::central(
        format!("{CHARTED}: the first round's forecast against what happened"),
        "requests per 5 minutes".into(),
        times.clone(),
        |i, level| {
            let at = LEVELS
                .iter()
                .position(|&l| l == level)
                .expect("a level asked for");
            f64::from(f.steps[i].values[at])
        },
    );
    fan.history = history;
    fan.actual = Some(
        times
            .iter()
            .map(|&t| value(t).unwrap_or(f64::NAN))
            .collect(),
    );
    plot::write_png(path, 1000, 420, &[Panel::Fan(fan)])
}

//! The whole pipeline through the real binary, each step feeding the next:
//! ingest → train (tiny) → serve → plan → simulate, on loopback.

use serde_json::Value;

use super::ok;
use super::serve::Server;

#[test]
fn ingest_train_serve_plan_simulate() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let models = dir.path().join("models");
    let (store_s, models_s) = (store.to_str().unwrap(), models.to_str().unwrap());

    // Ingest: two AWS shard types.
    let out = ok(&[
        "ingest",
        "--store",
        store_s,
        "--app",
        "aws",
        "--shard-type",
        "elb-requests",
        "data/sample/nab/elb_request_count_8c0756.csv",
    ]);
    assert!(out.contains("4032"), "{out}");
    ok(&[
        "ingest",
        "--store",
        store_s,
        "--app",
        "aws",
        "--shard-type",
        "ec2-cpu",
        "data/sample/nab/ec2_cpu_utilization_825cc2.csv",
    ]);
    let series = ok(&["series", "--store", store_s]);
    assert!(series.contains("2 series"), "{series}");

    // Train a tiny model on both.
    let out = ok(&[
        "train",
        "--store",
        store_s,
        "--app",
        "aws",
        "--grid",
        "5m",
        "--horizon",
        "12",
        "--hidden",
        "16",
        "--max-steps",
        "40",
        "--seed",
        "3",
        "--models-dir",
        models_s,
    ]);
    let version = models.join("default/1");
    for f in ["config.json", "model.safetensors", "metrics.json"] {
        assert!(version.join(f).is_file(), "{f} missing; train said {out}");
    }

    // Serve it, and plan against the server.
    let server = Server::start(&[
        "serve".to_owned(),
        "--store".into(),
        store_s.into(),
        "--models-dir".into(),
        models_s.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let cfg = dir.path().join("plan.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(super::repo().join("examples/plan.toml"))
            .unwrap()
            .replace("127.0.0.1:50051", &server.addr),
    )
    .unwrap();
    let out = ok(&[
        "plan",
        "--config",
        cfg.to_str().unwrap(),
        "--iterations",
        "2",
        "--interval",
        "0.1",
        "--clock",
        "data",
    ]);
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4, "{out}");
    for r in &records {
        // The data clock reads the newest data: the ELB trace ends at 00:35,
        // the EC2 one half an hour earlier, so its forecast is too old for
        // the example's 15-minute limit and the reactive rule decides.
        if r["shard_type"] == "elb-requests" {
            assert_eq!(r["reason"]["basis"]["basis"], "forecast", "{r}");
        } else {
            assert_eq!(r["reason"]["basis"]["cause"]["cause"], "stale", "{r}");
        }
        assert_eq!(r["at"], 1_398_300_000_000_i64, "{r}");
        assert_eq!(r["forecast"]["model"], "default");
        assert_eq!(r["forecast"]["version"], 1);
        let desired = r["desired"].as_u64().unwrap();
        assert!((1..=40).contains(&desired), "{r}");
    }
    drop(server);

    // Simulate protocol P on the ELB trace with a model trained for it.
    let csv = dir.path().join("sim.csv");
    let out = ok(&[
        "simulate",
        "--store",
        store_s,
        "--series",
        "elb_request_count_8c0756",
        "--out",
        csv.to_str().unwrap(),
        "--from",
        "2014-04-23",
        "--hidden",
        "16",
        "--max-steps",
        "40",
        "--service-levels",
        "0.9,0.99",
        "--target-utilisations",
        "0.7",
    ]);
    assert!(out.contains("targets against the reactive rule"), "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let header = text.lines().next().unwrap();
    assert_eq!(
        header,
        "ts,policy,knob,demand,shards_ready,shards_requested"
    );
    for policy in [
        ",reactive,0.7,",
        ",shardcast,0.9,",
        ",shardcast,0.99,",
        ",oracle,",
    ] {
        assert!(text.contains(policy), "no {policy} rows");
    }
    assert!(csv.with_extension("png").is_file());
}

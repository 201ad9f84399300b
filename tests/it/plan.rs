//! `shardcast plan` against `shardcast serve` on loopback: decisions from
//! the real model's forecasts, KEDA's view of them, a clean stop on SIGTERM,
//! the reactive fallback once the server is gone, and bad configs refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use shardcast_proto::externalscaler::{
    GetMetricsRequest, ScaledObjectRef, external_scaler_client::ExternalScalerClient,
};

use super::repo;
use super::serve::Fixture;

fn write_config(dir: &Path, server: &str) -> String {
    let path = dir.join("plan.toml");
    std::fs::write(
        &path,
        format!(
            r#"
server = "http://{server}"
interval_secs = 0.2
timeout_ms = 5000
clock = "data"

[[shard_types]]
app = "aws"
shard_type = "ec2-cpu"
initial_shards = 1
keda_target = 10

[shard_types.scale]
service_level = 0.9
capacity_per_shard = 20.0
target_utilisation = 0.8
lead_time_secs = 600
hold_secs = 600
max_step_up = 20
"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn plan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("plan")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn records(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn the_daemon_plans_on_the_servers_forecasts_and_falls_back_without_it() {
    let f = Fixture::new();
    let server = f.serve(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &server.addr);
    let targets = dir.path().join("targets.json");

    let out = plan(&[
        "--config",
        &cfg,
        "--iterations",
        "2",
        "--targets",
        targets.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = records(&out.stdout);
    assert_eq!(lines.len(), 2, "one decision per round");
    for r in &lines {
        assert_eq!(r["shard_type"], "ec2-cpu");
        assert_eq!(r["reason"]["basis"]["basis"], "forecast", "{r}");
        assert_eq!(r["forecast"]["model"], "default");
        assert_eq!(r["forecast"]["version"], 1);
        assert_eq!(r["dry_run"], false);
        // The newest aligned series (825cc2) ends at 2014-04-24 00:05 on the
        // 5-minute grid, so the data clock reads 00:10.
        assert_eq!(r["at"], 1_398_298_200_000_i64, "{r}");
    }
    // CPU near 90 % at 16 per shard needs several shards.
    let desired = lines[1]["desired"].as_u64().unwrap();
    assert!((4..=20).contains(&desired), "{}", lines[1]);
    assert_eq!(
        lines[1]["current"], lines[0]["desired"],
        "decisions carried out"
    );
    let t: Value = serde_json::from_slice(&std::fs::read(&targets).unwrap()).unwrap();
    assert_eq!(
        t["shard_types"]["ec2-cpu"]["desired"].as_u64(),
        Some(desired)
    );

    // Running with KEDA: the scaler reports desired × keda_target, and
    // SIGTERM stops the loop cleanly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["plan", "--config", &cfg, "--keda-listen", "127.0.0.1:0"])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let keda = err
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("KEDA external scaler on ")
                .map(str::to_owned)
        })
        .expect("the KEDA address is printed");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&out.next().unwrap().unwrap()).unwrap();
    let drain = std::thread::spawn(move || out.count());
    let mut client = ExternalScalerClient::connect(format!("http://{keda}"))
        .await
        .unwrap();
    let object = ScaledObjectRef {
        name: "ec2".into(),
        namespace: "default".into(),
        scaler_metadata: [("shardType".to_owned(), "ec2-cpu".to_owned())].into(),
    };
    let value = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object.clone()),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .metric_values[0]
        .metric_value_float;
    assert_eq!(value, first["desired"].as_f64().unwrap() * 10.0);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    drain.join().unwrap();
    let rest: Vec<String> = err.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.starts_with("stopped after")),
        "{rest:?}"
    );

    // The server goes away: the daemon keeps deciding, reactively, on the
    // observed state, and says why.
    drop(server);
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"shard_types": {"ec2-cpu": {"ready": 4, "observed_demand": 80}}}"#,
    )
    .unwrap();
    let out = plan(&[
        "--config",
        &cfg,
        "--iterations",
        "2",
        "--state",
        state.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for r in records(&out.stdout) {
        assert_eq!(r["reason"]["basis"]["basis"], "reactive", "{r}");
        assert_eq!(r["reason"]["basis"]["cause"]["cause"], "unavailable", "{r}");
        assert_eq!(r["dry_run"], true);
        assert_eq!(r["state"], "file");
        // Utilisation 80 / (4 × 20) = 1.0 against 0.7: ceil(4 / 0.7) = 6.
        assert_eq!(r["desired"], 6, "{r}");
    }
}

#[test]
fn bad_configs_and_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "127.0.0.1:1");
    let out = plan(&["--config", &cfg, "--interval=-1", "--iterations", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan.toml") && err.contains("interval_secs"),
        "{err}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[shard_types]]\napp = \"aws\"\nshard_typ = \"x\"\n").unwrap();
    let out = plan(&["--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("shard_typ"),
        "{err}"
    );

    let out = plan(&["--config", "examples/plan.toml", "--iterations", "0"]);
    assert!(
        out.status.success(),
        "the example config parses: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_daemon_reaches_a_tls_server_with_its_token() {
    let f = Fixture::new();
    // Tokens come from files (or SHARDCAST_TOKEN), never the command line.
    let dir = tempfile::tempdir().unwrap();
    let (good, wrong) = (dir.path().join("good"), dir.path().join("wrong"));
    std::fs::write(&good, "s3cret\n").unwrap();
    std::fs::write(&wrong, "wrong\n").unwrap();
    let server = f.serve(&[
        "--tls-cert",
        "tests/fixtures/tls/server.pem",
        "--tls-key",
        "tests/fixtures/tls/server.key",
        "--token-file",
        good.to_str().unwrap(),
    ]);
    let cfg = write_config(dir.path(), &server.addr);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("http://", "https://");
    let tls = format!(
        "tls_ca = \"{}\"\ntls_domain = \"localhost\"\n",
        repo().join("tests/fixtures/tls/ca.pem").display()
    );
    std::fs::write(&cfg, format!("{tls}{text}")).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--config", cfg.as_str(), "--iterations", "1"];
        args.extend_from_slice(extra);
        let out = plan(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        records(&out.stdout).remove(0)
    };
    let r = run(&["--token-file", good.to_str().unwrap()]);
    assert_eq!(r["reason"]["basis"]["basis"], "forecast", "{r}");
    let r = run(&["--token-file", wrong.to_str().unwrap()]);
    let cause = &r["reason"]["basis"]["cause"];
    assert_eq!(cause["cause"], "unavailable", "{r}");
    assert!(
        cause["detail"]
            .as_str()
            .unwrap()
            .contains("Unauthenticated"),
        "{r}"
    );

    // https without a CA is refused at start, naming the setting.
    std::fs::write(&cfg, text).unwrap();
    let out = plan(&["--config", &cfg, "--iterations", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_ca"));
}

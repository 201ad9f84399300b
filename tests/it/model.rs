//! `shardcast train` and `shardcast backtest` on the bundled sample.

use std::path::Path;

use super::{ok, shardcast};

fn sample_store(dir: &Path) -> String {
    let store = dir.join("store").to_string_lossy().into_owned();
    ok(&[
        "ingest",
        "--store",
        &store,
        "data/sample/nab/*.csv",
        "--app",
        "aws",
        "--series-from",
        "file-stem",
    ]);
    store
}

/// The figure printed for `metric` in the backtest's summary table.
fn figure(stdout: &str, metric: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(metric))
        .unwrap_or_else(|| panic!("no {metric} in:\n{stdout}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn backtest_beats_seasonal_naive_and_writes_the_protocol_csv() {
    let dir = tempfile::tempdir().unwrap();
    let store = sample_store(dir.path());
    let csv = dir.path().join("out.csv");
    let model = dir.path().join("model");
    let out = ok(&[
        "backtest",
        "--store",
        &store,
        "--grid",
        "5m",
        "--horizon",
        "12",
        "--test-points",
        "288",
        "--max-steps",
        "300",
        "--out",
        csv.to_str().unwrap(),
        "--save-model",
        model.to_str().unwrap(),
    ]);
    let rel = figure(&out, "relWQL_vs_seasonal_naive_gmean");
    assert!(rel < 0.8, "relative WQL {rel}:\n{out}");
    assert_eq!(figure(&out, "quantile_crossings"), 0.0);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "series,ts,step,q0.025,q0.05,q0.1,q0.2,q0.3,q0.4,q0.5,q0.6,q0.7,q0.8,q0.9,q0.95,q0.975"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4 * 288);
    for r in &rows {
        let q: Vec<f64> = r[3..].iter().map(|v| v.parse().unwrap()).collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{r:?}");
        assert!(r[1].ends_with('Z'));
    }
    // The last held-out point of the NAB sample files.
    assert!(
        rows.iter()
            .any(|r| r[0] == "elb_request_count_8c0756" && r[2] == "12")
    );
    assert!(model.join("config.json").is_file() && model.join("model.safetensors").is_file());
}

#[test]
fn train_is_reproducible_and_refuses_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let store = sample_store(dir.path());
    let models = dir.path().join("models");
    let m = models.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--store",
            &store,
            "--models-dir",
            m,
            "--max-steps",
            "30",
            "--seed",
            "7",
        ];
        args.extend_from_slice(extra);
        shardcast(&args)
    };
    for _ in 0..2 {
        let out = train(&[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = std::fs::read(models.join("default/1/model.safetensors")).unwrap();
    let b = std::fs::read(models.join("default/2/model.safetensors")).unwrap();
    assert_eq!(a, b, "same seed and data must give the same weights");
    let config = std::fs::read_to_string(models.join("default/1/config.json")).unwrap();
    for field in [
        "\"format_version\": 1",
        "\"features\"",
        "\"series\"",
        "\"training_range\"",
    ] {
        assert!(config.contains(field), "{field} missing from config.json");
    }
    // Warm start from version 1 writes version 3.
    let v1 = models.join("default/1");
    let out = train(&["--from", v1.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(models.join("default/3/config.json").is_file());

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"model": {"hiden_size": 8}}"#).unwrap();
    let out = train(&["--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in `model`") && err.contains("`hiden_size`"),
        "{err}"
    );
    std::fs::write(&bad, r#"{"train": {"batchsize": 8}}"#).unwrap();
    let out = train(&["--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("batchsize"), "{err}");
    std::fs::write(&bad, r#"{"model": {"lags": [3]}, "train": {}}"#).unwrap();
    let out = train(&["--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("lags"), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[train]\nbatchsize = 8\n").unwrap();
    let out = train(&["--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("batchsize"), "{err}");
    std::fs::write(&bad, "[model\nhidden_size = 8\n").unwrap();
    let out = train(&["--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 1"), "{err}");
    let out = train(&["--from", dir.path().join("nope").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!models.join("default/4").exists());

    // The same settings from TOML and from flags give the same model.
    let toml = dir.path().join("small.toml");
    std::fs::write(
        &toml,
        "[model]\nhidden_size = 8\n\n[train]\nmax_steps = 30\nseed = 7\n",
    )
    .unwrap();
    for (args, version) in [
        (
            vec!["--config", toml.to_str().unwrap(), "--version", "20"],
            "20",
        ),
        (vec!["--hidden", "8", "--version", "21"], "21"),
    ] {
        let out = train(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(models.join("default").join(version).is_dir());
    }
    assert_eq!(
        std::fs::read(models.join("default/20/model.safetensors")).unwrap(),
        std::fs::read(models.join("default/21/model.safetensors")).unwrap()
    );
}

#[test]
fn retrain_publishes_only_a_candidate_that_passes_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let store = sample_store(dir.path());
    let models = dir.path().join("models");
    let m = models.to_str().unwrap();
    let common = [
        "--store",
        &store,
        "--models-dir",
        m,
        "--max-steps",
        "30",
        "--seed",
        "7",
    ];
    let run = |cmd: &str, extra: &[&str]| {
        let mut args = vec![cmd];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        shardcast(&args)
    };
    let out = run("retrain", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no version"), "{err}");
    assert!(run("train", &[]).status.success());

    // Any calibration, any score: the candidate becomes version 2.
    let lenient = [
        "--margin",
        "100",
        "--min-coverage80",
        "0",
        "--max-coverage80",
        "1",
    ];
    let out = run("retrain", &lenient);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["serving_version"], 1);
    assert_eq!(record["verdict"]["promote"], true, "{record}");
    assert_eq!(
        record["verdict"]["test_points"], 24,
        "two horizons by default"
    );
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models.join("default/2/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["retrain"], record);
    for model in ["candidate", "serving"] {
        let wql = record["verdict"][model]["rel_wql_gmean"].as_f64().unwrap();
        assert!(wql.is_finite() && wql > 0.0, "{record}");
    }

    // No coverage can pass: kept aside, version 2 keeps serving.
    let out = run(
        "retrain",
        &["--max-coverage80", "0", "--min-coverage80", "0"],
    );
    assert!(out.status.success());
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["serving_version"], 2);
    assert_eq!(record["verdict"]["promote"], false);
    let reason = record["verdict"]["reason"].as_str().unwrap();
    assert!(reason.contains("80% coverage"), "{reason}");
    assert!(!models.join("default/3").exists());
    let aside = Path::new(record["dir"].as_str().unwrap());
    assert!(
        aside.starts_with(models.join("default.candidates")),
        "{record}"
    );
    assert!(aside.join("config.json").is_file());
}

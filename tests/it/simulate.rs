//! `shardcast simulate` (protocol P) on a small synthetic trace ingested
//! into a fresh store, with a tiny model so that it runs in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{ok, shardcast};

/// 20 days of an hourly daily cycle with deterministic noise, as CSV.
fn synthetic_csv(dir: &Path) -> std::path::PathBuf {
    let mut text = String::from("timestamp,value\n");
    let mut seed: u64 = 12345;
    for h in 0..480i64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = (seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5;
        let day = (h % 24) as f64 / 24.0 * std::f64::consts::TAU;
        let v = 100.0 + 40.0 * day.sin() + 10.0 * noise;
        // 2017-03-01T00:00:00Z plus h hours.
        let ts = 1_488_326_400 + h * 3600;
        text.push_str(&format!("{ts},{v:.3}\n"));
    }
    let path = dir.join("load.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn store_with_trace(dir: &Path) -> String {
    let store = dir.join("store").to_string_lossy().into_owned();
    let csv = synthetic_csv(dir);
    ok(&[
        "ingest",
        "--store",
        &store,
        csv.to_str().unwrap(),
        "--app",
        "synth",
        "--shard-type",
        "web",
    ]);
    store
}

/// Quick settings: a tiny model, a short sweep.
const QUICK: &[&str] = &[
    "--max-steps",
    "20",
    "--hidden",
    "8",
    "--service-levels",
    "0.5,0.9,0.99",
    "--target-utilisations",
    "0.6,0.7",
];

fn simulate(store: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "simulate",
        "--store",
        store,
        "--series",
        "load",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(QUICK);
    args.extend_from_slice(extra);
    ok(&args)
}

struct Row {
    ts: String,
    policy: String,
    knob: String,
    demand: f64,
    ready: u32,
    requested: u32,
}

fn read_csv(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "ts,policy,knob,demand,shards_ready,shards_requested"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            Row {
                ts: f[0].to_owned(),
                policy: f[1].to_owned(),
                knob: f[2].to_owned(),
                demand: f[3].parse().unwrap(),
                ready: f[4].parse().unwrap(),
                requested: f[5].parse().unwrap(),
            }
        })
        .collect()
}

#[test]
fn simulate_writes_the_records_summary_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_trace(dir.path());
    let out = dir.path().join("sim").join("load.csv");
    let model = dir.path().join("model");
    let stdout = simulate(&store, &out, &["--save-model", model.to_str().unwrap()]);

    let rows = read_csv(&out);
    // The default range is the last 7 days: 168 hourly steps, for the
    // oracle, two reactive and three shardcast runs.
    assert_eq!(rows.len(), 168 * 6);
    let runs: BTreeMap<(String, String), Vec<&Row>> =
        rows.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry((r.policy.clone(), r.knob.clone()))
                .or_insert_with(Vec::new)
                .push(r);
            m
        });
    let keys: BTreeSet<(&str, &str)> = runs.keys().map(|(p, k)| (p.as_str(), k.as_str())).collect();
    let want: BTreeSet<(&str, &str)> = [
        ("oracle", ""),
        ("reactive", "0.6"),
        ("reactive", "0.7"),
        ("shardcast", "0.5"),
        ("shardcast", "0.9"),
        ("shardcast", "0.99"),
    ]
    .into();
    assert_eq!(keys, want);
    let oracle = &runs[&("oracle".to_owned(), String::new())];
    assert_eq!(oracle[0].ts, "2017-03-14T00:00:00Z");
    // The oracle never falls short; the range's peak needs exactly 20 shards.
    assert!(oracle.iter().all(|r| f64::from(r.ready) >= r.demand - 1e-6));
    let peak = oracle.iter().map(|r| r.demand).fold(0.0, f64::max);
    assert!((peak - 20.0).abs() < 1e-6, "peak {peak}");
    for r in &rows {
        assert!(r.requested >= r.ready && r.ready >= 1, "{}", r.ts);
    }
    // Every run replays the same demand.
    for run in runs.values() {
        let d: Vec<f64> = run.iter().map(|r| r.demand).collect();
        let o: Vec<f64> = oracle.iter().map(|r| r.demand).collect();
        assert_eq!(d, o);
    }

    // The summary: a line per run, the oracle's figures, the targets.
    assert!(stdout.contains("under-prov%") && stdout.contains("vs oracle"));
    // The rows that do not depend on the trained model are pinned whole:
    // the header, the oracle's and the reactive rule's.
    let model_free: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            ["policy", "oracle", "reactive"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    insta::assert_snapshot!("simulate_summary_model_free", model_free.join("\n"));
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("shardcast"))
            .count(),
        3
    );
    assert!(
        stdout.contains("targets against the reactive rule at target utilisation 0.7"),
        "{stdout}"
    );

    let png = std::fs::read(out.with_extension("png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1600, 3 * 460));

    // The saved model gives the same run again, without training.
    let again = dir.path().join("again.csv");
    let stdout2 = simulate(
        &store,
        &again,
        &["--model", model.to_str().unwrap(), "--no-png"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    assert!(!again.with_extension("png").exists());
    let table = |s: &str| s.lines().take(7).collect::<Vec<_>>().join("\n");
    assert_eq!(table(&stdout), table(&stdout2));

    // That model has seen 2017-03-13; a range starting earlier is refused.
    let err = fails_with(&[
        "simulate",
        "--store",
        &store,
        "--series",
        "load",
        "--out",
        dir.path().join("x.csv").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--from",
        "2017-03-12",
    ]);
    assert!(
        err.contains("was trained on") && err.contains("2017-03-13"),
        "{err}"
    );
}

fn fails_with(args: &[&str]) -> String {
    let out = shardcast(args);
    assert!(!out.status.success(), "shardcast {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn simulate_refuses_bad_input_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_trace(dir.path());
    let out = dir.path().join("out.csv");
    let out = out.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["simulate", "--store", &store, "--out", out];
        args.extend_from_slice(extra);
        fails_with(&args)
    };
    let err = run(&["--series", "nope"]);
    assert!(
        err.contains("no series `nope`") && err.contains("load"),
        "{err}"
    );
    let err = run(&["--series", "load", "--from", "2030-01-01"]);
    assert!(err.contains("holds no point"), "{err}");
    let err = run(&[
        "--series",
        "load",
        "--from",
        "2017-03-10",
        "--to",
        "2017-03-10",
    ]);
    assert!(err.contains("holds no point"), "{err}");
    let err = run(&["--series", "load", "--service-levels", "0.9,1.5"]);
    assert!(
        err.contains("--service-levels") && err.contains("1.5"),
        "{err}"
    );
    let err = run(&["--series", "load", "--target-utilisations", "0"]);
    assert!(err.contains("--target-utilisations"), "{err}");
    let err = run(&["--series", "load", "--lead", "10x"]);
    assert!(err.contains("duration \"10x\" is invalid"), "{err}");
    let err = run(&["--series", "load", "--from", "yesterday"]);
    assert!(err.contains("not a time"), "{err}");
    let err = run(&["--series", "load", "--from", "2017-03-03"]);
    assert!(err.contains("too few to train on"), "{err}");
    let cfg = dir.path().join("sim.json");
    std::fs::write(&cfg, r#"{"shardcast": {"servce_level": 0.9}}"#).unwrap();
    let err = run(&["--series", "load", "--sim-config", cfg.to_str().unwrap()]);
    assert!(err.contains("servce_level"), "{err}");
    std::fs::write(&cfg, r#"{"lead_steps": 3}"#).unwrap();
    let err = run(&["--series", "load", "--sim-config", cfg.to_str().unwrap()]);
    assert!(err.contains("`lead_steps` is not a setting"), "{err}");
    assert!(!Path::new(out).exists());

    // The same id under a second app is ambiguous until --app picks one.
    ok(&[
        "ingest",
        "--store",
        &store,
        dir.path().join("load.csv").to_str().unwrap(),
        "--app",
        "other",
    ]);
    let err = run(&["--series", "load"]);
    assert!(
        err.contains("2 series are named `load`") && err.contains("--app"),
        "{err}"
    );
    // With --app the series is found, and the range is checked next.
    let err = run(&["--series", "load", "--app", "synth", "--from", "2030-01-01"]);
    assert!(err.contains("holds no point"), "{err}");
}

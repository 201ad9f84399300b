//! The binary's subcommands on real files and sockets-free stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::{ok, repo, shardcast};

fn fails(args: &[&str]) -> String {
    let out = shardcast(args);
    assert!(!out.status.success(), "shardcast {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn ingest_query_series_compact() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let out = ok(&[
        "ingest",
        "--store",
        store,
        "--app",
        "aws",
        "--shard-type",
        "ec2",
        "data/sample/nab/*.csv",
    ]);
    assert!(out.contains("ingested 16128 rows from 4 files"), "{out}");
    let out = ok(&[
        "ingest",
        "--store",
        store,
        "--app",
        "azure",
        "--value-col",
        "min cpu,avg cpu,max cpu",
        "data/sample/azure/azure.csv",
    ]);
    assert!(out.contains("ingested 25920 rows"), "{out}");
    let out = ok(&["series", "--store", store]);
    assert!(
        out.contains("avg_cpu")
            && out.contains("elb_request_count_8c0756")
            && out.contains("7 series"),
        "{out}"
    );
    let out = ok(&[
        "query",
        "--store",
        store,
        "--format",
        "csv",
        "SELECT series, count(*) AS n FROM metrics WHERE app = 'azure' GROUP BY series ORDER BY series",
    ]);
    assert_eq!(out, "series,n\navg_cpu,8640\nmax_cpu,8640\nmin_cpu,8640\n");
    let out = ok(&[
        "query",
        "--store",
        store,
        "--format",
        "json",
        "SELECT count(*) AS n FROM metrics",
    ]);
    assert_eq!(out.trim(), "{\"n\":42048}");
    // Re-ingest: same row count, rows replaced, then compaction.
    let out = ok(&[
        "ingest",
        "--store",
        store,
        "--app",
        "aws",
        "--shard-type",
        "ec2",
        "data/sample/nab/*.csv",
    ]);
    assert!(out.contains("16128 stored rows replaced"), "{out}");
    ok(&["compact", "--store", store]);
    let out = ok(&[
        "query",
        "--store",
        store,
        "--format",
        "csv",
        "SELECT count(*) AS n FROM metrics",
    ]);
    assert_eq!(out, "n\n42048\n");
    let out = super::ingest_events(store);
    assert!(out.contains("ingested 8 rows"), "{out}");
    let out = ok(&[
        "query",
        "--store",
        store,
        "--format",
        "csv",
        "SELECT name FROM events WHERE kind = 'weather'",
    ]);
    assert_eq!(out, "name\nBlizzard (travel ban)\n");
    let err = fails(&["query", "--store", store, "SELECT nope FROM metrics"]);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn malformed_input_leaves_the_store_byte_for_byte_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = store_dir.to_str().unwrap();
    ok(&[
        "ingest",
        "--store",
        store,
        "data/sample/nab/ec2_cpu_utilization_5f5533.csv",
    ]);
    let before = tree(&store_dir);
    let good = "timestamp,value\n2014-02-14 14:30:00,1\n";
    let mut long = String::from("timestamp,value\n2014-02-14 14:30:00,");
    long.push_str(&"1".repeat(10 << 20));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad_ts.csv",
            b"timestamp,value\n2014-02-14 14:30:00,1\nnot-a-time,2\n".to_vec(),
            "bad_ts.csv:3: field \"timestamp\"",
        ),
        (
            "nonnum.csv",
            b"timestamp,value\n2014-02-14 14:30:00,abc\n".to_vec(),
            "nonnum.csv:2: field \"value\"",
        ),
        (
            "nan.csv",
            b"timestamp,value\n2014-02-14 14:30:00,NaN\n".to_vec(),
            "not finite",
        ),
        (
            "missing.csv",
            b"time,value\n2014-02-14 14:30:00,1\n".to_vec(),
            "column \"timestamp\"",
        ),
        (
            "count.csv",
            b"timestamp,value\n2014-02-14 14:30:00,1,2\n".to_vec(),
            "count.csv:2",
        ),
        ("empty.csv", Vec::new(), "empty"),
        (
            "long.csv",
            long.into_bytes(),
            "long.csv:2: field \"<line>\" is",
        ),
        (
            "utf8.csv",
            b"timestamp,value\n2014-02-14 14:30:00,\xff\xfe\n".to_vec(),
            "UTF-8",
        ),
        ("dup.csv", b"timestamp,value,value\n".to_vec(), "twice"),
    ];
    for (name, bytes, expect) in cases {
        let good_path = dir.path().join("good.csv");
        std::fs::write(&good_path, good).unwrap();
        let bad_path = dir.path().join(name);
        std::fs::write(&bad_path, bytes).unwrap();
        // The good file comes first: the whole batch must still fail.
        let err = fails(&[
            "ingest",
            "--store",
            store,
            good_path.to_str().unwrap(),
            bad_path.to_str().unwrap(),
        ]);
        assert!(err.contains(expect), "{name}: {err}");
        assert!(tree(&store_dir) == before, "{name}: the store changed");
    }
    // --skip-invalid keeps the good rows and says where the bad ones were.
    let bad_path = dir.path().join("mixed.csv");
    std::fs::write(
        &bad_path,
        "timestamp,value\n2014-02-14 14:30:00,1\nx,2\n2014-02-14 14:40:00,y\n",
    )
    .unwrap();
    let out = ok(&[
        "ingest",
        "--store",
        store,
        "--skip-invalid",
        bad_path.to_str().unwrap(),
    ]);
    assert!(
        out.contains("skipped 2 invalid rows")
            && out.contains("mixed.csv:3")
            && out.contains("mixed.csv:4"),
        "{out}"
    );
    assert!(out.contains("ingested 1 rows"), "{out}");
}

#[test]
fn killed_ingest_leaves_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A batch big enough to be killed mid-write: 40 days of 30 series.
    let csv = dir.path().join("big.csv");
    let mut text = String::from("timestamp,series,value\n");
    for minute in 0..40 * 1440 / 5 {
        for s in 0..30 {
            text.push_str(&format!(
                "{},s{s},{}\n",
                1_600_000_000 + minute * 300,
                minute + s
            ));
        }
    }
    std::fs::write(&csv, text).unwrap();
    let total = 40 * 1440 / 5 * 30;
    let count = |store: &str| -> i64 {
        let out = ok(&[
            "query",
            "--store",
            store,
            "--format",
            "csv",
            "SELECT count(*) AS n FROM metrics",
        ]);
        out.lines().nth(1).unwrap().parse().unwrap()
    };
    let files = |root: &Path| -> std::collections::BTreeSet<std::path::PathBuf> {
        let mut out = std::collections::BTreeSet::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.insert(p);
                }
            }
        }
        out
    };
    let ingest_batch = |store: &str| {
        Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args([
                "ingest",
                "--store",
                store,
                "--series-col",
                "series",
                csv.to_str().unwrap(),
            ])
            .current_dir(repo())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The batch's ingest is killed as soon as its first file (staging or
    // data) is on disk, in the middle of writing: none of the batch may be
    // visible. Should the whole batch have been published before the kill
    // landed, the attempt tells nothing and is made again on a new store.
    let mut killed = None;
    for attempt in 0..5 {
        let store_dir = dir.path().join(format!("store{attempt}"));
        let store = store_dir.to_str().unwrap().to_owned();
        ok(&[
            "ingest",
            "--store",
            &store,
            "data/sample/nab/ec2_cpu_utilization_5f5533.csv",
        ]);
        let base = count(&store);
        let before = files(&store_dir);
        let mut child = ingest_batch(&store);
        let wrote = loop {
            if files(&store_dir).difference(&before).next().is_some() {
                break true;
            }
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let _ = child.kill();
        let _ = child.wait();
        let n = count(&store);
        assert!(
            n == base || n == base + total,
            "after a kill mid-write: {n} rows, {base} before and {total} in the batch"
        );
        if n == base {
            assert!(
                wrote,
                "the ingest ended without a file and without its rows"
            );
            killed = Some((store_dir, base));
            break;
        }
    }
    let (store_dir, base) = killed.expect("no kill landed while the batch was being written");
    let store = store_dir.to_str().unwrap();
    let count = || count(store);
    // Run again to completion, it stores the whole batch once, whatever
    // the killed run left behind.
    ok(&[
        "ingest",
        "--store",
        store,
        "--series-col",
        "series",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(count(), base + total);
    // Leftovers of killed writes are unreferenced and young: a compaction
    // with the default grace keeps them (they could be a running writer's),
    // one with no grace removes them all, staging files and empty
    // directories included.
    ok(&["compact", "--store", store]);
    assert_eq!(count(), base + total);
    ok(&["compact", "--store", store, "--grace", "0"]);
    assert_eq!(count(), base + total);
    let newest = std::fs::read_dir(store_dir.join("_manifest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    let mut live: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    live.sort();
    let mut on_disk: Vec<String> = tree(&store_dir.join("metrics"))
        .into_keys()
        .map(|p| {
            p.strip_prefix(&format!("{}/", store_dir.display()))
                .unwrap()
                .to_string()
        })
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, live, "only live data files stay");
    let mut dirs = vec![store_dir.join("metrics")];
    while let Some(d) = dirs.pop() {
        let entries: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert!(!entries.is_empty(), "empty directory {} stays", d.display());
        dirs.extend(entries.iter().map(|e| e.path()).filter(|p| p.is_dir()));
    }
}

#[test]
fn concurrent_ingest_processes_all_commit() {
    // Before data files had writer-unique names, the loser of two racing
    // ingests overwrote the winner's files and was then told to retry: the
    // store held one writer's rows, or a mix.
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = store_dir.to_str().unwrap();
    let file = "data/sample/nab/ec2_cpu_utilization_5f5533.csv";
    ok(&[
        "ingest",
        "--store",
        store,
        "--app",
        "seed",
        "--shard-type",
        "x",
        "data/sample/nab/rds_cpu_utilization_cc0c53.csv",
    ]);
    for round in 0..3 {
        let handles: Vec<_> = ["A", "B", "C", "D", "E", "F"]
            .iter()
            .map(|series| {
                Command::new(env!("CARGO_BIN_EXE_shardcast"))
                    .args([
                        "ingest",
                        "--store",
                        store,
                        "--app",
                        "aws",
                        "--shard-type",
                        "x",
                        "--series",
                        series,
                        file,
                    ])
                    .current_dir(repo())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for h in handles {
            let out = h.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = ok(&[
            "query",
            "--store",
            store,
            "--format",
            "csv",
            "SELECT series, count(*) AS n FROM metrics GROUP BY series ORDER BY series",
        ]);
        assert_eq!(
            out,
            "series,n\nA,4032\nB,4032\nC,4032\nD,4032\nE,4032\nF,4032\nrds_cpu_utilization_cc0c53,4032\n",
            "round {round}"
        );
    }
}

#[test]
fn timestamps_outside_years_1_to_9999_are_refused_on_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    for (format, ts) in [
        ("auto", "9223372036854775807"),
        ("unix-s", "9223372036854775"),
        ("auto", "-9223372036854775808"),
        ("auto", "1e18"),
    ] {
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, format!("timestamp,value\n{ts},1\n")).unwrap();
        let out = shardcast(&[
            "ingest",
            "--store",
            store,
            "--app",
            "t",
            "--shard-type",
            "x",
            "--timestamp-format",
            format,
            csv.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format} {ts}: {err}");
        assert!(
            err.contains("t.csv:2") && err.contains("outside years 1 to 9999"),
            "{err}"
        );
    }
    assert!(
        !dir.path().join("store/_manifest").exists() || {
            let out = ok(&[
                "query",
                "--store",
                store,
                "--format",
                "csv",
                "SELECT count(*) AS n FROM metrics",
            ]);
            out == "n\n0\n"
        }
    );
}

#[test]
fn demo_runs_on_the_bundled_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&["demo", "--out", dir.path().to_str().unwrap()]);
    for want in [
        "[1/7]",
        "[4/7] model: the bundled",
        "gRPC server on 127.0.0.1:",
        "KEDA external scaler on 127.0.0.1:",
        "replayed 2 point(s) of the bin at 2014-04-23T23:30:00Z",
        "KEDA asks",
        "shard demand of elb-requests:",
        "server, scaler and daemon stopped",
        "[7/7]",
        "nyc_taxi",
        "avg_cpu",
        "outputs in",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Six rounds of two shard types, all planned on the server's forecasts,
    // each round on the data the previous one replayed.
    let text = std::fs::read_to_string(dir.path().join("decisions.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 12, "{text}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["reason"]["basis"]["basis"], "forecast", "{r}");
        assert_eq!(r["forecast"]["version"], 1);
        let round = (i / 2) as i64;
        assert_eq!(r["at"], 1_398_295_800_000_i64 + round * 300_000, "{r}");
    }
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("targets.json")).unwrap()).unwrap();
    assert_eq!(
        targets["shard_types"]["elb-requests"]["desired"],
        records[10]["desired"]
    );
    for png in ["forecast.png", "simulate.png"] {
        let bytes = std::fs::read(dir.path().join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }
    let csv = std::fs::read_to_string(dir.path().join("simulate.csv")).unwrap();
    for policy in [",reactive,", ",shardcast,", ",oracle,"] {
        assert!(csv.contains(policy), "no {policy} rows");
    }
}

#[test]
fn demo_trains_a_model_when_none_is_bundled() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-models");
    std::fs::create_dir(&empty).unwrap();
    let out_dir = dir.path().join("out");
    let out = ok(&[
        "demo",
        "--out",
        out_dir.to_str().unwrap(),
        "--models",
        empty.to_str().unwrap(),
    ]);
    assert!(out.contains("training a small one"), "{out}");
    assert!(out_dir.join("models/default/1/model.safetensors").is_file());
    assert!(out.contains("serving model default v1 from"), "{out}");
    assert!(out.contains("server, scaler and daemon stopped"), "{out}");
}

#[test]
fn bad_flags_and_patterns() {
    let err = fails(&["ingest", "--store", "/tmp/x", "no/such/*.csv"]);
    assert!(err.contains("no input file matches"), "{err}");
    let err = fails(&["ingest", "--store", "/tmp/x", "data/sample/nab"]);
    assert!(
        err.contains("data/sample/nab is a directory") && err.contains("data/sample/nab/*.csv"),
        "{err}"
    );
    let err = fails(&["compact", "--store", "/tmp/x", "--grace=-1h"]);
    assert!(err.contains("--grace"), "{err}");
    let err = fails(&["compact", "--store", "/tmp/x", "--grace", "soon"]);
    assert!(err.contains("--grace") && err.contains("soon"), "{err}");
    let err = fails(&["ingest", "--app", "a", "--app-col", "b", "x.csv"]);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn tokens_come_from_a_file_or_the_environment_never_a_flag() {
    let plan_config = repo().join("examples/plan.toml");
    let plan_config = plan_config.to_str().unwrap();
    for args in [
        vec!["serve", "--store", "/tmp/x", "--token", "s3cret"],
        vec!["plan", "--config", plan_config, "--token", "s3cret"],
    ] {
        let err = fails(&args);
        assert!(
            err.contains("--token is not accepted")
                && err.contains("process list")
                && err.contains("SHARDCAST_TOKEN"),
            "{args:?}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap();
    let err = fails(&["plan", "--config", plan_config, "--token-file", empty]);
    assert!(err.contains("empty token") && err.contains(empty), "{err}");

    let help = |cmd: &str| ok(&[cmd, "--help"]);
    let serve = help("serve");
    for want in [
        "--token-file",
        "SHARDCAST_TOKEN",
        "process list",
        "--max-streams",
        "--max-stream-keys",
        "--store-reads",
    ] {
        assert!(serve.contains(want), "serve --help lacks {want}:\n{serve}");
    }
    assert!(!serve.contains("--token <"), "--token is hidden:\n{serve}");
    let plan = help("plan");
    for want in ["--token-file", "SHARDCAST_TOKEN", "process list"] {
        assert!(plan.contains(want), "plan --help lacks {want}:\n{plan}");
    }
}

#[test]
fn serve_refuses_bad_settings_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "app = { label = \"job\" }\n").unwrap();
    let store = dir.path().join("store");
    let (store, bad) = (store.to_str().unwrap(), bad.to_str().unwrap());
    let serve = ["serve", "--store", store, "--listen", "127.0.0.1:0"];
    fn joined<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    let err = fails(&joined(
        &serve,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--remote-write-rules",
            bad,
        ],
    ));
    assert!(
        err.contains("bad.toml") && err.contains("shard_type"),
        "{err}"
    );
    let err = fails(&joined(&serve, &["--remote-write-rules", bad]));
    assert!(err.contains("--metrics-listen"), "{err}");
    let err = fails(&joined(&serve, &["--store-reads", "0"]));
    assert!(err.contains("--store-reads"), "{err}");
    let err = fails(&joined(&serve, &["--max-wait-us", "soon"]));
    assert!(err.contains("--max-wait-us"), "{err}");
}

//! shardcast against a real Prometheus (Debian's `prometheus` package,
//! which `.ci/run` installs): `shardcast pull` over `query_range` on
//! backfilled history (promtool), following the live self-scrape, and the
//! server receiving Prometheus' own remote-write. Outside CI the tests
//! skip with a printed reason when Prometheus is not installed; with
//! `CI=true` they fail instead.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shardcast_core::Timestamp;

use super::{ok, repo, shardcast};

/// The step of the backfilled history.
const STEP_S: i64 = 300;
/// Backfilled points per series.
const POINTS: i64 = 288;

/// `name` on the PATH, or `None` after printing why `what` is skipped;
/// with `CI=true` a missing engine fails the test.
pub(crate) fn engine(name: &str, what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but `{name}` is not installed (.ci/run installs it)"
        );
        eprintln!("skipped {what}: `{name}` is not installed (apt-get install -y {name})");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus on a free loopback port with a generated config, killed
/// by PID on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on the TSDB in `data`, scraping itself every
    /// second, with `extra` appended to its config; waits until it is
    /// ready.
    fn start(bin: &Path, dir: &Path, data: &Path, extra: &str) -> Self {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: prometheus\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{port}']\n{extra}"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !get(port, "/-/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            assert!(
                Instant::now() < deadline,
                "Prometheus did not get ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One GET over a fresh connection: the whole reply, or `None` when the
/// port does not answer.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// The backfilled value of series `instance` at step `k` (`None`: NaN).
fn value(instance: &str, k: i64) -> Option<f64> {
    if instance == "b" && k == 10 {
        return None;
    }
    let v = 100.0 + 10.0 * (k as f64 / 12.0).sin() + if instance == "b" { 5.0 } else { 0.0 };
    Some((v * 1000.0).round() / 1000.0)
}

/// Two series of `demand` (instances a and b, one NaN in b) every 5
/// minutes for a day from `t0` (seconds), as TSDB blocks in `data`.
fn backfill(dir: &Path, data: &Path, t0: i64) {
    let mut om = String::from("# HELP demand Requests per second.\n# TYPE demand gauge\n");
    for inst in ["a", "b"] {
        for k in 0..POINTS {
            let v = value(inst, k).map_or("NaN".to_owned(), |v| format!("{v:.3}"));
            om.push_str(&format!(
                "demand{{job=\"web\",tier=\"api\",instance=\"{inst}\"}} {v} {}\n",
                t0 + k * STEP_S
            ));
        }
    }
    om.push_str("# EOF\n");
    let input = dir.join("backfill.om");
    std::fs::write(&input, om).unwrap();
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
        .arg(&input)
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn iso(seconds: i64) -> String {
    Timestamp(seconds * 1000).to_string()
}

/// `key,n,total` of every stored series, in key order.
fn stored(store: &str) -> String {
    ok(&[
        "query",
        "--store",
        store,
        "--format",
        "csv",
        "SELECT CAST(app AS VARCHAR) || '/' || CAST(shard_type AS VARCHAR) || '/' || \
         CAST(metric AS VARCHAR) || '/' || CAST(series AS VARCHAR) AS key, count(*) AS n, \
         round(sum(value), 3) AS total FROM metrics GROUP BY 1 ORDER BY 1",
    ])
}

#[test]
fn pull_pages_history_in_and_a_second_pull_changes_nothing() {
    let Some(bin) = engine("prometheus", "the Prometheus pull test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tsdb");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Two days back, on the step: well inside the default retention.
    let t0 = (now - 2 * 86_400).div_euclid(STEP_S) * STEP_S;
    backfill(dir.path(), &data, t0);
    let prom = Prometheus::start(&bin, dir.path(), &data, "");
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let (start, end) = (iso(t0), iso(t0 + (POINTS - 1) * STEP_S));
    let url = prom.url();
    let pull = |query: &str, url: &str, extra: &[&str]| {
        let mut args = vec![
            "pull",
            "--store",
            store,
            "--prometheus",
            url,
            "--query",
            query,
            "--start",
            &start,
            "--end",
            &end,
            "--step",
            "5m",
            "--app-label",
            "job",
            "--shard-type-label",
            "tier",
            "--max-points",
            "100",
        ];
        args.extend_from_slice(extra);
        shardcast(&args)
    };
    let out = pull("demand", &url, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 288 steps in pages of at most 100: three pages, one store batch each.
    assert_eq!(stdout.matches(" points stored, ").count(), 3, "{stdout}");
    assert!(
        stdout.contains(
            "pulled 3 pages: 2 series, 575 points stored (0 replaced); skipped 1 NaN/Inf"
        ),
        "{stdout}"
    );
    let first = stored(store);
    let mut want = String::from("key,n,total\n");
    for inst in ["a", "b"] {
        let values: Vec<f64> = (0..POINTS).filter_map(|k| value(inst, k)).collect();
        let total = (values.iter().sum::<f64>() * 1000.0).round() / 1000.0;
        want.push_str(&format!(
            "web/api/demand/instance={inst},{},{total}\n",
            values.len()
        ));
    }
    assert_eq!(first, want);

    // The same range again: every point replaces itself.
    let out = pull("demand", &url, &[]);
    let again = String::from_utf8_lossy(&out.stdout);
    assert!(
        again.contains("575 points stored (575 replaced)"),
        "{again}"
    );
    assert_eq!(stored(store), first);

    // Bad PromQL: Prometheus' reason, naming the query; nothing stored.
    let out = pull("sum((demand", &url, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`sum((demand`") && err.contains("bad_data"),
        "{err}"
    );
    // Prometheus down: retried with backoff, then a clear failure.
    let down = format!("http://127.0.0.1:{}", free_port());
    let out = pull("demand", &down, &["--retries", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("retry 1 in 0.5s") && err.contains("retry 2 in 1.0s"),
        "{err}"
    );
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(
        stored(store),
        first,
        "a failed pull leaves the store as it was"
    );
    // No key mapping for the shard type: refused before asking anything.
    let out = shardcast(&[
        "pull",
        "--store",
        store,
        "--prometheus",
        &url,
        "--query",
        "demand",
        "--since",
        "1h",
        "--app",
        "web",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shard-type"), "{err}");
}

/// Lines of a child's stdout, read on a thread.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; panics with what came instead.
fn expect_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {what:?}; saw {seen:#?}");
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    child.wait().unwrap()
}

#[test]
fn follow_keeps_pulling_and_resumes_after_a_restart() {
    let Some(bin) = engine("prometheus", "the Prometheus follow test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&bin, dir.path(), &dir.path().join("tsdb"), "");
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let url = prom.url();
    let follow = || {
        Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args([
                "pull",
                "--store",
                store,
                "--prometheus",
                &url,
                "--query",
                "up",
                "--since",
                "10s",
                "--step",
                "1s",
                "--delay",
                "1s",
                "--follow",
                "--app",
                "prom",
                "--shard-type-label",
                "job",
            ])
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut child = follow();
    let rx = lines(&mut child);
    // Pages as the steps pass, once the first scrape has made `up`.
    expect_line(&rx, ": 1 series, ");
    expect_line(&rx, ": 1 series, ");
    assert!(stop(child).success(), "SIGTERM ends a follow cleanly");
    let before = stored(store);
    assert!(
        before.contains("prom/prometheus/up/instance=127.0.0.1:"),
        "{before}"
    );

    let mut child = follow();
    let rx = lines(&mut child);
    let resumed = expect_line(&rx, "resuming after the stored points");
    expect_line(&rx, ": 1 series, ");
    expect_line(&rx, ": 1 series, ");
    assert!(stop(child).success());
    // Resumed after the newest stored point, not from --since again.
    let last: i64 = before
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let after = stored(store);
    let n: i64 = after
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(n > last, "{before}\n{after}\n{resumed}");
}

#[test]
fn prometheus_remote_writes_into_the_server() {
    let Some(bin) = engine("prometheus", "the remote-write test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    // A model to serve: the bundled one.
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "app = { value = \"prom\" }\nshard_type = { label = \"job\" }\n\
         metrics = [\"up\", \"prometheus_tsdb_head_series\"]\n",
    )
    .unwrap();
    let metrics_port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--store", store, "--listen", "127.0.0.1:0"])
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--remote-write-rules")
        .arg(&rules)
        .args(["--models-dir", "models", "--store-poll-ms", "100"])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = lines(&mut server);
    expect_line(&rx, "metrics on http://");
    let _prom = Prometheus::start(
        &bin,
        dir.path(),
        &dir.path().join("tsdb"),
        &format!(
            "remote_write:\n  - url: http://127.0.0.1:{metrics_port}/api/v1/write\n    \
             queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n"
        ),
    );
    // Wait for Prometheus' samples to be stored, from the server's own
    // counters.
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored_samples = loop {
        let page = get(metrics_port, "/metrics").unwrap_or_default();
        let n: f64 = page
            .lines()
            .find(|l| l.starts_with("shardcast_remote_write_samples_total{outcome=\"stored\"}"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let unmatched = page.contains("outcome=\"unmatched\"");
        if n >= 4.0 && unmatched {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no remote write arrived:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stored_samples >= 4.0);
    assert!(
        get(metrics_port, "/metrics")
            .unwrap()
            .contains("shardcast_remote_write_requests_total{code=\"204\"}"),
    );
    assert!(stop(server).success());
    let rows = stored(store);
    assert!(
        rows.contains("prom/prometheus/up/instance=127.0.0.1:"),
        "{rows}"
    );
    assert!(
        rows.contains("prom/prometheus/prometheus_tsdb_head_series/instance=127.0.0.1:"),
        "{rows}"
    );
    // Only the listed metric names: nothing else of the scrape.
    assert_eq!(rows.lines().count(), 3, "{rows}");
}

/// An exporter of two `demand` series whose value follows a wave of one
/// minute (a day compressed), on a free port; it serves until the test
/// process ends.
fn exporter() -> u16 {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let wave = (t / 60.0 * std::f64::consts::TAU).sin();
            let body = format!(
                "# TYPE demand gauge\ndemand{{tier=\"api\",shard=\"s1\"}} {:.3}\n\
                 demand{{tier=\"api\",shard=\"s2\"}} {:.3}\n",
                100.0 + 40.0 * wave,
                60.0 - 20.0 * wave
            );
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Eight days of the exporter's two series every 5 minutes, as Prometheus
/// would have scraped them (`job`, `instance`), ending `end` (seconds).
fn backfill_history(dir: &Path, data: &Path, exporter: u16, end: i64) {
    let mut om = String::from("# HELP demand Demand.\n# TYPE demand gauge\n");
    let first = end - 8 * 86_400;
    for (shard, level) in [("s1", 100.0), ("s2", 60.0)] {
        let mut t = first.div_euclid(STEP_S) * STEP_S;
        while t < end {
            let day = (t as f64 / 86_400.0 * std::f64::consts::TAU).sin();
            om.push_str(&format!(
                "demand{{instance=\"127.0.0.1:{exporter}\",job=\"exporter\",shard=\"{shard}\",tier=\"api\"}} {:.3} {t}\n",
                level * (1.0 + 0.4 * day)
            ));
            t += STEP_S;
        }
    }
    om.push_str("# EOF\n");
    let input = dir.join("history.om");
    std::fs::write(&input, om).unwrap();
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
        .arg(&input)
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus API query's `data.result`, parsed.
fn api(port: u16, path: &str) -> Vec<serde_json::Value> {
    let reply = get(port, path).unwrap_or_default();
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    // Chunked answers: the JSON object is the line that starts with `{`.
    let json = body
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {reply}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls the Prometheus API until `query` has a result.
fn wait_for_series(port: u16, query: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = api(port, &format!("/api/v1/query?query={}", encode(query)));
        if !r.is_empty() {
            return r;
        }
        assert!(Instant::now() < deadline, "Prometheus never had {query}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `(ms, value)` pairs of a matrix series.
fn samples(series: &serde_json::Value) -> Vec<(i64, f64)> {
    series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let t = p[0].as_f64().unwrap();
            let v: f64 = p[1].as_str().unwrap().parse().unwrap();
            ((t * 1000.0).round() as i64, v)
        })
        .collect()
}

/// Stored `(ms, value)` of one series from `from_ms` on.
fn stored_points(store: &str, series: &str, from_ms: i64) -> Vec<(i64, f64)> {
    let csv = ok(&[
        "query",
        "--store",
        store,
        "--format",
        "csv",
        &format!(
            "SELECT CAST(ts AS BIGINT) AS ms, value FROM metrics \
             WHERE CAST(series AS VARCHAR) = '{series}' AND CAST(ts AS BIGINT) >= {from_ms} ORDER BY ms"
        ),
    ]);
    csv.lines()
        .skip(1)
        .map(|l| {
            let (t, v) = l.split_once(',').unwrap();
            (t.parse().unwrap(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn the_live_loop_runs_on_a_real_prometheus() {
    let Some(bin) = engine("prometheus", "the live-loop test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let exporter = exporter();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let data = dir.path().join("tsdb");
    backfill_history(dir.path(), &data, exporter, now - 600);

    // The server: remote-write in, forecasts of the live series out as
    // gauges.
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "app = { value = \"live\" }\nshard_type = { label = \"tier\" }\n\
         series = { label = \"shard\" }\nmetrics = [\"demand\"]\n",
    )
    .unwrap();
    let server_metrics = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--store", store, "--listen", "127.0.0.1:0"])
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{server_metrics}"))
        .arg("--remote-write-rules")
        .arg(&rules)
        .args(["--publish-forecasts", "live/*", "--store-poll-ms", "200"])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server_out = lines(&mut server);
    let grpc = expect_line(&server_out, "listening on ");
    let grpc = grpc.trim_start_matches("listening on ").to_owned();

    // The daemon, planning from that server, scraped by the same Prometheus.
    let daemon_metrics = free_port();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "server = \"http://{grpc}\"\ninterval_secs = 1\ntimeout_ms = 20000\n\
             [[shard_types]]\napp = \"live\"\nshard_type = \"api\"\ninitial_shards = 2\n\
             [shard_types.scale]\nservice_level = 0.95\ncapacity_per_shard = 50.0\n\
             lead_time_secs = 600\nhold_secs = 600\nmax_forecast_age_secs = 900\n"
        ),
    )
    .unwrap();
    let prom = Prometheus::start(
        &bin,
        dir.path(),
        &data,
        &format!(
            "  - job_name: exporter\n    static_configs:\n      - targets: ['127.0.0.1:{exporter}']\n\
             \x20 - job_name: shardcast\n    static_configs:\n      \
             - targets: ['127.0.0.1:{server_metrics}', '127.0.0.1:{daemon_metrics}']\n\
             remote_write:\n  - url: http://127.0.0.1:{server_metrics}/api/v1/write\n    \
             queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n"
        ),
    );

    // History from Prometheus into the store, then the live points arrive
    // by remote-write on top.
    let pulled = ok(&[
        "pull",
        "--store",
        store,
        "--prometheus",
        &prom.url(),
        "--query",
        "demand",
        "--since",
        "9d",
        "--step",
        "5m",
        "--app",
        "live",
        "--shard-type-label",
        "tier",
        "--series-label",
        "shard",
    ]);
    assert!(pulled.contains(": 2 series, "), "{pulled}");

    // Every raw sample Prometheus holds of the last 20 s was remote-written
    // into the store, at its time and with its value.
    let s1 = "demand{shard=\"s1\"}[20s]";
    let deadline = Instant::now() + Duration::from_secs(60);
    let raw = loop {
        let raw = samples(&wait_for_series(prom.port, s1)[0]);
        if raw.len() >= 10 {
            break raw;
        }
        assert!(Instant::now() < deadline, "too few scrapes: {raw:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let (first, last) = (raw[0].0, raw[raw.len() - 1].0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = stored_points(store, "s1", first);
        let missing: Vec<_> = raw.iter().filter(|p| !got.contains(p)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not remote-written: {missing:?}\nstored: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // `pull` of the same range at the scrape interval reads, at each step,
    // the newest sample at or before it: the remote-written one.
    let second = dir.path().join("pulled");
    let second = second.to_str().unwrap();
    ok(&[
        "pull",
        "--store",
        second,
        "--prometheus",
        &prom.url(),
        "--query",
        "demand",
        "--start",
        &Timestamp(first).to_string(),
        "--end",
        &Timestamp(last).to_string(),
        "--step",
        "1s",
        "--app",
        "live",
        "--shard-type-label",
        "tier",
        "--series-label",
        "shard",
    ]);
    let stepped = stored_points(second, "s1", first);
    assert!(stepped.len() >= raw.len() / 2, "{stepped:?}");
    for (t, v) in &stepped {
        let newest = raw.iter().rev().find(|(rt, _)| rt <= t).unwrap();
        assert_eq!(newest.1, *v, "pulled at {t} ms: {stepped:?}\nraw: {raw:?}");
    }

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("plan")
        .arg("--config")
        .arg(&plan)
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{daemon_metrics}"))
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let decisions = lines(&mut daemon);
    let decision = expect_line(&decisions, "\"basis\":\"forecast\"");
    assert!(decision.contains("\"shard_type\":\"api\""), "{decision}");

    // The daemon's gauges and the server's published forecasts, read back
    // through Prometheus.
    wait_for_series(
        prom.port,
        "shardcast_plan_shards_desired{shard_type=\"api\"}",
    );
    let forecast = wait_for_series(
        prom.port,
        "shardcast_plan_forecast_demand{app=\"live\",shard_type=\"api\",quantile=\"0.5\"}",
    );
    let median: f64 = forecast[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(median > 0.0, "{forecast:?}");
    wait_for_series(
        prom.port,
        "shardcast_forecast{app=\"live\",series=\"s1\",quantile=\"0.5\",steps_ahead=\"1\"}",
    );

    // Every metric the Grafana dashboard draws is one the two export.
    let exported = format!(
        "{}{}",
        get(server_metrics, "/metrics").unwrap(),
        get(daemon_metrics, "/metrics").unwrap()
    );
    let dashboard =
        std::fs::read_to_string(repo().join("examples/grafana-dashboard.json")).unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("shardcast_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| n.len() > "shardcast_".len())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "the dashboard draws {name}, which nothing exports"
        );
    }
    assert!(stop(daemon).success());
    assert!(stop(server).success());
}

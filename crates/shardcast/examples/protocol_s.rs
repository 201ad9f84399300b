//! Protocol S (`shared/bench/PROTOCOL.md`). Starts `shardcast serve` and the
//! Python reference (grpcio + onnxruntime on the same model exported to
//! ONNX, `benches/serve_onnx.py`) on the same store, then drives each with
//! the same closed-loop clients: every client has its own connection and
//! asks for one series' forecast (the model's horizon, 13 quantiles),
//! cycling over the store's series, as fast as answers come back.
//!
//! ```text
//! benches/setup.sh    # once: grpcio and onnxruntime in benches/.venv
//! cargo build --profile perf -p shardcast && cargo run --profile perf -p shardcast --example protocol_s
//! ```
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use shardcast_model::versions;
use shardcast_proto::forecast::v1 as pb;
use shardcast_proto::forecast::v1::forecast_service_client::ForecastServiceClient;
use shardcast_store::Store;
use shardcast_store::ingest::{MetricMapping, ReadSettings, parse_metric_files};
use tonic::transport::Channel;

/// Settings of a protocol S run.
#[derive(Debug, Parser)]
struct BenchServeArgs {
    /// The `shardcast` binary to serve with (default: the one built beside
    /// this example, `target/<profile>/shardcast`).
    #[arg(long)]
    shardcast: Option<PathBuf>,
    /// Store to serve (default: the bundled NAB traces, ingested into
    /// `<dir>/store`).
    #[arg(long)]
    store: Option<String>,
    /// Directory holding `<name>/<version>/` model directories.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// Model to serve (its newest version), also exported to ONNX for the
    /// reference.
    #[arg(long, default_value = "default")]
    model: String,
    /// Working directory (store, model copy, ONNX file).
    #[arg(long, default_value = "out/bench-serve")]
    dir: PathBuf,
    /// Concurrent clients, comma-separated; each point is measured apart.
    #[arg(long, default_value = "1,16,64")]
    clients: String,
    /// Seconds measured per point.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of warm-up before each point (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Python interpreter with grpcio and onnxruntime
    /// (`benches/setup.sh` makes `benches/.venv`).
    #[arg(long, env = "SHARDCAST_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Skip the Python reference.
    #[arg(long)]
    no_reference: bool,
}

/// The bundled traces protocol S serves: (glob, shard type).
const NAB: [(&str, &str); 3] = [
    ("data/sample/nab/ec2_cpu_*.csv", "ec2-cpu"),
    ("data/sample/nab/elb_request_count_*.csv", "elb-requests"),
    ("data/sample/nab/rds_cpu_*.csv", "rds-cpu"),
];

/// A server process, killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits for its `listening on HOST:PORT` line.
fn start(name: &'static str, mut cmd: Command) -> Result<Proc> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start the {name} server: {cmd:?}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let addr = lines
        .by_ref()
        .map_while(std::result::Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned));
    std::thread::spawn(move || for _ in lines {});
    match addr {
        Some(addr) => Ok(Proc { name, child, addr }),
        None => {
            let _ = child.kill();
            bail!("the {name} server exited before listening: {cmd:?}")
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Default)]
struct Stats {
    requests: usize,
    errors: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Stats {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

fn request(key: &pb::SeriesKey) -> pb::ForecastRequest {
    pb::ForecastRequest {
        key: Some(key.clone()),
        ..Default::default()
    }
}

/// `clients` closed loops against `addr` for `secs`.
async fn drive(addr: &str, keys: &[pb::SeriesKey], clients: usize, secs: f64) -> Result<Stats> {
    let mut channels = Vec::with_capacity(clients);
    for _ in 0..clients {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
        );
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = channels
        .into_iter()
        .enumerate()
        .map(|(i, ch)| {
            let keys = keys.to_vec();
            tokio::spawn(async move {
                let mut c = ForecastServiceClient::new(ch);
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                let mut k = i;
                while Instant::now() < until {
                    let t = Instant::now();
                    match c.forecast(request(&keys[k % keys.len()])).await {
                        Ok(r) if r.get_ref().forecast.is_some() => lat.push(t.elapsed()),
                        _ => errors += 1,
                    }
                    k += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Stats {
        requests: all.len(),
        errors,
        seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

/// The store to serve: `--store`, or the bundled NAB traces ingested into
/// `<dir>/store`.
async fn store(args: &BenchServeArgs) -> Result<String> {
    if let Some(s) = &args.store {
        return Ok(s.clone());
    }
    let dir = args.dir.join("store");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let store = Store::open(&dir.to_string_lossy())?;
    for (pattern, shard_type) in NAB {
        let paths = shardcast_store::ingest::expand_inputs(&[pattern.to_owned()])?;
        let mapping = MetricMapping::new("aws", shard_type, &["value"]);
        let (batch, _) = parse_metric_files(&paths, &mapping, &ReadSettings::default())?;
        store.write_points(batch).await?;
    }
    Ok(dir.to_string_lossy().into_owned())
}

/// Copies the served model version into `<dir>/models/<name>/<v>` and
/// exports it to ONNX there for the reference.
fn model(args: &BenchServeArgs) -> Result<(PathBuf, PathBuf)> {
    let src = versions::newest(&args.models_dir, &args.model)
        .map(|(_, dir)| dir)
        .with_context(|| {
            format!(
                "no model {} under {}",
                args.model,
                args.models_dir.display()
            )
        })?;
    let version = src.file_name().expect("a version directory");
    let root = args.dir.join("models");
    let dst = root.join(&args.model).join(version);
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&dst)?;
    for f in ["config.json", "model.safetensors", "metrics.json"] {
        std::fs::copy(src.join(f), dst.join(f))
            .with_context(|| format!("cannot copy {}", src.join(f).display()))?;
    }
    let model = shardcast_model::forecaster::Model::load(&dst)?;
    shardcast_onnx::export(&model, &dst.join("model.onnx"))?;
    Ok((root, dst))
}

fn python(args: &BenchServeArgs) -> PathBuf {
    args.python.clone().unwrap_or_else(|| {
        let venv = Path::new("benches/.venv/bin/python");
        if venv.exists() {
            venv.to_path_buf()
        } else {
            "python3".into()
        }
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = BenchServeArgs::parse();
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .with_context(|| format!("bad --clients entry `{c}`"))
        })
        .collect::<Result<_>>()?;
    if clients.is_empty() || clients.contains(&0) {
        bail!("--clients needs positive counts, e.g. 1,16,64");
    }
    // The bench clears `<dir>/store` and `<dir>/models`: never let that be
    // the models it reads, or anything that holds them.
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    std::fs::create_dir_all(&args.dir)?;
    let dir = canon(&args.dir);
    let models = canon(&args.models_dir);
    if models.starts_with(&dir) || dir.starts_with(&models) || dir == canon(Path::new(".")) {
        bail!(
            "--dir {} must be a working directory of its own, apart from --models-dir {} and the current directory",
            args.dir.display(),
            args.models_dir.display()
        );
    }
    let store_loc = store(&args).await?;
    let keys: Vec<pb::SeriesKey> = Store::open(&store_loc)?
        .list_series()
        .await?
        .into_iter()
        .map(|s| shardcast_proto::key_to_pb(&s.key))
        .collect();
    if keys.is_empty() {
        bail!("the store at {store_loc} holds no series");
    }
    let (models_root, model_dir) = model(&args)?;
    let exe = match &args.shardcast {
        Some(path) => path.clone(),
        None => {
            let example = std::env::current_exe()?;
            let profile = example
                .parent()
                .and_then(Path::parent)
                .context("no target directory")?;
            profile.join(format!("shardcast{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !exe.is_file() {
        bail!(
            "no shardcast binary at {} (build it first: cargo build --profile perf -p shardcast, or pass --shardcast)",
            exe.display()
        );
    }
    let mut servers = Vec::new();
    let mut ours = Command::new(exe);
    ours.args(["serve", "--store", &store_loc, "--listen", "127.0.0.1:0"])
        .arg("--models-dir")
        .arg(&models_root)
        .args(["--model", &args.model]);
    servers.push(start("shardcast", ours)?);
    if !args.no_reference {
        let py = python(&args);
        let mut reference = Command::new(&py);
        reference
            .arg("benches/serve_onnx.py")
            .args(["--store", &store_loc, "--listen", "127.0.0.1:0"])
            .arg("--model")
            .arg(&model_dir);
        servers.push(start("python-onnxruntime", reference).context(
            "the Python reference did not start (run benches/setup.sh, or pass --no-reference)",
        )?);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "protocol S: {} series, {}s per point after {}s warm-up, {cores} cores",
        keys.len(),
        args.seconds,
        args.warmup
    );
    let mut table = Vec::new();
    for &n in &clients {
        for s in &servers {
            drive(&s.addr, &keys, n, args.warmup).await?;
            let st = drive(&s.addr, &keys, n, args.seconds).await?;
            eprintln!(
                "  {:<20} {n:>3} clients: {:>9.0} forecasts/s",
                s.name,
                st.rps()
            );
            table.push((n, s.name, st));
        }
    }
    println!(
        "{:>7}  {:<20} {:>12} {:>9} {:>9} {:>14} {:>7}",
        "clients", "server", "forecasts/s", "p50 ms", "p99 ms", "per core /s", "errors"
    );
    for (n, name, st) in &table {
        println!(
            "{n:>7}  {name:<20} {:>12.0} {:>9.3} {:>9.3} {:>14.0} {:>7}",
            st.rps(),
            st.p50_ms,
            st.p99_ms,
            st.rps() / cores as f64,
            st.errors
        );
    }
    if servers.len() == 2 {
        println!();
        for &n in &clients {
            let get = |name: &str| {
                table
                    .iter()
                    .find(|(c, s, _)| *c == n && *s == name)
                    .map(|t| &t.2)
            };
            if let (Some(a), Some(b)) = (get("shardcast"), get("python-onnxruntime")) {
                println!(
                    "{n:>3} clients: shardcast {:.1}x the reference's throughput, p99 {:.3} ms vs {:.3} ms",
                    a.rps() / b.rps(),
                    a.p99_ms,
                    b.p99_ms
                );
            }
        }
    }
    drop(servers);
    Ok(())
}

//! The store in an S3 bucket (`--store s3://bucket/prefix`), against a real
//! S3-compatible server on loopback: moto's server from the test Python
//! (`requirements-test.txt`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{python_with, repo};

/// moto's server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one bodiless HTTP request and returns the status line.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply.lines().next().unwrap_or_default().to_owned())
}

fn start_moto() -> Option<Moto> {
    let python = python_with("moto.server", "the S3 store test")?;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http(port, "PUT", "/shardcast") {
            Ok(status) if status.contains(" 200") => return Some(moto),
            Ok(status) => panic!("moto refused to create the bucket: {status}"),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("moto did not start on port {port}: {e}"),
        }
    }
}

/// The binary with the environment that points it at the moto server.
fn command(moto: &Moto, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    c.args(args)
        .current_dir(repo())
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", moto.port))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    c
}

/// Runs the binary against the moto server.
fn run(moto: &Moto, args: &[&str]) -> Output {
    command(moto, args).output().unwrap()
}

fn ok(moto: &Moto, args: &[&str]) -> String {
    let out = run(moto, args);
    assert!(
        out.status.success(),
        "shardcast {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_store_works_in_an_s3_bucket() {
    let Some(moto) = start_moto() else { return };
    let store = "s3://shardcast/stores/one";
    let ingest = [
        "ingest",
        "--store",
        store,
        "--app",
        "aws",
        "data/sample/nab/*.csv",
    ];
    let out = ok(&moto, &ingest);
    assert!(out.contains("ingested 16128 rows from 4 files"), "{out}");
    let count = [
        "query",
        "--store",
        store,
        "--format",
        "csv",
        "SELECT count(*) AS n FROM metrics",
    ];
    assert_eq!(ok(&moto, &count), "n\n16128\n");
    // Re-ingest replaces rather than duplicates, compaction keeps every row.
    ok(&moto, &ingest);
    assert_eq!(ok(&moto, &count), "n\n16128\n");
    ok(&moto, &["compact", "--store", store]);
    assert_eq!(ok(&moto, &count), "n\n16128\n");
    let out = ok(&moto, &["series", "--store", store]);
    assert!(
        out.contains("elb_request_count_8c0756") && out.contains("4 series"),
        "{out}"
    );

    // A bad row fails the batch and the bucket's store is unchanged.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "timestamp,value\n2014-04-10 00:00:00,1\n2014-04-10 00:05:00,oops\n",
    )
    .unwrap();
    let out = run(
        &moto,
        &[
            "ingest",
            "--store",
            store,
            "--app",
            "aws",
            bad.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:3") && err.contains("value"), "{err}");
    assert_eq!(ok(&moto, &count), "n\n16128\n");

    // Four concurrent writers, each its own process, all commit: none
    // overwrites another's files, and the bucket holds the union.
    let writers: Vec<_> = ["w1", "w2", "w3", "w4"]
        .iter()
        .map(|series| {
            command(
                &moto,
                &[
                    "ingest",
                    "--store",
                    store,
                    "--app",
                    "aws",
                    "--series",
                    series,
                    "data/sample/nab/ec2_cpu_utilization_5f5533.csv",
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for w in writers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(ok(&moto, &count), format!("n\n{}\n", 16128 + 4 * 4032));

    // Another prefix of the same bucket is another (empty) store.
    let other = [
        "query",
        "--store",
        "s3://shardcast/stores/two",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM metrics",
    ];
    assert_eq!(ok(&moto, &other), "n\n0\n");

    // A URL without a bucket is refused with the reason.
    let out = run(&moto, &["series", "--store", "s3:///nobucket"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bucket"));
}

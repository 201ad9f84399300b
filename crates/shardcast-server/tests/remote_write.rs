//! Prometheus remote-write over a real socket: a request as Prometheus
//! sends it is stored under the label rules' keys; a malformed one is
//! answered 400 with the reason and stores nothing.

#[allow(dead_code)]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use prost::Message;
use shardcast_prometheus::LabelRules;
use shardcast_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use shardcast_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// POSTs `body` to `/api/v1/write` with Prometheus' headers; the status
/// and the answer's body.
async fn post(addr: SocketAddr, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {addr}\r\nContent-Encoding: snappy\r\n\
         Content-Type: application/x-protobuf\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn request(job: &str, samples: &[(f64, i64)]) -> Vec<u8> {
    let label = |name: &str, value: &str| Label {
        name: name.into(),
        value: value.into(),
    };
    let req = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![
                label("__name__", "http_requests"),
                label("instance", "10.0.0.1:9100"),
                label("job", job),
            ],
            samples: samples
                .iter()
                .map(|&(value, timestamp)| Sample { value, timestamp })
                .collect(),
        }],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

async fn stored(store: &Store, app: &str) -> Vec<(String, u64)> {
    let mut out: Vec<_> = store
        .list_series()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.key.app == app)
        .map(|s| (s.key.to_string(), s.points))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_requests_are_stored_and_malformed_ones_refused() {
    let f = common::Fixture::new(1, 600).await;
    let mut cfg = f.config();
    cfg.remote_write = Some(
        LabelRules::from_toml("app = { label = \"job\" }\nshard_type = { value = \"api\" }\n")
            .unwrap(),
    );
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let state = shardcast_server::State::open(&cfg).await.unwrap();
    let server =
        shardcast_server::Running::spawn(grpc, Some(http), Arc::clone(&state), cfg).unwrap();
    let store = Store::open(f.store().to_str().unwrap()).unwrap();

    let t0 = 1_700_000_000_000;
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let (status, body) = post(
        addr,
        &request(
            "web",
            &[(1.0, t0), (2.0, t0 + 15_000), (stale, t0 + 30_000)],
        ),
    )
    .await;
    assert_eq!((status, body.as_str()), (204, ""));
    let key = "web/api/http_requests/instance=10.0.0.1:9100";
    assert_eq!(stored(&store, "web").await, vec![(key.to_owned(), 2)]);

    // Malformed: not snappy, snappy but not a WriteRequest, a sample out of
    // range. Each is refused with its reason and nothing is stored.
    let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 9]).unwrap();
    let cases: [(Vec<u8>, &str); 3] = [
        (b"plain text".to_vec(), "snappy"),
        (garbage, "WriteRequest"),
        (
            request("late", &[(1.0, i64::MAX)]),
            "timeseries[0].samples[0].timestamp",
        ),
    ];
    for (body, reason) in cases {
        let (status, answer) = post(addr, &body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(reason), "{answer} should say {reason}");
    }
    assert_eq!(stored(&store, "web").await, vec![(key.to_owned(), 2)]);
    assert!(stored(&store, "late").await.is_empty());

    // What happened is on /metrics: requests by status, samples by outcome.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    for line in [
        "shardcast_remote_write_requests_total{code=\"204\"} 1",
        "shardcast_remote_write_requests_total{code=\"400\"} 3",
        "shardcast_remote_write_samples_total{outcome=\"stored\"} 2",
        "shardcast_remote_write_samples_total{outcome=\"stale\"} 1",
        "shardcast_remote_write_samples_total{outcome=\"refused\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    server.stop().await.unwrap();
}

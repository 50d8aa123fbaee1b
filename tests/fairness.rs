//! One client's flood must not starve the others. On the shipped binary with
//! one event loop, a client pipelines `SELECT 1` as fast as it can write and
//! another streams a large COPY, while a probe client runs `SELECT 1` one at
//! a time: every flood query is answered, every COPY row lands, and the
//! probe keeps being served throughout.
//!
//! `FAIRNESS_QUERIES` (default 100000) sets the pipelined count and
//! `FAIRNESS_COPY_MB` (default 32) the COPY size; `SWITCHYARD_BIN` runs
//! another binary (the release build, for the numbers in docs/benchmarks.md).

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::script::{frame, query, Scripted};
use common::shipped::Shipped;
use switchyard::local_cluster::{APP_DB, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The probe's worst acceptable latency: a starved loop takes seconds.
const PROBE_MAX: Duration = Duration::from_millis(1000);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Logs in and pipelines `n` `SELECT 1`s while reading the answers;
/// returns how many ReadyForQuery came back.
async fn flood(addr: std::net::SocketAddr, n: usize) -> usize {
    let mut c = Scripted::connect(addr, usize::MAX).await;
    c.login_scram(APP_USER, APP_PASSWORD, APP_DB).await.unwrap();
    let (mut rd, mut wr) = c.stream.into_split();
    let writer = tokio::spawn(async move {
        let batch: Vec<u8> = (0..1000).flat_map(|_| query("SELECT 1").to_vec()).collect();
        for _ in 0..n / 1000 {
            wr.write_all(&batch).await.unwrap();
        }
        wr
    });
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut ready = 0;
    let mut pos = 0;
    while ready < n / 1000 * 1000 {
        let read = tokio::time::timeout(Duration::from_secs(60), rd.read_buf(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(k)) if k > 0),
            "flood answers stopped after {ready}"
        );
        // Count whole messages; keep a partial one for the next read.
        while buf.len() - pos >= 5 {
            let len = u32::from_be_bytes(buf[pos + 1..pos + 5].try_into().unwrap()) as usize;
            if buf.len() - pos < len + 1 {
                break;
            }
            assert_ne!(buf[pos], b'E', "the flood got an error");
            ready += usize::from(buf[pos] == b'Z');
            pos += len + 1;
        }
        let _ = buf.split_to(pos);
        pos = 0;
    }
    drop(writer.await.unwrap());
    ready
}

/// Logs in and COPYs `mb` MiB of rows into `table`; returns the row count
/// PostgreSQL reported.
async fn copy_flood(addr: std::net::SocketAddr, table: &str, mb: usize) -> (u64, u64) {
    let mut c = Scripted::connect(addr, usize::MAX).await;
    c.login_scram(APP_USER, APP_PASSWORD, APP_DB).await.unwrap();
    c.send(&query(&format!("COPY {table} FROM STDIN")))
        .await
        .unwrap();
    c.until(b'G').await;
    let row = format!("{}\n", "x".repeat(1023));
    let chunk = frame(b'd', row.repeat(64).as_bytes());
    let chunks = mb * 16;
    for _ in 0..chunks {
        c.send(&chunk).await.unwrap();
    }
    c.send(&frame(b'c', &[])).await.unwrap();
    let msgs = c.until(b'Z').await;
    let tag = msgs
        .iter()
        .find(|(t, _)| *t == b'C')
        .expect("CommandComplete");
    let copied = String::from_utf8_lossy(&tag.1)
        .trim_end_matches('\0')
        .trim_start_matches("COPY ")
        .parse()
        .unwrap();
    (copied, chunks as u64 * 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_does_not_starve_other_clients() {
    let cluster = common::cluster();
    let proxy = Shipped::start(&cluster, "workers = 1\nauth_type = \"scram-sha-256\"").await;
    let probe = common::connect(&proxy.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .unwrap();
    let table = common::unique("fair_copy");
    probe
        .batch_execute(&format!("CREATE TABLE {table} (t text)"))
        .await
        .unwrap();
    let (n, mb) = (
        env_usize("FAIRNESS_QUERIES", 100_000),
        env_usize("FAIRNESS_COPY_MB", 32),
    );
    let floods = tokio::spawn(async move {
        let addr = proxy.addr;
        let (answered, copied) = tokio::join!(flood(addr, n), copy_flood(addr, &table, mb));
        (answered, copied, proxy)
    });
    let mut latencies = vec![];
    while !floods.is_finished() {
        let started = Instant::now();
        probe.simple_query("SELECT 1").await.expect("probe query");
        latencies.push(started.elapsed());
    }
    let (answered, (copied, sent), proxy) = floods.await.unwrap();
    let (_, metrics) = common::http_request(proxy.http, "GET", "/metrics").await;
    let lag: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_event_loop_lag_seconds_bucket"))
        .filter_map(|l| l.split_once("le=").map(|(_, b)| b))
        .collect();
    eprintln!("fairness: event-loop lag ticks by bucket (cumulative) {lag:?}");
    assert_eq!(answered, n / 1000 * 1000, "every pipelined query answered");
    assert_eq!(copied, sent, "every COPY row landed");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    eprintln!(
        "fairness: {} probe queries during the floods, p50 {:?}, p99 {p99:?}, max {max:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert!(
        latencies.len() >= 20,
        "the probe was served only {} times",
        latencies.len()
    );
    assert!(
        max < PROBE_MAX,
        "a probe query waited {max:?} behind the floods"
    );
}

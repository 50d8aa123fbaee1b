//! Cancels across proxies. Behind a load balancer, a CancelRequest opens a
//! new connection that may land on another Switchyard than the one running
//! the query; with `proxy.peer_id` and `[[peers]]` that instance forwards it
//! to the one that issued the key. Several proxies run in this process in
//! front of the same PostgreSQL.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::{nodes_toml, sqlstate, Proxy, Raw, USERS};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{CancelToken, Client, NoTls};

/// A whole configuration: `peer_id` (if any), `[[peers]]` and `extra` in `[proxy]`.
fn config(peer_id: Option<u16>, peers: &[(u16, SocketAddr)], extra: &str) -> String {
    let cluster = common::cluster();
    let mut toml = format!("[proxy]\n{extra}\n");
    if let Some(id) = peer_id {
        toml.push_str(&format!("peer_id = {id}\n"));
    }
    toml.push_str(USERS);
    toml.push_str(&format!("[cluster]\nnodes = [{}]\n", nodes_toml(&cluster)));
    for (id, addr) in peers {
        toml.push_str(&format!("[[peers]]\nid = {id}\naddr = \"{addr}\"\n"));
    }
    toml
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Sends `token`'s CancelRequest to `addr` (not the proxy that issued it).
async fn cancel_via(token: CancelToken, addr: SocketAddr) {
    let stream = TcpStream::connect(addr).await.unwrap();
    token.cancel_query_raw(stream, NoTls).await.unwrap();
}

/// Runs a long query on `client`, sends its cancel to `via` after 300 ms,
/// and returns the query's SQLSTATE (`None`: it finished) and how long the
/// query ran on after the cancel was sent (capped at 5 s).
async fn sleep_and_cancel_via(
    client: &Client,
    via: SocketAddr,
    secs: u32,
) -> (Option<String>, Duration) {
    let token = client.cancel_token();
    let sent = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel_via(token, via).await;
        Instant::now()
    });
    let sql = format!("SELECT pg_sleep({secs})");
    let query = client.batch_execute(&sql);
    let outcome = tokio::time::timeout(Duration::from_millis(5300), query).await;
    let ended = Instant::now();
    let sent = sent.await.unwrap();
    let code = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(sqlstate(&e).unwrap_or_else(|| e.to_string())),
        Err(_) => Some("still running after 5 s".into()),
    };
    (code, ended.saturating_duration_since(sent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_proxy_reaches_the_query() {
    let ((la, a_addr), (lb, b_addr)) = (listener().await, listener().await);
    let cluster = common::cluster();
    let (a, a_http) =
        Proxy::start_on_with_http(cluster.clone(), &config(Some(1), &[(2, b_addr)], ""), la).await;
    let (b, b_http) =
        Proxy::start_on_with_http(cluster, &config(Some(2), &[(1, a_addr)], ""), lb).await;

    for (on, via) in [(&a, b_addr), (&b, a_addr)] {
        let client = on.client().await;
        let (code, took) = sleep_and_cancel_via(&client, via, 30).await;
        assert_eq!(code.as_deref(), Some("57014"), "client on {}", on.addr);
        assert!(took < Duration::from_secs(2), "cancel took {took:?}");
        client.batch_execute("SELECT 1").await.unwrap();
    }
    // Counted once the peer has closed, which may come after the client saw its error.
    for http in [a_http, b_http] {
        common::wait_until(5, "forward counted", || async {
            peer_cancels(http, "forwarded").await == 1
        })
        .await;
    }
}

/// `switchyard_peer_cancels_total{outcome}` at the proxy whose HTTP endpoints are at `http`.
async fn peer_cancels(http: SocketAddr, outcome: &str) -> u64 {
    let (code, text) = common::http_request(http, "GET", "/metrics").await;
    assert_eq!(code, 200);
    let series = format!("switchyard_peer_cancels_total{{outcome=\"{outcome}\"}} ");
    let line = text.lines().find(|l| l.starts_with(&series));
    line.and_then(|l| l[series.len()..].parse().ok())
        .unwrap_or_else(|| panic!("no {series}in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peers_a_cancel_on_another_proxy_does_nothing_and_breaks_nothing() {
    let a = Proxy::start_with(common::cluster(), &config(None, &[], "")).await;
    let b = Proxy::start_with(common::cluster(), &config(None, &[], "")).await;
    let client = a.client().await;
    let (code, _) = sleep_and_cancel_via(&client, b.addr, 2).await;
    assert_eq!(code, None, "the query finished uncancelled");
    // Both still serve, and a cancel sent where the key was issued still works.
    b.client().await.batch_execute("SELECT 1").await.unwrap();
    let (code, took) = sleep_and_cancel_via(&client, a.addr, 30).await;
    assert_eq!(code.as_deref(), Some("57014"));
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_misconfigured_peers_is_cut_at_once() {
    // C issues keys with id 3; A and B each (wrongly) send id 3 to the other.
    let ((la, a_addr), (lb, b_addr)) = (listener().await, listener().await);
    let cluster = common::cluster();
    let (a, a_http) =
        Proxy::start_on_with_http(cluster.clone(), &config(Some(1), &[(3, b_addr)], ""), la).await;
    let (b, b_http) =
        Proxy::start_on_with_http(cluster.clone(), &config(Some(2), &[(3, a_addr)], ""), lb).await;
    let trust = "auth_type = \"trust\"";
    let c = Proxy::start_with(cluster, &config(Some(3), &[], trust)).await;
    let mut raw = Raw::connect(c.addr).await;
    raw.startup(0, "app", "app").await;
    assert_eq!(raw.until_ready().await.1, Some(b'I'));
    let (pid, secret) = raw.key.expect("BackendKeyData");

    let mut request = BytesMut::new();
    request.put_u32(16);
    request.put_u32(80_877_102);
    request.put_i32(pid);
    request.put_i32(secret);
    let started = Instant::now();
    let mut s = TcpStream::connect(a.addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    // A → B → A: A sees a key it is still forwarding and drops it, so the
    // chain unwinds at once instead of running until the forwarding timeouts.
    assert!(common::peer_closed(&mut s, 5).await);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "loop ran {took:?}");
    // A's first forward and B's went through; A's second was dropped.
    assert_eq!(peer_cancels(a_http, "forwarded").await, 1);
    assert_eq!(peer_cancels(a_http, "in_flight").await, 1);
    assert_eq!(peer_cancels(b_http, "forwarded").await, 1);
    assert_eq!(peer_cancels(b_http, "in_flight").await, 0);
    a.client().await.batch_execute("SELECT 1").await.unwrap();
    b.client().await.batch_execute("SELECT 1").await.unwrap();
}

/// How long each run of A and B below goes on when no cancel strays.
const STRAY_ROUNDS: Duration = Duration::from_secs(5);

/// One server connection (`default_pool_size = 1`, transaction mode) shared
/// by A and B. A runs short queries and fires a cancel at each (through
/// `a_cancels_via`) a little later each time, from at once to past its end,
/// so some cancels are still on their way when A's query has already ended
/// and B holds the connection. B runs short
/// queries the whole time and must never see its query cancelled. Returns
/// how many of A's queries were cancelled (cancels still work).
async fn stray_cancels(on: &Proxy, a_cancels_via: SocketAddr) -> usize {
    let (a, b) = (on.client().await, on.client().await);
    let started = Instant::now();
    let b_loop = async {
        let mut ran = 0usize;
        while started.elapsed() < STRAY_ROUNDS {
            if let Err(e) = b.batch_execute("SELECT pg_sleep(0.003)").await {
                panic!(
                    "B's query {ran} failed: {:?} {e}: a cancel meant for A reached B",
                    sqlstate(&e)
                );
            }
            ran += 1;
        }
        ran
    };
    let a_loop = async {
        let mut cancelled = 0usize;
        for round in 0u64.. {
            if started.elapsed() >= STRAY_ROUNDS {
                break;
            }
            let token = a.cancel_token();
            let after = Duration::from_micros(500 * (round % 12));
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                // Unchecked: the last ones may find the proxy stopped.
                if let Ok(s) = TcpStream::connect(a_cancels_via).await {
                    let _ = token.cancel_query_raw(s, NoTls).await;
                }
            });
            match a.batch_execute("SELECT pg_sleep(0.002)").await {
                Ok(()) => {}
                Err(e) if sqlstate(&e).as_deref() == Some("57014") => cancelled += 1,
                Err(e) => panic!("A's query failed: {e}"),
            }
        }
        cancelled
    };
    let (b_ran, a_cancelled) = tokio::join!(b_loop, a_loop);
    assert!(b_ran > 0, "B ran no query");
    a_cancelled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_reaches_the_next_client_of_its_server() {
    let p = Proxy::start_with(
        common::cluster(),
        &config(None, &[], "default_pool_size = 1"),
    )
    .await;
    let cancelled = stray_cancels(&p, p.addr).await;
    assert!(cancelled > 0, "none of A's queries was cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_through_a_peer_never_reaches_the_next_client_of_its_server() {
    let ((la, a_addr), (lb, b_addr)) = (listener().await, listener().await);
    let cluster = common::cluster();
    let one = "default_pool_size = 1";
    let a = Proxy::start_on(cluster.clone(), &config(Some(1), &[(2, b_addr)], one), la).await;
    let _b = Proxy::start_on(cluster, &config(Some(2), &[(1, a_addr)], one), lb).await;
    let cancelled = stray_cancels(&a, b_addr).await;
    assert!(cancelled > 0, "none of A's queries was cancelled");
}

//! The HTTP endpoints of a running proxy, over a real socket.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_status_events_and_metrics() {
    let cluster = common::cluster();
    let toml = format!(
        "{}\n[cluster]\nnodes = [\"{}\", \"{}\"]\nuser = \"switchyard\"\npassword = \"switchyard\"\n",
        common::USERS,
        cluster.primary().addr(),
        cluster.replicas()[0].addr()
    );
    let config = switchyard::config::load_str(&toml).unwrap();
    let pg = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pg_addr, http_addr) = (pg.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchyard::run_with_http(config, pg, Some(http), async {
        let _ = stopped.await;
    }));

    assert_eq!(get(http_addr, "/healthz").await.0, 200);
    // Ready once the first health checks found the primary.
    let mut ready = 0;
    for _ in 0..50 {
        ready = get(http_addr, "/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    let (_, status) = get(http_addr, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["primary"],
        serde_json::json!(cluster.primary().addr())
    );
    assert_eq!(status["nodes"][1]["role"], "replica");
    let (_, events) = get(http_addr, "/events?since=0").await;
    assert!(events.contains("writes_resumed"), "{events}");
    // A pinned client shows up in the metrics.
    let url = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        pg_addr.port()
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("LISTEN sy_http").await.unwrap();
    let (code, metrics) = get(http_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("switchyard_pinned_clients_total{reason=\"LISTEN\"}"),
        "{metrics}"
    );
    assert_eq!(get(http_addr, "/nope").await.0, 404);
    drop(c);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

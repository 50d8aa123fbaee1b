//! Limits that keep one tenant, or a flood of half-open sockets, from taking
//! everyone's place: refusal before any TLS handshake past
//! `max_client_conn`, `max_pending_logins`, and the per-database and
//! per-user limits on clients and on server connections.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::certs::Ca;
use common::{cluster, error_code, nodes_toml, sqlstate, take_message, Proxy, Raw, USERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

/// A proxy in front of the shared cluster with `extra` in `[proxy]` and,
/// when given, `[proxy.tls]` keys.
async fn proxy_with(extra: &str, tls: &str) -> Proxy {
    let cluster = cluster();
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!("[proxy.tls]\n{tls}\n")
    };
    let toml = format!(
        "[proxy]\n{extra}\n{tls}{USERS}\n[cluster]\nnodes = [{}]\n",
        nodes_toml(&cluster)
    );
    Proxy::start_with(cluster, &toml).await
}

async fn proxy(extra: &str) -> Proxy {
    proxy_with(extra, "").await
}

/// `[proxy.tls]` keys for mode `allow` with a fresh certificate written
/// under `dir`.
fn tls_keys(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let ca = Ca::new("limits test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"], "proxy", false);
    std::fs::write(dir.join("proxy.crt"), cert).unwrap();
    std::fs::write(dir.join("proxy.key"), key).unwrap();
    format!(
        "mode = \"allow\"\ncert_file = {:?}\nkey_file = {:?}\n",
        dir.join("proxy.crt"),
        dir.join("proxy.key")
    )
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The message of an ErrorResponse body (`M` field).
fn error_message(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

/// The message of a tokio-postgres error the proxy sent.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Reads everything `s` sends until it closes (or `secs` pass).
async fn read_to_close(s: &mut TcpStream, secs: u64) -> (BytesMut, bool) {
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (buf, true),
            Ok(Ok(_)) => {}
            Err(_) => return (buf, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_client_conn_an_ssl_request_is_refused_at_once_without_a_handshake() {
    let dir = std::env::temp_dir().join(common::unique("switchyard-limits-tls"));
    let p = proxy_with("max_client_conn = 1", &tls_keys(&dir)).await;
    let held = p.client().await;
    held.simple_query("SELECT 1").await.unwrap();
    let started = Instant::now();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&SSL_REQUEST).await.unwrap();
    let (mut got, closed) = read_to_close(&mut s, 5).await;
    // No 'S' (no handshake): an ErrorResponse in its place, as PostgreSQL
    // sends when it cannot serve a connection at all, and the socket closed.
    assert!(closed, "the refused connection stays open");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not refused at once"
    );
    assert_eq!(got.first(), Some(&b'E'), "{got:?}");
    let (tag, body) = take_message(&mut got).expect("a whole ErrorResponse");
    assert_eq!(tag, b'E');
    assert_eq!(error_code(&body), "53300");
    assert!(error_message(&body).contains("max_client_conn"), "{body:?}");

    // psql (libpq) fails at once either way: libpq releases since the 2024
    // security fixes report "server sent an error response during SSL
    // exchange" without showing the (unauthenticated) text, older ones
    // show the text.
    let bindir = p.cluster.bindir();
    for mode in ["require", "prefer"] {
        let out = tokio::process::Command::new(bindir.join("psql"))
            .args([
                "-X",
                "-At",
                "-d",
                &format!(
                    "host=127.0.0.1 port={} user=app password=app dbname=app sslmode={mode}",
                    p.addr.port()
                ),
                "-c",
                "SELECT 1",
            ])
            .env("HOME", &dir)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .await
            .expect("run psql");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "psql got in past the limit");
        assert!(
            text.contains("max_client_conn") || text.contains("error response during SSL"),
            "sslmode={mode}: {text}"
        );
    }
    held.simple_query("SELECT 1").await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_client_conn_without_tls_the_refusal_names_the_limit() {
    let p = proxy("max_client_conn = 1").await;
    let _held = p.client().await;
    // SSLRequest answered N (as always without TLS), then the refusal.
    let mut raw = Raw::connect(p.addr).await;
    raw.send(&SSL_REQUEST).await;
    let mut n = [0u8; 1];
    raw.stream.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    raw.startup(0, "app", "app").await;
    let (tag, body) = raw.recv().await.expect("an answer");
    assert_eq!((tag, error_code(&body).as_str()), (b'E', "53300"));
    assert!(error_message(&body).contains("max_client_conn"));
    // And a driver sees the same.
    let err = p.client_as("app", "app", "app").await.expect_err("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    assert!(message(&err).contains("max_client_conn"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_is_served_at_max_client_conn() {
    let p = proxy("max_client_conn = 1").await;
    let busy = p.client().await;
    let token = busy.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = Instant::now();
    let err = busy
        .simple_query("SELECT pg_sleep(30)")
        .await
        .expect_err("cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    cancel.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_pending_logins_a_connection_is_refused_at_once_until_slots_free() {
    let p = proxy("max_pending_logins = 3\nclient_login_timeout = \"5s\"").await;
    // Three sockets that connect and say nothing hold the three slots.
    let mut stalled = vec![];
    for _ in 0..3 {
        stalled.push(TcpStream::connect(p.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The fourth is refused as soon as it speaks, not after a login timeout.
    let started = Instant::now();
    let mut raw = Raw::connect(p.addr).await;
    raw.startup(0, "app", "app").await;
    let (tag, body) = raw.recv().await.expect("an answer");
    assert_eq!(
        (tag, error_code(&body).as_str()),
        (b'E', "53300"),
        "{body:?}"
    );
    assert!(
        error_message(&body).contains("max_pending_logins"),
        "{body:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // One that says nothing either is closed after a second, not after
    // client_login_timeout.
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    let (said, closed) = read_to_close(&mut silent, 2).await;
    assert!(closed && said.is_empty(), "{said:?}");
    let err = p.client_as("app", "app", "app").await.expect_err("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    assert!(message(&err).contains("max_pending_logins"), "{err:?}");
    // Closing them frees their slots.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = p.client().await;
    c.simple_query("SELECT 1").await.unwrap();
    // Stalled again: their login timeout frees the slots too.
    let mut stalled = vec![];
    for _ in 0..3 {
        stalled.push(TcpStream::connect(p.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.client_as("app", "app", "app").await.is_err());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let c2 = p.client().await;
    c2.simple_query("SELECT 1").await.unwrap();
    // Logged-in clients hold no login slot.
    c.simple_query("SELECT 1").await.unwrap();
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_db_client_connections_a_login_is_refused_and_other_databases_go_on() {
    let p = proxy("max_db_client_connections = 2").await;
    let a = p.client_as("app", "app", "app").await.unwrap();
    let b = p.client_as("md5user", "md5pass", "app").await.unwrap();
    let err = p
        .client_as("app", "app", "app")
        .await
        .expect_err("a third client of app is refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    let m = message(&err);
    assert!(
        m.contains("max_db_client_connections = 2") && m.contains("\"app\""),
        "{m}"
    );
    // Another database, even for the same users, is not affected.
    let other = p.client_as("app", "app", "postgres").await.unwrap();
    other.simple_query("SELECT 1").await.unwrap();
    let other2 = p.client_as("md5user", "md5pass", "postgres").await.unwrap();
    other2.simple_query("SELECT 1").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    // A freed slot is usable again.
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = p.client_as("md5user", "md5pass", "app").await.unwrap();
    again.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_user_client_connections_a_login_is_refused_and_other_users_go_on() {
    let p = proxy("max_user_client_connections = 2").await;
    let a = p.client_as("md5user", "md5pass", "app").await.unwrap();
    let _b = p.client_as("md5user", "md5pass", "postgres").await.unwrap();
    let err = p
        .client_as("md5user", "md5pass", "app")
        .await
        .expect_err("a third client of md5user is refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    let m = message(&err);
    assert!(
        m.contains("max_user_client_connections = 2") && m.contains("\"md5user\""),
        "{m}"
    );
    // (Two: the limit is per user, app is under it too.)
    let others: Vec<Client> = futures_util::future::join_all(
        (0..2).map(|_| async { p.client_as("app", "app", "app").await.unwrap() }),
    )
    .await;
    for c in &others {
        c.simple_query("SELECT 1").await.unwrap();
    }
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = p.client_as("md5user", "md5pass", "app").await.unwrap();
    again.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_bounds_server_connections_across_a_databases_pools() {
    let p = proxy("max_db_connections = 2\ncheckout_timeout = \"500ms\"").await;
    let a = p.client_as("app", "app", "app").await.unwrap();
    let b = p.client_as("md5user", "md5pass", "app").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Two server connections of app are in use: a third waits, then 53300.
    let c = p.client_as("app", "app", "app").await.unwrap();
    let started = Instant::now();
    let err = c.simple_query("SELECT 1").await.expect_err("no connection");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    let m = message(&err);
    assert!(
        m.contains("max_db_connections = 2") && m.contains("\"app\""),
        "{m}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Another database is not affected.
    let other = p.client_as("app", "app", "postgres").await.unwrap();
    other.simple_query("SELECT 1").await.unwrap();
    // md5user's connection goes idle in its own pool: app's pool may take
    // its place (the idle one is closed).
    b.batch_execute("COMMIT").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_bounds_server_connections_across_a_users_pools() {
    let p = proxy("max_user_connections = 2\ncheckout_timeout = \"500ms\"").await;
    let a = p.client_as("md5user", "md5pass", "app").await.unwrap();
    let b = p.client_as("md5user", "md5pass", "postgres").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let c = p.client_as("md5user", "md5pass", "app").await.unwrap();
    let err = c.simple_query("SELECT 1").await.expect_err("no connection");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    let m = message(&err);
    assert!(
        m.contains("max_user_connections = 2") && m.contains("\"md5user\""),
        "{m}"
    );
    // Another user floods nothing of md5user's and is not held back.
    // (Two: the limit is per user, app is under it too.)
    let others: Vec<Client> = futures_util::future::join_all(
        (0..2).map(|_| async { p.client_as("app", "app", "app").await.unwrap() }),
    )
    .await;
    for o in &others {
        o.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    for o in &others {
        o.batch_execute("COMMIT").await.unwrap();
    }
    b.batch_execute("COMMIT").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_waiting_at_max_db_connections_gets_the_place_of_a_connection_returned_elsewhere(
) {
    let p = proxy("max_db_connections = 2\ncheckout_timeout = \"10s\"").await;
    let a = p.client_as("app", "app", "app").await.unwrap();
    let b = p.client_as("md5user", "md5pass", "app").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let c = p.client_as("app", "app", "app").await.unwrap();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        c.simple_query("SELECT 1").await.map(|_| started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the third checkout did not wait");
    // md5user's connection comes back to its own pool: it is closed, and
    // the waiting checkout of app's pool opens one in its place.
    b.batch_execute("COMMIT").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served well before checkout_timeout")
        .unwrap()
        .unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    a.batch_execute("COMMIT").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
}

//! Pooling behaviour: isolation between clients sharing a server, cleanup of
//! clients that vanish mid-transaction, limits, cancel, auth, session mode,
//! primary discovery and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{error_code, sqlstate, unique, Proxy, Raw};
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sharing_one_server_never_see_each_others_transactions() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let table = unique("iso");
    let a = proxy.client().await;
    let b = proxy.client().await;
    a.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    let writer = {
        let table = table.clone();
        async move {
            for i in 0..40 {
                a.batch_execute(&format!(
                    "BEGIN; SET LOCAL statement_timeout = '4321s'; INSERT INTO {table} VALUES ({i})"
                ))
                .await
                .unwrap();
                tokio::task::yield_now().await;
                a.batch_execute("ROLLBACK").await.unwrap();
            }
        }
    };
    let reader = async {
        for _ in 0..40 {
            let n: i64 = b
                .query_typed(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()[0]
                .get(0);
            assert_eq!(n, 0, "saw another client's uncommitted row");
            let t: String = b
                .query_typed("SELECT current_setting('statement_timeout')", &[])
                .await
                .unwrap()[0]
                .get(0);
            assert_ne!(t, "4321s", "saw another client's SET LOCAL");
        }
    };
    tokio::join!(writer, reader);
    proxy
        .client()
        .await
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

async fn lock_then_vanish(proxy: &Proxy, table: &str, then_sleep: bool) {
    let (client, conn) =
        tokio_postgres::connect(&proxy.url("app", "app", "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM {table} WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
    if then_sleep {
        let sleeper = tokio::spawn(async move {
            let _ = client.batch_execute("SELECT pg_sleep(60)").await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        sleeper.abort();
    }
    // Kill the client: its socket closes with the transaction still open.
    conn_task.abort();
    let _ = conn_task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transaction_does_not_block_the_next() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let table = unique("lock");
    let setup = proxy.client().await;
    setup
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int primary key, v int); INSERT INTO {table} VALUES (1, 0)"
        ))
        .await
        .unwrap();
    for then_sleep in [false, true] {
        lock_then_vanish(&proxy, &table, then_sleep).await;
        let next = proxy.client().await;
        let started = Instant::now();
        next.batch_execute(&format!(
            "SET lock_timeout = '5s'; UPDATE {table} SET v = v + 1 WHERE id = 1"
        ))
        .await
        .unwrap_or_else(|e| panic!("row lock still held (sleeping={then_sleep}): {e}"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let v: i32 = setup
        .query_typed(&format!("SELECT v FROM {table}"), &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(
        v, 2,
        "the vanished clients' transactions were rolled back, ours committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query_and_a_wrong_key_cancels_nothing() {
    let proxy = Proxy::start("default_pool_size = 2").await;
    let c = proxy.client().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = c.batch_execute("SELECT pg_sleep(10)").await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        started.elapsed()
    );
    c.batch_execute("SELECT 1").await.unwrap();

    // Raw client, so we know our key and can forge a wrong one.
    let trust = Proxy::start("auth_type = \"trust\"").await;
    let mut raw = Raw::connect(trust.addr).await;
    raw.startup(0, "app", "app").await;
    let (_, status) = raw.until_ready().await;
    assert_eq!(status, Some(b'I'));
    let (pid, secret) = raw.key.expect("BackendKeyData");
    raw.query("SELECT pg_sleep(1.5)").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    common::send_cancel(trust.addr, (pid, secret.wrapping_add(1))).await;
    common::send_cancel(trust.addr, (pid.wrapping_add(1), secret)).await;
    let (msgs, _) = raw.until_ready().await;
    assert!(
        msgs.iter().all(|(tag, _)| *tag != b'E'),
        "a wrong key cancelled the query"
    );
    assert!(msgs.iter().any(|(tag, _)| *tag == b'C'), "query completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_28p01() {
    let proxy = Proxy::start("").await;
    for (user, pw) in [("app", "wrong"), ("nobody", "app")] {
        let err = proxy
            .client_as(user, pw, "app")
            .await
            .expect_err("login must fail");
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{user}: {err}");
    }
    // md5 on the client side, and md5 + trust on the server side.
    let md5 = Proxy::start("auth_type = \"md5\"").await;
    md5.client_as("app", "app", "app")
        .await
        .unwrap()
        .batch_execute("SELECT 1")
        .await
        .unwrap();
    let err = md5.client_as("app", "nope", "app").await.err().unwrap();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    md5.client_as("md5user", "md5pass", "app")
        .await
        .unwrap()
        .batch_execute("SELECT 1")
        .await
        .unwrap();
    let c = proxy
        .client_as("trustuser", "whatever", "app")
        .await
        .unwrap();
    let who: String = c
        .query_typed("SELECT current_user::text", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(who, "trustuser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_reported_at_login() {
    let proxy = Proxy::start("").await;
    let err = proxy
        .client_as("app", "app", "no_such_db")
        .await
        .expect_err("login must fail");
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients_get_53300() {
    let proxy = Proxy::start("max_client_conn = 2").await;
    let a = proxy.client().await;
    let _b = proxy.client().await;
    let err = proxy
        .client_as("app", "app", "app")
        .await
        .expect_err("third client refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy
        .client()
        .await
        .batch_execute("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_timeout_gives_53300_and_the_connection_stays_usable() {
    let proxy = Proxy::start("default_pool_size = 1\ncheckout_timeout = \"300ms\"").await;
    let holder = proxy.client().await;
    let waiter = proxy.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let err = waiter.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    let err = waiter
        .query_typed("SELECT $1::int", &[(&1i32, Type::INT4)])
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("53300"),
        "extended protocol too"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let v: i32 = waiter
        .query_typed("SELECT $1::int", &[(&5i32, Type::INT4)])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(v, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_settings_and_resets_between_clients() {
    let proxy = Proxy::start("pool_mode = \"session\"\ndefault_pool_size = 1").await;
    let a = proxy.client().await;
    a.batch_execute("SET application_name = 'kept'")
        .await
        .unwrap();
    let stmt = a
        .prepare("SELECT current_setting('application_name')")
        .await
        .unwrap();
    for _ in 0..3 {
        let name: String = a.query_one(&stmt, &[]).await.unwrap().get(0);
        assert_eq!(name, "kept");
    }
    drop(stmt);
    drop(a);
    let b = proxy.client().await;
    let name: String = b
        .query_typed("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_ne!(name, "kept", "DISCARD ALL ran before the server was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_primary_whatever_the_node_order() {
    let cluster = common::cluster();
    let toml = format!(
        "{}\n[cluster]\nnodes = [\"{}\", \"{}\"]\n",
        common::USERS,
        cluster.replicas()[0].addr(),
        cluster.primary().addr()
    );
    let proxy = Proxy::start_with(cluster, &toml).await;
    let c = proxy.client().await;
    let standby: bool = c
        .query_typed("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert!(!standby);
    let table = unique("w");
    c.batch_execute(&format!(
        "CREATE TABLE {table} (v int); INSERT INTO {table} VALUES (1); DROP TABLE {table}"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_running_transaction_finish() {
    let proxy = Proxy::start("shutdown_timeout = \"10s\"").await;
    let addr = proxy.addr;
    // The cluster outlives this proxy: the second one must find the commit
    // there, not in a cluster started anew after the last holder went.
    let _cluster = proxy.cluster.clone();
    let busy = proxy.client().await;
    let idle = proxy.client().await;
    let table = unique("sd");
    busy.batch_execute(&format!(
        "CREATE TABLE {table} (v int); BEGIN; INSERT INTO {table} VALUES (1)"
    ))
    .await
    .unwrap();
    let stopping = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections during shutdown"
    );
    busy.batch_execute("COMMIT")
        .await
        .expect("running transaction may finish");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("run returns once clients are done")
        .unwrap();
    assert!(
        idle.batch_execute("SELECT 1").await.is_err(),
        "idle client was disconnected"
    );
    let second = Proxy::start("").await;
    let check = second.client().await;
    let n: i64 = check
        .query_typed(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(n, 1, "the commit acknowledged during shutdown is there");
    check
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_killed_while_idle_costs_the_next_client_nothing() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let c = proxy.client().await;
    let pid: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    let admin = proxy.direct_admin().await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again: i32 = c
        .query_typed("SELECT pg_backend_pid()", &[])
        .await
        .expect("no error after the idle server died")
        .remove(0)
        .get(0);
    assert_ne!(again, pid, "a fresh server connection was used");
}

/// `server_idle_timeout` counts idle time in the pool, as PgBouncer's does:
/// a server connection busy with one long transaction is not closed when
/// it comes back, and the next transaction gets the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_busy_past_the_idle_timeout_is_kept_when_it_comes_back() {
    let proxy = Proxy::start("default_pool_size = 1\nserver_idle_timeout = \"1s\"").await;
    let c = proxy.client().await;
    let first: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    let busy: i32 = c
        .query_typed("SELECT pg_backend_pid() FROM pg_sleep(1.5)", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(busy, first, "one server, the pool's only one");
    let after: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    assert_eq!(
        after, first,
        "the busy connection was kept, not closed as idle"
    );
}

/// A raw client logged in (trust) as app.
async fn raw_session(addr: std::net::SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.startup(0, "app", "app").await;
    let (_, status) = raw.until_ready().await;
    assert_eq!(status, Some(b'I'), "logged in");
    raw
}

/// The first column of the first row in `msgs`, as text.
fn first_value(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, row) = msgs.iter().find(|(tag, _)| *tag == b'D')?;
    let len = i32::from_be_bytes(row[2..6].try_into().unwrap()) as usize;
    Some(String::from_utf8_lossy(&row[6..6 + len]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_served_in_order_when_a_server_closes_or_comes_back() {
    // One server connection, and a checkout timeout far longer than the
    // test: a turn lost on the way shows as a stuck client, not an answer.
    let proxy =
        Proxy::start("auth_type = \"trust\"\ndefault_pool_size = 1\ncheckout_timeout = \"60s\"")
            .await;
    let mut holder = raw_session(proxy.addr).await;
    holder.query("BEGIN; SELECT pg_backend_pid()").await;
    let (msgs, status) = holder.until_ready().await;
    assert_eq!(status, Some(b'T'));
    let pid: i32 = first_value(&msgs).unwrap().parse().unwrap();
    // Three clients get in line, in this order.
    let mut waiting = vec![];
    for name in ["first", "second", "third"] {
        let mut raw = raw_session(proxy.addr).await;
        raw.query(&format!("SELECT '{name}'")).await;
        waiting.push(tokio::spawn(async move {
            let (msgs, status) = raw.until_ready().await;
            (first_value(&msgs), status, Instant::now())
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The only server connection dies under its client: its slot, not a
    // connection, goes to the first in line, which opens a new one; that
    // one then goes from client to client as each is done.
    let admin = proxy.direct_admin().await;
    admin
        .query("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let mut done = vec![];
    for (w, name) in waiting.into_iter().zip(["first", "second", "third"]) {
        let (value, status, at) = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .unwrap_or_else(|_| panic!("{name} still waits"))
            .unwrap();
        assert_eq!(value.as_deref(), Some(name));
        assert_eq!(status, Some(b'I'));
        done.push(at);
    }
    assert!(done.is_sorted(), "served in the order they came");
    holder.query("SELECT 1").await;
    let (msgs, status) = holder.until_ready().await;
    // Its client learns at its next request that the transaction is gone.
    let (tag, body) = &msgs[0];
    assert_eq!((*tag, error_code(body).as_str()), (b'E', "08006"));
    assert_eq!(status, Some(b'E'), "still in the failed transaction");
}

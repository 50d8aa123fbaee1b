//! Session state under transaction pooling: reported parameters follow the
//! client to whichever server it gets; what cannot be shared pins the client.

mod common;

use std::time::Duration;

use common::{connect_with_messages, Proxy};
use tokio_postgres::AsyncMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_own_timezone_on_a_shared_server() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let utc = proxy.client().await;
    let tokyo = proxy.client().await;
    utc.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    tokyo
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    for _ in 0..20 {
        let a: String = utc
            .query_one("SELECT now()::text", &[])
            .await
            .unwrap()
            .get(0);
        let b: String = tokyo
            .query_one("SELECT now()::text", &[])
            .await
            .unwrap()
            .get(0);
        assert!(a.ends_with("+00"), "UTC client saw {a}");
        assert!(b.ends_with("+09"), "Tokyo client saw {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_shows_the_clients_own_value() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let mut clients = vec![];
    for name in ["alpha", "beta"] {
        let url = format!("{} application_name={name}", proxy.url("app", "app", "app"));
        clients.push((name, common::connect(&url).await.unwrap()));
    }
    for _ in 0..5 {
        for (name, c) in &clients {
            let seen: String = c
                .query_one(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(&seen, name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_temp_tables_pin_the_client_to_its_server() {
    let proxy = Proxy::start("default_pool_size = 3").await;
    let (listener, mut rx) = connect_with_messages(&proxy.url("app", "app", "app")).await;
    listener.batch_execute("LISTEN sy_pin").await.unwrap();
    // Other clients keep the pool busy so an unpinned client would move servers.
    let busy = proxy.client().await;
    let busy_task = tokio::spawn(async move {
        for _ in 0..50 {
            busy.batch_execute("SELECT pg_sleep(0.005)").await.unwrap();
        }
    });
    listener
        .batch_execute("CREATE TEMP TABLE sy_tmp (v int)")
        .await
        .unwrap();
    for i in 0..10 {
        listener
            .batch_execute(&format!("INSERT INTO sy_tmp VALUES ({i})"))
            .await
            .unwrap();
    }
    let n: i64 = listener
        .query_one("SELECT count(*) FROM sy_tmp", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 10,
        "the temp table survives across the client's transactions"
    );

    let notifier = proxy.client().await;
    notifier
        .batch_execute("NOTIFY sy_pin, 'hello'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = rx.recv().await {
            if let AsyncMessage::Notification(n) = m {
                return Some(n.payload().to_string());
            }
        }
        None
    })
    .await
    .expect("notification arrives");
    assert_eq!(got.as_deref(), Some("hello"));
    busy_task.await.unwrap();
}

/// `SHOW name` as the client sees it.
async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Two clients over one server connection: what one does to its session
/// settings follows PostgreSQL's rules for it, and never reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_postgresql_semantics_and_stay_with_their_client() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let a = proxy.client().await;
    let b = proxy.client().await;
    let default = show(&b, "statement_timeout").await;
    let digits = show(&b, "extra_float_digits").await;
    assert_ne!(digits, "3");

    // A SET in a transaction that rolls back is undone.
    a.batch_execute("BEGIN; SET statement_timeout = '7s'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, default);
    // SET LOCAL lasts one transaction.
    a.batch_execute("BEGIN; SET LOCAL statement_timeout = '7s'")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "7s");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, default);
    // A refused SET changes nothing.
    let bad = a.batch_execute("SET statement_timeout = 'soon'").await;
    assert_eq!(
        common::sqlstate(&bad.unwrap_err()).as_deref(),
        Some("22023")
    );
    assert_eq!(show(&a, "statement_timeout").await, default);
    // Behind a comment, or after another statement: seen all the same.
    a.batch_execute("/* why */ SET statement_timeout = '6s'")
        .await
        .unwrap();
    a.batch_execute("SELECT 1; SET search_path TO sy_elsewhere, public")
        .await
        .unwrap();
    a.batch_execute("SELECT set_config('extra_float_digits', '3', false)")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&a, "statement_timeout").await, "6s");
        assert_eq!(show(&a, "search_path").await, "sy_elsewhere, public");
        assert_eq!(show(&a, "extra_float_digits").await, "3");
        assert_eq!(show(&b, "statement_timeout").await, default);
        assert_eq!(show(&b, "search_path").await, "\"$user\", public");
        assert_eq!(show(&b, "extra_float_digits").await, digits);
    }
    // RESET ALL and DISCARD ALL: back to the defaults.
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, default);
    a.batch_execute("SET search_path TO sy_elsewhere")
        .await
        .unwrap();
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");
}

/// A RESET goes back to what the client's startup packet asked for, as it
/// does on PostgreSQL; custom settings (`app.*`) follow the client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_the_startup_value_and_custom_settings_follow() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let url = format!(
        "{} options='-c statement_timeout=3s'",
        proxy.url("app", "app", "app")
    );
    let a = common::connect(&url).await.unwrap();
    let b = proxy.client().await;
    assert_eq!(show(&a, "statement_timeout").await, "3s");
    a.batch_execute("SET statement_timeout = '5s'; SET app.tenant = 'acme'")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "5s");
    let tenant = "SELECT coalesce(current_setting('app.tenant', true), '')";
    // PostgreSQL keeps a custom setting's placeholder once a session made
    // it: another client on that server reads it as empty, never the value.
    let seen: String = b.query_one(tenant, &[]).await.unwrap().get(0);
    assert_eq!(seen, "", "another client does not see app.tenant");
    let seen: String = a.query_one(tenant, &[]).await.unwrap().get(0);
    assert_eq!(seen, "acme");
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "3s");
}

/// Settings PostgreSQL refuses when the proxy replays them: the client gets
/// PostgreSQL's error, and the server keeps what it had, for the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_replay_gives_the_error_and_leaves_the_server_as_it_was() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let base = proxy.url("app", "app", "app");
    let bad = common::connect(&format!(
        "{base} options='-c TimeZone=Bad -c DateStyle=German'"
    ))
    .await
    .unwrap();
    let err = bad.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("22023"), "{err}");
    let german = common::connect(&format!("{base} options='-c DateStyle=German'"))
        .await
        .unwrap();
    let iso = proxy.client().await;
    for _ in 0..3 {
        let d: String = german
            .query_one("SELECT '2024-03-05'::date::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(d, "05.03.2024");
        let d: String = iso
            .query_one("SELECT '2024-03-05'::date::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(d, "2024-03-05");
    }
}

/// `SET ROLE` cannot be replayed safely: the client keeps its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_pins_the_client() {
    let proxy = Proxy::start("default_pool_size = 1\ncheckout_timeout = \"500ms\"").await;
    let a = proxy.client().await;
    let b = proxy.client().await;
    b.simple_query("SELECT 1").await.unwrap();
    a.batch_execute("SET ROLE app").await.unwrap();
    let err = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        common::sqlstate(&err).as_deref(),
        Some("53300"),
        "the only server stays with the client that SET ROLE: {err}"
    );
    let admin = proxy
        .client_as("admin", "adminpw", "pgbouncer")
        .await
        .unwrap();
    let reasons: Vec<String> = admin
        .simple_query("SHOW CLIENTS")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("pinned").map(str::to_string),
            _ => None,
        })
        .filter(|r| !r.is_empty())
        .collect();
    assert_eq!(reasons, ["SET ROLE or SET SESSION AUTHORIZATION"]);
    drop(a);
    common::wait_until(10, "the server comes back", || async {
        b.simple_query("SELECT 1").await.is_ok()
    })
    .await;
}

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

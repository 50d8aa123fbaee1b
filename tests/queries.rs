//! Queries through the proxy with a real driver: simple, extended, pipelined,
//! COPY both ways, notices and notifications, big results, errors in transactions.

mod common;

use common::{connect_with_messages, sqlstate, unique, Proxy};
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_return_the_right_rows() {
    let proxy = Proxy::start("default_pool_size = 2").await;
    let c = proxy.client().await;
    let rows = c
        .simple_query("SELECT 1 AS one, 'two' AS two; SELECT pg_is_in_recovery()")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        values,
        vec!["1", "f"],
        "second statement proves we reached the primary"
    );

    let rows = c
        .query_typed(
            "SELECT $1::int + 1, $2::text",
            &[(&41i32, Type::INT4), (&"hi", Type::TEXT)],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    assert_eq!(rows[0].get::<_, &str>(1), "hi");

    let err = c.query_typed("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    // The session is still usable after an error.
    assert_eq!(
        c.query_typed("SELECT 7", &[]).await.unwrap()[0].get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_queries_keep_their_order() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let c = proxy.client().await;
    // tokio-postgres pipelines concurrent requests on one connection: many
    // Parse/Bind/Execute/Sync batches are in flight before the first reply.
    let futures = (0..50i32).map(|i| {
        let c = &c;
        async move {
            c.query_typed("SELECT $1::int * 2", &[(&i, Type::INT4)])
                .await
                .map(|r| r[0].get::<_, i32>(0))
        }
    });
    let results = futures_util::future::try_join_all(futures).await.unwrap();
    assert_eq!(results, (0..50).map(|i| i * 2).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_inside_a_transaction_need_a_rollback_then_work() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let c = proxy.client().await;
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.batch_execute("SELECT nope").await.is_err());
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("25P02"),
        "in failed transaction"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    // One server: a COPY that kept it would starve the second client below.
    let proxy = Proxy::start("default_pool_size = 1\ncheckout_timeout = \"3s\"").await;
    let c = proxy.client().await;
    let table = unique("copy");
    c.batch_execute(&format!("CREATE TABLE {table} (id int, name text)"))
        .await
        .unwrap();

    let sink = c
        .copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap();
    pin_mut!(sink);
    for i in 0..1000 {
        sink.send(bytes::Bytes::from(format!("{i}\tname{i}\n")))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 1000);

    let stream = c
        .copy_out(&format!(
            "COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"
        ))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 1000);
    assert_eq!(text.lines().nth(999), Some("999\tname999"));

    // A COPY that fails half way leaves the connection usable.
    let sink = c
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    assert!(sink.finish().await.is_err());
    let n: i64 = c
        .query_typed(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(n, 1000);
    let other = proxy.client().await;
    other
        .batch_execute("SELECT 1")
        .await
        .expect("the server went back to the pool after COPY");
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_and_notifications_reach_the_client() {
    let proxy = Proxy::start("pool_mode = \"session\"\ndefault_pool_size = 2").await;
    let (client, mut rx) = connect_with_messages(&proxy.url("app", "app", "app")).await;
    client.batch_execute("LISTEN sy_test; DO $$ BEGIN RAISE NOTICE 'hello notice'; END $$; NOTIFY sy_test, 'payload'").await.unwrap();
    let mut got_notice = false;
    let mut got_notification = false;
    while !(got_notice && got_notification) {
        match tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("messages arrive")
        {
            Some(tokio_postgres::AsyncMessage::Notice(n)) => {
                got_notice |= n.message() == "hello notice"
            }
            Some(tokio_postgres::AsyncMessage::Notification(n)) => {
                got_notification |= n.payload() == "payload"
            }
            Some(_) => {}
            None => panic!("connection ended"),
        }
    }
}

/// Peak resident memory of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100mb_result_streams_without_the_proxy_growing() {
    // The proxy runs as its own process so its memory can be measured alone.
    let cluster = common::cluster();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(unique("sy_big"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{}\n[cluster]\nnodes = [\"{}\"]\n",
            common::USERS,
            cluster.primary().addr()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--config", cfg.to_str().unwrap(), "--log-level", "warn"])
        .spawn()
        .unwrap();
    let url = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
    let mut client = None;
    for _ in 0..100 {
        if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            client = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let c = client.expect("proxy process accepts connections");
    c.simple_query("SELECT 1").await.unwrap();
    let before = vm_hwm_kib(child.id());

    // 120 000 rows of 1 000 bytes: about 120 MB of DataRows, read as a stream.
    let rows = c
        .query_raw(
            "SELECT repeat('x', 1000) FROM generate_series(1, 120000)",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    pin_mut!(rows);
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows.try_next().await.unwrap() {
        count += 1;
        bytes += row.get::<_, &str>(0).len() as u64;
    }
    assert_eq!(count, 120_000);
    assert!(bytes >= 100_000_000);
    let after = vm_hwm_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        after - before < 20 * 1024,
        "proxy peak memory grew by {} KiB for a 120 MB result",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_a_script_with_copy_through_the_proxy() {
    let proxy = Proxy::start("default_pool_size = 2").await;
    let table = unique("psql");
    let script = format!(
        "CREATE TABLE {table} (id int, t text);\n\
         \\copy {table} FROM STDIN\n1\tone\n2\ttwo\n\\.\n\
         BEGIN;\nUPDATE {table} SET t = upper(t);\nCOMMIT;\n\
         SELECT string_agg(t, ',' ORDER BY id) FROM {table};\n\
         DROP TABLE {table};\n"
    );
    let mut child = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            &proxy.url("app", "app", "app"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql is installed");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ONE,TWO");
}

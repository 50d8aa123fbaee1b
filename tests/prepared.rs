//! Named prepared statements under transaction pooling: prepared once, used
//! on whichever server connection the client gets; names are per client;
//! failed Parse, Close and eviction behave as PostgreSQL would.

mod common;

use bytes::{BufMut, BytesMut};
use common::{error_code, Proxy, Raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_once_work_across_transactions_and_servers() {
    let proxy = Proxy::start("default_pool_size = 2").await;
    let mut tasks = vec![];
    for client_no in 0..10i32 {
        let c = proxy.client().await;
        tasks.push(tokio::spawn(async move {
            // Same name (s0, s1 ... per client) for different texts across clients.
            let add = c
                .prepare(&format!("SELECT $1::int + {client_no}"))
                .await
                .unwrap();
            let echo = c.prepare("SELECT $1::text").await.unwrap();
            for i in 0..100i32 {
                let v: i32 = c.query_one(&add, &[&i]).await.unwrap().get(0);
                assert_eq!(
                    v,
                    i + client_no,
                    "client {client_no} got another client's statement"
                );
                let t: String = c
                    .query_one(&echo, &[&format!("c{client_no}-{i}")])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(t, format!("c{client_no}-{i}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    msg(
        out,
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
    );
}

fn bind_execute_sync(out: &mut BytesMut, name: &str) {
    msg(
        out,
        b'B',
        &[b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"].concat(),
    );
    msg(out, b'E', b"\0\0\0\0\0");
    msg(out, b'S', b"");
}

/// Tags and the first DataRow's first value up to ReadyForQuery.
async fn reply(raw: &mut Raw) -> (String, Option<String>) {
    let (msgs, status) = raw.until_ready().await;
    let mut tags: String = msgs.iter().map(|(t, _)| *t as char).collect();
    tags.push('Z');
    assert!(status.is_some(), "connection ended");
    let value = msgs.iter().find(|(t, _)| *t == b'D').map(|(_, b)| {
        let len = i32::from_be_bytes(b[2..6].try_into().unwrap()) as usize;
        String::from_utf8_lossy(&b[6..6 + len]).into_owned()
    });
    if let Some((_, body)) = msgs.iter().find(|(t, _)| *t == b'E') {
        tags.push_str(&format!(" {}", error_code(body)));
    }
    (tags, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_parse_close_and_reparse_behave_like_postgresql() {
    let proxy = Proxy::start("auth_type = \"trust\"\ndefault_pool_size = 2").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.startup(0, "app", "app").await;
    raw.until_ready().await;
    let mut out = BytesMut::new();

    // A failing Parse leaves no statement behind.
    parse(&mut out, "st", "SELECT nope");
    msg(&mut out, b'S', b"");
    raw.send(&out).await;
    assert_eq!(reply(&mut raw).await.0, "EZ 42703");
    out.clear();
    bind_execute_sync(&mut out, "st");
    raw.send(&out).await;
    assert_eq!(
        reply(&mut raw).await.0,
        "EZ 26000",
        "no mapping left by the failed Parse"
    );

    // The same name, now with good text.
    out.clear();
    parse(&mut out, "st", "SELECT 41 + 1");
    bind_execute_sync(&mut out, "st");
    raw.send(&out).await;
    assert_eq!(
        reply(&mut raw).await,
        ("12DCZ".to_string(), Some("42".to_string()))
    );

    // Close, then the name is gone; re-Parse with another text works.
    out.clear();
    msg(&mut out, b'C', b"Sst\0");
    msg(&mut out, b'S', b"");
    raw.send(&out).await;
    assert_eq!(reply(&mut raw).await.0, "3Z");
    out.clear();
    bind_execute_sync(&mut out, "st");
    raw.send(&out).await;
    assert_eq!(reply(&mut raw).await.0, "EZ 26000");
    out.clear();
    parse(&mut out, "st", "SELECT 'again'");
    bind_execute_sync(&mut out, "st");
    raw.send(&out).await;
    assert_eq!(
        reply(&mut raw).await,
        ("12DCZ".to_string(), Some("again".to_string()))
    );

    // Describe of a statement prepared earlier, in a later transaction.
    out.clear();
    msg(&mut out, b'D', b"Sst\0");
    msg(&mut out, b'S', b"");
    raw.send(&out).await;
    assert_eq!(reply(&mut raw).await.0, "tTZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_beyond_max_prepared_statements_keeps_results_right() {
    let proxy = Proxy::start("default_pool_size = 1\nmax_prepared_statements = 3").await;
    let c = proxy.client().await;
    let mut stmts = vec![];
    for i in 0..10i32 {
        stmts.push(c.prepare(&format!("SELECT {i} + $1::int")).await.unwrap());
    }
    for round in 0..3i32 {
        for (i, s) in stmts.iter().enumerate() {
            let v: i32 = c.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, i as i32 + round);
        }
    }
    let admin = proxy.direct_admin().await;
    let n: i64 = admin
        .query_one(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM pg_stat_activity a WHERE a.usename = 'app' GROUP BY pid) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 1);
}

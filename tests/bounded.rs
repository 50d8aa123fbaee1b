//! Resources no client can run away with: what a client asks for that the
//! proxy keeps after it left (pools and their metric series).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::shipped::Shipped;
use common::{cluster, http_request, nodes_toml, sqlstate, Proxy, Raw, USERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

/// A proxy in front of the shared cluster, `extra` in `[proxy]`, with its
/// HTTP endpoints.
async fn proxy(extra: &str) -> (Proxy, SocketAddr) {
    let cluster = cluster();
    let toml = format!(
        "[proxy]\n{extra}\n{USERS}\n[cluster]\nnodes = [{}]\n",
        nodes_toml(&cluster)
    );
    Proxy::start_with_http(cluster, &toml).await
}

/// `SHOW POOLS` on the admin console: (database, user) of each pool.
async fn pools(admin: &Client) -> Vec<(String, String)> {
    let rows = admin.simple_query("SHOW POOLS").await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap_or_default().to_string(),
                r.get(1).unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_to_databases_that_do_not_exist_leave_no_pool_behind() {
    let (p, http) = proxy("").await;
    for i in 0..20 {
        let db = format!("no_such_db_{i}");
        let err = p.client_as("app", "app", &db).await.expect_err("refused");
        // PostgreSQL's own answer: the database does not exist.
        assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err:?}");
    }
    let c = p.client().await;
    c.simple_query("SELECT 1").await.unwrap();
    let admin = p.client_as("admin", "adminpw", "switchyard").await.unwrap();
    let listed = pools(&admin).await;
    assert_eq!(listed, vec![("app".into(), "app".into())], "{listed:?}");
    let (_, metrics) = http_request(http, "GET", "/metrics").await;
    assert!(!metrics.contains("no_such_db"), "series for refused logins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_pools_a_login_is_refused_with_53300_and_the_others_go_on() {
    let (p, _) = proxy("max_pools = 2").await;
    let a = p.client_as("app", "app", "app").await.unwrap();
    let b = p.client_as("app", "app", "postgres").await.unwrap();
    let err = p
        .client_as("md5user", "md5pass", "app")
        .await
        .expect_err("a third pool is refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message.as_deref().unwrap_or("").contains("max_pools"),
        "{err:?}"
    );
    // The existing pools serve on, and a client of one of them gets in.
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    let again = p.client_as("app", "app", "app").await.unwrap();
    again.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_nobody_uses_is_dropped_after_server_idle_timeout() {
    let (p, http) = proxy("server_idle_timeout = \"1s\"").await;
    let c = p.client_as("app", "app", "postgres").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    let admin = p.client_as("admin", "adminpw", "switchyard").await.unwrap();
    let gone = common::wait_until(15, "the unused pool is dropped", || {
        let admin = &admin;
        async move { !pools(admin).await.iter().any(|(db, _)| db == "postgres") }
    });
    gone.await;
    let (_, metrics) = http_request(http, "GET", "/metrics").await;
    assert!(
        !metrics.contains("database=\"postgres\""),
        "the dropped pool's series are still exported"
    );
    // A new client gets a new pool.
    let c = p.client_as("app", "app", "postgres").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    assert!(pools(&admin).await.iter().any(|(db, _)| db == "postgres"));
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_command_that_hangs_is_killed_and_its_stderr_stays_out_of_events() {
    let (cluster, primary, _replica) = common::private_pair().await;
    let nodes = nodes_toml(&cluster);
    // A hook that prints a secret and then never ends, nor does its child.
    let nap = format!("600.{}", std::process::id());
    let toml = format!(
        "{USERS}\n[failover]\nfence_command = 'echo SECRET-{nap} >&2; sleep {nap}'\n\
         fence_timeout = \"1s\"\n[cluster]\nnodes = [{nodes}]\nuser = \"{}\"\npassword = \"{}\"\n",
        switchyard::local_cluster::CLUSTER_USER,
        switchyard::local_cluster::CLUSTER_PASSWORD
    );
    let (p, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let c = p.client().await;
    c.simple_query("SELECT 1").await.unwrap();
    let n = primary.clone();
    tokio::task::spawn_blocking(move || n.stop(switchyard::local_cluster::StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
    common::wait_until(30, "the fence_command is given up on", || async {
        let (_, events) = http_request(http, "GET", "/events").await;
        events.contains("fence_command timed out")
    })
    .await;
    let (_, events) = http_request(http, "GET", "/events").await;
    assert!(!events.contains("SECRET-"), "stderr in /events: {events}");
    // Neither the hook's shell nor what it started is left running.
    common::wait_until(5, "the hook's processes are gone", || async {
        processes_with(&nap) == 0
    })
    .await;
}

/// Whether `GET /healthz` is answered 200 (false on any error: a refused
/// connection included).
async fn healthz_ok(http: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(http).await else {
        return false;
    };
    if s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text).await;
    text.starts_with(b"HTTP/1.0 200") || text.starts_with(b"HTTP/1.1 200")
}

/// Whether the server closed `s` within `secs` (reads until EOF or reset).
async fn closed_by_server(s: &mut tokio::net::TcpStream, secs: u64) -> bool {
    closed_by_server_ms(s, secs * 1000).await
}

/// Whether the server closed `s` within `ms` milliseconds.
async fn closed_by_server_ms(s: &mut tokio::net::TcpStream, ms: u64) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http_client_is_cut_off_and_http_connections_are_capped() {
    use tokio::io::AsyncWriteExt;
    let (_p, http) = proxy("").await;
    // Half a request head, then nothing: closed after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut slow, 15).await,
        "a half request head is kept open"
    );
    // 100 silent connections: those past the cap are closed at once.
    let mut silent = vec![];
    for _ in 0..100 {
        silent.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    // The last 36 went past the 64 allowed; checked well inside the header
    // timeout, so a close can only be the cap's.
    let mut closed = 0;
    for s in silent.iter_mut().rev().take(36) {
        closed += usize::from(closed_by_server_ms(s, 100).await);
    }
    assert!(
        closed >= 30,
        "only {closed} of the 36 connections past the cap were refused"
    );
    // Once the silent ones time out, probes are served again.
    common::wait_until(15, "/healthz answers again", || async {
        healthz_ok(http).await
    })
    .await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_is_ended_and_its_locks_released() {
    let (p, _) = proxy("idle_transaction_timeout = \"1s\"\ndefault_pool_size = 2").await;
    let table = common::unique("idle_txn");
    let setup = p.client().await;
    setup
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v int); INSERT INTO {table} VALUES (1, 0)"
        ))
        .await
        .unwrap();
    // Takes a row lock, then goes quiet inside the transaction.
    let (idle, mut conn) =
        tokio_postgres::connect(&p.url("app", "app", "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    // What ends the connection: the FATAL the proxy sends while it idles.
    let ended = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = futures_util::StreamExt::next(&mut messages).await {
            if let Err(e) = m {
                return e.as_db_error().map(|d| d.code().code().to_string());
            }
        }
        None
    });
    idle.batch_execute(&format!("BEGIN; UPDATE {table} SET v = 1 WHERE id = 1"))
        .await
        .unwrap();
    // Another client needs that row: it gets it once the idle one is ended.
    let other = p.client().await;
    let update = format!("UPDATE {table} SET v = 2 WHERE id = 1");
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        other.batch_execute(&update),
    )
    .await;
    assert!(
        matches!(done, Ok(Ok(()))),
        "the row stayed locked: {done:?}"
    );
    // The idle client was told why, as PostgreSQL tells it (25P03), and its
    // transaction was rolled back.
    let code = tokio::time::timeout(std::time::Duration::from_secs(5), ended)
        .await
        .expect("the idle client's connection ended")
        .unwrap();
    assert_eq!(code.as_deref(), Some("25P03"));
    assert!(
        idle.simple_query("SELECT 1").await.is_err(),
        "the session ended"
    );
    let v = setup
        .query_one(&format!("SELECT v FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap();
    assert_eq!(
        v.get::<_, i32>(0),
        2,
        "the idle transaction's update was rolled back"
    );
}

/// The kernel's timer state (`tr` of /proc/net/tcp: 2 = keepalive) of the
/// socket from local port `local` to remote port `remote`.
fn tcp_timer(local: u16, remote: u16) -> Option<u8> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        (port(f[1])? == local && port(f[2])? == remote)
            .then(|| f[5].split(':').next()?.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sockets_have_keepalives_so_a_vanished_client_is_noticed() {
    let (p, _) = proxy("").await;
    let s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mine = s.local_addr().unwrap().port();
    // The proxy's end of this connection runs a keepalive timer.
    common::wait_until(5, "a keepalive timer on the proxy's socket", || async {
        tcp_timer(p.addr.port(), mine) == Some(2)
    })
    .await;
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A raw client logged in (trust) as app to the shipped proxy.
async fn raw_session(addr: SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.startup(0, "app", "app").await;
    let (_, status) = raw.until_ready().await;
    assert_eq!(status, Some(b'I'), "logged in");
    raw
}

/// Writes `unit` over and over, reading nothing, for `secs` or until `max`
/// bytes went out; returns the bytes written (possibly ending mid-unit).
async fn flood(stream: &mut tokio::net::TcpStream, unit: &[u8], max: usize, secs: u64) -> usize {
    let chunk: Vec<u8> = unit.repeat(64 * 1024 / unit.len());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut written = 0;
    while written < max {
        let at = written % chunk.len();
        match tokio::time::timeout_at(deadline, stream.write(&chunk[at..])).await {
            Ok(Ok(n)) if n > 0 => written += n,
            _ => break,
        }
    }
    written
}

/// Finishes the unit cut short at `written`, sends Sync, and reads every
/// reply until the `zs`-th ReadyForQuery: the tags received, counted.
async fn finish_and_count(raw: Raw, unit: &[u8], written: usize, zs: usize) -> HashMap<u8, usize> {
    let Raw {
        stream, mut buf, ..
    } = raw;
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut seen: HashMap<u8, usize> = HashMap::new();
        loop {
            while let Some((tag, _)) = common::take_message(&mut buf) {
                *seen.entry(tag).or_default() += 1;
                if tag == b'Z' && seen[&tag] == zs {
                    return seen;
                }
            }
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(60), rd.read_buf(&mut buf));
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return seen,
            }
        }
    });
    // The rest of the unit cut short, if one was.
    let rest = &unit[written % unit.len()..][..(unit.len() - written % unit.len()) % unit.len()];
    wr.write_all(rest).await.unwrap();
    wr.write_all(b"S\0\0\0\x04").await.unwrap();
    reader.await.unwrap()
}

/// Close of statement `s1`: answered by the proxy itself in transaction mode.
const CLOSE_S1: &[u8] = b"C\0\0\0\x08Ss1\0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_the_proxys_own_answers_cannot_grow_its_memory() {
    let cluster = cluster();
    let proxy = Shipped::start(&cluster, "auth_type = \"trust\"").await;
    let mut raw = raw_session(proxy.addr).await;
    let before = rss_kib(proxy.pid());
    // Close + Flush, the answers never read.
    let unit = [CLOSE_S1, b"H\0\0\0\x04"].concat();
    let written = flood(&mut raw.stream, &unit, 256 << 20, 6).await;
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    let units = written.div_ceil(unit.len());
    eprintln!("{written} bytes sent, proxy grew {grown} KiB");
    assert!(grown < 16 * 1024, "the proxy grew {grown} KiB");
    // Nothing was dropped: every Close is answered once the client reads.
    let seen = finish_and_count(raw, &unit, written, 1).await;
    assert_eq!(seen.get(&b'3').copied(), Some(units), "{seen:?}");
    assert_eq!(seen.get(&b'Z').copied(), Some(1), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_queued_behind_a_long_query_are_bounded() {
    let cluster = cluster();
    let proxy = Shipped::start(&cluster, "auth_type = \"trust\"").await;
    let mut raw = raw_session(proxy.addr).await;
    let before = rss_kib(proxy.pid());
    raw.query("SELECT pg_sleep(4)").await;
    let written = flood(&mut raw.stream, CLOSE_S1, 64 << 20, 3).await;
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    let units = written.div_ceil(CLOSE_S1.len());
    eprintln!("{written} bytes sent behind pg_sleep, proxy grew {grown} KiB");
    assert!(grown < 16 * 1024, "the proxy grew {grown} KiB");
    let seen = finish_and_count(raw, CLOSE_S1, written, 2).await;
    // The query's reply (and its ReadyForQuery) come first; the Sync's last.
    assert_eq!(seen.get(&b'Z').copied(), Some(2), "{seen:?}");
    assert_eq!(seen.get(&b'C').copied(), Some(1), "{seen:?}");
    assert_eq!(seen.get(&b'3').copied(), Some(units), "{seen:?}");
}

/// A Parse of `query` as statement `name` (no parameter types).
fn parse_frame(name: &str, query: &str) -> Vec<u8> {
    let body = [name.as_bytes(), b"\0", query.as_bytes(), b"\0\0\0"].concat();
    [&[b'P'][..], &(body.len() as u32 + 4).to_be_bytes(), &body].concat()
}

/// Sends `batch` while reading the replies up to the next ReadyForQuery:
/// the replies (tag, body) and the status.
async fn pipeline(raw: &mut Raw, batch: Vec<u8>) -> (Vec<(u8, Vec<u8>)>, Option<u8>) {
    let (mut rd, mut wr) = raw.stream.split();
    let buf = &mut raw.buf;
    let write = async move { wr.write_all(&batch).await.unwrap() };
    let read = async move {
        let mut msgs = vec![];
        loop {
            while let Some((tag, body)) = common::take_message(buf) {
                if tag == b'Z' {
                    return (msgs, body.first().copied());
                }
                msgs.push((tag, body));
            }
            let more = tokio::time::timeout(std::time::Duration::from_secs(60), rd.read_buf(buf));
            match more.await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return (msgs, None),
            }
        }
    };
    tokio::join!(write, read).1
}

/// The tags of `msgs`, as a string.
fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_prepared_statements_are_bounded_and_share_their_text() {
    let cluster = cluster();
    let extra = "auth_type = \"trust\"\nmax_client_prepared_statements = 150\n\
                 max_client_prepared_bytes = 1048576";
    let proxy = Shipped::start(&cluster, extra).await;
    let mut raw = raw_session(proxy.addr).await;
    let before = rss_kib(proxy.pid());
    // 200 names for one 256 KiB text, pipelined: one copy is kept, and
    // names past the count are refused.
    let text = format!("SELECT 1 /* {} */", "x".repeat(256 << 10));
    let mut batch: Vec<u8> = (1..=200)
        .flat_map(|i| parse_frame(&format!("s{i}"), &text))
        .collect();
    batch.extend_from_slice(b"S\0\0\0\x04");
    let (msgs, status) = pipeline(&mut raw, batch).await;
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    eprintln!("200 names of one 256 KiB text: the proxy grew {grown} KiB");
    assert_eq!(status, Some(b'I'));
    assert_eq!(tags(&msgs), format!("{}E", "1".repeat(150)));
    let err = String::from_utf8_lossy(&msgs[150].1);
    assert!(
        err.contains("53400") && err.contains("max_client_prepared_statements = 150"),
        "{err}"
    );
    assert!(
        grown < 16 * 1024,
        "200 names of one 256 KiB text grew the proxy {grown} KiB"
    );
    // The connection goes on, with the statements it has.
    let bind = b"B\0\0\0\x0e\0s1\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04".to_vec();
    let (msgs, status) = pipeline(&mut raw, bind).await;
    assert_eq!((tags(&msgs).as_str(), status), ("2DC", Some(b'I')));

    // Distinct texts count against the bytes, and a refusal inside a
    // transaction fails it, as an error there does on PostgreSQL.
    let mut raw = raw_session(proxy.addr).await;
    let mut batch = b"Q\0\0\0\x0aBEGIN\0".to_vec();
    for i in 0..6 {
        batch.extend(parse_frame(
            &format!("t{i}"),
            &format!("SELECT {i} /* {} */", "y".repeat(256 << 10)),
        ));
    }
    batch.extend_from_slice(b"S\0\0\0\x04");
    let (msgs, status) = pipeline(&mut raw, batch).await;
    assert_eq!((tags(&msgs).as_str(), status), ("C", Some(b'T')), "BEGIN");
    let (msgs, status) = pipeline(&mut raw, Vec::new()).await;
    assert_eq!((tags(&msgs).as_str(), status), ("111E", Some(b'E')));
    let err = String::from_utf8_lossy(&msgs[3].1);
    assert!(err.contains("max_client_prepared_bytes = 1048576"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_a_long_query_and_gives_up_on_a_frozen_server() {
    let (p, _) = proxy("query_timeout = \"1s\"").await;
    let c = p.client().await;
    let started = std::time::Instant::now();
    let err = c
        .simple_query("SELECT pg_sleep(30)")
        .await
        .expect_err("cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Quick requests, one after another, each get the whole limit.
    for _ in 0..3 {
        c.simple_query("SELECT pg_sleep(0.6)").await.unwrap();
    }
    c.simple_query("SELECT 1").await.unwrap();

    // A server that answers nothing, not even the cancel (its backend stopped).
    c.batch_execute("BEGIN").await.unwrap();
    let row = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap();
    let pid: i32 = row.get(0);
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        c.simple_query("SELECT 1"),
    )
    .await
    .expect("answered, not left waiting")
    .expect_err("its server is lost");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // The client goes on: its lost transaction ends, then a new one works.
    c.batch_execute("ROLLBACK").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_on_a_paused_pool_gives_up_after_query_wait_timeout() {
    let (p, _) = proxy("query_wait_timeout = \"1s\"").await;
    let c = p.client().await;
    c.simple_query("SELECT 1").await.unwrap();
    let admin = p.client_as("admin", "adminpw", "switchyard").await.unwrap();
    admin.simple_query("PAUSE app").await.unwrap();
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        c.simple_query("SELECT 1"),
    );
    let err = waited
        .await
        .expect("not held forever")
        .expect_err("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message.unwrap_or_default().contains("query_wait_timeout"),
        "{err:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    admin.simple_query("RESUME app").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_bind_of_a_named_statement_streams_instead_of_being_held() {
    // Held whole, a 24 MiB Bind would break a 1 MiB max_message_size.
    let cluster = cluster();
    let extra = "max_message_size = 1048576\ndefault_pool_size = 1";
    let proxy = Shipped::start(&cluster, extra).await;
    let url = proxy.url("app", "app", "app");
    let (a, b) = (
        common::connect(&url).await.unwrap(),
        common::connect(&url).await.unwrap(),
    );
    let sql = "SELECT length($1::bytea), get_byte($1::bytea, 0), get_byte($1::bytea, length($1::bytea) - 1)";
    let before = rss_kib(proxy.pid());
    for (i, c) in [&a, &b, &a].into_iter().enumerate() {
        // Each client's statement is new to the server or shared with the
        // other's: the Parse injected before a streamed Bind works too.
        let stmt = c.prepare(sql).await.unwrap();
        let mut data = vec![7u8; 24 << 20];
        data[0] = i as u8;
        *data.last_mut().unwrap() = 9;
        let row = c.query_one(&stmt, &[&data]).await.unwrap();
        let got: (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(got, (24 << 20, i as i32, 9));
    }
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    eprintln!("three 24 MiB Binds: the proxy grew {grown} KiB");
    assert!(grown < 16 * 1024, "the proxy grew {grown} KiB");
    a.simple_query("SELECT 1").await.unwrap();
}

/// A simple Query frame for `sql`.
fn query_frame(sql: &str) -> Vec<u8> {
    let body = [sql.as_bytes(), b"\0"].concat();
    [&[b'Q'][..], &(body.len() as u32 + 4).to_be_bytes(), &body].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_queries_share_max_memory_and_wait_or_get_53200() {
    let cluster = cluster();
    let extra = "auth_type = \"trust\"\nmax_memory = 4194304\ncheckout_timeout = \"1s\"";
    let proxy = Shipped::start(&cluster, extra).await;
    let sql = |mib: usize| format!("SELECT length('{}')", "x".repeat(mib << 20));
    // A holds 3 MiB of the 4: its Query arrives slowly, half of it sent.
    let mut a = raw_session(proxy.addr).await;
    let three = query_frame(&sql(3));
    a.send(&three[..three.len() / 2]).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // B's 2 MiB finds no room, waits checkout_timeout, and is refused;
    // its connection goes on.
    let url = proxy.url("app", "app", "app");
    let b = common::connect(&url).await.unwrap();
    let err = b.simple_query(&sql(2)).await.expect_err("no room");
    assert_eq!(sqlstate(&err).as_deref(), Some("53200"), "{err:?}");
    b.simple_query("SELECT 1").await.unwrap();
    // 5 MiB can never fit: refused at once.
    let started = std::time::Instant::now();
    let err = b.simple_query(&sql(5)).await.expect_err("never fits");
    assert_eq!(sqlstate(&err).as_deref(), Some("53200"), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    // Inside a transaction the message cannot be skipped: the client is
    // told and closed, its transaction rolled back.
    let c = common::connect(&url).await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let err = c.simple_query(&sql(2)).await.expect_err("no room");
    assert_eq!(sqlstate(&err).as_deref(), Some("53200"), "{err:?}");
    assert!(c.simple_query("SELECT 1").await.is_err(), "closed");
    // A finishes; its query runs, and the room is B's again.
    a.send(&three[three.len() / 2..]).await;
    let (msgs, status) = a.until_ready().await;
    assert_eq!((tags(&msgs).as_str(), status), ("TDC", Some(b'I')));
    let rows = b.simple_query(&sql(2)).await.unwrap();
    let got = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(got.as_deref(), Some("2097152"));
}

/// The harness's binary starts even when a port it picked is taken before
/// the binary binds it: `free_port` finds a port free but cannot hold it,
/// and the tests beside this one bind ports too. The first configuration
/// names a port that is taken; the binary exits, and is started again on
/// fresh ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_binary_moves_to_other_ports_when_its_own_is_taken() {
    let cluster = cluster();
    let nodes = nodes_toml(&cluster);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let proxy = Shipped::start_with(|addr, http| {
        let first = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
        let listen = if first { taken_addr } else { addr };
        format!(
            "[proxy]\nlisten = \"{listen}\"\n{USERS}\n[cluster]\nnodes = [{nodes}]\n\
             [http]\nlisten = \"{http}\"\n"
        )
    })
    .await;
    assert_eq!(tries.load(std::sync::atomic::Ordering::Relaxed), 2);
    let url = proxy.url(
        switchyard::local_cluster::APP_USER,
        switchyard::local_cluster::APP_PASSWORD,
        switchyard::local_cluster::APP_DB,
    );
    let client = common::connect(&url).await.expect("a client logs in");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

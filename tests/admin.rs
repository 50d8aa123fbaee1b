//! The admin console through real clients: PgBouncer's SHOW columns, who may
//! get in, PAUSE/RESUME/KILL/RECONNECT/RELOAD, and garbage.

mod common;

use std::time::Duration;

use common::{sqlstate, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Column names and rows (as text) of a simple-protocol SHOW.
async fn show(admin: &Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let msgs = admin
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut columns = vec![];
    let mut rows = vec![];
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
            _ => {}
        }
    }
    (columns, rows)
}

/// The value of `column` in `row`.
fn cell<'a>(columns: &[String], row: &'a [Option<String>], column: &str) -> Option<&'a str> {
    let i = columns.iter().position(|c| c == column)?;
    row[i].as_deref()
}

fn num(columns: &[String], row: &[Option<String>], column: &str) -> i64 {
    cell(columns, row, column)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{column} is not a number in {row:?}"))
}

async fn admin(proxy: &Proxy, db: &str) -> Client {
    proxy
        .client_as("admin", "adminpw", db)
        .await
        .expect("admin logs in")
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

fn names(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| c.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_answer_with_pgbouncer_columns() {
    let proxy = Proxy::start("").await;
    let app = proxy.client().await;
    for _ in 0..5 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    let stmt = app.prepare("SELECT $1::int").await.unwrap();
    app.query(&stmt, &[&7i32]).await.unwrap();
    let admin = admin(&proxy, "pgbouncer").await;

    let (cols, rows) = show(&admin, "SHOW POOLS").await;
    assert_eq!(
        cols,
        names(&[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
        ])
    );
    let pool = rows
        .iter()
        .find(|r| {
            cell(&cols, r, "database") == Some("app") && cell(&cols, r, "user") == Some("app")
        })
        .expect("a pool for app/app");
    assert_eq!(num(&cols, pool, "cl_active"), 1);
    assert_eq!(num(&cols, pool, "cl_waiting"), 0);
    assert!(num(&cols, pool, "sv_idle") >= 1);
    assert_eq!(cell(&cols, pool, "pool_mode"), Some("transaction"));

    let (cols, rows) = show(&admin, "SHOW STATS").await;
    let stat_fields = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "received",
        "sent",
        "xact_time",
        "query_time",
        "wait_time",
        "client_parse_count",
        "server_parse_count",
        "bind_count",
    ];
    let mut want = vec!["database".to_string()];
    want.extend(stat_fields.iter().map(|f| format!("total_{f}")));
    want.extend(
        stat_fields
            .iter()
            .map(|f| format!("avg_{}", if *f == "received" { "recv" } else { f })),
    );
    // PgBouncer's columns first, then the recent latency percentiles.
    for series in ["query", "xact", "wait"] {
        for window in ["1m", "5m"] {
            for q in ["p50", "p99"] {
                want.push(format!("{series}_{q}_{window}_us"));
            }
        }
    }
    assert_eq!(cols, want);
    let app_stats = rows
        .iter()
        .find(|r| cell(&cols, r, "database") == Some("app"))
        .expect("stats for app");
    let p50 = num(&cols, app_stats, "query_p50_1m_us");
    assert!(p50 > 0 && p50 <= num(&cols, app_stats, "query_p99_1m_us"));
    assert!(
        num(&cols, app_stats, "total_xact_count") >= 6,
        "{app_stats:?}"
    );
    assert!(num(&cols, app_stats, "total_query_count") >= 6);
    assert!(num(&cols, app_stats, "total_query_time") > 0);
    assert!(num(&cols, app_stats, "total_received") > 0);
    assert!(num(&cols, app_stats, "total_client_parse_count") >= 1);
    assert!(num(&cols, app_stats, "total_bind_count") >= 1);

    let (cols, _) = show(&admin, "SHOW STATS_TOTALS").await;
    assert_eq!(
        cols[1..],
        want[1..12]
            .iter()
            .map(|c| c["total_".len()..].to_string())
            .collect::<Vec<_>>()[..]
    );
    let (cols, _) = show(&admin, "SHOW STATS_AVERAGES").await;
    assert_eq!(cols[4], "recv");
    assert_eq!(cols.len(), 12);

    let connection_columns = names(&[
        "type",
        "user",
        "database",
        "replication",
        "state",
        "addr",
        "port",
        "local_addr",
        "local_port",
        "connect_time",
        "request_time",
        "wait",
        "wait_us",
        "close_needed",
        "ptr",
        "link",
        "remote_pid",
        "tls",
        "application_name",
        "prepared_statements",
        "id",
        // Switchyard's own, last: why the client keeps its server, if it does.
        "pinned",
    ]);
    let (cols, rows) = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(cols, connection_columns);
    let me = rows
        .iter()
        .find(|r| cell(&cols, r, "user") == Some("app"))
        .expect("the app client");
    assert_eq!(cell(&cols, me, "type"), Some("C"));
    assert_eq!(cell(&cols, me, "state"), Some("idle"));
    assert_eq!(cell(&cols, me, "addr"), Some("127.0.0.1"));
    let (cols, rows) = show(&admin, "SHOW SERVERS").await;
    assert_eq!(cols, connection_columns);
    let server = rows
        .iter()
        .find(|r| cell(&cols, r, "database") == Some("app"))
        .expect("an app server connection");
    assert_eq!(cell(&cols, server, "state"), Some("idle"));
    assert_eq!(
        cell(&cols, server, "port").map(str::to_string),
        Some(proxy.cluster.primary().port().to_string())
    );
    assert!(num(&cols, server, "remote_pid") > 0);

    let (cols, rows) = show(&admin, "SHOW DATABASES").await;
    assert_eq!(
        &cols[..6],
        &names(&[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size"
        ])[..]
    );
    assert!(
        cols.contains(&"paused".to_string()) && cols.contains(&"current_connections".to_string())
    );
    let db = rows
        .iter()
        .find(|r| cell(&cols, r, "name") == Some("app"))
        .unwrap();
    assert_eq!(num(&cols, db, "pool_size"), 20);
    assert_eq!(num(&cols, db, "paused"), 0);

    let (cols, rows) = show(&admin, "SHOW CONFIG").await;
    assert_eq!(cols, names(&["key", "value", "default", "changeable"]));
    let max = rows
        .iter()
        .find(|r| cell(&cols, r, "key") == Some("max_client_conn"))
        .unwrap();
    assert_eq!(cell(&cols, max, "value"), Some("10000"));
    assert_eq!(cell(&cols, max, "changeable"), Some("no"));
    assert!(rows
        .iter()
        .all(|r| cell(&cols, r, "value") != Some("adminpw")));

    let (cols, rows) = show(&admin, "SHOW LISTS").await;
    assert_eq!(cols, names(&["list", "items"]));
    assert!(rows.iter().any(|r| cell(&cols, r, "list") == Some("pools")));
    let (cols, rows) = show(&admin, "SHOW USERS").await;
    assert_eq!(cols[0], "name");
    assert!(rows.iter().any(|r| cell(&cols, r, "name") == Some("app")));
    let (cols, rows) = show(&admin, "SHOW VERSION").await;
    assert_eq!(cols, names(&["version"]));
    assert!(rows[0][0].as_deref().unwrap().contains("PgBouncer"));
    assert!(show(&admin, "SHOW HELP").await.1.is_empty());

    let (cols, rows) = show(&admin, "SHOW NODES").await;
    assert_eq!(
        cols,
        names(&[
            "name",
            "addr",
            "role",
            "state",
            "timeline",
            "lsn",
            "lag_bytes",
            "lag_seconds",
            "last_check",
            "hardware",
            "patroni_member",
            "patroni_role",
            "patroni_state"
        ])
    );
    let roles: Vec<_> = rows
        .iter()
        .map(|r| cell(&cols, r, "role").unwrap().to_string())
        .collect();
    assert_eq!(roles, ["primary", "replica"]);
    let (cols, rows) = show(&admin, "SHOW EVENTS").await;
    assert!(rows
        .iter()
        .any(|r| cell(&cols, r, "kind") == Some("writes_resumed")));

    // psql, as an operator would run it.
    let out = std::process::Command::new(proxy.cluster.bindir().join("psql"))
        .args(["-X", "-A", "-F", ",", "-c", "SHOW POOLS"])
        .arg(format!(
            "host=127.0.0.1 port={} user=admin dbname=pgbouncer",
            proxy.addr.port()
        ))
        .env("PGPASSWORD", "adminpw")
        .output()
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("database,user,cl_active,cl_waiting,"),
        "{stdout}"
    );
    assert!(stdout.contains("\napp,app,"), "{stdout}");

    // The alias and the real name are the same console.
    let admin2 = self::admin(&proxy, "switchyard").await;
    assert_eq!(
        show(&admin2, "show version;").await.1,
        show(&admin, "SHOW VERSION").await.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_users_get_in() {
    let proxy = Proxy::start("").await;
    let e = proxy
        .client_as("app", "app", "pgbouncer")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let e = proxy
        .client_as("admin", "wrong", "switchyard")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    let e = proxy
        .client_as("nobody", "x", "switchyard")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_an_error_and_the_console_stays_usable() {
    let proxy = Proxy::start("").await;
    let admin = admin(&proxy, "switchyard").await;
    for bad in [
        "SHOW NONSENSE",
        "SELECT 1",
        "KILL",
        "PAUSE a b",
        "SHOW POOLS; SHOW STATS",
        "\"",
        "READMIT",
    ] {
        let e = admin.simple_query(bad).await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42601"), "{bad}: {e}");
    }
    let e = admin.simple_query("PAUSE no_such_db").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");
    let e = admin
        .simple_query("READMIT no_such_node")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42704"), "{e}");
    let primary = proxy.cluster.primary().addr();
    let e = admin
        .simple_query(&format!("READMIT \"{primary}\""))
        .await
        .unwrap_err();
    assert!(message(&e).contains("not fenced"), "{e:?}");
    assert!(admin.simple_query("").await.is_ok());
    assert_eq!(show(&admin, "SHOW VERSION").await.1.len(), 1);
    // The extended protocol is refused and the session closed, as in PgBouncer.
    let e = admin.query("SHOW VERSION", &[]).await.unwrap_err();
    assert!(
        sqlstate(&e).as_deref() == Some("08P01") || e.is_closed(),
        "{e}"
    );
    // Raw garbage on a fresh admin session: an error, then a clean close.
    let mut raw = common::Raw::connect(proxy.addr).await;
    raw.startup(0, "admin", "switchyard").await;
    let _ = raw.until_ready().await;
    raw.send(b"Zgarbage!").await;
    assert!(raw.closed_within(5).await);
    // The proxy still serves.
    proxy.client().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_and_resume_releases_them() {
    let proxy = Proxy::start("").await;
    let app = std::sync::Arc::new(proxy.client().await);
    app.simple_query("SELECT 1").await.unwrap();
    let admin = admin(&proxy, "pgbouncer").await;
    admin.simple_query("PAUSE app").await.unwrap();
    let held = tokio::spawn({
        let app = app.clone();
        async move { app.simple_query("SELECT 42").await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held.is_finished(), "a query ran while paused");
    let (cols, rows) = show(&admin, "SHOW POOLS").await;
    let pool = rows
        .iter()
        .find(|r| {
            cell(&cols, r, "database") == Some("app") && cell(&cols, r, "user") == Some("app")
        })
        .unwrap();
    assert_eq!(num(&cols, pool, "cl_waiting"), 1);
    assert!(num(&cols, pool, "maxwait_us") > 0 || num(&cols, pool, "maxwait") > 0);
    admin.simple_query("RESUME app").await.unwrap();
    let rows = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released by RESUME")
        .unwrap()
        .expect("no error after RESUME");
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("42")));

    // PAUSE waits for the running transaction to finish before it returns.
    app.simple_query("BEGIN").await.unwrap();
    let pause = tokio::spawn(async move {
        admin.simple_query("PAUSE").await.unwrap();
        admin
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned with a transaction running"
    );
    app.simple_query("COMMIT").await.unwrap();
    let admin = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .unwrap();
    admin.simple_query("RESUME").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
}

/// A client that waited for a full pool has its wait counted, as PgBouncer
/// counts it: in `total_wait_time` (µs) and in the wait percentiles, once
/// the server it waited for has served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_full_pool_is_counted_in_show_stats() {
    let proxy = Proxy::start("default_pool_size = 1").await;
    let admin = admin(&proxy, "switchyard").await;
    let holder = proxy.client().await;
    let waiter = proxy.client().await;
    // The open transaction keeps the pool's only server.
    holder.simple_query("BEGIN").await.unwrap();
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "the query did not wait for the server"
    );
    holder.simple_query("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the server came back")
        .unwrap()
        .unwrap();

    let (cols, rows) = show(&admin, "SHOW STATS").await;
    let app = rows
        .iter()
        .find(|r| cell(&cols, r, "database") == Some("app"))
        .expect("stats for app");
    let waited = num(&cols, app, "total_wait_time");
    assert!(
        (350_000..5_000_000).contains(&waited),
        "total_wait_time {waited} µs after a wait of 400 ms"
    );
    let p99 = num(&cols, app, "wait_p99_1m_us");
    assert!(
        p99 >= 100_000,
        "wait_p99_1m_us {p99} after a wait of 400 ms"
    );
}

/// As on PgBouncer, a transaction is in `SHOW STATS` by the time its
/// answer reaches the client: a monitor that checks right after its own
/// query finds it counted. Repeated, because the proxy is most often
/// preempted just as the answer it sent wakes the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_in_show_stats_once_its_answer_is_in() {
    let proxy = Proxy::start("").await;
    let admin = admin(&proxy, "switchyard").await;
    let app = proxy.client().await;
    let app_row = |cols: &[String], rows: Vec<Vec<Option<String>>>| {
        rows.into_iter()
            .find(|r| cell(cols, r, "database") == Some("app"))
            .expect("stats for app")
    };
    let (cols, rows) = show(&admin, "SHOW STATS").await;
    let before = app_row(&cols, rows);
    let (xacts, sent) = (
        num(&cols, &before, "total_xact_count"),
        num(&cols, &before, "total_sent"),
    );
    for i in 1..=500 {
        app.simple_query("SELECT 1").await.unwrap();
        let (cols, rows) = show(&admin, "SHOW STATS").await;
        let now = app_row(&cols, rows);
        assert_eq!(
            num(&cols, &now, "total_xact_count"),
            xacts + i,
            "transaction {i} answered but not counted: {now:?}"
        );
        assert!(
            num(&cols, &now, "total_sent") > sent,
            "the answers' bytes are not counted: {now:?}"
        );
    }
}

/// `KILL` drops the database's clients at once, those waiting for a server
/// connection too (here: behind `PAUSE`, whose wait is
/// `query_wait_timeout`, 120 s), not once their wait is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_reaches_a_client_waiting_for_a_server() {
    let proxy = Proxy::start("").await;
    let admin = admin(&proxy, "switchyard").await;
    let app = proxy.client().await;
    app.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("PAUSE app").await.unwrap();
    let waiting = tokio::spawn(async move { app.simple_query("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the query did not wait for RESUME");
    admin.simple_query("KILL app").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("KILL reached the waiting client")
        .unwrap()
        .unwrap_err();
    assert!(
        sqlstate(&e).as_deref() == Some("57P01") || e.is_closed(),
        "{e}"
    );
    admin.simple_query("RESUME app").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_disconnects_a_database_and_reconnect_replaces_servers() {
    let proxy = Proxy::start("").await;
    let admin = admin(&proxy, "switchyard").await;
    let app = proxy.client().await;
    let pid = |rows: Vec<SimpleQueryMessage>| match &rows[1] {
        SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
        _ => panic!("no row"),
    };
    let before = pid(app.simple_query("SELECT pg_backend_pid()").await.unwrap());
    admin.simple_query("RECONNECT app").await.unwrap();
    let after = pid(app.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_ne!(before, after, "RECONNECT kept the old server connection");

    admin.simple_query("KILL app").await.unwrap();
    let e = app.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        sqlstate(&e).as_deref() == Some("57P01") || e.is_closed(),
        "{e}"
    );
    // The database stays paused until RESUME, as in PgBouncer.
    let fresh = proxy.client().await;
    let held = tokio::spawn(async move { fresh.simple_query("SELECT 1").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished());
    admin.simple_query("RESUME app").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_the_configuration_file() {
    let cluster = common::cluster();
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("{:?}", n.addr()))
        .collect();
    let toml = |pool_size: u32, extra_user: &str| {
        format!(
            "[proxy]\ndefault_pool_size = {pool_size}\nadmin_users = [\"admin\", \"ops\"]\n{}\n{extra_user}\n[cluster]\nnodes = [{}]\n",
            common::USERS,
            nodes.join(", ")
        )
    };
    let dir = std::env::temp_dir().join(common::unique("sy_reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml(20, "")).unwrap();
    let proxy = Proxy::start_from_file(cluster.clone(), &path).await;
    let admin = admin(&proxy, "switchyard").await;
    let app = proxy.client().await;
    app.simple_query("SELECT 1").await.unwrap();
    assert!(proxy.client_as("ops", "opspw", "switchyard").await.is_err());

    // A new admin user and a new pool size, applied without dropping anyone.
    std::fs::write(
        &path,
        toml(7, "[[users]]\nname = \"ops\"\npassword = \"opspw\"\n"),
    )
    .unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let ops = proxy
        .client_as("ops", "opspw", "switchyard")
        .await
        .expect("new user after RELOAD");
    let (cols, rows) = show(&ops, "SHOW DATABASES").await;
    let db = rows
        .iter()
        .find(|r| cell(&cols, r, "name") == Some("app"))
        .unwrap();
    assert_eq!(num(&cols, db, "pool_size"), 7);
    app.simple_query("SELECT 1")
        .await
        .expect("client kept across RELOAD");

    // An invalid file is rejected and the running configuration stays.
    std::fs::write(&path, "[proxy]\npool_mode = \"sometimes\"\n").unwrap();
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert!(message(&e).contains("unchanged"), "{e:?}");
    proxy
        .client_as("ops", "opspw", "switchyard")
        .await
        .expect("old config stays");
    let (cols, rows) = show(&admin, "SHOW EVENTS").await;
    assert!(rows
        .iter()
        .any(|r| cell(&cols, r, "kind") == Some("config_rejected")));
    app.simple_query("SELECT 1").await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Plaintext users a reload is given: each needs a SCRAM verifier, a PBKDF2
/// of 4096 rounds (about 18 ms in a debug build: 1000 users took 18 s), so
/// together a few seconds of CPU.
const MANY_USERS: usize = 200;

/// A current-thread runtime is what `workers = 1` builds: one event loop for
/// every client, the admin console and, here, the test's own clients too.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_deriving_many_verifiers_does_not_stop_queries_on_a_single_worker() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let cluster = common::cluster();
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("{:?}", n.addr()))
        .collect();
    let toml = |users: usize| {
        let extra: String = (0..users)
            .map(|i| format!("[[users]]\nname = \"bulk{i}\"\npassword = \"pw-{i}\"\n"))
            .collect();
        format!(
            "{}\n{extra}\n[cluster]\nnodes = [{}]\n",
            common::USERS,
            nodes.join(", ")
        )
    };
    let dir = std::env::temp_dir().join(common::unique("sy_reload_many"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml(0)).unwrap();
    let proxy = Proxy::start_from_file(cluster.clone(), &path).await;
    let admin = admin(&proxy, "switchyard").await;
    let app = proxy.client().await;
    let (done, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let looping = {
        let (done, stop) = (done.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                app.simple_query("SELECT 1").await.expect("SELECT 1");
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while done.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    std::fs::write(&path, toml(MANY_USERS)).unwrap();
    let start = done.load(Ordering::SeqCst);
    let sent = std::time::Instant::now();
    admin.simple_query("RELOAD").await.expect("RELOAD");
    let took = sent.elapsed();
    let during = done.load(Ordering::SeqCst) - start;
    stop.store(true, Ordering::SeqCst);
    looping.await.unwrap();
    eprintln!("RELOAD of {MANY_USERS} plaintext users: {took:?}, {during} queries during it");
    // Blocked, the loop finishes at most the query under way when RELOAD
    // arrives and one after its answer; free, it serves hundreds a second.
    assert!(
        during >= 10,
        "only {during} queries finished during a {took:?} RELOAD: the event loop was blocked"
    );
    let (_, users) = show(&admin, "SHOW USERS").await;
    assert_eq!(users.len(), MANY_USERS + 4, "the reload applied");
    let _ = std::fs::remove_dir_all(dir);
}

/// `trust` lets configured users into their databases without a password,
/// but never into the admin console, where SHUTDOWN and SWITCHOVER live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_never_opens_the_admin_console() {
    let proxy = Proxy::start("auth_type = \"trust\"").await;
    let app = proxy.client_as("app", "anything", "app").await;
    app.expect("trust: a configured user needs no password")
        .simple_query("SELECT 1")
        .await
        .unwrap();
    for db in ["switchyard", "pgbouncer"] {
        let e = proxy
            .client_as("admin", "wrong", db)
            .await
            .err()
            .unwrap_or_else(|| panic!("{db}: an admin got in with a wrong password under trust"));
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{db}: {e}");
        let admin = proxy.client_as("admin", "adminpw", db).await;
        admin
            .unwrap_or_else(|e| panic!("{db}: the right password: {e}"))
            .simple_query("SHOW VERSION")
            .await
            .unwrap();
    }
}

/// No password at all: the console asks for one (never AuthenticationOk
/// straight away), and a client with an empty one is refused with 28P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_asks_admin_users_for_a_password() {
    let proxy = Proxy::start("auth_type = \"trust\"").await;
    for db in ["switchyard", "pgbouncer"] {
        let mut raw = common::Raw::connect(proxy.addr).await;
        raw.startup(0, "admin", db).await;
        let (tag, body) = raw.recv().await.expect("an answer to the startup");
        let code = body
            .get(..4)
            .map(|c| i32::from_be_bytes(c.try_into().unwrap()));
        assert_eq!(tag, b'R', "{db}: {:?}", String::from_utf8_lossy(&body));
        assert_ne!(code, Some(0), "{db}: AuthenticationOk without a password");
        let e = proxy
            .client_as("admin", "''", db)
            .await
            .err()
            .unwrap_or_else(|| panic!("{db}: an admin got in with an empty password"));
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{db}: {e}");
    }
}

/// An admin whose password is stored as an md5 verifier proves it with md5
/// under trust, as `auth_type = "md5"` would have it do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_asks_an_md5_admin_for_its_md5_password() {
    let cluster = common::cluster();
    let stored = postgres_protocol::password::md5(b"ops-pw", "ops");
    let toml = format!(
        "[proxy]\nauth_type = \"trust\"\nadmin_users = [\"ops\"]\n[[users]]\nname = \"ops\"\npassword = \"{stored}\"\n[cluster]\nnodes = [{}]\n",
        common::nodes_toml(&cluster)
    );
    let proxy = Proxy::start_with(cluster, &toml).await;
    let e = proxy
        .client_as("ops", "wrong", "switchyard")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    proxy
        .client_as("ops", "ops-pw", "switchyard")
        .await
        .unwrap_or_else(|e| panic!("the right md5 password: {e}"))
        .simple_query("SHOW VERSION")
        .await
        .unwrap();
}

/// The rule is about the socket clients reach: a file saying loopback does
/// not make `trust` acceptable on a listener bound to every interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_is_refused_on_a_network_socket_whatever_the_file_says() {
    let config = switchyard::config::load_str(
        "[proxy]\nauth_type = \"trust\"\nlisten = \"127.0.0.1:6432\"\n[cluster]\nnodes = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let served = switchyard::listener::run(config, listener, async {
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    let e = served.expect_err("trust served on 0.0.0.0");
    assert!(e.to_string().contains("allow_trust_on_network"), "{e}");
}

/// A RELOAD cannot turn `trust` on for the socket the proxy keeps: a new
/// `listen` waits for a restart, so the file's loopback address proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_cannot_turn_trust_on_for_a_network_socket() {
    let cluster = common::cluster();
    let toml = |proxy: &str| {
        format!(
            "[proxy]\n{proxy}\n{}\n[cluster]\nnodes = [{}]\n",
            common::USERS,
            common::nodes_toml(&cluster)
        )
    };
    let dir = std::env::temp_dir().join(common::unique("sy_trust_reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml("listen = \"0.0.0.0:6432\"")).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let proxy = Proxy::start_from_file_on(cluster.clone(), &path, listener).await;
    let admin = admin(&proxy, "switchyard").await;
    std::fs::write(
        &path,
        toml("listen = \"127.0.0.1:6432\"\nauth_type = \"trust\""),
    )
    .unwrap();
    let e = admin
        .simple_query("RELOAD")
        .await
        .expect_err("RELOAD turned trust on for 0.0.0.0");
    assert!(message(&e).contains("allow_trust_on_network"), "{e:?}");
    let e = proxy
        .client_as("app", "wrong", "app")
        .await
        .expect_err("a wrong password got in after the RELOAD");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The `s=` (salt) and `i=` of the server-first-message `user` is shown.
async fn scram_salt(proxy: &Proxy, user: &str) -> String {
    use bytes::BufMut;
    let mut raw = common::Raw::connect(proxy.addr).await;
    raw.startup(0, user, "app").await;
    let (tag, body) = raw.recv().await.expect("an authentication request");
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &10i32.to_be_bytes()[..]),
        "SASL asked"
    );
    let first = b"n,,n=,r=clientnonce0123456789";
    let mut msg = bytes::BytesMut::new();
    msg.put_u8(b'p');
    msg.put_u32((4 + 14 + 4 + first.len()) as u32);
    msg.put_slice(b"SCRAM-SHA-256\0");
    msg.put_u32(first.len() as u32);
    msg.put_slice(first);
    raw.send(&msg).await;
    let (tag, body) = raw.recv().await.expect("server-first-message");
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &11i32.to_be_bytes()[..]),
        "SASLContinue"
    );
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    server_first
        .split(',')
        .filter(|a| a.starts_with("s=") || a.starts_with("i="))
        .collect::<Vec<_>>()
        .join(",")
}

/// The salt a plaintext user is shown, like an unknown user's, does not
/// change across a RELOAD: comparing salts before and after tells nobody
/// which users exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_salts_survive_a_reload() {
    let cluster = common::cluster();
    let toml = |pool_size: u32| {
        format!(
            "[proxy]\ndefault_pool_size = {pool_size}\n{}\n[cluster]\nnodes = [{}]\n",
            common::USERS,
            common::nodes_toml(&cluster)
        )
    };
    let dir = std::env::temp_dir().join(common::unique("sy_salts"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml(20)).unwrap();
    let proxy = Proxy::start_from_file(cluster.clone(), &path).await;
    let admin = admin(&proxy, "switchyard").await;
    let before = [
        scram_salt(&proxy, "app").await,
        scram_salt(&proxy, "nobody_here").await,
    ];
    std::fs::write(&path, toml(7)).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let after = [
        scram_salt(&proxy, "app").await,
        scram_salt(&proxy, "nobody_here").await,
    ];
    assert_eq!(
        before, after,
        "[known user, unknown user] before and after RELOAD"
    );
    assert!(
        before
            .iter()
            .all(|s| s.contains("s=") && s.contains("i=4096")),
        "{before:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

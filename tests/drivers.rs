//! Drivers and ORMs as they ship, through a transaction pool smaller than
//! the number of clients: each client opens the way its driver does (the
//! startup parameters it sends, then its setup statements, simple or
//! extended protocol), and from then on sees its own settings on whichever
//! server it gets, without holding a server of its own.

mod common;

use std::sync::Arc;

use common::script::{bind, execute, frame, parse, Scripted};
use common::Proxy;

/// How a client opens: startup parameters, setup statements, and the
/// settings it then expects `SHOW` to report.
struct Opening {
    driver: &'static str,
    params: Vec<(&'static str, &'static str)>,
    setup: Vec<Step>,
    expect: Vec<(&'static str, &'static str)>,
}

enum Step {
    /// A simple Query.
    Simple(&'static str),
    /// Parse/Bind/Execute/Sync of the unnamed statement (pgjdbc's default).
    Extended(&'static str),
}

/// pgjdbc 42.x: startup parameters, then its two setup SETs over the extended protocol.
fn pgjdbc(tz: &'static str) -> Opening {
    Opening {
        driver: "pgjdbc",
        params: vec![
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", tz),
            ("extra_float_digits", "2"),
        ],
        setup: vec![
            Step::Extended("SET extra_float_digits = 3"),
            Step::Extended("SET application_name = 'PostgreSQL JDBC Driver'"),
        ],
        expect: vec![
            ("extra_float_digits", "3"),
            ("application_name", "PostgreSQL JDBC Driver"),
            ("TimeZone", tz),
        ],
    }
}

/// Rails (ActiveRecord's PostgreSQL adapter configuring a new connection).
fn rails() -> Opening {
    Opening {
        driver: "rails",
        params: vec![("client_encoding", "UTF8")],
        setup: vec![
            Step::Simple("SET client_min_messages TO 'warning'"),
            Step::Simple("SET standard_conforming_strings = on"),
            Step::Simple("SET intervalstyle = iso_8601"),
            Step::Simple("SET SESSION timezone TO 'UTC'"),
        ],
        expect: vec![
            ("client_min_messages", "warning"),
            ("IntervalStyle", "iso_8601"),
            ("TimeZone", "UTC"),
        ],
    }
}

/// Django: the connection's time zone.
fn django() -> Opening {
    Opening {
        driver: "django",
        params: vec![("client_encoding", "UTF8")],
        setup: vec![Step::Simple("SET TIME ZONE 'America/New_York'")],
        expect: vec![("TimeZone", "America/New_York")],
    }
}

/// SQLAlchemy on psycopg2: a connect hook runs its SETs inside the
/// transaction psycopg2 opens, then commits.
fn psycopg(timeout: &'static str, shown: &'static str) -> Opening {
    let set: &'static str =
        Box::leak(format!("SET statement_timeout = {timeout}").into_boxed_str());
    Opening {
        driver: "psycopg",
        params: vec![("client_encoding", "UTF8")],
        setup: vec![
            Step::Simple("BEGIN"),
            Step::Simple(set),
            Step::Simple("SET lock_timeout = '2s'"),
            Step::Simple("SET idle_in_transaction_session_timeout = 60000"),
            Step::Simple("COMMIT"),
        ],
        expect: vec![
            ("statement_timeout", shown),
            ("lock_timeout", "2s"),
            ("idle_in_transaction_session_timeout", "1min"),
        ],
    }
}

/// node-postgres: `statement_timeout` and `options` go in the startup packet.
fn node_postgres(schema: &'static str) -> Opening {
    let options: &'static str =
        Box::leak(format!("-c search_path={schema},public").into_boxed_str());
    let shown: &'static str = Box::leak(format!("{schema},public").into_boxed_str());
    Opening {
        driver: "node-postgres",
        params: vec![
            ("client_encoding", "UTF8"),
            ("statement_timeout", "3000"),
            ("options", options),
        ],
        setup: vec![],
        expect: vec![("statement_timeout", "3s"), ("search_path", shown)],
    }
}

/// The one value of a `SHOW` reply.
fn shown(msgs: &[(u8, Vec<u8>)]) -> String {
    let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').expect("a DataRow");
    let len = i32::from_be_bytes(row[2..6].try_into().unwrap()) as usize;
    String::from_utf8(row[6..6 + len].to_vec()).unwrap()
}

async fn run_client(addr: std::net::SocketAddr, open: Arc<Opening>) {
    let mut c = Scripted::connect(addr, usize::MAX)
        .await
        .with_params(&open.params);
    c.login_scram("app", "app", "app").await.unwrap();
    for step in &open.setup {
        match step {
            Step::Simple(sql) => {
                c.query(sql).await.unwrap();
            }
            Step::Extended(sql) => {
                let msgs = [parse("", sql), bind("", &[]), execute(), frame(b'S', &[])];
                c.send_all(&msgs).await.unwrap();
                c.until(b'Z').await;
            }
        }
    }
    for round in 0..15 {
        for (name, want) in &open.expect {
            let msgs = c.query(&format!("SHOW {name}")).await.unwrap();
            assert_eq!(
                shown(&msgs),
                *want,
                "{}: SHOW {name} in round {round}",
                open.driver
            );
        }
        // Hold the server a moment, so clients really share the two.
        c.query("SELECT pg_sleep(0.002)").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_drivers_share_two_servers_each_with_its_own_settings() {
    let cluster = common::cluster();
    let toml = format!(
        "[proxy]\ndefault_pool_size = 2\n{}\n[cluster]\nnodes = [{}]\n",
        common::USERS,
        common::nodes_toml(&cluster)
    );
    let (proxy, http) = Proxy::start_with_http(cluster, &toml).await;
    let openings = [
        pgjdbc("Europe/Berlin"),
        pgjdbc("Asia/Tokyo"),
        rails(),
        django(),
        psycopg("5000", "5s"),
        psycopg("'7s'", "7s"),
        node_postgres("sy_app_a"),
        node_postgres("sy_app_b"),
    ];
    let clients: Vec<_> = openings
        .into_iter()
        .map(|o| tokio::spawn(run_client(proxy.addr, Arc::new(o))))
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let (_, metrics) = common::http_request(http, "GET", "/metrics").await;
    let pinned: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_pinned_clients_total") && !l.ends_with(" 0"))
        .collect();
    assert!(pinned.is_empty(), "no client was pinned: {pinned:?}");
}

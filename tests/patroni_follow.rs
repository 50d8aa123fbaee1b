//! Follow mode on Patroni (`[failover] mode = "follow"`, `[coordination]
//! backend = "patroni"`), against a real two-member Patroni: writes go to
//! Patroni's leader only; a `patronictl switchover` under write load holds
//! new transactions and releases them on the new leader, with nothing
//! acknowledged lost and no client error; a crashed leader's writes resume
//! once Patroni promotes the other member, and the old leader, back as a
//! replica, takes none; paused, Patroni promotes nothing and neither does
//! Switchyard: a write waits for the leader's PostgreSQL to come back.
//!
//! Each test has a Patroni cluster (and etcd) of its own, on free ports; a
//! proxy in transaction mode with a pool smaller than its writer clients.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::patroni::{PatroniCluster, PatroniOptions};
use common::patroni_proxy::{status, RunningProxy};
use common::{connect, sqlstate, unique, wait_until};
use serde_json::Value;
use tokio::task::block_in_place;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Writer clients through the proxy, against `POOL` server connections.
const WRITERS: usize = 6;
const POOL: usize = 3;

/// SQLSTATEs a statement in flight when its PostgreSQL goes away may get:
/// connection failure, transaction resolution unknown. Never the server's
/// own FATAL (57P01): a pooled client's session outlives its server.
const IN_FLIGHT_CODES: [&str; 2] = ["08006", "08007"];

/// `patronictl switchover` from pg0 to pg1 under write load: no client
/// error, every acknowledged write on pg1, and every write sent once the
/// switchover returned taken by pg1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patroni_switchover_under_load_loses_nothing_and_fails_no_client() {
    let patroni = start_patroni(PatroniOptions::SHORT).await;
    let (pg0, pg1) = (patroni.member("pg0").port, patroni.member("pg1").port);
    let table = create_table(pg0).await;
    let proxy = RunningProxy::start(&proxy_toml(&patroni)).await;
    let writers = Writers::start(&proxy, &table).await;
    writers.wait_for_acks_from(pg0, 200, 30).await;

    let said = block_in_place(|| patroni.switchover("pg0", "pg1"));
    let switched = Instant::now();
    assert_eq!(patroni.leader().as_deref(), Some("pg1"), "{said}");
    writers.wait_for_acks_from(pg1, 1, 30).await;
    // A few seconds of writes on the new leader (load, not a timing check).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (acks, failures) = writers.finish().await;

    report_gaps("switchover", &acks, switched);
    assert!(
        failures.is_empty(),
        "clients saw errors through the switchover (value, protocol, error, \
         sent s from its end): {:?}",
        failures
            .iter()
            .map(|f| (f.v, f.how, &f.failed, offset(f.sent, switched)))
            .collect::<Vec<_>>()
    );
    assert_all_on(pg1, &table, &acks).await;
    let late: Vec<&Ack> = acks.iter().filter(|a| a.sent > switched).collect();
    assert!(late.len() > 20, "the load went on after the switchover");
    let elsewhere: Vec<&&Ack> = late.iter().filter(|a| a.port != pg1).collect();
    assert!(
        elsewhere.is_empty(),
        "writes sent after the switchover returned were not taken by the new leader ({pg1}): {elsewhere:?}"
    );
    wait_until(10, "/status to name pg1 primary", || async {
        status(proxy.http).await["primary"] == "pg1"
    })
    .await;
    proxy.stop().await;
    // Its Drop waits for the postmasters to go.
    block_in_place(move || drop(patroni));
}

/// `kill -9` of the leader's Patroni and postmaster under write load (with
/// Patroni's synchronous mode, so that a commit PostgreSQL acknowledged is
/// on the other member): writes resume on pg1 once Patroni promotes it;
/// every acknowledged write is there; the only errors are for statements
/// in flight as pg0 went; and through pg0's return (its Patroni restarted,
/// pg0 rewound and a replica again) nothing sent once pg0 was gone was
/// taken by pg0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leaders_writes_resume_on_the_member_patroni_promotes() {
    let options = PatroniOptions {
        use_pg_rewind: true,
        ..PatroniOptions::SHORT
    };
    let mut patroni = start_patroni(options).await;
    let (pg0, pg1) = (patroni.member("pg0").port, patroni.member("pg1").port);
    block_in_place(|| {
        patroni.edit_config(&["synchronous_mode=true"]);
        patroni.wait_for("pg1 to be pg0's synchronous standby", |c| {
            c.role("pg1").as_deref() == Some("Sync Standby")
        });
    });
    let table = create_table(pg0).await;
    let proxy = RunningProxy::start(&proxy_toml(&patroni)).await;
    let writers = Writers::start(&proxy, &table).await;
    writers.wait_for_acks_from(pg0, 200, 30).await;

    let processes = patroni.postgres_pids("pg0");
    patroni.kill("pg0");
    let killed = Instant::now();
    // The backends outlive their postmaster a moment: a statement sent
    // before the last exits may be in flight on one, or even commit (on
    // pg1 too: replication is synchronous).
    while !processes.iter().all(|&pid| exited(pid)) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "pg0's backends stay"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let gone = Instant::now();
    eprintln!(
        "killed: pg0's last process exited {:?} after the kill",
        gone - killed
    );
    // Patroni promotes pg1 once pg0's leader key expires (ttl 10 s).
    writers.wait_for_acks_from(pg1, 1, 45).await;
    eprintln!("killed: first write on pg1 {:?} after the kill", {
        let acks = writers.acks.lock().unwrap();
        let first = acks.iter().filter(|a| a.port == pg1).map(|a| a.at).min();
        first.map(|t| t - killed)
    });

    patroni.relaunch("pg0");
    block_in_place(|| {
        patroni.wait_for("pg0 back, streaming from pg1", |c| {
            c.streams("pg0", "pg1") && c.running() == ["pg0", "pg1"]
        })
    });
    wait_until(60, "/status to show pg0 as a replica", || async {
        let s = status(proxy.http).await;
        let pg0_role = node(&s, "pg0")["role"].clone();
        s["primary"] == "pg1" && pg0_role == "replica"
    })
    .await;
    // Writes go on a little with pg0 back (load, not a timing check).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acks, failures) = writers.finish().await;

    report_gaps("killed", &acks, killed);
    assert_only_in_flight(&failures, gone);
    assert_all_on(pg1, &table, &acks).await;
    // From the moment pg0's last process exited: through Patroni's
    // promotion of pg1 and pg0's return as a replica.
    let after: Vec<&Ack> = acks.iter().filter(|a| a.sent > gone).collect();
    assert!(after.len() > 20, "the load went on after the kill");
    let on_old: Vec<&&Ack> = after.iter().filter(|a| a.port != pg1).collect();
    assert!(
        on_old.is_empty(),
        "writes sent once pg0 was killed were not taken by the new leader ({pg1}): {on_old:?}"
    );
    proxy.stop().await;
    // Its Drop waits for the postmasters to go.
    block_in_place(move || drop(patroni));
}

/// Paused, Patroni leaves a stopped leader stopped and promotes nothing;
/// neither does Switchyard: a write from a client between transactions
/// waits, the other member stays in recovery, and the write completes on
/// pg0 once its PostgreSQL is started again by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_a_stopped_leaders_writes_wait_for_it_and_nothing_is_promoted() {
    let patroni = start_patroni(PatroniOptions::SHORT).await;
    let (pg0, pg1) = (patroni.member("pg0").port, patroni.member("pg1").port);
    let table = create_table(pg0).await;
    let proxy = RunningProxy::start(&proxy_toml(&patroni)).await;
    let client = client_of(&proxy).await;
    assert_eq!(insert(&client, &table, 1, true).await, Ok(pg0));

    block_in_place(|| {
        patroni.pause();
        patroni.stop_postgres("pg0");
    });
    let client = Arc::new(client);
    let c = client.clone();
    let t = table.clone();
    let mut held = tokio::spawn(async move { insert(&c, &t, 2, false).await });
    if let Ok(answer) = tokio::time::timeout(Duration::from_secs(5), &mut held).await {
        panic!("the write was answered while the leader was down: {answer:?}");
    }
    assert!(
        in_recovery(pg1).await,
        "pg1 was promoted while Patroni was paused"
    );

    block_in_place(|| patroni.start_postgres("pg0"));
    let answer = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the held write completes once pg0 is back")
        .unwrap();
    assert_eq!(answer, Ok(pg0), "the held write, taken by pg0");
    let on_pg0 = rows(pg0, &table).await;
    assert!(on_pg0.contains(&(2, pg0)), "{on_pg0:?}");
    assert!(in_recovery(pg1).await, "pg1 is still a replica");

    block_in_place(|| {
        patroni.resume();
        patroni.wait_for("pg0 to lead, resumed", |c| {
            c.leader().as_deref() == Some("pg0")
        });
    });
    assert_eq!(insert(&client, &table, 3, true).await, Ok(pg0));
    drop(client);
    proxy.stop().await;
    // Its Drop waits for the postmasters to go.
    block_in_place(move || drop(patroni));
}

/// A Patroni cluster started off the runtime's workers.
async fn start_patroni(options: PatroniOptions) -> PatroniCluster {
    common::init_tracing();
    tokio::task::spawn_blocking(move || PatroniCluster::start_with(options))
        .await
        .unwrap()
}

/// The writers' table on the leader: each row its value and the port of
/// the PostgreSQL that took it.
async fn create_table(leader: u16) -> String {
    let table = unique("follow");
    direct(leader)
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (v bigint PRIMARY KEY, \
             port int NOT NULL DEFAULT inet_server_port())"
        ))
        .await
        .unwrap();
    table
}

/// Inserts `v`, autocommit, with the extended protocol (a prepared
/// statement) or a simple Query; the port of the PostgreSQL that took it.
async fn insert(c: &Client, table: &str, v: i64, simple: bool) -> Result<u16, Failed> {
    let sql = format!("INSERT INTO {table} (v) VALUES ($1) RETURNING port");
    let port: i32 = if simple {
        let sql = sql.replace("$1", &v.to_string());
        let rows = c.simple_query(&sql).await.map_err(Failed::from)?;
        let row = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        row.expect("RETURNING port").parse().unwrap()
    } else {
        c.query_one(&sql, &[&v]).await.map_err(Failed::from)?.get(0)
    };
    Ok(port as u16)
}

/// A statement's error: its SQLSTATE, if any, and text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed {
    code: Option<String>,
    message: String,
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Failed {
        Failed {
            code: sqlstate(&e),
            message: match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => e.to_string(),
            },
        }
    }
}

/// One acknowledged insert: its value, the port that took it, when it
/// was sent and when the answer came.
#[derive(Debug, Clone, Copy)]
struct Ack {
    v: i64,
    port: u16,
    sent: Instant,
    at: Instant,
}

/// One failed statement (or login), and when it was sent.
#[derive(Debug, Clone)]
struct Failure {
    v: i64,
    /// `simple` (Query) or `extended` (Parse, Bind, Execute), or `login`.
    how: &'static str,
    failed: Failed,
    sent: Instant,
    at: Instant,
}

/// `WRITERS` autocommit writer clients through the proxy, half with the
/// extended protocol, half with simple Queries, until finished; each
/// reconnects when its connection closes.
struct Writers {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    failures: Arc<Mutex<Vec<Failure>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(proxy: &RunningProxy, table: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicI64::new(1_000));
        let acks = Arc::new(Mutex::new(vec![]));
        let failures = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        for i in 0..WRITERS {
            let mut client = Some(client_of(proxy).await);
            let url = url_of(proxy);
            let (stop, next, table) = (stop.clone(), next.clone(), table.to_string());
            let (acks, failures) = (acks.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let v = next.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let c = match client.take() {
                        Some(c) if !c.is_closed() => c,
                        _ => match connect(&url).await {
                            Ok(c) => c,
                            Err(e) => {
                                let failed = Failed::from(e);
                                let at = Instant::now();
                                let f = Failure {
                                    v,
                                    how: "login",
                                    failed,
                                    sent,
                                    at,
                                };
                                failures.lock().unwrap().push(f);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                    };
                    let simple = i % 2 == 1;
                    let how = if simple { "simple" } else { "extended" };
                    let r = insert(&c, &table, v, simple).await;
                    let at = Instant::now();
                    match r {
                        Ok(port) => acks.lock().unwrap().push(Ack { v, port, sent, at }),
                        Err(failed) => {
                            let f = Failure {
                                v,
                                how,
                                failed,
                                sent,
                                at,
                            };
                            failures.lock().unwrap().push(f)
                        }
                    }
                    client = Some(c);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Writers {
            stop,
            acks,
            failures,
            tasks,
        }
    }

    /// Waits until at least `n` writes were acknowledged from `port`.
    async fn wait_for_acks_from(&self, port: u16, n: usize, secs: u64) {
        let what = format!("{n} writes acknowledged from port {port}");
        wait_until(secs, &what, || async {
            let acks = self.acks.lock().unwrap();
            acks.iter().filter(|a| a.port == port).count() >= n
        })
        .await;
    }

    /// Stops the writers (each finishes its statement); every ack and
    /// failure, acks by the time they came.
    async fn finish(self) -> (Vec<Ack>, Vec<Failure>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(70), t)
                .await
                .expect("a writer stuck")
                .unwrap();
        }
        let mut acks = std::mem::take(&mut *self.acks.lock().unwrap());
        acks.sort_by_key(|a| a.at);
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (acks, failures)
    }
}

/// Reports (does not assert: timing targets live in the benchmarks) the
/// longest gap between acknowledged writes, where it started relative to
/// `event`, and the gap across `event`.
fn report_gaps(test: &str, acks: &[Ack], event: Instant) {
    let longest = acks
        .windows(2)
        .map(|w| (w[1].at - w[0].at, offset(w[0].at, event)))
        .max_by_key(|g| g.0);
    let across = acks
        .iter()
        .rev()
        .find(|a| a.at <= event)
        .zip(acks.iter().find(|a| a.at > event))
        .map(|(before, after)| after.at - before.at);
    eprintln!(
        "{test}: {} acknowledged writes; longest gap between acknowledged writes \
         {longest:?} (length, start in s from the event); gap across the event {across:?}",
        acks.len(),
    );
}

/// Seconds from `event` to `t`, negative before it.
fn offset(t: Instant, event: Instant) -> f64 {
    match t.checked_duration_since(event) {
        Some(d) => d.as_secs_f64(),
        None => -(event - t).as_secs_f64(),
    }
}

/// Every failure is a statement that was in flight when its PostgreSQL
/// went away at `event` (sent before it, with one of `IN_FLIGHT_CODES`),
/// at most one per writer.
fn assert_only_in_flight(failures: &[Failure], event: Instant) {
    for f in failures {
        eprintln!(
            "failed write {} ({}): sent at {:+.3} s, failed at {:+.3} s from the event: {:?}",
            f.v,
            f.how,
            offset(f.sent, event),
            offset(f.at, event),
            f.failed
        );
    }
    let wrong: Vec<&Failure> = failures
        .iter()
        .filter(|f| {
            f.sent > event
                || !f
                    .failed
                    .code
                    .as_deref()
                    .is_some_and(|c| IN_FLIGHT_CODES.contains(&c))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "errors other than for a statement in flight when the leader went away \
         (value, protocol, error, sent s from it): {:?}",
        wrong
            .iter()
            .map(|f| (f.v, f.how, &f.failed, offset(f.sent, event)))
            .collect::<Vec<_>>()
    );
    assert!(failures.len() <= WRITERS, "{failures:#?}");
}

/// Every acknowledged write is on the PostgreSQL at `port`, read directly,
/// with the port that acknowledged it.
async fn assert_all_on(port: u16, table: &str, acks: &[Ack]) {
    assert!(acks.len() > 100, "the load ran ({} writes)", acks.len());
    let rows: std::collections::HashMap<i64, u16> = rows(port, table).await.into_iter().collect();
    let missing: Vec<&Ack> = acks
        .iter()
        .filter(|a| rows.get(&a.v) != Some(&a.port))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are not on port {port} as acknowledged: {:?}",
        missing.len(),
        acks.len(),
        &missing[..missing.len().min(10)]
    );
}

/// `(v, port)` of every row of `table` on the PostgreSQL at `port`.
async fn rows(port: u16, table: &str) -> Vec<(i64, u16)> {
    direct(port)
        .await
        .query(&format!("SELECT v, port FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(1) as u16))
        .collect()
}

async fn in_recovery(port: u16) -> bool {
    direct(port)
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn exited(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, None | Some("Z") | Some("X"))
}

/// A client of the PostgreSQL at `port` itself, as the superuser.
async fn direct(port: u16) -> Client {
    let url = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres connect_timeout=5"
    );
    connect(&url).await.expect("direct connect")
}

/// A proxy in front of the members: transaction mode, a pool smaller than
/// the writers, following Patroni; holds a write up to 60 s (Patroni takes
/// up to `ttl` and a loop or two to promote after a crash).
fn proxy_toml(patroni: &PatroniCluster) -> String {
    format!(
        "[proxy]\npool_mode = \"transaction\"\ndefault_pool_size = {POOL}\n\
         [[users]]\nname = \"postgres\"\npassword = \"postgres\"\n\
         [cluster]\nnodes = [{nodes}]\nuser = \"postgres\"\npassword = \"postgres\"\n\
         [failover]\nmode = \"follow\"\nhold_timeout = \"60s\"\n\
         [coordination]\nbackend = \"patroni\"\n\
         patroni = {{ scope = \"{scope}\", endpoints = [\"{etcd}\"] }}\n",
        nodes = patroni.nodes_toml(),
        scope = patroni.scope,
        etcd = patroni.endpoint(),
    )
}

/// `name`'s entry in `/status`'s nodes.
fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The proxy's address as a tokio-postgres connection string.
fn url_of(proxy: &RunningProxy) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=postgres connect_timeout=10",
        proxy.addr.port()
    )
}

async fn client_of(proxy: &RunningProxy) -> Client {
    connect(&url_of(proxy))
        .await
        .expect("connect through the proxy")
}

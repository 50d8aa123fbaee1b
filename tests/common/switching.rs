//! What the switchover tests share: a steady write load that records every
//! acknowledged value and every client error, the checks that nothing
//! acknowledged was lost, and reading the timeline and `SHOW NODES`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard::local_cluster::PgNode;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{direct_client, http_request, sqlstate, unique, Proxy};

/// The incident timeline from `/events`: `(kind, node, message)`, oldest first.
pub async fn timeline(http: SocketAddr) -> Vec<(String, String, String)> {
    let (_, body) = http_request(http, "GET", "/events").await;
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (text(&e["kind"]), text(&e["node"]), text(&e["message"])))
        .collect()
}

/// How many events of `kind` the timeline holds.
pub fn count(timeline: &[(String, String, String)], kind: &str) -> usize {
    timeline.iter().filter(|(k, _, _)| k == kind).count()
}

/// Whether `node` had an event of `kind`.
pub fn has(timeline: &[(String, String, String)], kind: &str, node: &str) -> bool {
    timeline.iter().any(|(k, n, _)| k == kind && n == node)
}

/// Short write transactions on `clients` connections until stopped: every
/// acknowledged value, and every error.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<i64>, Vec<String>)>>,
}

impl Workload {
    pub async fn start(proxy: &Proxy, table: &str, clients: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicI64::new(1));
        let mut tasks = vec![];
        for i in 0..clients {
            let c = proxy.client().await;
            let (stop, next, table) = (stop.clone(), next.clone(), table.to_string());
            tasks.push(tokio::spawn(async move {
                let (mut acked, mut errors) = (vec![], vec![]);
                let insert = c
                    .prepare(&format!("INSERT INTO {table} VALUES ($1)"))
                    .await
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let v = next.fetch_add(1, Ordering::Relaxed);
                    // Half the clients use explicit transactions.
                    let r = if i % 2 == 0 {
                        c.execute(&insert, &[&v]).await.map(|_| ())
                    } else {
                        c.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES ({v}); COMMIT"))
                            .await
                    };
                    match r {
                        Ok(()) => acked.push(v),
                        Err(e) => errors.push(format!("{:?}: {e}", sqlstate(&e))),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (acked, errors)
            }));
        }
        Workload { stop, tasks }
    }

    pub async fn finish(self) -> (Vec<i64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut errors) = (vec![], vec![]);
        for t in self.tasks {
            let (a, e) = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("workload client stuck")
                .unwrap();
            acked.extend(a);
            errors.extend(e);
        }
        (acked, errors)
    }
}

pub async fn values(c: &Client, table: &str) -> HashSet<i64> {
    c.query(&format!("SELECT v FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// [`port_of`] for a poll across a failover: a statement in flight as the
/// old primary is cut off fails with 08007 (its outcome unknown), which a
/// planned switchover never gives. `None` then, and the poll asks again.
pub async fn try_port_of(c: &Client) -> Option<u16> {
    port_in(&c.simple_query(PORT).await.ok()?)
}

pub async fn port_of(c: &Client) -> u16 {
    let rows = c.simple_query(PORT).await.unwrap();
    port_in(&rows).expect("a row with the port")
}

const PORT: &str = "SELECT current_setting('port')";

/// The port in [`PORT`]'s answer.
fn port_in(rows: &[SimpleQueryMessage]) -> Option<u16> {
    match rows.get(1)? {
        SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
        _ => None,
    }
}

/// `name`'s column `column` in `SHOW NODES` (empty before the first checks).
pub async fn node_column(admin: &Client, name: &str, column: &str) -> String {
    let rows = admin.simple_query("SHOW NODES").await.unwrap();
    let mut cols = vec![];
    for m in rows {
        match m {
            SimpleQueryMessage::RowDescription(c) => {
                cols = c.iter().map(|c| c.name().to_string()).collect()
            }
            SimpleQueryMessage::Row(r) if r.get(0) == Some(name) => {
                let i = cols.iter().position(|c| c == column).unwrap();
                return r.get(i).unwrap_or_default().to_string();
            }
            _ => {}
        }
    }
    // Not published yet (before the first health checks).
    String::new()
}

pub async fn admin(proxy: &Proxy) -> Client {
    proxy
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap()
}

pub async fn create_table(c: &Client) -> String {
    let table = unique("sw");
    c.batch_execute(&format!("CREATE TABLE {table} (v bigint PRIMARY KEY)"))
        .await
        .unwrap();
    table
}

/// The checks every switchover test makes once the load stopped: no client
/// error, every acknowledged value on the new primary, and nothing written
/// to the old one after the switch.
pub async fn assert_nothing_lost(
    new: &PgNode,
    old: &PgNode,
    table: &str,
    acked: &[i64],
    errors: &[String],
    old_rows_at_switch: usize,
) {
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(acked.len() > 50, "the load ran ({} commits)", acked.len());
    let on_new = values(&direct_client(new.port()).await, table).await;
    let missing: Vec<_> = acked.iter().filter(|v| !on_new.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged commits missing on the new primary",
        missing.len()
    );
    let old_rows = values(&direct_client(old.port()).await, table).await.len();
    assert_eq!(
        old_rows, old_rows_at_switch,
        "the old primary took writes after the switchover"
    );
}

/// A planned move of the primary from `old` (db1) to `new` (db2) that
/// `trigger` sets off under a steady 6-client write load: waits for db2 to
/// serve, then checks that nothing was lost, that db1 is fenced with
/// `hardware` as its status, and that `/status` names db2. Returns `/status`.
pub async fn moved_under_load(
    proxy: &Proxy,
    http: SocketAddr,
    (old, new): (&PgNode, &PgNode),
    hardware: &str,
    trigger: impl std::future::Future<Output = ()>,
) -> serde_json::Value {
    let (admin, setup) = (self::admin(proxy).await, proxy.client().await);
    let table = create_table(&setup).await;
    let load = Workload::start(proxy, &table, 6).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    trigger.await;
    super::wait_until(20, "primary moved to db2", || async {
        node_column(&admin, "db2", "role").await == "primary" && port_of(&setup).await == new.port()
    })
    .await;
    let old_rows = values(&direct_client(old.port()).await, &table).await.len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (acked, errors) = load.finish().await;
    assert_nothing_lost(new, old, &table, &acked, &errors, old_rows).await;
    assert_eq!(node_column(&admin, "db1", "hardware").await, hardware);
    assert_eq!(node_column(&admin, "db1", "state").await, "fenced");
    let (_, status) = http_request(http, "GET", "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["primary"], "db2");
    status
}

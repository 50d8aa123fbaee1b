//! Hardware probes and planned switchover with real servers: a degraded PSU
//! moves the primary with no client error under a steady load, failing
//! hardware fails over at once, an unreachable probe changes nothing, command
//! probes map exit codes, and admin `SWITCHOVER` loses no acknowledged commit
//! while the old primary takes no further writes. Every test starts its own
//! cluster, since it moves the primary.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    direct_client, http_request, private_pair as start_pair, sqlstate, unique,
    wait_until as eventually, Proxy, USERS,
};
use switchyard::local_cluster::{PgNode, CLUSTER_PASSWORD, CLUSTER_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The proxy configuration: nodes `db1` (primary, with `primary_hw`) and
/// `db2` (replica, with `replica_hw`), plus `extra` sections.
fn config(
    primary: &PgNode,
    replica: &PgNode,
    primary_hw: &str,
    replica_hw: &str,
    extra: &str,
) -> String {
    let node = |name: &str, n: &PgNode, hw: &str| {
        let hw = if hw.is_empty() {
            String::new()
        } else {
            format!(", hardware = {{ {hw} }}")
        };
        format!("{{ name = \"{name}\", addr = \"{}\"{hw} }}", n.addr())
    };
    format!(
        "{USERS}\n[failover]\nhold_timeout = \"20s\"\n{extra}\n[cluster]\nnodes = [{}, {}]\nuser = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n",
        node("db1", primary, primary_hw),
        node("db2", replica, replica_hw),
    )
}

/// A Prometheus-text endpoint the test rewrites: an ipmi_exporter stand-in.
struct Exporter {
    addr: SocketAddr,
    text: Arc<Mutex<String>>,
}

impl Exporter {
    async fn start(text: &str) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text = Arc::new(Mutex::new(text.to_string()));
        let served = text.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = served.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Exporter { addr, text }
    }

    fn set(&self, text: &str) {
        *self.text.lock().unwrap() = text.to_string();
    }

    /// The `hardware = { ... }` body probing this exporter with the rules.
    fn spec(&self) -> String {
        format!(
            "url = \"http://{}/metrics\", interval = \"200ms\", timeout = \"1s\", rules = [ \
             {{ metric = \"ipmi_sensor_state\", labels = {{ type = \"Power Supply\" }}, op = \"!=\", value = 0, status = \"degraded\" }}, \
             {{ metric = \"node_hwmon_temp_celsius\", op = \">\", value = 90, status = \"failing\" }} ]",
            self.addr
        )
    }
}

fn exposition(psu_state: u32, temp: u32) -> String {
    format!(
        "# HELP ipmi_sensor_state Indicates the severity of the state reported by an IPMI sensor (0=nominal, 1=warning, 2=critical).\n\
         # TYPE ipmi_sensor_state gauge\n\
         ipmi_sensor_state{{id=\"52\",name=\"PS1 Status\",type=\"Power Supply\"}} {psu_state}\n\
         ipmi_sensor_state{{id=\"53\",name=\"PS2 Status\",type=\"Power Supply\"}} 0\n\
         ipmi_sensor_state{{id=\"12\",name=\"Fan1\",type=\"Fan\"}} 0\n\
         # TYPE node_hwmon_temp_celsius gauge\n\
         node_hwmon_temp_celsius{{chip=\"platform_coretemp_0\",sensor=\"temp1\"}} {temp}\n"
    )
}

/// Short write transactions on `clients` connections until stopped: every
/// acknowledged value, and every error.
struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<i64>, Vec<String>)>>,
}

impl Workload {
    async fn start(proxy: &Proxy, table: &str, clients: usize) -> Workload {
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

    async fn finish(self) -> (Vec<i64>, Vec<String>) {
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

async fn values(c: &Client, table: &str) -> HashSet<i64> {
    c.query(&format!("SELECT v FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

async fn port_of(c: &Client) -> u16 {
    let rows = c
        .simple_query("SELECT current_setting('port')")
        .await
        .unwrap();
    match &rows[1] {
        SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
        _ => panic!("no row"),
    }
}

/// `name`'s column `column` in `SHOW NODES` (empty before the first checks).
async fn node_column(admin: &Client, name: &str, column: &str) -> String {
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

async fn admin(proxy: &Proxy) -> Client {
    proxy
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap()
}

async fn create_table(c: &Client) -> String {
    let table = unique("sw");
    c.batch_execute(&format!("CREATE TABLE {table} (v bigint PRIMARY KEY)"))
        .await
        .unwrap();
    table
}

/// The checks every switchover test makes once the load stopped: no client
/// error, every acknowledged value on the new primary, and nothing written
/// to the old one after the switch.
async fn assert_nothing_lost(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_psu_moves_the_primary_without_client_errors() {
    let (cluster, primary, replica) = start_pair().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    let toml = config(
        &primary,
        &replica,
        &exporter.spec(),
        "",
        "switchover_on_degraded = true\n",
    );
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let admin = admin(&proxy).await;
    let setup = proxy.client().await;
    let table = create_table(&setup).await;
    eventually(10, "hardware ok", || async {
        node_column(&admin, "db1", "hardware").await == "ok"
    })
    .await;

    let load = Workload::start(&proxy, &table, 6).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    exporter.set(&exposition(1, 45));
    eventually(20, "primary moved to db2", || async {
        node_column(&admin, "db2", "role").await == "primary"
            && port_of(&setup).await == replica.port()
    })
    .await;
    let old_rows = values(&direct_client(primary.port()).await, &table)
        .await
        .len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (acked, errors) = load.finish().await;
    assert_nothing_lost(&replica, &primary, &table, &acked, &errors, old_rows).await;

    assert_eq!(node_column(&admin, "db1", "hardware").await, "degraded");
    assert_eq!(node_column(&admin, "db1", "state").await, "fenced");
    let (_, status) = http_request(http, "GET", "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["primary"], "db2");
    assert_eq!(status["nodes"][0]["hardware"], "degraded");
    assert!(status["nodes"][0]["hardware_reasons"][0]
        .as_str()
        .unwrap()
        .contains("PS1 Status"));
    let (_, metrics) = http_request(http, "GET", "/metrics").await;
    assert!(
        metrics.contains("switchyard_node_hardware_status{node=\"db1\",status=\"degraded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_switchovers_total 1"),
        "{metrics}"
    );
    let (_, events) = http_request(http, "GET", "/events").await;
    for kind in [
        "hardware_degraded",
        "switchover_started",
        "switchover_step",
        "writes_resumed",
    ] {
        assert!(events.contains(kind), "{kind} missing: {events}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hardware_fails_over_at_once_and_an_unreachable_probe_changes_nothing() {
    let (cluster, primary, replica) = start_pair().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    // db2's probe points at a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = format!("url = \"http://{closed}/metrics\", interval = \"200ms\", timeout = \"500ms\", rules = [ {{ metric = \"up\", op = \"==\", value = 0, status = \"failing\" }} ]");
    let toml = config(&primary, &replica, &exporter.spec(), &unreachable, "");
    let proxy = Proxy::start_with(cluster.clone(), &toml).await;
    let admin = admin(&proxy).await;
    let c = proxy.client().await;
    let table = create_table(&c).await;
    eventually(10, "probes read", || async {
        node_column(&admin, "db1", "hardware").await == "ok"
    })
    .await;
    assert_eq!(node_column(&admin, "db2", "hardware").await, "unknown");
    let events = admin.simple_query("SHOW EVENTS").await.unwrap();
    assert!(events
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(2) == Some("hardware_unknown"))));
    // Unknown hardware is not a reason to move anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(port_of(&c).await, primary.port());
    assert_eq!(node_column(&admin, "db2", "role").await, "replica");

    c.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let failing = Instant::now();
    exporter.set(&exposition(0, 97));
    eventually(15, "failover after failing hardware", || async {
        node_column(&admin, "db2", "role").await == "primary"
    })
    .await;
    let took = failing.elapsed();
    // The database never died: only the probe said so.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    c.batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
        .await
        .expect("writes on the new primary");
    assert_eq!(port_of(&c).await, replica.port());
    assert_eq!(
        values(&direct_client(replica.port()).await, &table).await,
        HashSet::from([1, 2])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_probes_map_exit_codes() {
    let (cluster, primary, replica) = start_pair().await;
    let dir = std::env::temp_dir().join(unique("sy_hw_cmd"));
    std::fs::create_dir_all(&dir).unwrap();
    let status_file = dir.join("status");
    std::fs::write(&status_file, "0").unwrap();
    let cmd = format!(
        "command = \"echo PSU2 reports $(cat {0}); exit $(cat {0})\", interval = \"200ms\", timeout = \"1s\"",
        status_file.display()
    );
    let proxy = Proxy::start_with(cluster.clone(), &config(&primary, &replica, "", &cmd, "")).await;
    let admin = admin(&proxy).await;
    for (code, want) in [
        ("0", "ok"),
        ("1", "degraded"),
        ("2", "failing"),
        ("3", "unknown"),
        ("0", "ok"),
    ] {
        std::fs::write(&status_file, code).unwrap();
        eventually(10, &format!("exit {code} -> {want}"), || async {
            node_column(&admin, "db2", "hardware").await == want
        })
        .await;
    }
    // A failing replica is not routed to; the primary never moved.
    assert_eq!(port_of(&proxy.client().await).await, primary.port());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_switchover_under_load_loses_nothing() {
    let (cluster, primary, replica) = start_pair().await;
    let (proxy, http) =
        Proxy::start_with_http(cluster.clone(), &config(&primary, &replica, "", "", "")).await;
    let admin = admin(&proxy).await;
    let setup = proxy.client().await;
    let table = create_table(&setup).await;
    eventually(10, "replica seen", || async {
        node_column(&admin, "db2", "role").await == "replica"
    })
    .await;
    // A target that does not exist: refused, nothing moves.
    let (code, body) = http_request(http, "POST", "/switchover?to=nope").await;
    assert_eq!(code, 409, "{body}");

    let load = Workload::start(&proxy, &table, 8).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = admin
        .simple_query("SWITCHOVER TO db2")
        .await
        .expect("switchover");
    assert!(rows
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    let old_rows = values(&direct_client(primary.port()).await, &table)
        .await
        .len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (acked, errors) = load.finish().await;
    assert_nothing_lost(&replica, &primary, &table, &acked, &errors, old_rows).await;
    assert_eq!(port_of(&setup).await, replica.port());
    // The old primary is read-only and fenced; with it gone there is no
    // replica left to switch to.
    let old = direct_client(primary.port()).await;
    let ro = old
        .simple_query("SHOW default_transaction_read_only")
        .await
        .unwrap();
    assert!(matches!(&ro[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("on")));
    let e = admin.simple_query("SWITCHOVER").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e:?}");
    // The write pause is on the timeline.
    let events = admin.simple_query("SHOW EVENTS").await.unwrap();
    let pause = events.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get(4).is_some_and(|m| m.contains("write pause")) => {
            r.get(4).map(str::to_string)
        }
        _ => None,
    });
    assert!(pause.is_some(), "no write pause recorded");
}

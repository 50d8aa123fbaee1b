//! Failover with real servers: a crashed or hung primary is replaced by its
//! replica while clients keep their connections; what a transaction in flight
//! sees; the `follow` and `off` modes; the witness rule (no promotion while a
//! replica still receives fresh WAL, or may yet hear an idle primary's
//! keepalive); fencing of the old primary; `replica`
//! traffic falling back to the primary; and no acknowledged write lost with
//! synchronous replication. Every test starts its own cluster, since it
//! destroys nodes. `RUST_LOG=switchyard=debug` shows the proxy's decisions.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hardware::Frozen;
use common::{direct_client, sqlstate, unique, Proxy, USERS};
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, PgNode, StopMode, CLUSTER_PASSWORD, CLUSTER_USER,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A cluster of its own for one test, with its primary and its replica.
async fn start_pair() -> (Arc<LocalCluster>, PgNode, PgNode) {
    common::private_pair().await
}

/// A proxy in front of every node of `cluster`, `extra` as in [`config`].
async fn proxy_for(cluster: &Arc<LocalCluster>, extra: &str) -> Proxy {
    Proxy::start_with(cluster.clone(), &config(&nodes_of(cluster), extra)).await
}

/// A cluster of its own and a proxy in front of it: primary, replica, proxy.
async fn cluster_with_proxy(extra: &str) -> (PgNode, PgNode, Proxy) {
    let (cluster, primary, replica) = start_pair().await;
    let proxy = proxy_for(&cluster, extra).await;
    (primary, replica, proxy)
}

/// As [`cluster_with_proxy`], with a primary that sends its idle replica a
/// keepalive every 2 s: a hung primary looks like a live, idle one cut off
/// from the proxy until then, and is replaced only after it (with
/// PostgreSQL's defaults, 30 s).
async fn cluster_for_a_hang(extra: &str) -> (PgNode, PgNode, Proxy) {
    let (cluster, primary, replica) = start_pair().await;
    set_sender_timeout(&primary, Some("4s")).await;
    let proxy = proxy_for(&cluster, extra).await;
    (primary, replica, proxy)
}

/// `(name, addr)` of every node, primary first.
fn nodes_of(cluster: &LocalCluster) -> Vec<(String, String)> {
    cluster
        .nodes()
        .iter()
        .map(|n| (n.name().to_string(), n.addr()))
        .collect()
}

/// A whole proxy configuration: the test users, `extra` sections, the nodes
/// and the cluster login the local cluster creates.
fn config(nodes: &[(String, String)], extra: &str) -> String {
    let nodes = nodes
        .iter()
        .map(|(name, addr)| format!("{{ name = \"{name}\", addr = \"{addr}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{USERS}\n{extra}\n[cluster]\nnodes = [{nodes}]\nuser = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n"
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn stop(node: &PgNode, mode: StopMode) {
    let n = node.clone();
    blocking(move || n.stop(mode))
        .await
        .unwrap_or_else(|e| panic!("stopping {}: {e}", node.name()));
}

async fn start(node: &PgNode) {
    let n = node.clone();
    blocking(move || n.start())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", node.name()));
}

/// Runs SQL on a node directly (psql over its unix socket, as the superuser).
/// Never call it on a frozen node: psql would hang.
async fn psql(node: &PgNode, sql: &str) -> Result<String, String> {
    let (n, sql) = (node.clone(), sql.to_string());
    blocking(move || n.psql("app", &sql))
        .await
        .map_err(|e| e.to_string())
}

/// Makes replica1 the synchronous standby with `synchronous_commit = level`,
/// set on each of `nodes`; waits until `primary` reports it as such.
async fn synchronous_replication(primary: &PgNode, nodes: &[&PgNode], level: &str) {
    for node in nodes {
        psql(
            node,
            &format!(
                "ALTER SYSTEM SET synchronous_standby_names = 'replica1';
                 ALTER SYSTEM SET synchronous_commit = '{level}';
                 SELECT pg_reload_conf();"
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("configuring synchronous replication: {e}"));
    }
    psql_until(
        10,
        "replica1 to be the synchronous standby",
        primary,
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'replica1'",
        "sync",
    )
    .await;
}

/// Runs `sql` on `node` every 100 ms until it answers `want`, for at most `secs`.
async fn psql_until(secs: u64, what: &str, node: &PgNode, sql: &str, want: &str) {
    eventually(secs, what, || async move {
        (psql(node, sql).await.ok()? == want).then_some(())
    })
    .await;
}

/// `SELECT count(*)` of `table`, asked of the node directly.
async fn count_on(node: &PgNode, table: &str) -> String {
    psql(node, &format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap()
}

/// `pg_is_in_recovery()` asked of the node directly.
async fn in_recovery(node: &PgNode) -> Result<bool, String> {
    psql(node, "SELECT pg_is_in_recovery()")
        .await
        .map(|v| v == "t")
}

/// First column of the first row of a simple query.
async fn value(c: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

/// The port of the server that answered: which node the query ran on.
async fn port_of(c: &Client) -> Result<u16, tokio_postgres::Error> {
    Ok(value(c, "SELECT current_setting('port')")
        .await?
        .parse()
        .expect("port is a number"))
}

/// The port of the node that answers `c` within `secs`; panics on an error.
async fn port_within(secs: u64, what: &str, c: &Client) -> u16 {
    within(secs, what, port_of(c))
        .await
        .unwrap_or_else(|e| panic!("{what}: {}", describe(&e)))
}

/// Creates a table `(v int)` named after `prefix` through `c`; returns its name.
async fn create_table(c: &Client, prefix: &str) -> String {
    let table = unique(prefix);
    c.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    table
}

/// Inserts `v` into `table` through `c`.
async fn insert(c: &Client, table: &str, v: i32) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!("INSERT INTO {table} VALUES ({v})"))
        .await
}

/// A new client through `proxy`, in an explicit transaction that inserted
/// `v` into `table`.
async fn in_transaction(proxy: &Proxy, table: &str, v: i32) -> Client {
    let c = proxy.client().await;
    c.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES ({v})"))
        .await
        .unwrap();
    c
}

/// A statement running in a task of its own.
type Running = JoinHandle<Result<(), tokio_postgres::Error>>;

/// `SELECT pg_sleep(60)` on `c` in a task of its own: a statement still
/// running when its node fails.
fn spawn_sleep(c: &Arc<Client>) -> Running {
    let c = c.clone();
    tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(60)").await })
}

async fn recovery_via(c: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(value(c, "SELECT pg_is_in_recovery()").await? == "t")
}

/// `fut`, which must finish within `secs`.
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {secs} s"))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `f` every 100 ms until it succeeds, for at most `secs`; the panic
/// message carries the last error.
async fn until_ok<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match f().await {
            Ok(v) => return v,
            Err(e) => describe(&e),
        };
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{what}: still failing after {secs} s and {attempts} attempts; last error: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e:?}"),
    }
}

/// The SQLSTATE of a failed request; panics if it succeeded.
fn failed_with<T>(r: Result<T, tokio_postgres::Error>, what: &str) -> Option<String> {
    match r {
        Ok(_) => panic!("{what}: succeeded, an error was expected"),
        Err(e) => {
            eprintln!("{what}: {}", describe(&e));
            sqlstate(&e)
        }
    }
}

/// A TCP relay in front of a node that the test can cut (close every relayed
/// socket and refuse new connections) and restore on the same port.
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    token: Mutex<CancellationToken>,
    /// Every relayed connection; `cut` waits for them to close so a test
    /// acting right after the cut sees a path that is really gone.
    conns: TaskTracker,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let target: SocketAddr = target.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let conns = TaskTracker::new();
        tokio::spawn(relay_serve(listener, target, token.clone(), conns.clone()));
        Relay {
            addr,
            target,
            token: Mutex::new(token),
            conns,
        }
    }

    /// Closes every relayed socket and refuses new connections; returns once
    /// all relayed sockets are closed.
    async fn cut(&self) {
        self.cancel();
        self.conns.close();
        self.conns.wait().await;
        self.conns.reopen();
    }

    fn cancel(&self) {
        self.token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the relay's port");
        let token = CancellationToken::new();
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token.clone();
        tokio::spawn(relay_serve(
            listener,
            self.target,
            token,
            self.conns.clone(),
        ));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cancel();
    }
}

async fn relay_serve(
    listener: TcpListener,
    target: SocketAddr,
    token: CancellationToken,
    conns: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return, // drops the listener: connects are refused
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let token = token.clone();
        conns.spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

/// Sets `wal_sender_timeout` on `node` (reloaded; `None` resets it): its
/// WAL senders send an idle replica a keepalive every half of it.
async fn set_sender_timeout(node: &PgNode, value: Option<&str>) {
    let set = match value {
        Some(v) => format!("ALTER SYSTEM SET wal_sender_timeout = '{v}'"),
        None => "ALTER SYSTEM RESET wal_sender_timeout".to_string(),
    };
    psql(node, &format!("{set}; SELECT pg_reload_conf();"))
        .await
        .unwrap_or_else(|e| panic!("setting wal_sender_timeout: {e}"));
}

/// Asserts every 500 ms, until `secs` after `since`, that `replica` is still
/// in recovery: nothing promoted it.
async fn assert_not_promoted(replica: &PgNode, since: Instant, secs: u64, what: &str) {
    while since.elapsed() < Duration::from_secs(secs) {
        assert_eq!(
            in_recovery(replica).await,
            Ok(true),
            "{what} ({:?} in)",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// With `busy` running a statement on `primary`, hangs `primary` (see
/// [`Frozen`]) once the pool has settled: the stuck statement, the frozen
/// node and when it froze.
async fn hang_under_a_statement(
    primary: &PgNode,
    busy: &Arc<Client>,
) -> (Running, Frozen, Instant) {
    let stuck = spawn_sleep(busy);
    let_pool_settle().await;
    (stuck, Frozen::freeze(primary), Instant::now())
}

/// The statement stuck on the hung primary fails once the node is declared
/// down, not after TCP's retransmission timeout. Outside a transaction the
/// statement commits on its own: its outcome is unknown (08007), never
/// "rolled back".
async fn assert_stuck_statement_gets_08007(stuck: Running) {
    let r = within(20, "statement on the hung primary", stuck)
        .await
        .unwrap();
    assert_eq!(
        failed_with(r, "statement on the hung primary").as_deref(),
        Some("08007")
    );
}

/// Pooled server connections idle for over a second are checked for a dead
/// peer before reuse; waiting that long makes "a query after the crash" mean
/// exactly that, not "a query racing the pool's last use".
async fn let_pool_settle() {
    tokio::time::sleep(Duration::from_millis(1300)).await;
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_primary_is_replaced_idle_clients_notice_nothing_and_it_stays_fenced() {
    let fence_log = std::env::temp_dir().join(unique("switchyard_fence"));
    let extra = format!(
        "[failover]\nfence_command = 'echo \"$1 $SWITCHYARD_FENCED_NODE\" > {}'\n",
        fence_log.display()
    );
    let (primary, replica, proxy) = cluster_with_proxy(&extra).await;
    let writer = proxy.client().await;
    let table = create_table(&writer, "crash").await;
    assert_eq!(port_of(&writer).await.unwrap(), primary.port());
    let idle = proxy.client().await;
    assert_eq!(port_of(&idle).await.unwrap(), primary.port());
    let early = proxy.client().await;
    early.batch_execute("SELECT 1").await.unwrap();
    let_pool_settle().await;

    stop(&primary, StopMode::Immediate).await;
    let crashed = Instant::now();

    // Sent while no primary is routable: held, then answered by the new primary.
    let port = port_within(
        25,
        "query sent during the failover (it must be held)",
        &early,
    )
    .await;
    eprintln!(
        "held query answered {:?} after the crash",
        crashed.elapsed()
    );
    assert_eq!(port, replica.port(), "held query ran on the new primary");
    assert_eq!(
        in_recovery(&replica).await,
        Ok(false),
        "the replica was promoted"
    );

    // Writes resume on the same client connection, on the promoted replica.
    within(25, "write after failover", insert(&writer, &table, 1))
        .await
        .unwrap_or_else(|e| panic!("write after failover: {}", describe(&e)));
    assert_eq!(port_of(&writer).await.unwrap(), replica.port());

    // A client idle across the failover notices nothing.
    assert_eq!(port_within(25, "idle client", &idle).await, replica.port());

    // The fence hook ran with the old primary's address, as $1 and in the environment.
    let expected = format!("{0} {0}", primary.addr());
    let fenced_line = eventually(10, "the fence_command to run", || {
        let path = fence_log.clone();
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|s| !s.trim().is_empty())
        }
    })
    .await;
    let _ = std::fs::remove_file(&fence_log);
    assert_eq!(fenced_line.trim(), expected);

    // The old primary comes back (power restored): it is a primary on the
    // old timeline, and must never be routed to again.
    start(&primary).await;
    assert_eq!(in_recovery(&primary).await, Ok(false));
    let mut ports = vec![];
    for i in 0..12 {
        let c = proxy.client().await;
        insert(&writer, &table, 100 + i)
            .await
            .unwrap_or_else(|e| panic!("write with the old primary back: {}", describe(&e)));
        ports.push(port_of(&c).await.unwrap());
        ports.push(port_of(&writer).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ports.iter().all(|&p| p == replica.port()),
        "a query reached the fenced old primary: {ports:?}"
    );
    assert_eq!(
        psql(
            &primary,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
        )
        .await
        .unwrap(),
        "0",
        "no client connection on the old primary"
    );
    assert_eq!(
        count_on(&primary, &table).await,
        "0",
        "no write reached the old primary"
    );
    assert_eq!(count_on(&replica, &table).await, "13");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_in_flight_get_08006_or_08007_and_their_connections_stay_usable() {
    let (primary, replica, proxy) = cluster_with_proxy("").await;
    let t = unique("lost");
    let slow = unique("slowcommit");
    proxy
        .client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (v int);
             CREATE TABLE {slow} (v int);
             CREATE FUNCTION {slow}_fn() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER {slow}_trg AFTER INSERT ON {slow}
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {slow}_fn();"
        ))
        .await
        .unwrap();
    // Replication is asynchronous here: the tables must reach the replica
    // before the crash, or the new primary rightly lacks them.
    psql_until(
        10,
        "the tables to reach the replica",
        &replica,
        &format!("SELECT to_regclass('{t}') IS NOT NULL AND to_regclass('{slow}') IS NOT NULL"),
        "t",
    )
    .await;

    // In an explicit transaction, a statement running.
    let running = Arc::new(in_transaction(&proxy, &t, 1).await);
    // In an explicit transaction, idle.
    let idle_in_txn = in_transaction(&proxy, &t, 2).await;
    // A COMMIT in flight (a deferred trigger keeps it busy).
    let committing = Arc::new(in_transaction(&proxy, &slow, 3).await);
    // An extended-protocol statement outside any transaction.
    let extended = Arc::new(proxy.client().await);

    let running_q = spawn_sleep(&running);
    let commit_q = tokio::spawn({
        let c = committing.clone();
        async move { c.batch_execute("COMMIT").await }
    });
    let extended_q = tokio::spawn({
        let c = extended.clone();
        async move { c.query_typed("SELECT pg_sleep(60)", &[]).await }
    });
    psql_until(
        10,
        "the three statements to run on the primary",
        &primary,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'active'",
        "3",
    )
    .await;

    stop(&primary, StopMode::Immediate).await;
    let crashed = Instant::now();

    let r = within(20, "statement in flight", running_q).await.unwrap();
    assert_eq!(
        failed_with(r, "statement in flight").as_deref(),
        Some("08006")
    );
    eprintln!(
        "in-flight statement failed {:?} after the crash",
        crashed.elapsed()
    );
    let r = within(20, "COMMIT in flight", commit_q).await.unwrap();
    assert_eq!(
        failed_with(r, "COMMIT in flight").as_deref(),
        Some("08007"),
        "a COMMIT in flight has an unknown outcome"
    );
    let r = within(20, "extended statement in flight", extended_q)
        .await
        .unwrap();
    // Outside an explicit transaction the statement runs in an implicit one,
    // whose commit the proxy cannot see: "rolled back" (08006) or "unknown"
    // (08007) are both fair for a read.
    let code = failed_with(r, "extended statement in flight");
    assert!(
        matches!(code.as_deref(), Some("08006" | "08007")),
        "extended statement in flight: {code:?}"
    );

    // The client inside a transaction is in an aborted transaction now.
    for _ in 0..2 {
        let r = within(
            10,
            "statement in the lost transaction",
            running.batch_execute("SELECT 1"),
        )
        .await;
        assert_eq!(
            failed_with(r, "statement in the lost transaction").as_deref(),
            Some("25P02")
        );
    }
    within(10, "ROLLBACK", running.batch_execute("ROLLBACK"))
        .await
        .unwrap_or_else(|e| panic!("ROLLBACK of the lost transaction: {}", describe(&e)));

    // The idle one learns at its next statement, then the same.
    let r = within(
        10,
        "idle transaction's next statement",
        insert(&idle_in_txn, &t, 22),
    )
    .await;
    assert_eq!(
        failed_with(r, "idle transaction's next statement").as_deref(),
        Some("08006")
    );
    let r = within(10, "25P02", idle_in_txn.batch_execute("SELECT 1")).await;
    assert_eq!(
        failed_with(r, "after the lost idle transaction").as_deref(),
        Some("25P02")
    );
    within(10, "ROLLBACK", idle_in_txn.batch_execute("ROLLBACK"))
        .await
        .unwrap_or_else(|e| panic!("ROLLBACK of the lost idle transaction: {}", describe(&e)));

    // Every connection is usable on the new primary (held until it serves).
    for (name, c) in [
        ("running", &*running),
        ("idle in transaction", &idle_in_txn),
        ("committing", &*committing),
        ("extended", &*extended),
    ] {
        assert_eq!(port_within(25, name, c).await, replica.port(), "{name}");
        let v: i32 = within(10, name, c.query_typed("SELECT 41 + 1", &[]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", describe(&e)))[0]
            .get(0);
        assert_eq!(v, 42);
    }
    // Nothing of the lost transactions was committed.
    assert_eq!(
        psql(
            &replica,
            &format!("SELECT (SELECT count(*) FROM {t}) + (SELECT count(*) FROM {slow})")
        )
        .await
        .unwrap(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autocommit_write_that_reached_the_replica_is_not_reported_as_rolled_back() {
    let (cluster, primary, replica) = start_pair().await;
    // Commits wait until replica1 has applied them; with replay paused there,
    // a commit record reaches the replica but the commit is never acknowledged.
    synchronous_replication(&primary, &[&primary], "remote_apply").await;
    let proxy = proxy_for(&cluster, "").await;
    let table = unique("unknown");
    let c = Arc::new(proxy.client().await);
    c.batch_execute(&format!("CREATE TABLE {table} (id int)"))
        .await
        .unwrap();
    let_pool_settle().await;

    psql(&replica, "SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let in_flight = tokio::spawn({
        let (c, table) = (c.clone(), table.clone());
        async move { insert(&c, &table, 1).await }
    });
    // The INSERT's commit record is written and waits for the replica...
    let commit_lsn = eventually(10, "the INSERT to wait for the synchronous standby", || {
        let primary = &primary;
        async move {
            let waiting = psql(
                primary,
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND wait_event = 'SyncRep'",
            )
            .await
            .ok()?;
            if waiting != "1" {
                return None;
            }
            psql(primary, "SELECT pg_current_wal_flush_lsn()").await.ok()
        }
    })
    .await;
    // ... which has received it.
    psql_until(
        10,
        "the replica to receive the commit record",
        &replica,
        &format!("SELECT pg_last_wal_receive_lsn() >= '{commit_lsn}'::pg_lsn"),
        "t",
    )
    .await;

    stop(&primary, StopMode::Immediate).await;
    let r = within(20, "the INSERT in flight", in_flight).await.unwrap();
    let code = failed_with(r, "autocommit INSERT in flight");

    // Promotion ends the paused recovery and applies everything received.
    let port = port_within(25, "a query after the failover", &c).await;
    assert_eq!(port, replica.port());
    let present = count_on(&replica, &table).await;
    assert_eq!(
        present, "1",
        "test premise: the promoted replica applied the commit it had received"
    );
    assert_eq!(
        code.as_deref(),
        Some("08007"),
        "the INSERT committed (it is on the new primary), but the client was not told \
         that the outcome is unknown; a client retrying as told writes it twice"
    );
}

/// PostgreSQL can lose a promotion request: its startup process may take the
/// wakeup, then sleep out `wal_retrieve_retry_interval` (5 s) before it looks
/// for the request again. Here it is lost for good: the startup process is
/// frozen when `pg_promote()` arrives, and the signal file is gone before it
/// thaws. The proxy asks again until the replica leaves recovery, and never
/// gives up on its candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_request_the_replica_loses_is_sent_again() {
    let (primary, replica, proxy) = cluster_with_proxy("").await;
    let writer = proxy.client().await;
    let table = create_table(&writer, "lost_promote").await;
    let admin = proxy
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    let_pool_settle().await;

    let startup = Frozen::freeze_child(&replica, "startup");
    stop(&primary, StopMode::Immediate).await;
    let signal_file = replica.data_dir().join("promote");
    eventually(20, "pg_promote() to reach the replica", || {
        let f = signal_file.clone();
        async move { f.exists().then_some(()) }
    })
    .await;
    let _ = std::fs::remove_file(&signal_file);
    drop(startup);

    within(
        20,
        "write after a lost promotion request",
        insert(&writer, &table, 1),
    )
    .await
    .unwrap_or_else(|e| panic!("write after a lost promotion request: {}", describe(&e)));
    assert_eq!(port_of(&writer).await.unwrap(), replica.port());
    let events = admin.simple_query("SHOW EVENTS").await.unwrap();
    let failed: Vec<String> = events
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get(2) == Some("action_failed") => {
                Some(r.get(4).unwrap_or_default().to_string())
            }
            _ => None,
        })
        .collect();
    assert!(failed.is_empty(), "the proxy gave up on a step: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_detected_by_timeouts_and_replaced() {
    let (primary, replica, proxy) = cluster_for_a_hang("").await;
    let writer = proxy.client().await;
    let table = create_table(&writer, "hang").await;
    let idle = proxy.client().await;
    assert_eq!(port_of(&idle).await.unwrap(), primary.port());
    let busy = Arc::new(proxy.client().await);

    let (busy_q, frozen, hung) = hang_under_a_statement(&primary, &busy).await;
    assert_stuck_statement_gets_08007(busy_q).await;
    eprintln!("stuck statement failed {:?} after the hang", hung.elapsed());

    // Writes resume on the same connection. A write that raced the detection
    // may fail like any statement in flight; retry on the same connection.
    let mut errors = vec![];
    loop {
        let r = within(25, "write after the hang", insert(&writer, &table, 1)).await;
        match r {
            Ok(()) => break,
            Err(e) => {
                errors.push(describe(&e));
                assert!(
                    hung.elapsed() < Duration::from_secs(15),
                    "no write through the proxy within 15 s of the hang: {errors:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let took = hung.elapsed();
    eprintln!("first write after the hang: {took:?} (errors before: {errors:?})");
    assert!(
        took < Duration::from_secs(15),
        "failover after a hang took {took:?}"
    );
    assert!(errors.len() <= 1, "more than one error: {errors:?}");
    assert_eq!(port_of(&writer).await.unwrap(), replica.port());
    assert_eq!(in_recovery(&replica).await, Ok(false));
    assert_eq!(port_within(10, "idle client", &idle).await, replica.port());
    let port = port_within(10, "the stuck client afterwards", &busy).await;
    assert_eq!(port, replica.port());
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_hang_no_client_waits_out_a_connect_to_the_hung_node() {
    // `fresh` has a pool of its own, with no connection yet.
    let (primary, replica, proxy) =
        cluster_for_a_hang("[databases.fresh]\ndbname = \"app\"\n").await;
    let busy = Arc::new(proxy.client().await);
    let table = create_table(&busy, "hang2").await;
    assert_eq!(port_of(&busy).await.unwrap(), primary.port());

    let (busy_q, frozen, hung) = hang_under_a_statement(&primary, &busy).await;
    let promoted = tokio::spawn({
        let replica = replica.clone();
        async move {
            eventually(20, "the replica to be promoted", || {
                let replica = &replica;
                async move { (in_recovery(replica).await == Ok(false)).then(Instant::now) }
            })
            .await
        }
    });

    // A client arrives while the primary is hung but not yet declared down
    // (no probe can have timed out yet): its pool must open a connection,
    // and the only routable node is the hung one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = tokio::spawn({
        let url = proxy.url("app", "app", "fresh");
        async move {
            let c = common::connect(&url).await?;
            let port = port_of(&c).await?;
            Ok::<_, tokio_postgres::Error>((port, Instant::now()))
        }
    });

    // The statement stuck on the hung node fails when it is declared down,
    // and the client retries at once.
    assert_stuck_statement_gets_08007(busy_q).await;
    let failed_at = Instant::now();
    let retry = within(
        25,
        "retry after the failover error",
        insert(&busy, &table, 1),
    )
    .await;
    let retry_took = failed_at.elapsed();
    eprintln!(
        "stuck statement failed {:?} after the hang; its immediate retry took {retry_took:?}",
        failed_at.duration_since(hung)
    );
    retry.unwrap_or_else(|e| panic!("retry after the failover error: {}", describe(&e)));

    let promoted_at = within(25, "the replica to be promoted", promoted)
        .await
        .unwrap();
    let (port, fresh_done) = within(25, "client arriving during the hang", fresh)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("client arriving during the hang: {}", describe(&e)));
    assert_eq!(port, replica.port());
    let fresh_late = fresh_done.saturating_duration_since(promoted_at);
    eprintln!(
        "replica seen promoted {:?} after the hang; the client that arrived during the hang was answered {:?} after the hang",
        promoted_at.duration_since(hung),
        fresh_done.duration_since(hung)
    );
    drop(frozen);
    assert!(
        retry_took < Duration::from_secs(3),
        "a retry sent right after the failover error took {retry_took:?}: it was routed to the \
         node just declared down and waited for its connect timeout"
    );
    assert!(
        fresh_late < Duration::from_millis(1500),
        "the client that arrived during the hang was answered {fresh_late:?} after the \
         promotion: its connect to the hung node was not abandoned when the node was declared down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_waits_for_an_external_promotion_then_reroutes_writes() {
    let (primary, replica, proxy) = cluster_with_proxy("[failover]\nmode = \"follow\"\n").await;
    let c = Arc::new(proxy.client().await);
    let table = create_table(&c, "follow").await;
    assert_eq!(port_of(&c).await.unwrap(), primary.port());
    let_pool_settle().await;

    stop(&primary, StopMode::Immediate).await;
    let held = tokio::spawn({
        let (c, table) = (c.clone(), table.clone());
        async move { insert(&c, &table, 1).await }
    });
    // Switchyard must not promote in follow mode.
    assert_not_promoted(
        &replica,
        Instant::now(),
        4,
        "Switchyard promoted in follow mode",
    )
    .await;
    assert!(
        !held.is_finished(),
        "the write is held while no primary serves"
    );

    let promoted = Instant::now();
    let r = replica.clone();
    blocking(move || r.promote()).await.expect("pg_ctl promote");
    within(25, "the held write", held)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("held write after the external promotion: {}", describe(&e)));
    eprintln!(
        "held write ran {:?} after pg_ctl promote began",
        promoted.elapsed()
    );
    assert_eq!(port_of(&c).await.unwrap(), replica.port());
    assert_eq!(count_on(&replica, &table).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_pool_size_are_held_for_the_primary_not_timed_out_for_a_slot() {
    // One server slot for three clients, and slots awaited for 1 s only:
    // while no primary serves, every client waits for one (up to
    // hold_timeout), none for a slot a held client keeps.
    let extra = concat!(
        "[proxy]\ndefault_pool_size = 1\ncheckout_timeout = \"1s\"\n",
        "[failover]\nmode = \"follow\"\nhold_timeout = \"30s\"\n",
    );
    let (primary, replica, proxy) = cluster_with_proxy(extra).await;
    let first = proxy.client().await;
    let table = create_table(&first, "beyond").await;
    let mut clients = vec![first];
    for _ in 0..2 {
        clients.push(proxy.client().await);
    }
    let_pool_settle().await;

    stop(&primary, StopMode::Immediate).await;
    let held: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let table = table.clone();
            tokio::spawn(async move { (insert(&c, &table, i as i32).await, c) })
        })
        .collect();
    // Three checkout_timeouts: long enough for the slot waiters to fail.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = replica.clone();
    blocking(move || r.promote()).await.expect("pg_ctl promote");
    for h in held {
        let (r, c) = within(25, "a held write", h).await.unwrap();
        r.unwrap_or_else(|e| panic!("a client beyond the pool size: {}", describe(&e)));
        assert_eq!(port_of(&c).await.unwrap(), replica.port());
    }
    assert_eq!(count_on(&replica, &table).await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_mode_never_promotes_and_held_queries_time_out_on_a_usable_connection() {
    let (primary, replica, proxy) =
        cluster_with_proxy("[failover]\nmode = \"off\"\nhold_timeout = \"2s\"\n").await;
    let c = proxy.client().await;
    let table = create_table(&c, "off").await;
    let_pool_settle().await;

    stop(&primary, StopMode::Immediate).await;
    let stopped = Instant::now();
    for attempt in 0..2 {
        let started = Instant::now();
        let r = within(15, "write with no primary", insert(&c, &table, 1)).await;
        let waited = started.elapsed();
        assert_eq!(
            failed_with(r, "write with no primary").as_deref(),
            Some("08006"),
            "attempt {attempt}"
        );
        assert!(
            waited >= Duration::from_millis(1500),
            "attempt {attempt}: failed after {waited:?}, not held for hold_timeout"
        );
        assert!(
            waited < Duration::from_secs(10),
            "attempt {attempt}: held {waited:?}"
        );
    }
    assert_not_promoted(&replica, stopped, 6, "Switchyard promoted in off mode").await;
    assert_eq!(in_recovery(&replica).await, Ok(true));

    // The primary returns: the same connection writes again.
    start(&primary).await;
    until_ok(
        20,
        "writes through the proxy once the primary is back",
        || insert(&c, &table, 2),
    )
    .await;
    assert_eq!(port_of(&c).await.unwrap(), primary.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_promotion_while_the_replica_still_receives_fresh_wal() {
    let (cluster, primary, replica) = start_pair().await;
    // Switchyard reaches the primary only through the relay; the replica
    // streams from the primary directly.
    let relay = Relay::start(&primary.addr()).await;
    let nodes = vec![
        ("primary".to_string(), relay.addr.to_string()),
        ("replica1".to_string(), replica.addr()),
    ];
    let proxy = Proxy::start_with(
        cluster.clone(),
        &config(&nodes, "[failover]\nhold_timeout = \"2s\"\n"),
    )
    .await;
    let c = proxy.client().await;
    let table = create_table(&c, "witness").await;
    assert_eq!(port_of(&c).await.unwrap(), primary.port());

    // The primary keeps writing (not through the proxy): fresh WAL streams.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let direct_writer = tokio::spawn({
        let (primary, table, stop) = (primary.clone(), table.clone(), stop_writing.clone());
        async move {
            let d = direct_client(primary.port()).await;
            d.batch_execute("SET synchronous_commit = on")
                .await
                .unwrap();
            let mut written = 0u32;
            let deadline = Instant::now() + Duration::from_secs(40);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                insert(&d, &table, 0)
                    .await
                    .expect("direct write to the primary");
                written += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    relay.cut().await;
    let cut = Instant::now();
    let through_proxy =
        async { within(15, "write through the cut-off proxy", insert(&c, &table, 1)).await };
    let watch_replica = assert_not_promoted(
        &replica,
        cut,
        8,
        "promoted after the cut although the replica still streams",
    );
    let (r, ()) = tokio::join!(through_proxy, watch_replica);
    assert_eq!(
        failed_with(r, "write through the cut-off proxy").as_deref(),
        Some("08006"),
        "the proxy had lost the primary"
    );
    assert_eq!(in_recovery(&replica).await, Ok(true));

    // The proxy's path comes back: writes resume on the same primary.
    relay.restore().await;
    until_ok(
        20,
        "writes through the proxy once the relay is back",
        || insert(&c, &table, 2),
    )
    .await;
    assert_eq!(port_of(&c).await.unwrap(), primary.port());
    stop_writing.store(true, Ordering::Relaxed);
    let written = within(10, "direct writer", direct_writer).await.unwrap();
    assert!(written > 20, "the direct writer wrote {written} rows");
    assert_eq!(in_recovery(&replica).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_primary_cut_off_from_the_proxy_is_not_replaced_but_a_crashed_one_is() {
    let (cluster, primary, replica) = start_pair().await;
    // Idle, the primary sends its replica nothing but a keepalive every
    // wal_sender_timeout / 2: here every 2 s.
    set_sender_timeout(&primary, Some("4s")).await;
    // Switchyard reaches the primary only through the relay; the replica
    // streams from the primary directly.
    let relay = Relay::start(&primary.addr()).await;
    let nodes = vec![
        ("primary".to_string(), relay.addr.to_string()),
        ("replica1".to_string(), replica.addr()),
    ];
    let extra = "[failover]\nhold_timeout = \"2s\"\n";
    let proxy = Proxy::start_with(cluster.clone(), &config(&nodes, extra)).await;
    let c = proxy.client().await;
    let table = create_table(&c, "idle").await;
    insert(&c, &table, 1).await.unwrap();
    let replicated = format!("SELECT count(*) FROM {table}");
    psql_until(10, "the row on the replica", &replica, &replicated, "1").await;
    let_pool_settle().await;

    // Nobody writes: after the cut the replica hears only keepalives.
    relay.cut().await;
    let cut = Instant::now();
    let through_proxy =
        async { within(15, "write through the cut-off proxy", insert(&c, &table, 2)).await };
    let watch_replica = assert_not_promoted(
        &replica,
        cut,
        8,
        "promoted over a live primary that was only idle and cut off from the proxy",
    );
    let (r, ()) = tokio::join!(through_proxy, watch_replica);
    assert_eq!(
        failed_with(r, "write through the cut-off proxy").as_deref(),
        Some("08006"),
        "held, then refused: no node took it"
    );
    assert_eq!(in_recovery(&replica).await, Ok(true));
    assert_eq!(count_on(&primary, &table).await, "1");

    // The proxy's path comes back: writes resume on the same primary.
    relay.restore().await;
    until_ok(20, "writes once the relay is back", || {
        insert(&c, &table, 3)
    })
    .await;
    assert_eq!(port_of(&c).await.unwrap(), primary.port());

    // A crash breaks the replica's stream at once: no keepalive period is
    // waited for, not even the default 30 s one.
    set_sender_timeout(&primary, None).await;
    let_pool_settle().await;
    stop(&primary, StopMode::Immediate).await;
    let crashed = Instant::now();
    until_ok(25, "a write after the crash", || insert(&c, &table, 4)).await;
    let took = crashed.elapsed();
    eprintln!("first write after the crash: {took:?}");
    assert_eq!(port_of(&c).await.unwrap(), replica.port());
    assert_eq!(in_recovery(&replica).await, Ok(false));
    assert!(
        took < Duration::from_secs(10),
        "a crashed primary was replaced only {took:?} later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_during_a_switchover_is_not_replaced_while_its_replica_hears_it() {
    let (cluster, primary, replica) = start_pair().await;
    set_sender_timeout(&primary, Some("4s")).await;
    let relay = Relay::start(&primary.addr()).await;
    let nodes = vec![
        ("primary".to_string(), relay.addr.to_string()),
        ("replica1".to_string(), replica.addr()),
    ];
    let extra = "[failover]\nhold_timeout = \"2s\"\n[switchover]\ndrain_timeout = \"20s\"\n";
    let proxy = Proxy::start_with(cluster.clone(), &config(&nodes, extra)).await;
    let c = proxy.client().await;
    let table = create_table(&c, "switch_cut").await;
    // A transaction left open: the switchover drains, waiting for it.
    let open = proxy.client().await;
    open.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let admin = proxy
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    let switchover = tokio::spawn(async move { admin.simple_query("SWITCHOVER").await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Mid-drain, the proxy loses its path; the idle primary lives on and
    // its replica still streams from it.
    relay.cut().await;
    let cut = Instant::now();
    let switched = within(15, "the switchover's answer", switchover).await;
    assert!(
        matches!(switched, Ok(Err(_))),
        "the switchover did not happen: {switched:?}"
    );
    assert_not_promoted(
        &replica,
        cut,
        8,
        "promoted over a live primary cut off from the proxy during a switchover",
    )
    .await;
    assert_eq!(in_recovery(&primary).await, Ok(false), "still a primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_traffic_goes_to_the_primary_while_the_replica_is_down() {
    let (cluster, primary, replica) = start_pair().await;
    // Down before the proxy starts: it is never routed to before a successful check.
    stop(&replica, StopMode::Fast).await;
    let proxy = proxy_for(
        &cluster,
        "[databases.ro]\ndbname = \"app\"\ntarget = \"replica\"\n",
    )
    .await;
    let ro = proxy
        .client_as("app", "app", "ro")
        .await
        .expect("login to ro");
    let rw = proxy.client().await;
    let table = create_table(&rw, "ro").await;
    let standby = within(10, "ro with the replica down", recovery_via(&ro))
        .await
        .unwrap_or_else(|e| panic!("ro with the replica down: {}", describe(&e)));
    assert!(!standby, "replica traffic falls back to the primary");

    start(&replica).await;
    eventually(15, "ro traffic to reach the replica", || {
        let ro = &ro;
        async move { recovery_via(ro).await.ok().filter(|&r| r) }
    })
    .await;
    assert_eq!(port_of(&ro).await.unwrap(), replica.port());
    let_pool_settle().await;

    stop(&replica, StopMode::Fast).await;
    let mut ro_errors = vec![];
    let mut writes = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        insert(&rw, &table, writes)
            .await
            .unwrap_or_else(|e| panic!("primary traffic affected: {}", describe(&e)));
        writes += 1;
        match within(15, "ro query", recovery_via(&ro)).await {
            Ok(false) => break,
            Ok(true) => panic!("ro answered from a stopped replica"),
            Err(e) => ro_errors.push(describe(&e)),
        }
        assert!(
            Instant::now() < deadline,
            "ro traffic did not move to the primary: {ro_errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ro errors while the replica went down: {ro_errors:?}");
    assert_eq!(port_of(&ro).await.unwrap(), primary.port());
    assert_eq!(port_of(&rw).await.unwrap(), primary.port());
    assert_eq!(
        value(&rw, &format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap(),
        writes.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synchronous_replication_no_acknowledged_write_is_lost() {
    // Set after the cluster is up: in `extra_conf` the primary would wait for
    // a synchronous standby while the cluster creates its roles, before any
    // replica exists, and `LocalCluster::start` would hang. Set on both nodes,
    // as a copied configuration would be: the promoted replica then requires
    // a synchronous standby too, which `sync_policy = "availability"` clears.
    let (cluster, primary, replica) = start_pair().await;
    synchronous_replication(&primary, &[&primary, &replica], "on").await;
    let proxy = proxy_for(&cluster, "").await;
    let table = unique("sync");
    let client = proxy.client().await;
    client
        .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY)"))
        .await
        .unwrap();
    assert_eq!(port_of(&client).await.unwrap(), primary.port());

    // One connection, sequential ids, every acknowledged id recorded.
    let acked: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<(i32, String)>>> = Arc::default();
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (acked, errors, stop) = (acked.clone(), errors.clone(), stop_writing.clone());
        let table = table.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(45);
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                id += 1;
                let sql = format!("INSERT INTO {table} VALUES ({id})");
                let insert = client.batch_execute(&sql);
                match tokio::time::timeout(Duration::from_secs(35), insert).await {
                    Ok(Ok(())) => acked.lock().unwrap().push((id, Instant::now())),
                    Ok(Err(e)) => {
                        errors.lock().unwrap().push((id, describe(&e)));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => errors
                        .lock()
                        .unwrap()
                        .push((id, "no answer in 35 s".into())),
                }
            }
            client
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "no write acknowledged before the crash");

    stop(&primary, StopMode::Immediate).await;
    let crashed = Instant::now();
    let first_after = eventually(25, "20 acknowledged writes after the crash", || {
        let acked = acked.clone();
        async move {
            let acked = acked.lock().unwrap();
            let after: Vec<Instant> = acked
                .iter()
                .filter(|(_, at)| *at > crashed)
                .map(|(_, at)| *at)
                .collect();
            (after.len() >= 20).then(|| after[0])
        }
    })
    .await;
    stop_writing.store(true, Ordering::Relaxed);
    let client = within(40, "writer", writer).await.unwrap();
    assert!(!client.is_closed(), "the writer's connection stayed open");
    eprintln!(
        "first acknowledged write {:?} after the crash; errors: {:?}",
        first_after.duration_since(crashed),
        errors.lock().unwrap()
    );
    assert_eq!(port_of(&client).await.unwrap(), replica.port());
    assert_eq!(in_recovery(&replica).await, Ok(false));

    let present: HashSet<i32> = psql(&replica, &format!("SELECT id FROM {table}"))
        .await
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let acked = acked.lock().unwrap();
    let lost: Vec<i32> = acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes missing on the new primary: {lost:?}",
        lost.len(),
        acked.len()
    );
    let errored_but_present: Vec<(i32, String)> = errors
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| present.contains(id))
        .cloned()
        .collect();
    eprintln!("failed writes present on the new primary: {errored_but_present:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_settings_follow_the_client_to_the_new_primary() {
    let (primary, replica, proxy) = cluster_with_proxy("").await;
    let c = proxy.client().await;
    c.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let stmt = c
        .prepare("SELECT $1::int * 2, now()::text, inet_server_port()")
        .await
        .unwrap();
    let row = c.query_one(&stmt, &[&21i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, i32>(2), primary.port() as i32);
    let_pool_settle().await;

    stop(&primary, StopMode::Immediate).await;

    // The same connection runs the statement it prepared before the crash,
    // without preparing it again, on the new primary, with its time zone.
    let row = within(25, "prepared statement after failover", async {
        loop {
            match c.query_one(&stmt, &[&5i32]).await {
                Ok(row) => return row,
                // The statement in flight at the crash may report the failover once.
                Err(e) if matches!(e.code().map(|c| c.code()), Some("08006" | "08007")) => continue,
                Err(e) => panic!("prepared statement after failover: {}", describe(&e)),
            }
        }
    })
    .await;
    assert_eq!(row.get::<_, i32>(0), 10);
    assert!(
        row.get::<_, String>(1).ends_with("+09"),
        "time zone followed the client"
    );
    assert_eq!(
        row.get::<_, i32>(2),
        replica.port() as i32,
        "ran on the new primary"
    );
}

/// A private primary and two replicas, each streaming through a physical
/// replication slot (`pg_basebackup -C -S`), as Patroni sets them up.
async fn slot_cluster() -> (Arc<LocalCluster>, PgNode, Vec<PgNode>) {
    common::init_tracing();
    let opts = LocalClusterOptions {
        replicas: 2,
        replication_slots: true,
        ..Default::default()
    };
    let cluster = blocking(move || LocalCluster::start(opts))
        .await
        .expect("start PostgreSQL cluster");
    let cluster = Arc::new(cluster);
    let primary = cluster.primary().clone();
    let replicas = cluster.replicas().to_vec();
    (cluster, primary, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_slots_stream_from_the_new_primary_and_the_cluster_survives_the_next_failure()
{
    let (cluster, primary, replicas) = slot_cluster().await;
    let toml = config(&nodes_of(&cluster), "");
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let c = proxy.client().await;
    let table = create_table(&c, "slots").await;
    insert(&c, &table, 1).await.unwrap();
    for r in &replicas {
        let slot = format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
            r.name()
        );
        psql_until(
            10,
            "the replica streams through its slot",
            &primary,
            &slot,
            "t",
        )
        .await;
        let rows = format!("SELECT count(*) FROM {table}");
        psql_until(10, "the row on every replica", r, &rows, "1").await;
    }

    stop(&primary, StopMode::Immediate).await;
    until_ok(25, "a write after the failover", || insert(&c, &table, 2)).await;
    let port = port_of(&c).await.unwrap();
    let (new, other) = match replicas.iter().position(|r| r.port() == port) {
        Some(0) => (&replicas[0], &replicas[1]),
        Some(_) => (&replicas[1], &replicas[0]),
        None => panic!("writes went to port {port}, not to a replica"),
    };

    // The new primary had no slots (they are not copied to a standby): the
    // other replica's was created there before it was repointed, and it
    // streams through it.
    let streaming = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name = '{}'",
        other.name()
    );
    psql_until(
        20,
        "the other replica to stream from the new primary",
        new,
        &streaming,
        "1",
    )
    .await;
    let slot = format!(
        "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
        other.name()
    );
    assert_eq!(psql(new, &slot).await.unwrap(), "t");
    insert(&c, &table, 3).await.unwrap();
    psql_until(
        10,
        "new writes on the other replica",
        other,
        &format!("SELECT count(*) FROM {table}"),
        "3",
    )
    .await;
    let (_, events) = common::http_request(http, "GET", "/events").await;
    assert!(events.contains("replica_repointed"), "{events}");
    assert!(events.contains("created there"), "{events}");
    assert!(!events.contains("replica_not_streaming"), "{events}");

    // The next failure has a candidate.
    stop(new, StopMode::Immediate).await;
    until_ok(25, "a write after the second failover", || {
        insert(&c, &table, 4)
    })
    .await;
    assert_eq!(port_of(&c).await.unwrap(), other.port());
    assert_eq!(count_on(other, &table).await, "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_slot_cannot_be_made_on_the_new_primary_streams_without_one() {
    let (cluster, primary, replicas) = slot_cluster().await;
    // Whichever replica is promoted cannot hold a replication slot.
    for r in &replicas {
        psql(r, "ALTER SYSTEM SET max_replication_slots = 0")
            .await
            .unwrap();
        stop(r, StopMode::Fast).await;
        start(r).await;
    }
    let toml = config(&nodes_of(&cluster), "");
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let c = proxy.client().await;
    let table = create_table(&c, "noslot").await;
    for r in &replicas {
        let rows = format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'");
        psql_until(10, "the table on every replica", r, &rows, "1").await;
    }

    stop(&primary, StopMode::Immediate).await;
    until_ok(25, "a write after the failover", || insert(&c, &table, 1)).await;
    let port = port_of(&c).await.unwrap();
    let (new, other) = if replicas[0].port() == port {
        (&replicas[0], &replicas[1])
    } else {
        (&replicas[1], &replicas[0])
    };
    let streaming = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name = '{}'",
        other.name()
    );
    psql_until(
        20,
        "the other replica to stream without its slot",
        new,
        &streaming,
        "1",
    )
    .await;
    assert_eq!(psql(other, "SHOW primary_slot_name").await.unwrap(), "");
    let (_, events) = common::http_request(http, "GET", "/events").await;
    assert!(events.contains("replica_slot_cleared"), "{events}");
    assert!(!events.contains("replica_not_streaming"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repointed_replica_that_does_not_stream_is_reported() {
    common::init_tracing();
    let opts = LocalClusterOptions {
        replicas: 2,
        ..Default::default()
    };
    let cluster = blocking(move || LocalCluster::start(opts))
        .await
        .expect("start PostgreSQL cluster");
    let cluster = Arc::new(cluster);
    let primary = cluster.primary().clone();
    // Whichever replica is promoted refuses replication connections.
    for r in cluster.replicas() {
        let hba = r.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        let refusing = text.replace(
            "host    replication  all        127.0.0.1/32  scram-sha-256",
            "host    replication  all        127.0.0.1/32  reject",
        );
        assert_ne!(text, refusing, "the replication line of pg_hba.conf");
        std::fs::write(&hba, refusing).unwrap();
        psql(r, "SELECT pg_reload_conf()").await.unwrap();
    }
    let toml = config(&nodes_of(&cluster), "");
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let c = proxy.client().await;
    let table = create_table(&c, "nostream").await;
    for r in cluster.replicas() {
        let rows = format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'");
        psql_until(10, "the table on every replica", r, &rows, "1").await;
    }

    stop(&primary, StopMode::Immediate).await;
    until_ok(25, "a write after the failover", || insert(&c, &table, 1)).await;
    // Writes go on; the operator is told the cluster has no working replica.
    let events = eventually(30, "replica_not_streaming", || async {
        let (_, events) = common::http_request(http, "GET", "/events").await;
        events.contains("replica_not_streaming").then_some(events)
    })
    .await;
    assert!(events.contains("replica_repointed"), "{events}");
}

/// A client's session settings are replayed on the new primary: its
/// `statement_timeout` still cancels a long statement after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_survive_a_failover() {
    let (primary, replica, proxy) = cluster_with_proxy("").await;
    let c = proxy.client().await;
    c.batch_execute("SET statement_timeout = '300ms'; SET application_name = 'sy_survivor'")
        .await
        .unwrap();
    assert_eq!(port_of(&c).await.unwrap(), primary.port());
    let_pool_settle().await;
    stop(&primary, StopMode::Immediate).await;
    assert_eq!(
        port_within(25, "the client after the failover", &c).await,
        replica.port()
    );
    let slow = c.simple_query("SELECT pg_sleep(3)").await;
    assert_eq!(
        failed_with(slow, "a statement past the client's timeout").as_deref(),
        Some("57014"),
        "statement_timeout applies on the new primary"
    );
    assert_eq!(
        value(&c, "SHOW application_name").await.unwrap(),
        "sy_survivor"
    );
}

/// Giving a client its settings on a server that then hangs is bounded:
/// abandoned when the failover retires the node, after which the request is
/// served by the new primary with the client's settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_given_to_a_hung_server_are_abandoned_at_the_failover() {
    let (primary, replica, proxy) = cluster_for_a_hang("[proxy]\ndefault_pool_size = 1\n").await;
    let url = |name: &str| format!("{} application_name={name}", proxy.url("app", "app", "app"));
    let other = common::connect(&url("sy_other")).await.unwrap();
    let waiting = common::connect(&url("sy_waiting")).await.unwrap();
    // The one server connection now carries the other client's settings.
    other.batch_execute("SELECT 1").await.unwrap();
    let_pool_settle().await;
    let frozen = Frozen::freeze(&primary);
    // Taking that server means giving it this client's application_name: on
    // a frozen host that never answers.
    let seen = within(
        25,
        "a request whose settings met a hung server",
        value(&waiting, "SELECT current_setting('application_name')"),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", describe(&e)));
    assert_eq!(seen, "sy_waiting");
    assert_eq!(port_of(&waiting).await.unwrap(), replica.port());
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_postmaster_costs_pooled_clients_their_requests_in_flight_not_their_sessions() {
    // SIGKILL of the postmaster: each backend idle between a client's
    // requests sends FATAL 57P01 ("unexpected postmaster exit") and exits.
    // Forwarded, that FATAL reached clients that had nothing in flight,
    // and drivers end the connection on an unsolicited error. tokio-postgres
    // closes each statement it prepares without waiting, so its writers
    // sit between requests most of the time.
    let extra = concat!(
        "[proxy]\ndefault_pool_size = 3\n",
        "[failover]\nmode = \"follow\"\nhold_timeout = \"30s\"\n",
    );
    let (primary, replica, proxy) = cluster_with_proxy(extra).await;
    let table = create_table(&proxy.client().await, "killed").await;
    let stop_writing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..6 {
        let c = proxy.client().await;
        let (table, stop_writing) = (table.clone(), stop_writing.clone());
        writers.push(tokio::spawn(async move {
            let mut errors = vec![];
            let sql = format!("INSERT INTO {table} VALUES ($1)");
            let mut v = w * 1_000_000;
            while !stop_writing.load(std::sync::atomic::Ordering::Relaxed) {
                v += 1;
                if let Err(e) = c.execute(&sql, &[&v]).await {
                    errors.push((sqlstate(&e), describe(&e)));
                    if e.is_closed() {
                        break;
                    }
                }
            }
            (errors, c)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pidfile = primary.data_dir().join("postmaster.pid");
    let postmaster: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse().ok())
        .expect("postmaster pid");
    // SAFETY: a signal to a process id read from the node's own pid file.
    unsafe { libc::kill(postmaster, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = replica.clone();
    blocking(move || r.promote()).await.expect("pg_ctl promote");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_writing.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let (errors, c) = w.await.unwrap();
        for (code, text) in &errors {
            assert!(
                matches!(code.as_deref(), Some("08006" | "08007")),
                "only requests in flight fail, with 08006/08007: {text}"
            );
        }
        assert_eq!(
            port_within(10, "the writer's session", &c).await,
            replica.port()
        );
    }
}

/// A backend stopped with SIGSTOP until dropped (then SIGCONT).
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        // SAFETY: signals to a PostgreSQL backend of the test's own cluster.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `stop`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A primary whose heartbeat fails sends its replicas nothing, busy or not
/// (a read-only load writes no WAL): their silence then says nothing, and
/// one slow probe must not make it "down" and cut every transaction in
/// flight. Here the heartbeat cannot log in (pg_hba rejects the check
/// role's new sessions), then the probes' backend stalls for one probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_probe_of_a_primary_whose_heartbeat_fails_cuts_nothing() {
    let (outcome, events, _) = one_probe_stalls(true).await;
    assert!(
        outcome.is_ok(),
        "the statement in flight failed: {outcome:?}"
    );
    assert!(!events.contains("node_down"), "{events}");
}

/// With its heartbeats committing, a primary whose probe times out while
/// its replicas heard nothing takes nothing new at once, and is replaced if
/// it stays silent. But it may only have stalled for that long (a
/// saturated server): its transactions in flight go on, and are cut only
/// once a promotion is sent or the failure threshold is reached. Nor is it
/// a failover, or "down", on the timeline and in the notifications: it is
/// suspect, and answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_down_for_one_silent_probe_keeps_its_transactions_in_flight() {
    let (outcome, events, states) = one_probe_stalls(false).await;
    assert!(
        outcome.is_ok(),
        "the statement in flight failed: {outcome:?}"
    );
    // `/status` says what the timeline says, whenever the stall was seen there.
    assert!(states.iter().all(|s| s == "suspect"), "{states:?}");
    assert!(events.contains("node_suspect"), "suspect at once: {events}");
    for kind in ["node_down", "failover_started", "failover_blocked"] {
        assert!(!events.contains(kind), "a stall is no {kind}: {events}");
    }
}

/// A suspect primary is not down yet: the probes that decide whether it is
/// get the whole probe timeout, not the short one of a node already down.
/// Here the probes' backend stalls past one probe (the primary is suspect),
/// and the postmaster too, so the next probe's login waits 0.7 s for it,
/// as a saturated node's can: within the 1 s timeout, so the primary was
/// never down. With 250 ms per probe, two such waits made it `node_down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspect_primary_gets_the_whole_timeout_to_answer_again() {
    let (cluster, primary, _replica) = start_pair().await;
    let toml = config(&nodes_of(&cluster), "");
    let (_proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let direct = direct_client(primary.port()).await;
    let state = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).ok()?["nodes"][0]["state"]
            .as_str()
            .map(str::to_string)
    };
    // Up first: a node not yet probed is "unknown", which is not "up"
    // either, and a stall of its first probe makes it no suspect.
    eventually(10, "the primary up", || async {
        let (_, body) = common::http_request(http, "GET", "/status").await;
        state(&body).filter(|s| s == "up")
    })
    .await;
    let probe_sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE usename = '{CLUSTER_USER}' \
         AND query LIKE '%FROM pg_is_in_recovery() AS r%' AND pid <> pg_backend_pid()"
    );
    let probe: i32 = eventually(10, "the probes' backend", || async {
        direct
            .query_opt(&probe_sql, &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0))
    })
    .await;
    let pid_file = std::fs::read_to_string(primary.data_dir().join("postmaster.pid")).unwrap();
    let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let stalled = Stopped::stop(probe);
    let logins = Stopped::stop(postmaster);
    eventually(10, "the stalled primary suspect", || async {
        let (_, body) = common::http_request(http, "GET", "/status").await;
        state(&body).filter(|s| s != "up")
    })
    .await;
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(logins);
    eventually(10, "the primary up again", || async {
        let (_, body) = common::http_request(http, "GET", "/status").await;
        state(&body).filter(|s| s == "up")
    })
    .await;
    let (_, events) = common::http_request(http, "GET", "/events").await;
    assert!(events.contains("node_suspect"), "{events}");
    for kind in ["node_down", "failover_started", "failover_blocked"] {
        assert!(
            !events.contains(kind),
            "a login that took 0.7 s is no {kind}: {events}"
        );
    }
}

/// A statement in flight through the proxy while the primary's probes'
/// backend stalls past one probe's timeout (its heartbeat failing first
/// if `fail_heartbeat`): how the statement ended, the event log, and the
/// states other than `up` that `/status` showed for the primary meanwhile.
async fn one_probe_stalls(
    fail_heartbeat: bool,
) -> (Result<(), tokio_postgres::Error>, String, Vec<String>) {
    let (cluster, primary, _replica) = start_pair().await;
    let toml = config(&nodes_of(&cluster), "");
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let direct = direct_client(primary.port()).await;
    let backend = |like: &'static str| {
        let sql = format!(
            "SELECT pid FROM pg_stat_activity WHERE usename = '{CLUSTER_USER}' \
             AND query LIKE '{like}' AND pid <> pg_backend_pid()"
        );
        let direct = &direct;
        async move {
            direct
                .query_opt(&sql, &[])
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i32>(0))
        }
    };
    let beat = eventually(10, "the heartbeat's backend", || {
        backend("%pg_logical_emit_message(true, ''switchyard''%")
    })
    .await;
    let hba = primary.data_dir().join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    if fail_heartbeat {
        // The heartbeat fails from now on, and writes no WAL.
        let reject = format!("host all {CLUSTER_USER} 127.0.0.1/32 reject\n");
        std::fs::write(&hba, format!("{reject}{original}")).unwrap();
        direct
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        direct
            .query_one("SELECT pg_terminate_backend($1)", &[&beat])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    let c = proxy.client().await;
    let running = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(4)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probe = backend("%FROM pg_is_in_recovery() AS r%")
        .await
        .expect("the probes' backend");
    let stalled = Stopped::stop(probe);
    // Until a probe has failed (the node is no longer "up"), then the node
    // lets the check role in again.
    let state = |s: serde_json::Value| s["nodes"][0]["state"].as_str().map(str::to_string);
    // Or a new probe connection: the stalled one was given up. With the
    // heartbeats working the node is "suspect" only until the next probe,
    // 200 ms later, and a poll of the state alone can miss that.
    let replaced = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{CLUSTER_USER}' \
         AND query LIKE '%FROM pg_is_in_recovery() AS r%' AND pid <> {probe}"
    );
    let mut states = Vec::new();
    let failed = async {
        loop {
            let (_, body) = common::http_request(http, "GET", "/status").await;
            let now = serde_json::from_str(&body).ok().and_then(state);
            states.extend(now.clone().filter(|s| s != "up"));
            let reconnected = direct
                .query_one(&replaced, &[])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) > 0);
            if now.is_some_and(|s| s != "up") || reconnected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within(10, "a failed probe of the stalled primary", failed).await;
    std::fs::write(&hba, &original).unwrap();
    direct
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    drop(stalled);

    let outcome = within(20, "the statement in flight", running)
        .await
        .unwrap();
    let (_, events) = common::http_request(http, "GET", "/events").await;
    (outcome, events, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_heartbeat_does_not_stall_the_primarys_health_checks() {
    // The heartbeat's commit stalls (here: its backend stopped, as a disk
    // stall would hold a commit). Sharing the probes' connection, it cost
    // them their session: every probe after it logged in anew, on a node
    // under strain, and three slow logins made a loaded primary "down".
    let (cluster, primary, _replica) = start_pair().await;
    let toml = config(&nodes_of(&cluster), "");
    let (_proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let direct = direct_client(primary.port()).await;
    let beat_sql = "SELECT pid FROM pg_stat_activity \
        WHERE query LIKE '%pg_logical_emit_message(true, ''switchyard''%' \
        AND pid <> pg_backend_pid()";
    let pid: i32 = eventually(10, "the heartbeat's backend", || async {
        direct
            .query_opt(beat_sql, &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0))
    })
    .await;
    let stopped = Stopped::stop(pid);
    let state = |s: serde_json::Value| s["nodes"][0]["state"].as_str().map(str::to_string);
    // Six seconds: three probes' timeouts and then some.
    for _ in 0..120 {
        let (_, body) = common::http_request(http, "GET", "/status").await;
        let now = state(serde_json::from_str(&body).unwrap());
        assert_eq!(
            now.as_deref(),
            Some("up"),
            "the primary's checks, with its heartbeat stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, events) = common::http_request(http, "GET", "/events").await;
    assert!(!events.contains("node_down"), "{events}");
    drop(stopped);
}

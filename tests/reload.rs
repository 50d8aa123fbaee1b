//! The real binary under a steady load: SIGHUP applies a new pool size, a new
//! user, a changed password and a removed replica without dropping a client;
//! an invalid file keeps the old configuration and says why; SIGTERM lets a
//! running transaction commit, then exits 0.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    connect, direct_client, free_port, http_request, sqlstate, unique, wait_until as eventually,
    USERS,
};
use switchyard::local_cluster::{CLUSTER_PASSWORD, CLUSTER_USER};
use tokio_postgres::SimpleQueryMessage;

/// The binary, killed on drop.
struct Switchyard {
    child: Child,
    port: u16,
    http: u16,
    dir: PathBuf,
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Switchyard {
    fn start(s: &Settings) -> Switchyard {
        let dir = std::env::temp_dir().join(unique("sy_reload_bin"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("switchyard.toml"), config(s)).unwrap();
        let log = std::fs::File::create(dir.join("switchyard.log")).unwrap();
        let (port, http) = (s.port, s.http);
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(dir.join("switchyard.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start switchyard");
        Switchyard {
            child,
            port,
            http,
            dir,
        }
    }

    fn write_config(&self, toml: &str) {
        std::fs::write(self.dir.join("switchyard.toml"), toml).unwrap();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=10",
            self.port
        )
    }

    async fn events(&self) -> String {
        http_request(([127, 0, 0, 1], self.http).into(), "GET", "/events")
            .await
            .1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("switchyard.log")).unwrap_or_default()
    }
}

struct Settings<'a> {
    port: u16,
    http: u16,
    pool_size: u32,
    admin_password: &'a str,
    extra_user: &'a str,
    nodes: &'a [String],
}

fn config(s: &Settings) -> String {
    let users = USERS.replace(
        "name = \"admin\"\npassword = \"adminpw\"",
        &format!("name = \"admin\"\npassword = \"{}\"", s.admin_password),
    );
    let nodes: Vec<String> = s.nodes.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{}\"\ndefault_pool_size = {}\nshutdown_timeout = \"20s\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n{users}\n{}\n\n[cluster]\nnodes = [{}]\nuser = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n",
        s.port,
        s.pool_size,
        s.http,
        s.extra_user,
        nodes.join(", ")
    )
}

async fn first_value(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let rows = c.simple_query(sql).await.ok()?;
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// `SHOW DATABASES` pool_size of `app`.
async fn pool_size(admin: &tokio_postgres::Client) -> Option<String> {
    let rows = admin.simple_query("SHOW DATABASES").await.ok()?;
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get(0) == Some("app") => r.get(5).map(str::to_string),
        _ => None,
    })
}

/// Clients that keep querying on the same connections until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(url: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = vec![];
        for _ in 0..clients {
            let c = connect(url).await.expect("load client connects");
            let (stop, done) = (stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = vec![];
                while !stop.load(Ordering::Relaxed) {
                    match c.simple_query("SELECT 1").await {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(format!("{:?} {e}", sqlstate(&e))),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                errors
            }));
        }
        Load { stop, done, tasks }
    }

    /// Lets the load run a little more (queries after the last change), then stops it.
    async fn finish(self) -> (u64, Vec<String>) {
        let until = self.done.load(Ordering::Relaxed).max(100) + 50;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.done.load(Ordering::Relaxed) < until && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = vec![];
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (self.done.load(Ordering::Relaxed), errors)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_changes_without_dropping_clients() {
    let cluster = common::cluster();
    let primary = cluster.primary().addr();
    let replica = cluster.replicas()[0].addr();
    let newbie = unique("newbie");
    direct_client(cluster.primary().port())
        .await
        .batch_execute(&format!("CREATE ROLE {newbie} LOGIN PASSWORD 'newpw'"))
        .await
        .unwrap();
    let both = [primary.clone(), replica.clone()];
    let mut s = Settings {
        port: free_port(),
        http: free_port(),
        pool_size: 20,
        admin_password: "adminpw",
        extra_user: "",
        nodes: &both,
    };
    let proxy = Switchyard::start(&s);
    let app_url = proxy.url("app", "app", "app");
    eventually(20, "proxy serves", || async {
        connect(&app_url).await.is_ok()
    })
    .await;
    let load = Load::start(&app_url, 4).await;
    let admin = connect(&proxy.url("admin", "adminpw", "switchyard"))
        .await
        .unwrap();
    assert_eq!(pool_size(&admin).await.as_deref(), Some("20"));

    // Pool size, a new user, a changed password and a removed replica at once.
    s.pool_size = 3;
    s.admin_password = "adminpw2";
    let extra = format!("[[users]]\nname = \"{newbie}\"\npassword = \"newpw\"\n");
    s.extra_user = &extra;
    let only_primary = [primary.clone()];
    s.nodes = &only_primary;
    proxy.write_config(&config(&s));
    proxy.signal("-HUP");
    eventually(10, "pool size applied", || async {
        pool_size(&admin).await.as_deref() == Some("3")
    })
    .await;
    let newbie_url = proxy.url(&newbie, "newpw", "app");
    let c = connect(&newbie_url).await.expect("the new user logs in");
    assert_eq!(
        first_value(&c, "SELECT current_user").await.as_deref(),
        Some(newbie.as_str())
    );
    let old = connect(&proxy.url("admin", "adminpw", "switchyard"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&old).as_deref(), Some("28P01"));
    connect(&proxy.url("admin", "adminpw2", "switchyard"))
        .await
        .expect("new password");
    eventually(10, "replica removed", || async {
        let (_, status) = http_request(([127, 0, 0, 1], proxy.http).into(), "GET", "/status").await;
        let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1 && n[0]["addr"] == primary.as_str())
    })
    .await;
    let events = proxy.events().await;
    assert!(
        events.contains("node_removed") && events.contains("config_reloaded"),
        "{events}"
    );

    // An invalid file: rejected, the running configuration stays.
    proxy.write_config("[proxy]\ndefault_pool_size = \"many\"\n");
    proxy.signal("-HUP");
    eventually(10, "rejection recorded", || async {
        proxy.events().await.contains("config_rejected")
    })
    .await;
    let events = proxy.events().await;
    assert!(
        events.contains("default_pool_size"),
        "the reason is given: {events}"
    );
    connect(&newbie_url)
        .await
        .expect("old configuration still in force");
    assert_eq!(pool_size(&admin).await.as_deref(), Some("3"));

    let (done, errors) = load.finish().await;
    assert!(
        errors.is_empty(),
        "clients saw errors: {errors:?}\n{}",
        proxy.log()
    );
    assert!(done > 100, "the load ran ({done} queries)");
    assert!(
        first_value(&admin, "SHOW VERSION").await.is_some(),
        "admin session survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_transaction_commit_then_exits_zero() {
    let cluster = common::cluster();
    let nodes = [cluster.primary().addr()];
    let s = Settings {
        port: free_port(),
        http: free_port(),
        pool_size: 5,
        admin_password: "adminpw",
        extra_user: "",
        nodes: &nodes,
    };
    let mut proxy = Switchyard::start(&s);
    let url = proxy.url("app", "app", "app");
    eventually(20, "proxy serves", || async { connect(&url).await.is_ok() }).await;
    let c = connect(&url).await.unwrap();
    let table = unique("sigterm");
    c.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    c.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    proxy.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // New connections are refused while the transaction finishes.
    assert!(
        connect(&url).await.is_err(),
        "still accepting after SIGTERM"
    );
    c.batch_execute("COMMIT")
        .await
        .expect("the running transaction commits");
    let status = wait_exit(&mut proxy.child, Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", proxy.log());
    let d = direct_client(cluster.primary().port()).await;
    assert_eq!(
        first_value(&d, &format!("SELECT count(*) FROM {table}"))
            .await
            .as_deref(),
        Some("1")
    );
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

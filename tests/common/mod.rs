//! Test harness: one real PostgreSQL primary + streaming replica shared by the
//! tests of a binary (stopped by its Drop when the last test using it ends),
//! an in-process Switchyard per test, and small clients (tokio-postgres, raw
//! protocol) to talk to it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures_util::StreamExt;
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, APP_DB, APP_PASSWORD, APP_USER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

pub mod certs;
pub mod coord;
pub mod etcd;
pub mod hardware;
pub mod patroni;
pub mod patroni_proxy;
pub mod redfish;
pub mod relay;
pub mod script;
pub mod shipped;
pub mod switching;

static CLUSTER: Mutex<Weak<LocalCluster>> = Mutex::new(Weak::new());

/// The shared cluster, started on first use.
pub fn cluster() -> Arc<LocalCluster> {
    let mut slot = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return c;
    }
    let c = Arc::new(
        LocalCluster::start(LocalClusterOptions::default()).expect("start PostgreSQL cluster"),
    );
    *slot = Arc::downgrade(&c);
    c
}

/// A Switchyard running inside the test process; stops when dropped.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    pub cluster: Arc<LocalCluster>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy in front of the shared cluster (nodes: primary, replica).
    /// `extra` is TOML placed in `[proxy]` (e.g. `default_pool_size = 1`).
    pub async fn start(extra: &str) -> Proxy {
        let cluster = cluster();
        let nodes = nodes_toml(&cluster);
        Self::start_with(
            cluster,
            &format!("[proxy]\n{extra}\n{USERS}\n[cluster]\nnodes = [{nodes}]\n"),
        )
        .await
    }

    /// Starts a proxy with a whole TOML configuration.
    pub async fn start_with(cluster: Arc<LocalCluster>, toml: &str) -> Proxy {
        let config = switchyard::config::load_str(toml).expect("test config is valid");
        Self::spawn(cluster, config, Default::default()).await
    }

    /// Starts a proxy with a whole TOML configuration and its HTTP endpoints;
    /// returns the proxy and the HTTP address.
    pub async fn start_with_http(
        cluster: Arc<LocalCluster>,
        toml: &str,
    ) -> (Proxy, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on_with_http(cluster, toml, listener).await
    }

    /// Starts a proxy from a configuration file, which `RELOAD` re-reads.
    pub async fn start_from_file(cluster: Arc<LocalCluster>, path: &std::path::Path) -> Proxy {
        let config = switchyard::config::load(path).expect("test config file is valid");
        let opts = switchyard::listener::Options {
            config_path: Some(path.to_path_buf()),
            ..Default::default()
        };
        Self::spawn(cluster, config, opts).await
    }

    /// As [`Proxy::start_from_file`], with the HTTP endpoints; returns their address too.
    pub async fn start_from_file_with_http(
        cluster: Arc<LocalCluster>,
        path: &std::path::Path,
    ) -> (Proxy, std::net::SocketAddr) {
        let config = switchyard::config::load(path).expect("test config file is valid");
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let opts = switchyard::listener::Options {
            config_path: Some(path.to_path_buf()),
            http: Some(http),
            ..Default::default()
        };
        (Self::spawn(cluster, config, opts).await, http_addr)
    }

    /// As [`Proxy::start_from_file`], on a listener bound beforehand.
    pub async fn start_from_file_on(
        cluster: Arc<LocalCluster>,
        path: &std::path::Path,
        listener: TcpListener,
    ) -> Proxy {
        let config = switchyard::config::load(path).expect("test config file is valid");
        let opts = switchyard::listener::Options {
            config_path: Some(path.to_path_buf()),
            ..Default::default()
        };
        Self::spawn_on(cluster, config, opts, listener).await
    }

    /// Starts a proxy with a whole TOML configuration on a listener bound
    /// beforehand, so that proxies can name each other's addresses.
    pub async fn start_on(cluster: Arc<LocalCluster>, toml: &str, listener: TcpListener) -> Proxy {
        let config = switchyard::config::load_str(toml).expect("test config is valid");
        Self::spawn_on(cluster, config, Default::default(), listener).await
    }

    /// As [`Proxy::start_on`], with the HTTP endpoints; returns their address too.
    pub async fn start_on_with_http(
        cluster: Arc<LocalCluster>,
        toml: &str,
        listener: TcpListener,
    ) -> (Proxy, std::net::SocketAddr) {
        let config = switchyard::config::load_str(toml).expect("test config is valid");
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let opts = switchyard::listener::Options {
            http: Some(http),
            ..Default::default()
        };
        (
            Self::spawn_on(cluster, config, opts, listener).await,
            http_addr,
        )
    }

    async fn spawn(
        cluster: Arc<LocalCluster>,
        config: switchyard::config::Config,
        opts: switchyard::listener::Options,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::spawn_on(cluster, config, opts, listener).await
    }

    async fn spawn_on(
        cluster: Arc<LocalCluster>,
        config: switchyard::config::Config,
        opts: switchyard::listener::Options,
        listener: TcpListener,
    ) -> Proxy {
        init_tracing();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            switchyard::listener::serve(config, listener, opts, async {
                let _ = stopped.await;
            })
            .await
            .expect("proxy runs");
        });
        Proxy {
            addr,
            cluster,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks the proxy to shut down and waits until `run` returns.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// A connection string for `user`/`password` on `db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=10",
            self.addr.port()
        )
    }

    /// A tokio-postgres client as `app`.
    pub async fn client(&self) -> Client {
        self.client_as(APP_USER, APP_PASSWORD, APP_DB)
            .await
            .expect("connect through proxy")
    }

    /// A tokio-postgres client with explicit credentials.
    pub async fn client_as(
        &self,
        user: &str,
        pw: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(&self.url(user, pw, db)).await
    }

    /// A direct (not proxied) client to the primary as the superuser.
    pub async fn direct_admin(&self) -> Client {
        direct_client(self.cluster.primary().port()).await
    }
}

/// A tokio-postgres client for `url`, its connection driven by a task of its own.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A direct (not proxied) client as the superuser to the node on `port`.
pub async fn direct_client(port: u16) -> Client {
    let url = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=app connect_timeout=5"
    );
    connect(&url).await.expect("direct connect")
}

/// A tokio-postgres client for `url` whose notices and notifications
/// (`AsyncMessage`s) arrive on the returned channel.
pub async fn connect_with_messages(url: &str) -> (Client, UnboundedReceiver<AsyncMessage>) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            let _ = tx.send(m);
        }
    });
    (client, rx)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Users every test proxy knows.
pub const USERS: &str = r#"
[[users]]
name = "app"
password = "app"
[[users]]
name = "md5user"
password = "md5pass"
[[users]]
name = "trustuser"
password = "whatever"
[[users]]
name = "admin"
password = "adminpw"
"#;

/// A unique name for test objects.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// A hand-driven protocol client for what drivers will not send.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// BackendKeyData received at login.
    pub key: Option<(i32, i32)>,
}

impl Raw {
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            key: None,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends a StartupMessage for `user`/`db` with protocol 3.`minor`.
    pub async fn startup(&mut self, minor: u16, user: &str, db: &str) {
        self.send(&startup_packet(minor, user, db)).await;
    }

    /// Next message (tag, body), or None on EOF / timeout.
    pub async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(msg) = take_message(&mut self.buf) {
                return Some(msg);
            }
            match tokio::time::timeout(Duration::from_secs(20), self.stream.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Reads until ReadyForQuery; returns every message before it, and the status.
    pub async fn until_ready(&mut self) -> (Vec<(u8, Vec<u8>)>, Option<u8>) {
        let mut msgs = vec![];
        while let Some((tag, body)) = self.recv().await {
            if tag == b'Z' {
                return (msgs, body.first().copied());
            }
            if tag == b'K' && body.len() == 8 {
                let pid = i32::from_be_bytes(body[0..4].try_into().unwrap());
                let secret = i32::from_be_bytes(body[4..8].try_into().unwrap());
                self.key = Some((pid, secret));
            }
            msgs.push((tag, body));
        }
        (msgs, None)
    }

    /// Sends a simple Query.
    pub async fn query(&mut self, sql: &str) {
        let mut out = BytesMut::new();
        out.put_u8(b'Q');
        out.put_u32(sql.len() as u32 + 5);
        out.put_slice(sql.as_bytes());
        out.put_u8(0);
        self.send(&out).await;
    }

    /// True once the peer has closed (EOF or reset) within `secs`.
    pub async fn closed_within(&mut self, secs: u64) -> bool {
        peer_closed(&mut self.stream, secs).await
    }
}

/// The cluster's node addresses as a TOML list body (`"a:1", "b:2"`).
pub fn nodes_toml(cluster: &LocalCluster) -> String {
    cluster
        .nodes()
        .iter()
        .map(|n| format!("{:?}", n.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes and returns the first whole backend message (tag, body) of `buf`.
pub fn take_message(buf: &mut BytesMut) -> Option<(u8, Vec<u8>)> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().unwrap()) as usize;
    if buf.len() <= len {
        return None;
    }
    let tag = buf[0];
    buf.advance(5);
    Some((tag, buf.split_to(len - 4).to_vec()))
}

/// True once the peer of `stream` has closed (EOF or reset) within `secs`;
/// what it sends meanwhile is read and dropped.
pub async fn peer_closed(stream: &mut TcpStream, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let mut scratch = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
pub fn error_code(body: &[u8]) -> String {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let nul = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if field == b'C' {
            return String::from_utf8_lossy(&tail[..nul]).into_owned();
        }
        rest = tail.get(nul + 1..).unwrap_or(&[]);
    }
    String::new()
}

/// Sends a CancelRequest with `key` to `addr`.
pub async fn send_cancel(addr: std::net::SocketAddr, key: (i32, i32)) {
    let mut out = BytesMut::new();
    out.put_u32(16);
    out.put_u32(80_877_102);
    out.put_i32(key.0);
    out.put_i32(key.1);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let mut sink = [0u8; 8];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
}

/// One HTTP/1.0 request to `addr`: status and body.
pub async fn http_request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_request_with(addr, method, path, &[]).await;
    (status, body)
}

/// One HTTP/1.0 request to `addr` with extra header lines (`Name: value`):
/// status, response head, body.
pub async fn http_request_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: x\r\n{extra}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_string(), body.to_string())
}

/// `RUST_LOG=switchyard=debug` shows the proxy's side of a failing test.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A cluster of its own (primary + one replica) for a test that moves or
/// destroys nodes; started off the runtime.
pub async fn private_pair() -> (
    Arc<LocalCluster>,
    switchyard::local_cluster::PgNode,
    switchyard::local_cluster::PgNode,
) {
    init_tracing();
    let cluster =
        tokio::task::spawn_blocking(|| LocalCluster::start(LocalClusterOptions::default()))
            .await
            .unwrap()
            .expect("start PostgreSQL cluster");
    let cluster = Arc::new(cluster);
    let (primary, replica) = (cluster.primary().clone(), cluster.replicas()[0].clone());
    (cluster, primary, replica)
}

/// A cluster of its own with two replicas, started off the runtime.
pub async fn private_trio() -> Arc<LocalCluster> {
    init_tracing();
    let opts = LocalClusterOptions {
        replicas: 2,
        ..Default::default()
    };
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(opts))
        .await
        .unwrap()
        .expect("start PostgreSQL cluster");
    Arc::new(cluster)
}

/// Polls `f` every 100 ms until it is true, for at most `secs`.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A StartupMessage for `user`/`db` with protocol 3.`minor`.
pub fn startup_packet(minor: u16, user: &str, db: &str) -> BytesMut {
    startup_packet_with(minor, &[("user", user), ("database", db)])
}

/// A StartupMessage with protocol 3.`minor` and these parameters, in order.
pub fn startup_packet_with(minor: u16, params: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(3 << 16 | minor as u32);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out
}

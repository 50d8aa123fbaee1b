//! TLS end to end, with real clients (psql, tokio-postgres over rustls, a
//! hand-driven rustls client for PostgreSQL 17's direct TLS) and a real
//! PostgreSQL that accepts TLS only (`ssl = on`, `hostssl` lines only), all
//! with certificates made here by rcgen (`common::certs`): a test CA, leaf
//! certificates with CA:FALSE.
//!
//! Every proxy here reaches PostgreSQL with `[cluster.tls] mode = "verify-full"`
//! unless the test is about that side, so each test also covers the server leg.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use common::certs::Ca;
use common::{error_code, sqlstate, Proxy, USERS};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchyard::local_cluster::{LocalCluster, LocalClusterOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// PostgreSQL with TLS only, and the certificate files of one test run.
struct Env {
    cluster: Arc<LocalCluster>,
    dir: PathBuf,
    ca: Ca,
    other_ca: Ca,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static ENV: Mutex<Weak<Env>> = Mutex::new(Weak::new());

/// The shared environment, started on first use (stopped when the last test using it ends).
fn env() -> Arc<Env> {
    let mut slot = ENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = slot.upgrade() {
        return env;
    }
    let dir = std::env::temp_dir().join(format!("switchyard-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("Switchyard test CA");
    let other_ca = Ca::new("Some other CA");
    // The server's certificate names only 127.0.0.1: reaching it as
    // "localhost" is a host name mismatch for verify-full.
    let (pg_cert, pg_key) = ca.leaf(&["127.0.0.1"], "postgres", false);
    let hba = "local all all trust\n\
               local replication all trust\n\
               hostssl all all 127.0.0.1/32 scram-sha-256\n\
               hostssl replication all 127.0.0.1/32 scram-sha-256\n";
    let cluster = LocalCluster::start(LocalClusterOptions {
        replicas: 0,
        extra_conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        data_files: vec![
            ("server.crt".into(), pg_cert),
            ("server.key".into(), pg_key),
            ("pg_hba.conf".into(), hba.into()),
        ],
        ..Default::default()
    })
    .expect("start PostgreSQL with ssl = on");
    let env = Arc::new(Env {
        cluster: Arc::new(cluster),
        dir,
        ca,
        other_ca,
    });
    env.write("ca.pem", &env.ca.pem);
    env.write("other_ca.pem", &env.other_ca.pem);
    let (cert, key) = env
        .ca
        .leaf(&["localhost", "127.0.0.1"], "switchyard", false);
    env.write("proxy.crt", &cert);
    env.write("proxy.key", &key);
    let (cert, key) = env.ca.leaf(&[], "app", true);
    env.write("client.crt", &cert);
    env.write("client.key", &key);
    *slot = Arc::downgrade(&env);
    env
}

impl Env {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Writes a file (mode 0600: libpq refuses a readable client key).
    fn write(&self, name: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn pg_port(&self) -> u16 {
        self.cluster.primary().port()
    }

    /// A whole configuration: `proxy_tls` is the body of `[proxy.tls]`,
    /// `cluster` the body of `[cluster]` (nodes included), `cluster_tls` of `[cluster.tls]`.
    fn config(&self, proxy_tls: &str, cluster: &str, cluster_tls: &str) -> String {
        format!(
            "[proxy]\n[proxy.tls]\n{proxy_tls}\n{USERS}\n[cluster]\n{cluster}\n\
             [cluster.tls]\n{cluster_tls}\n[failover]\nhold_timeout = \"1s\"\n"
        )
    }

    /// `[proxy.tls]` with the proxy's certificate and `mode`.
    fn proxy_tls(&self, mode: &str) -> String {
        format!(
            "mode = \"{mode}\"\ncert_file = {:?}\nkey_file = {:?}\n",
            self.path("proxy.crt"),
            self.path("proxy.key")
        )
    }

    /// `[cluster]` with the TLS-only PostgreSQL reached as `host`.
    fn nodes(&self, host: &str) -> String {
        format!("nodes = [\"{host}:{}\"]", self.pg_port())
    }

    /// `[cluster.tls]` verifying the server against the test CA.
    fn verify_full(&self) -> String {
        format!(
            "mode = \"verify-full\"\nca_file = {:?}\n",
            self.path("ca.pem")
        )
    }

    /// A proxy with client TLS in `mode` (extra `[proxy.tls]` keys in `extra`).
    async fn proxy(self: &Arc<Self>, mode: &str, extra: &str) -> Proxy {
        let toml = self.config(
            &format!("{}{extra}", self.proxy_tls(mode)),
            &self.nodes("127.0.0.1"),
            &self.verify_full(),
        );
        Proxy::start_with(self.cluster.clone(), &toml).await
    }

    /// Runs psql with `conninfo` and `-c sql`: (success, stdout + stderr).
    async fn psql(&self, conninfo: &str, sql: &str) -> (bool, String) {
        let out = tokio::process::Command::new(self.cluster.bindir().join("psql"))
            .args(["-X", "-At", "-d", conninfo, "-c", sql])
            // No ~/.postgresql/root.crt or client certificate of the machine's.
            .env("HOME", &self.dir)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .await
            .expect("run psql");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// libpq connection string to `proxy` as app.
fn conninfo(proxy: &Proxy, host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user=app password=app dbname=app {extra}",
        proxy.addr.port()
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration trusting `ca_file`, with a client certificate if given.
fn client_config(ca_file: &str, cert: Option<(&str, &str)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// tokio-postgres over rustls to `proxy` (`extra`: more connection parameters).
async fn tls_client(
    env: &Env,
    proxy: &Proxy,
    extra: &str,
    cert: Option<(&str, &str)>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls =
        tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&env.path("ca.pem"), cert));
    let url = format!("{} sslmode=require {extra}", proxy.url("app", "app", "app"));
    let (client, conn) = tokio_postgres::connect(&url, tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    let row = client.query_one(sql, &[]).await.unwrap();
    row.get::<_, String>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_tokio_postgres_connect_with_require_and_verify_full() {
    let env = env();
    let proxy = env.proxy("require", "").await;
    let (ok, out) = env
        .psql(
            &conninfo(&proxy, "127.0.0.1", "sslmode=require"),
            "\\conninfo",
        )
        .await;
    assert!(ok && out.contains("SSL connection"), "{out}");
    let verify = format!("sslmode=verify-full sslrootcert={}", env.path("ca.pem"));
    let (ok, out) = env
        .psql(
            &conninfo(&proxy, "localhost", &verify),
            "SELECT 'hello ' || current_user",
        )
        .await;
    assert!(ok && out.contains("hello app"), "{out}");
    // The CA that did not sign the proxy's certificate: libpq refuses it.
    let wrong = format!(
        "sslmode=verify-full sslrootcert={}",
        env.path("other_ca.pem")
    );
    let (ok, out) = env
        .psql(&conninfo(&proxy, "localhost", &wrong), "SELECT 1")
        .await;
    assert!(!ok, "{out}");

    let client = tls_client(&env, &proxy, "", None).await.unwrap();
    // The server leg is TLS too (pg_hba has hostssl lines only, and says so).
    let ssl = one(
        &client,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(ssl, "true");
    // A large result and many small round trips through both TLS legs.
    let big = one(&client, "SELECT repeat('x', 5000000)").await;
    assert_eq!(big.len(), 5_000_000);
    for i in 0..200 {
        let n: i32 = client
            .query_one("SELECT $1::int", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i);
    }
    let rows = client
        .query(
            "SELECT g, md5(g::text) FROM generate_series(1, 50000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 50_000);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_plaintext_with_28000() {
    let env = env();
    let proxy = env.proxy("require", "").await;
    let err = proxy
        .client_as("app", "app", "app")
        .await
        .expect_err("plaintext refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    let (ok, out) = env
        .psql(
            &conninfo(&proxy, "127.0.0.1", "sslmode=disable"),
            "SELECT 1",
        )
        .await;
    assert!(!ok && out.contains("only TLS"), "{out}");
    // allow: both kinds of clients.
    let allow = env.proxy("allow", "").await;
    assert_eq!(one(&allow.client().await, "SELECT 'plain'").await, "plain");
    let tls = tls_client(&env, &allow, "", None).await.unwrap();
    assert_eq!(one(&tls, "SELECT 'tls'").await, "tls");
    proxy.shutdown().await;
    allow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_over_tls() {
    let env = env();
    let proxy = env.proxy("require", "").await;
    let (ok, out) = env
        .psql(
            &conninfo(
                &proxy,
                "127.0.0.1",
                "sslmode=require channel_binding=require",
            ),
            "SELECT 'bound'",
        )
        .await;
    assert!(ok && out.contains("bound"), "{out}");
    let bound = tls_client(&env, &proxy, "channel_binding=require", None)
        .await
        .unwrap();
    assert_eq!(one(&bound, "SELECT 'bound'").await, "bound");
    // Plain SCRAM-SHA-256 over TLS still works.
    let plain = tls_client(&env, &proxy, "channel_binding=disable", None)
        .await
        .unwrap();
    assert_eq!(one(&plain, "SELECT 'plain'").await, "plain");
    // And a wrong password is still wrong with binding.
    let tls =
        tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&env.path("ca.pem"), None));
    let url = format!(
        "{} sslmode=require channel_binding=require",
        proxy.url("app", "wrong", "app")
    );
    let Err(err) = tokio_postgres::connect(&url, tls).await else {
        panic!("a wrong password passed")
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looked_up_user_logs_into_a_tls_server_with_its_scram_key() {
    // PostgreSQL over TLS offers SCRAM-SHA-256-PLUS: the pass-through login
    // of a user known only to PostgreSQL (proxy.auth_query) binds to the
    // server's certificate, as a password login does.
    use switchyard::local_cluster::{CLUSTER_PASSWORD, CLUSTER_USER};
    let env = env();
    let toml = format!(
        "[proxy]\nauth_user = \"{CLUSTER_USER}\"\n[proxy.tls]\n{}\n{USERS}\n\
         [[users]]\nname = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n\
         [cluster]\n{}\n[cluster.tls]\n{}\n[failover]\nhold_timeout = \"1s\"\n",
        env.proxy_tls("allow"),
        env.nodes("127.0.0.1"),
        env.verify_full()
    );
    let proxy = Proxy::start_with(env.cluster.clone(), &toml).await;
    let admin = proxy
        .client_as(CLUSTER_USER, CLUSTER_PASSWORD, "app")
        .await
        .unwrap();
    let role = common::unique("tls_q");
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'tls-pw'"))
        .await
        .unwrap();
    let c = proxy.client_as(&role, "tls-pw", "app").await.unwrap();
    let row = c
        .query_one(
            "SELECT current_user::text, ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (role.clone(), "true".into())
    );
    let Err(e) = proxy.client_as(&role, "wrong", "app").await else {
        panic!("a wrong password passed")
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_work_over_tls() {
    let env = env();
    let proxy = env.proxy("require", "").await;
    let client = tls_client(&env, &proxy, "", None).await.unwrap();
    let token = client.cancel_token();
    let tls =
        tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&env.path("ca.pem"), None));
    // tokio-postgres sends its CancelRequest inside TLS; the proxy passes it
    // on to PostgreSQL inside TLS too (verify-full).
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tls).await
    });
    let started = Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    cancel.await.unwrap().unwrap();
    assert_eq!(one(&client, "SELECT 'after'").await, "after");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_checked_against_client_ca_file() {
    let env = env();
    let extra = format!("client_ca_file = {:?}\n", env.path("ca.pem"));
    let proxy = env.proxy("require", &extra).await;
    let cert = (env.path("client.crt"), env.path("client.key"));
    let with = tls_client(&env, &proxy, "", Some((&cert.0, &cert.1)))
        .await
        .unwrap();
    assert_eq!(one(&with, "SELECT 'with cert'").await, "with cert");
    assert!(tls_client(&env, &proxy, "", None).await.is_err());
    let (ok, out) = env
        .psql(
            &conninfo(
                &proxy,
                "localhost",
                &format!(
                    "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
                    env.path("ca.pem"),
                    cert.0,
                    cert.1
                ),
            ),
            "SELECT 'psql with cert'",
        )
        .await;
    assert!(ok && out.contains("psql with cert"), "{out}");
    let (ok, out) = env
        .psql(
            &conninfo(&proxy, "127.0.0.1", "sslmode=require"),
            "SELECT 1",
        )
        .await;
    assert!(!ok, "{out}");
    // A certificate from another CA is no better than none.
    let (cert, key) = env.other_ca.leaf(&[], "app", true);
    env.write("stranger.crt", &cert);
    env.write("stranger.key", &key);
    let (c, k) = (env.path("stranger.crt"), env.path("stranger.key"));
    assert!(tls_client(&env, &proxy, "", Some((&c, &k))).await.is_err());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_user_cn_lets_in_only_the_user_the_certificate_names() {
    let env = env();
    let extra = format!(
        "client_ca_file = {:?}\nclient_cert_user = \"cn\"\n",
        env.path("ca.pem")
    );
    let proxy = env.proxy("allow", &extra).await;
    // client.crt says CN=app: app gets in, and still proves its password.
    let app = (env.path("client.crt"), env.path("client.key"));
    let app = Some((app.0.as_str(), app.1.as_str()));
    let client = tls_client(&env, &proxy, "", app).await.unwrap();
    assert_eq!(one(&client, "SELECT current_user::text").await, "app");
    let err = tls_client(&env, &proxy, "password=wrong", app)
        .await
        .expect_err("a wrong password");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");

    // A certificate from the right CA that names someone else.
    let (cert, key) = env.ca.leaf(&[], "other", true);
    env.write("other.crt", &cert);
    env.write("other.key", &key);
    let (c, k) = (env.path("other.crt"), env.path("other.key"));
    let err = tls_client(&env, &proxy, "", Some((&c, &k)))
        .await
        .expect_err("CN=other logging in as app");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{err}");
    assert_eq!(
        db.message(),
        "certificate authentication failed for user \"app\""
    );
    // The admin console too: CN=app is not admin.
    let err = tls_client(
        &env,
        &proxy,
        "user=admin password=adminpw dbname=switchyard",
        app,
    )
    .await
    .expect_err("CN=app logging in as admin");
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");

    // No certificate at all: in plaintext (allowed by mode = "allow")...
    let err = proxy
        .client_as("app", "app", "app")
        .await
        .expect_err("no certificate");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{err}");
    assert_eq!(
        db.message(),
        "connection requires a valid client certificate"
    );
    let (ok, out) = env
        .psql(
            &conninfo(&proxy, "127.0.0.1", "sslmode=disable"),
            "SELECT 1",
        )
        .await;
    assert!(
        !ok && out.contains("requires a valid client certificate"),
        "{out}"
    );
    // ...or over TLS, where client_ca_file already refuses the handshake.
    assert!(tls_client(&env, &proxy, "", None).await.is_err());
    // psql with CN=app.
    let (ok, out) = env
        .psql(
            &conninfo(
                &proxy,
                "localhost",
                &format!(
                    "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
                    env.path("ca.pem"),
                    env.path("client.crt"),
                    env.path("client.key")
                ),
            ),
            "SELECT 'psql as ' || current_user",
        )
        .await;
    assert!(ok && out.contains("psql as app"), "{out}");
    proxy.shutdown().await;
}

/// A startup packet for app on app.
fn startup_packet() -> BytesMut {
    common::startup_packet(0, "app", "app")
}

/// The next message (tag, body) from `s`, or `None` on EOF, error or 10 s of silence.
async fn recv(s: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            if buf.len() > len {
                let tag = buf[0];
                buf.advance(5);
                return Some((tag, buf.split_to(len - 4).to_vec()));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// A direct TLS connection (PostgreSQL 17 `sslnegotiation=direct`) offering `alpn`.
async fn direct_tls(
    env: &Env,
    proxy: &Proxy,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = client_config(&env.path("ca.pem"), None);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(proxy.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql() {
    let env = env();
    let proxy = env.proxy("require", "").await;
    let mut tls = direct_tls(&env, &proxy, &[b"postgresql"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    tls.write_all(&startup_packet()).await.unwrap();
    let mut buf = BytesMut::new();
    let (tag, body) = recv(&mut tls, &mut buf).await.expect("a reply over TLS");
    assert_eq!(tag, b'R');
    assert_eq!(&body[..4], &10i32.to_be_bytes(), "AuthenticationSASL");
    let mechanisms: Vec<&[u8]> = body[4..].split(|&b| b == 0).collect();
    assert!(mechanisms.contains(&&b"SCRAM-SHA-256-PLUS"[..]), "{body:?}");
    assert!(mechanisms.contains(&&b"SCRAM-SHA-256"[..]), "{body:?}");
    // (A client left mid-login would hold up shutdown until client_login_timeout.)
    drop(tls);
    // Without ALPN: refused over TLS with 08P01, as PostgreSQL 17 does.
    let mut tls = direct_tls(&env, &proxy, &[]).await.unwrap();
    tls.write_all(&startup_packet()).await.unwrap();
    let mut buf = BytesMut::new();
    let (tag, body) = recv(&mut tls, &mut buf).await.expect("an error over TLS");
    assert_eq!((tag, error_code(&body).as_str()), (b'E', "08P01"));
    // Another protocol offered: the handshake itself fails.
    assert!(direct_tls(&env, &proxy, &[b"http/1.1"]).await.is_err());
    proxy.shutdown().await;
    // TLS off: a direct TLS client gets no TLS.
    let off = Proxy::start_with(
        env.cluster.clone(),
        &env.config(
            "mode = \"disable\"",
            &env.nodes("127.0.0.1"),
            &env.verify_full(),
        ),
    )
    .await;
    assert!(direct_tls(&env, &off, &[b"postgresql"]).await.is_err());
    // SSLRequest is answered N.
    let mut raw = common::Raw::connect(off.addr).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    let mut answer = [0u8; 1];
    raw.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    drop(raw);
    off.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_garbage_closes_the_connection() {
    let env = env();
    let proxy = env.proxy("require", "").await;
    let mut raw = common::Raw::connect(proxy.addr).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    let mut answer = [0u8; 1];
    raw.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    raw.send(b"\x16\x03\x01\x00\x05hello, this is not a ClientHello at all")
        .await;
    assert!(
        raw.closed_within(5).await,
        "garbage handshake must be closed"
    );
    // Bytes pipelined behind SSLRequest (CVE-2021-23214) are refused in plaintext.
    let mut raw = common::Raw::connect(proxy.addr).await;
    let mut out = BytesMut::from(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
    out.extend_from_slice(&startup_packet());
    raw.send(&out).await;
    let (tag, body) = raw.recv().await.expect("an error");
    assert_eq!((tag, error_code(&body).as_str()), (b'E', "08P01"));
    // The proxy still serves.
    let client = tls_client(&env, &proxy, "", None).await.unwrap();
    assert_eq!(one(&client, "SELECT 'fine'").await, "fine");
    proxy.shutdown().await;
}

/// A current-thread runtime (`[proxy] workers = 1`, the default on two
/// cores) hands TLS handshakes to a runtime of their own: they still
/// complete, concurrently, and a client that stalls mid-handshake is still
/// closed at `client_login_timeout` (its handshake task is aborted, which
/// drops the socket).
#[tokio::test]
async fn handshakes_off_a_single_threaded_event_loop() {
    let env = env();
    let toml = env
        .config(
            &env.proxy_tls("require"),
            &env.nodes("127.0.0.1"),
            &env.verify_full(),
        )
        .replacen("[proxy]\n", "[proxy]\nclient_login_timeout = \"3s\"\n", 1);
    let proxy = Proxy::start_with(env.cluster.clone(), &toml).await;
    let mut stalled = common::Raw::connect(proxy.addr).await;
    stalled.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    let mut answer = [0u8; 1];
    stalled.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let clients = (0..8).map(|i| {
        let (env, proxy) = (&env, &proxy);
        async move {
            let client = tls_client(env, proxy, "", None).await.unwrap();
            one(&client, &format!("SELECT 'client {i}'")).await
        }
    });
    let answers = futures_util::future::join_all(clients).await;
    assert_eq!(answers[7], "client 7");
    assert!(
        stalled.closed_within(10).await,
        "a stalled handshake must be closed at client_login_timeout"
    );
    proxy.shutdown().await;
}

/// Asks `proxy` for a query as app with `[cluster.tls]` failing: the client
/// must get an error soon, not hang.
async fn refused_quickly(proxy: &Proxy) -> tokio_postgres::Error {
    let started = Instant::now();
    let result = proxy.client_as("app", "app", "app").await;
    let err = result.expect_err("the proxy cannot reach PostgreSQL");
    assert!(started.elapsed() < Duration::from_secs(8), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_leg_verify_full_refuses_another_ca_and_plaintext() {
    let env = env();
    // The test CA signed PostgreSQL's certificate for 127.0.0.1: accepted.
    let config = env.config("", &env.nodes("127.0.0.1"), &env.verify_full());
    let proxy = Proxy::start_with(env.cluster.clone(), &config).await;
    let client = proxy.client().await;
    let ssl = one(
        &client,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(ssl, "true");
    proxy.shutdown().await;

    // Another CA: refused.
    let other = format!(
        "mode = \"verify-full\"\nca_file = {:?}\n",
        env.path("other_ca.pem")
    );
    let proxy = Proxy::start_with(
        env.cluster.clone(),
        &env.config("", &env.nodes("127.0.0.1"), &other),
    )
    .await;
    refused_quickly(&proxy).await;
    proxy.shutdown().await;

    // disable: PostgreSQL has no plaintext entry in pg_hba.conf.
    let config = env.config("", &env.nodes("127.0.0.1"), "mode = \"disable\"");
    let proxy = Proxy::start_with(env.cluster.clone(), &config).await;
    refused_quickly(&proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_leg_host_name_is_checked_by_verify_full_only() {
    let env = env();
    // The certificate does not name "localhost": verify-full refuses...
    let config = env.config("", &env.nodes("localhost"), &env.verify_full());
    let proxy = Proxy::start_with(env.cluster.clone(), &config).await;
    refused_quickly(&proxy).await;
    proxy.shutdown().await;
    // ...verify-ca checks the chain only and accepts.
    let ca_only = format!("mode = \"verify-ca\"\nca_file = {:?}\n", env.path("ca.pem"));
    let config = env.config("", &env.nodes("localhost"), &ca_only);
    let proxy = Proxy::start_with(env.cluster.clone(), &config).await;
    assert_eq!(one(&proxy.client().await, "SELECT 'ca'").await, "ca");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_the_certificate_files() {
    let env = env();
    let dir = env.dir.join(format!("reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = env.ca.leaf(&["localhost"], "first", false);
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let toml = env.config(
        &format!("mode = \"allow\"\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n"),
        &env.nodes("127.0.0.1"),
        &env.verify_full(),
    );
    let config_file = dir.join("switchyard.toml");
    std::fs::write(&config_file, toml).unwrap();
    let proxy = Proxy::start_from_file(env.cluster.clone(), &config_file).await;
    let ca = env.path("ca.pem");
    let other = env.path("other_ca.pem");
    assert!(
        verify_full_connects(&env, &proxy, &ca).await,
        "first certificate"
    );

    // A certificate from the other CA replaces the files; RELOAD picks it up.
    let (cert, key) = env.other_ca.leaf(&["localhost"], "second", false);
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let admin = proxy
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert!(
        verify_full_connects(&env, &proxy, &other).await,
        "second certificate"
    );
    assert!(
        !verify_full_connects(&env, &proxy, &ca).await,
        "the old CA no longer fits"
    );

    // A broken key file: RELOAD fails and the running certificate stays.
    std::fs::write(&key_file, "not a key").unwrap();
    assert!(admin.simple_query("RELOAD").await.is_err());
    assert!(
        verify_full_connects(&env, &proxy, &other).await,
        "still the second"
    );
    proxy.shutdown().await;
}

async fn verify_full_connects(env: &Env, proxy: &Proxy, ca: &str) -> bool {
    let (ok, _) = env
        .psql(
            &conninfo(
                proxy,
                "localhost",
                &format!("sslmode=verify-full sslrootcert={ca}"),
            ),
            "SELECT 1",
        )
        .await;
    ok
}

/// CancelRequest code (1234.5678): the second word of a plaintext cancel.
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A TCP pass-through in front of PostgreSQL that keeps the first 8 bytes
/// each connection sent (an SSLRequest, a StartupMessage's header or a
/// plaintext CancelRequest's), as a packet capture of the proxy's side would.
struct Tap {
    port: u16,
    openings: Arc<Mutex<Vec<[u8; 8]>>>,
}

impl Tap {
    async fn start(target_port: u16) -> Tap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let openings = Arc::new(Mutex::new(Vec::new()));
        let seen = openings.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    if inbound.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    seen.lock().unwrap().push(first);
                    let target = format!("127.0.0.1:{target_port}");
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if outbound.write_all(&first).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Tap { port, openings }
    }

    /// How many connections opened with a plaintext CancelRequest.
    fn plaintext_cancels(&self) -> usize {
        let openings = self.openings.lock().unwrap();
        openings
            .iter()
            .filter(|o| {
                o[..4] == 16u32.to_be_bytes() && o[4..] == CANCEL_REQUEST_CODE.to_be_bytes()
            })
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_reach_postgresql_inside_tls() {
    let env = env();
    let tap = Tap::start(env.pg_port()).await;
    let nodes = format!("nodes = [\"127.0.0.1:{}\"]", tap.port);
    let toml = env.config(&env.proxy_tls("allow"), &nodes, &env.verify_full());
    let proxy = Proxy::start_with(env.cluster.clone(), &toml).await;
    let client = proxy.client().await;
    let token = client.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    // PostgreSQL 15 acts on a CancelRequest sent inside TLS: the query ends
    // with 57014, and the only way to PostgreSQL is through the tap.
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    cancel.await.unwrap().unwrap();
    assert_eq!(
        tap.plaintext_cancels(),
        0,
        "a cancel key crossed the network in plaintext under verify-full"
    );
    assert_eq!(one(&client, "SELECT 'after'").await, "after");
    proxy.shutdown().await;
}

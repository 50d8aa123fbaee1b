//! A throw-away etcd server for coordination tests: Debian's `etcd-server`
//! (installed by `.ci/run`), one member on free loopback ports with a
//! temporary data directory, stopped and removed on Drop, like PostgreSQL.
//! [`Etcd::start_tls`] serves the client port over TLS only and requires
//! client certificates, with certificates it makes for the purpose.
//! [`EtcdCluster`] runs three members (a static `--initial-cluster`), one of
//! which a test can kill, the elected leader first of all.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::certs::Ca;
use super::free_port;

/// One running etcd member.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// The client port speaks TLS and wants a client certificate.
    tls: bool,
    /// `--name`.
    name: String,
    /// `--initial-cluster`: `None` for a member alone.
    initial_cluster: Option<String>,
    /// `--initial-cluster-token`, the same for every member of a cluster.
    token: String,
}

impl Etcd {
    /// Starts a single-member etcd and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::launch(false)
    }

    /// Starts one whose client port is TLS only (`https://`), with a server
    /// certificate for 127.0.0.1 signed by a CA of its own ([`Etcd::ca_file`]),
    /// and that requires a client certificate signed by the same CA
    /// (`--client-cert-auth`; one is at [`Etcd::client_cert_file`]).
    pub fn start_tls() -> Etcd {
        Etcd::launch(true)
    }

    fn launch(tls: bool) -> Etcd {
        let mut etcd = Etcd::unstarted("sy", tls);
        if tls {
            etcd.make_certificates();
        }
        etcd.run_on_free_ports();
        etcd
    }

    /// Starts a single member with `client_port` for its client port, or
    /// on other ports if that one is taken: a harness check.
    pub fn start_preferring(client_port: u16) -> Etcd {
        let mut etcd = Etcd::unstarted("sy", false);
        etcd.client_port = client_port;
        etcd.run_on_free_ports();
        etcd
    }

    /// Starts it, on fresh ports whenever one of its own was taken before
    /// etcd could bind it: [`free_port`] only finds a port free, it cannot
    /// hold it, and tests running beside this one bind ports too.
    fn run_on_free_ports(&mut self) {
        for _ in 0..START_TRIES {
            self.spawn();
            match self.ready() {
                Ok(()) => return,
                Err(log) if port_taken(&log) => {
                    self.stop();
                    let _ = std::fs::remove_dir_all(self.dir.join("data"));
                    self.client_port = free_port();
                    self.peer_port = free_port();
                }
                Err(log) => panic!("etcd did not become healthy:\n{log}"),
            }
        }
        panic!("etcd found its ports taken {START_TRIES} times");
    }

    /// The client port etcd serves on.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Whether it answers its health check now (plain HTTP members).
    pub fn healthy(&self) -> bool {
        health_ok(&format!("127.0.0.1:{}", self.client_port), None)
    }

    /// A member with a fresh data directory and ports, not started.
    fn unstarted(name: &str, tls: bool) -> Etcd {
        let dir = std::env::temp_dir().join(format!("sy-etcd-{}", super::unique("d")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd data dir");
        Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            name: name.to_string(),
            initial_cluster: None,
            token: super::unique("sy-etcd"),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// `http://127.0.0.1:port` (`https://` with TLS), for `[coordination] endpoints`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The CA that signs the server's and the client's certificates (TLS only).
    pub fn ca_file(&self) -> String {
        self.file("ca.pem")
    }

    /// A client certificate etcd accepts (TLS only).
    pub fn client_cert_file(&self) -> String {
        self.file("client.pem")
    }

    /// The key of [`Etcd::client_cert_file`].
    pub fn client_key_file(&self) -> String {
        self.file("client.key")
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn make_certificates(&self) {
        let ca = Ca::new("etcd test CA");
        // clientAuth too: etcd's HTTP gateway dials its own gRPC port with
        // the server certificate, and --client-cert-auth checks it there.
        let (cert, key) = ca.leaf_for(
            &["127.0.0.1", "localhost"],
            "etcd",
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = ca.leaf(&[], "switchyard", true);
        for (name, text) in [
            ("ca.pem", ca.pem.as_str()),
            ("server.pem", &cert),
            ("server.key", &key),
            ("client.pem", &client),
            ("client.key", &client_key),
        ] {
            std::fs::write(self.dir.join(name), text).expect("write a certificate");
        }
    }

    /// Stops the server (SIGKILL: as a crash would), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn run(&mut self) {
        self.spawn();
        if let Err(log) = self.ready() {
            panic!("etcd did not become healthy:\n{log}");
        }
    }

    /// Starts the process without waiting: the members of a cluster answer
    /// only once a majority of them runs.
    fn spawn(&mut self) {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("etcd is installed (apt-get install etcd-server; .ci/run does it)");
        let client = self.endpoint();
        let peer = self.peer_url();
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={peer}", self.name));
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let mut cmd = Command::new(bin);
        if self.tls {
            cmd.args(["--cert-file", &self.file("server.pem")])
                .args(["--key-file", &self.file("server.key")])
                .args(["--trusted-ca-file", &self.ca_file()])
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            // The members of one cluster know each other by this token: a
            // member of another test's cluster on a reused port is refused.
            .args(["--initial-cluster-token", &self.token])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Waits until it answers its health check (20 s at most). Err: its
    /// log, once the process has exited or the time is up.
    fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = format!("127.0.0.1:{}", self.client_port);
        let tls = self.tls.then(|| self.health_client());
        let log = |dir: &PathBuf| std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        while Instant::now() < deadline {
            if health_ok(&addr, tls.as_ref()) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited.unwrap_or(true) {
                return Err(format!("(etcd exited)\n{}", log(&self.dir)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("(not healthy within 20 s)\n{}", log(&self.dir)))
    }
}

impl Etcd {
    /// A rustls client trusting the test CA, with the client certificate.
    fn health_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca_file()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_file_iter(self.client_cert_file())
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.client_key_file()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }
}

/// Starts on fresh ports before a test gives up on etcd.
const START_TRIES: usize = 5;

/// Whether etcd's log says it could not bind a port.
fn port_taken(log: &str) -> bool {
    log.contains("address already in use")
}

/// `GET /health` answers `"health":"true"` (over TLS with `tls`).
fn health_ok(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> bool {
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    fetch(addr, tls, &req).is_some_and(|answer| answer.contains("\"health\":\"true\""))
}

/// Sends the HTTP/1.0 request `req` to `addr` (over TLS with `tls`) and
/// returns the whole answer, head and body (None when nothing came back).
fn fetch(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>, req: &str) -> Option<String> {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(addr).ok()?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    s.write_all(req.as_bytes()).ok()?;
    // A TLS peer may close without close_notify: keep what was read.
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body);
    (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned())
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three etcd members forming one cluster (static `--initial-cluster`,
/// plain HTTP), stopped and removed on Drop.
pub struct EtcdCluster {
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts three members and waits until each answers (which needs an
    /// elected leader).
    /// A member that found a port of its own taken makes the whole
    /// cluster start again on fresh ports (its peers know its address).
    pub fn start() -> EtcdCluster {
        for _ in 0..START_TRIES {
            let mut members: Vec<Etcd> = (0..3)
                .map(|i| Etcd::unstarted(&format!("sy{i}"), false))
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            let token = super::unique("sy-etcd-cluster");
            for m in &mut members {
                m.initial_cluster = Some(initial.clone());
                m.token = token.clone();
                m.spawn();
            }
            let failed: Vec<String> = members.iter_mut().filter_map(|m| m.ready().err()).collect();
            // The others wait in vain for the member that could not bind.
            if failed.is_empty() {
                return EtcdCluster { members };
            }
            if !failed.iter().any(|log| port_taken(log)) {
                panic!("an etcd member did not become healthy:\n{}", failed[0]);
            }
            // `members` drops here (stopped, removed): again on new ports.
        }
        panic!("etcd members found their ports taken {START_TRIES} times");
    }

    /// Every member's client URL, for `[coordination] endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// The member the live members agree leads the raft group now, by index;
    /// waits (at most 20 s) for them to agree, as during an election they
    /// do not.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen: Vec<(usize, serde_json::Value, serde_json::Value)> = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.child.is_some())
                .filter_map(|(i, m)| m.status().map(|(me, leader)| (i, me, leader)))
                .collect();
            let live = self.members.iter().filter(|m| m.child.is_some()).count();
            let agreed = seen.len() == live && seen.windows(2).all(|w| w[0].2 == w[1].2);
            let leader = seen
                .iter()
                .find(|(_, me, _)| Some(me) == seen.first().map(|s| &s.2));
            if let (true, Some((i, _, _))) = (agreed, leader) {
                return *i;
            }
            assert!(
                Instant::now() < deadline,
                "etcd members disagree on their leader: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills member `i` (SIGKILL), keeping its data.
    pub fn kill(&mut self, i: usize) {
        self.members[i].stop();
    }
}

impl Etcd {
    /// `POST /v3/maintenance/status`: this member's id and the leader's id,
    /// as it says (None when it does not answer).
    fn status(&self) -> Option<(serde_json::Value, serde_json::Value)> {
        let addr = format!("127.0.0.1:{}", self.client_port);
        let req = format!(
            "POST /v3/maintenance/status HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        let answer = fetch(&addr, None, &req)?;
        let body = answer.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let (me, leader) = (v["header"]["member_id"].clone(), v["leader"].clone());
        (!me.is_null() && !leader.is_null()).then_some((me, leader))
    }
}

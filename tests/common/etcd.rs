//! A throw-away etcd server for coordination tests: Debian's `etcd-server`
//! (installed by `.ci/run`), one member on free loopback ports with a
//! temporary data directory, stopped and removed on Drop, like PostgreSQL.
//! [`Etcd::start_tls`] serves the client port over TLS only and requires
//! client certificates, with certificates it makes for the purpose.

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
        let dir = std::env::temp_dir().join(format!("sy-etcd-{}", super::unique("d")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd data dir");
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        if tls {
            etcd.make_certificates();
        }
        etcd.run();
        etcd
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
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("etcd is installed (apt-get install etcd-server; .ci/run does it)");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let mut cmd = Command::new(bin);
        if self.tls {
            cmd.args(["--cert-file", &self.file("server.pem")])
                .args(["--key-file", &self.file("server.key")])
                .args(["--trusted-ca-file", &self.ca_file()])
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "sy"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sy={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = format!("127.0.0.1:{}", self.client_port);
        let tls = self.tls.then(|| self.health_client());
        while Instant::now() < deadline {
            if health_ok(&addr, tls.as_ref()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        panic!("etcd did not become healthy within 20 s:\n{log}");
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

/// `GET /health` answers `"health":"true"` (over TLS with `tls`).
fn health_ok(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> bool {
    use std::io::{Read, Write};
    let Ok(tcp) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    // A TLS peer may close without close_notify: keep what was read.
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body);
    String::from_utf8_lossy(&body).contains("\"health\":\"true\"")
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! TLS, both ways: the acceptor that clients reach (`[proxy.tls]`) and the
//! connector that opens server connections (`[cluster.tls]`), built from the
//! configuration by pure-ish functions that read only the named PEM files, so
//! startup and RELOAD build them the same way ([`Tls::new`], [`Tls::reload`]).
//! Every rustls object uses the ring provider explicitly (with two providers
//! compiled in, rustls's process-default builders panic at run time).
//! The files `[coordination.tls]` and `[coordination.patroni.tls]` name are
//! read and checked here too ([`EtcdPem`]); the etcd client builds its own rustls configuration from them.
//!
//! What is not here: the connection-start negotiation with a client
//! (`client::login`), the SSLRequest toward PostgreSQL (`upstream`), the
//! stream type both use (`stream`) and its plain socket's system calls
//! (`sys`), the SCRAM channel-binding hash (`end_point`),
//! the client certificate's user (`client_cert`) and the DER reads both make (`der`).

pub mod client_cert;
mod der;
pub mod end_point;
mod offload;
pub mod stream;
pub mod sys;
pub mod upstream;
mod verify;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::coordination::CoordinationTlsConfig;
use crate::config::{
    ClientCertUser, ClusterTlsConfig, ClusterTlsMode, Config, ProxyTlsConfig, ProxyTlsMode,
};

pub use stream::Stream;

/// ALPN protocol name of the PostgreSQL protocol (PostgreSQL 17 direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why TLS material could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or holds nothing usable.
    #[error("{key} = {path:?}: {why}")]
    File {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the material (a key that does not match its certificate, ...).
    #[error("{section}: {source}")]
    Rustls {
        /// `proxy.tls`, `cluster.tls`, `coordination.tls`,
        /// `coordination.patroni.tls` or `hardware`.
        section: &'static str,
        /// The cause.
        source: rustls::Error,
    },
    /// A CA file could not be turned into a verifier.
    #[error("{section}: {why}")]
    Verifier {
        /// `proxy.tls` or `cluster.tls`.
        section: &'static str,
        /// The cause.
        why: String,
    },
}

/// The one crypto provider every TLS object here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// TLS toward clients, as `[proxy.tls]` says.
#[derive(Debug)]
pub struct Acceptor {
    /// `disable`, `allow` or `require`.
    pub mode: ProxyTlsMode,
    /// `None` exactly when `mode` is `disable`.
    config: Option<Arc<ServerConfig>>,
    /// tls-server-end-point hash of our certificate (SCRAM-SHA-256-PLUS);
    /// `None` when its signature algorithm has no defined hash (then -PLUS is not offered).
    end_point: Option<Arc<[u8]>>,
    /// Whether a client's certificate must name its login user.
    client_cert_user: ClientCertUser,
}

impl Acceptor {
    /// Plaintext only.
    pub fn disabled() -> Acceptor {
        Acceptor {
            mode: ProxyTlsMode::Disable,
            config: None,
            end_point: None,
            client_cert_user: ClientCertUser::AnyUser,
        }
    }

    /// Reads the certificate, key and (optional) client CA files.
    pub fn build(cfg: &ProxyTlsConfig) -> Result<Acceptor, TlsError> {
        if cfg.mode == ProxyTlsMode::Disable {
            return Ok(Acceptor::disabled());
        }
        let section = "proxy.tls";
        let chain = certs("proxy.tls.cert_file", cfg.cert_file.as_deref())?;
        let key = key("proxy.tls.key_file", cfg.key_file.as_deref())?;
        let end_point = chain
            .first()
            .and_then(|leaf| end_point::hash(leaf))
            .map(Arc::from);
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|source| TlsError::Rustls { section, source })?;
        let builder = match &cfg.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = roots("proxy.tls.client_ca_file", path)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::Verifier {
                        section,
                        why: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::Rustls { section, source })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        // Like PostgreSQL (SSL_OP_NO_TICKET, no session cache): libpq never
        // resumes, so tickets would only cost every handshake a write.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Acceptor {
            mode: cfg.mode,
            config: Some(Arc::new(config)),
            end_point,
            client_cert_user: cfg.client_cert_user,
        })
    }

    /// The rustls configuration; `None` when TLS is disabled.
    pub fn config(&self) -> Option<&Arc<ServerConfig>> {
        self.config.as_ref()
    }

    /// The tls-server-end-point channel binding data of our certificate.
    pub fn end_point(&self) -> Option<&Arc<[u8]>> {
        self.end_point.as_ref()
    }

    /// Whether a client's certificate must name its login user (`client_cert_user`).
    pub fn client_cert_user(&self) -> ClientCertUser {
        self.client_cert_user
    }
}

/// TLS toward PostgreSQL, as `[cluster.tls]` says.
#[derive(Debug)]
pub struct Connector {
    /// libpq's `sslmode` values.
    pub mode: ClusterTlsMode,
    /// `None` exactly when `mode` is `disable`.
    config: Option<Arc<ClientConfig>>,
}

impl Connector {
    /// Never asks for TLS.
    pub fn disabled() -> Connector {
        Connector {
            mode: ClusterTlsMode::Disable,
            config: None,
        }
    }

    /// Reads the CA and (optional) client certificate files.
    pub fn build(cfg: &ClusterTlsConfig) -> Result<Connector, TlsError> {
        if cfg.mode == ClusterTlsMode::Disable {
            return Ok(Connector::disabled());
        }
        let section = "cluster.tls";
        let provider = provider();
        let verifier = match (cfg.mode, &cfg.ca_file) {
            (ClusterTlsMode::VerifyCa | ClusterTlsMode::VerifyFull, Some(path)) => {
                let roots = roots("cluster.tls.ca_file", path)?;
                verify::webpki(
                    roots,
                    provider.clone(),
                    cfg.mode == ClusterTlsMode::VerifyFull,
                )
                .map_err(|why| TlsError::Verifier { section, why })?
            }
            (ClusterTlsMode::VerifyCa | ClusterTlsMode::VerifyFull, None) => {
                return Err(TlsError::Verifier {
                    section,
                    why: "ca_file is needed for verify-ca and verify-full".into(),
                })
            }
            _ => verify::any_certificate(&provider),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(|source| TlsError::Rustls { section, source })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(k)) => builder
                .with_client_auth_cert(
                    certs("cluster.tls.cert_file", Some(cert))?,
                    key("cluster.tls.key_file", Some(k))?,
                )
                .map_err(|source| TlsError::Rustls { section, source })?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Connector {
            mode: cfg.mode,
            config: Some(Arc::new(config)),
        })
    }

    /// The rustls configuration; `None` when TLS is disabled.
    pub fn config(&self) -> Option<&Arc<ClientConfig>> {
        self.config.as_ref()
    }
}

/// The server-side connector as a shared, swappable cell: the cluster's pools
/// and health checks hold a clone and read the current one at each connect.
#[derive(Clone)]
pub struct SharedConnector(Arc<ArcSwap<Connector>>);

impl SharedConnector {
    /// A cell holding `connector`.
    pub fn new(connector: Connector) -> SharedConnector {
        SharedConnector(Arc::new(ArcSwap::from_pointee(connector)))
    }

    /// The connector in force.
    pub fn current(&self) -> Arc<Connector> {
        self.0.load_full()
    }
}

impl Default for SharedConnector {
    /// TLS off: for a cluster built without a configuration (unit tests).
    fn default() -> Self {
        SharedConnector::new(Connector::disabled())
    }
}

/// Both sides built from a new configuration, not yet in force ([`Tls::prepare`]).
pub struct Prepared {
    acceptor: Acceptor,
    connector: Connector,
}

/// The proxy's TLS state: built at startup, rebuilt by [`Tls::reload`].
pub struct Tls {
    acceptor: ArcSwap<Acceptor>,
    connector: SharedConnector,
}

impl Tls {
    /// Builds both sides from `config`, reading the certificate files.
    pub fn new(config: &Config) -> Result<Tls, TlsError> {
        Ok(Tls {
            acceptor: ArcSwap::from_pointee(Acceptor::build(&config.proxy.tls)?),
            connector: SharedConnector::new(Connector::build(&config.cluster.tls)?),
        })
    }

    /// Re-reads the files `config` names and swaps both sides in, or neither
    /// when anything fails (the running TLS stays). Existing connections keep
    /// the TLS they have; new ones get the new.
    pub fn reload(&self, config: &Config) -> Result<(), TlsError> {
        self.install(Tls::prepare(config)?);
        Ok(())
    }

    /// The first half of [`Tls::reload`] for a reload that has other steps
    /// that may fail: reads the files, changes nothing.
    pub fn prepare(config: &Config) -> Result<Prepared, TlsError> {
        Ok(Prepared {
            acceptor: Acceptor::build(&config.proxy.tls)?,
            connector: Connector::build(&config.cluster.tls)?,
        })
    }

    /// The second half of [`Tls::reload`]: swaps in what [`Tls::prepare`] built.
    pub fn install(&self, prepared: Prepared) {
        self.acceptor.store(Arc::new(prepared.acceptor));
        self.connector.0.store(Arc::new(prepared.connector));
    }

    /// The client-facing side in force.
    pub fn acceptor(&self) -> Arc<Acceptor> {
        self.acceptor.load_full()
    }

    /// The server-facing side, as a cell the cluster shares.
    pub fn connector(&self) -> &SharedConnector {
        &self.connector
    }
}

/// What `[coordination.tls]` (or `[coordination.patroni.tls]`) names, read
/// and checked, as PEM text: the etcd client takes PEM and parses it only
/// when it connects, where a bad file would show as a failed connection;
/// checking it here names the file.
#[derive(Clone)]
pub struct EtcdPem {
    /// CA certificates that sign etcd's server certificates.
    pub ca: Vec<u8>,
    /// Client certificate chain and its private key, for an etcd that asks
    /// for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The configuration keys of an etcd TLS section, which errors name.
pub struct EtcdTlsKeys {
    pub section: &'static str,
    pub ca_file: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
}

/// `[coordination.tls]`: Switchyard's own coordination.
pub const COORDINATION_TLS: EtcdTlsKeys = EtcdTlsKeys {
    section: "coordination.tls",
    ca_file: "coordination.tls.ca_file",
    cert_file: "coordination.tls.cert_file",
    key_file: "coordination.tls.key_file",
};

/// `[coordination.patroni.tls]`: the etcd Patroni uses.
pub const PATRONI_TLS: EtcdTlsKeys = EtcdTlsKeys {
    section: "coordination.patroni.tls",
    ca_file: "coordination.patroni.tls.ca_file",
    cert_file: "coordination.patroni.tls.cert_file",
    key_file: "coordination.patroni.tls.key_file",
};

impl EtcdPem {
    /// Reads the files `cfg` (`[coordination.tls]`) names; `None` when it
    /// names none.
    pub fn read(cfg: &CoordinationTlsConfig) -> Result<Option<EtcdPem>, TlsError> {
        EtcdPem::read_as(cfg, &COORDINATION_TLS)
    }

    /// [`EtcdPem::read`] of the section whose keys are `keys`.
    pub fn read_as(
        cfg: &CoordinationTlsConfig,
        keys: &EtcdTlsKeys,
    ) -> Result<Option<EtcdPem>, TlsError> {
        if !cfg.is_set() {
            return Ok(None);
        }
        let section = keys.section;
        let ca_key = keys.ca_file;
        let ca_path = cfg
            .ca_file
            .as_deref()
            .ok_or_else(|| file_error(ca_key, "", "not set"))?;
        let ca = read_pem(ca_key, ca_path)?;
        let mut roots = RootCertStore::empty();
        for cert in certs_in(ca_key, ca_path, &ca)? {
            roots
                .add(cert)
                .map_err(|e| file_error(ca_key, ca_path, e))?;
        }
        let identity = match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert_path), Some(key_path)) => {
                let (cert_key, key_key) = (keys.cert_file, keys.key_file);
                let cert = read_pem(cert_key, cert_path)?;
                let key = read_pem(key_key, key_path)?;
                let chain = certs_in(cert_key, cert_path, &cert)?;
                let der = PrivateKeyDer::from_pem_slice(&key)
                    .map_err(|e| file_error(key_key, key_path, e))?;
                // Built only for rustls's checks (a key that is not the
                // certificate's, a key type it cannot sign with), so they
                // fail here rather than in every handshake.
                ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(VERSIONS)
                    .map_err(|source| TlsError::Rustls { section, source })?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, der)
                    .map_err(|source| TlsError::Rustls { section, source })?;
                Some((cert, key))
            }
            (None, None) => None,
            // cert_file and key_file go together (the configuration is
            // checked for it); name the missing one.
            (Some(_), None) => return Err(file_error(keys.key_file, "", "not set")),
            (None, Some(_)) => return Err(file_error(keys.cert_file, "", "not set")),
        };
        Ok(Some(EtcdPem { ca, identity }))
    }
}

/// The rustls configuration of an HTTPS client (a hardware probe): it
/// trusts only the CA certificates in the PEM file `ca_file` (configuration
/// key `key`), and the server's certificate must name the host connected
/// to. Reads the file, so it belongs off the event loop.
pub fn https_client(key: &'static str, ca_file: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let section = "hardware";
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rustls { section, source })?
        .with_root_certificates(roots(key, ca_file)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_pem(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(key, path, e))
}

/// Every certificate in `pem`, the text of the file at `path`.
fn certs_in(
    key: &'static str,
    path: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn file_error(key: &'static str, path: &str, why: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.to_string(),
        why: why.to_string(),
    }
}

/// Every certificate in the PEM file at `path`.
fn certs(key: &'static str, path: Option<&str>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = path.ok_or_else(|| file_error(key, "", "not set"))?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
fn key(key: &'static str, path: Option<&str>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = path.ok_or_else(|| file_error(key, "", "not set"))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(key, path, e))
}

/// A root store holding every certificate of the PEM file at `path`.
fn roots(key: &'static str, path: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(key, Some(path))? {
        roots.add(cert).map_err(|e| file_error(key, path, e))?;
    }
    Ok(Arc::new(roots))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-tls-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn builds_from_pem_files_and_reports_bad_ones() {
        let dir = temp_dir();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = write(&dir, "cert.pem", &cert.pem());
        let key_file = write(&dir, "key.pem", &key.serialize_pem());
        let mut cfg = ProxyTlsConfig {
            mode: ProxyTlsMode::Require,
            cert_file: Some(cert_file.clone()),
            key_file: Some(key_file.clone()),
            client_ca_file: None,
            client_cert_user: Default::default(),
        };
        let acceptor = Acceptor::build(&cfg).unwrap();
        assert!(acceptor.config().is_some());
        assert_eq!(acceptor.end_point().map(|e| e.len()), Some(32));

        cfg.key_file = Some(write(&dir, "empty.pem", ""));
        let err = Acceptor::build(&cfg).unwrap_err().to_string();
        assert!(err.contains("proxy.tls.key_file"), "{err}");
        cfg.key_file = Some(key_file);
        cfg.cert_file = Some(dir.join("missing.pem").to_string_lossy().into_owned());
        let err = Acceptor::build(&cfg).unwrap_err().to_string();
        assert!(err.contains("proxy.tls.cert_file"), "{err}");

        let other = rcgen::KeyPair::generate().unwrap();
        cfg.cert_file = Some(cert_file.clone());
        cfg.key_file = Some(write(&dir, "other.pem", &other.serialize_pem()));
        assert!(
            Acceptor::build(&cfg).is_err(),
            "a key that is not the certificate's"
        );

        let connector = Connector::build(&ClusterTlsConfig {
            mode: ClusterTlsMode::VerifyFull,
            ca_file: Some(cert_file),
            ..Default::default()
        })
        .unwrap();
        assert!(connector.config().is_some());
        assert!(Connector::build(&ClusterTlsConfig::default())
            .unwrap()
            .config()
            .is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn etcd_files_are_read_and_checked_with_their_names() {
        let dir = temp_dir().join("etcd");
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = write(&dir, "ca.pem", &cert.pem());
        let cert_file = write(&dir, "client.pem", &cert.pem());
        let key_file = write(&dir, "client.key", &key.serialize_pem());
        let other = write(
            &dir,
            "other.key",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );

        assert!(EtcdPem::read(&CoordinationTlsConfig::default())
            .unwrap()
            .is_none());
        let ca_only = CoordinationTlsConfig {
            ca_file: Some(ca_file.clone()),
            ..Default::default()
        };
        let pem = EtcdPem::read(&ca_only).unwrap().unwrap();
        assert_eq!(pem.ca, cert.pem().as_bytes());
        assert!(pem.identity.is_none());
        let mutual = CoordinationTlsConfig {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            ..ca_only.clone()
        };
        let pem = EtcdPem::read(&mutual).unwrap().unwrap();
        assert!(pem.identity.is_some());

        let err = |cfg: CoordinationTlsConfig| EtcdPem::read(&cfg).err().unwrap().to_string();
        let missing = err(CoordinationTlsConfig {
            ca_file: Some(dir.join("missing.pem").to_string_lossy().into_owned()),
            ..Default::default()
        });
        assert!(missing.contains("coordination.tls.ca_file"), "{missing}");
        let missing_ca = CoordinationTlsConfig {
            ca_file: Some(dir.join("missing.pem").to_string_lossy().into_owned()),
            ..Default::default()
        };
        let patroni = EtcdPem::read_as(&missing_ca, &PATRONI_TLS).err().unwrap();
        assert!(
            patroni
                .to_string()
                .contains("coordination.patroni.tls.ca_file"),
            "{patroni}"
        );
        let empty = err(CoordinationTlsConfig {
            ca_file: Some(write(&dir, "empty.pem", "")),
            ..Default::default()
        });
        assert!(empty.contains("no PEM certificate"), "{empty}");
        let mismatch = err(CoordinationTlsConfig {
            key_file: Some(other),
            ..mutual.clone()
        });
        assert!(mismatch.starts_with("coordination.tls:"), "{mismatch}");
        let half = err(CoordinationTlsConfig {
            key_file: None,
            ..mutual
        });
        assert!(half.contains("coordination.tls.key_file"), "{half}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

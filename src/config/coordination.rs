//! `[coordination]`: how several proxies in front of one cluster agree on
//! who acts (etcd), and `failover.quorum`. Only what the file says and the
//! checks serde cannot make; the protocol is `cluster::coord`'s business.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which store the proxies coordinate through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Every proxy decides alone (one proxy per cluster).
    #[default]
    None,
    /// etcd v3: one leader acts, the others observe.
    Etcd,
}

/// `[coordination]` section.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    /// `none` (default) or `etcd`. Needs a restart to change.
    pub backend: Backend,
    /// etcd client URLs (`http://host:2379`). Required with `etcd`.
    pub endpoints: Vec<String>,
    /// Keys live under `<prefix>/<cluster.name>/`. Default `/switchyard`.
    pub prefix: String,
    /// How long a vanished proxy keeps leadership and counts as an
    /// observer. Default `3s`, at least `1s`.
    #[serde(with = "super::duration")]
    pub lease_ttl: Duration,
    /// etcd user, for an etcd with authentication.
    pub username: Option<String>,
    /// etcd password for `username`.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// TLS toward etcd, for `https://` endpoints.
    pub tls: CoordinationTlsConfig,
    /// This proxy's client-facing `host:port` as the other proxies reach
    /// it, published with its `proxy.peer_id` so that a CancelRequest that
    /// lands on another proxy is sent on here. Default: `proxy.listen`
    /// unless that is an unspecified address (`0.0.0.0`, `[::]`).
    pub advertise: Option<String>,
}

/// `[coordination.tls]` (or `tls = { ... }` in `[coordination]`): how the
/// proxy checks etcd's certificate and proves itself to an etcd started with
/// `--client-cert-auth`. The files are read at start and again each time
/// the proxy connects to etcd, so renewed certificates are picked up on the
/// next reconnection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationTlsConfig {
    /// PEM CA certificates that sign etcd's server certificates; needed with
    /// `https://` endpoints (the system's trust store is not used).
    pub ca_file: Option<String>,
    /// PEM client certificate chain, leaf first.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

impl CoordinationTlsConfig {
    /// Whether any file is named.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            backend: Backend::None,
            endpoints: vec![],
            prefix: "/switchyard".into(),
            lease_ttl: Duration::from_secs(3),
            username: None,
            password: None,
            tls: CoordinationTlsConfig::default(),
            advertise: None,
        }
    }
}

// By hand: the password must never reach a log or an error message.
impl fmt::Debug for CoordinationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinationConfig")
            .field("backend", &self.backend)
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("username", &self.username)
            .field("password", &super::redact::redacted(&self.password))
            .field("tls", &self.tls)
            .field("advertise", &self.advertise)
            .finish()
    }
}

/// Whose view of the primary starts a failover, with coordination on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quorum {
    /// The leader's own view and those of a majority of live proxies.
    #[default]
    Majority,
    /// The leader's view alone.
    Leader,
}

impl CoordinationConfig {
    /// What is wrong with this section, if anything.
    pub fn problems(&self, cluster_name: &str) -> Vec<String> {
        if self.backend == Backend::None {
            return vec![];
        }
        let mut out = vec![];
        if self.endpoints.is_empty() {
            out.push("coordination.endpoints: at least one etcd URL is needed".into());
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                out.push(format!(
                    "coordination.endpoints: {e:?} is no http:// or https:// URL"
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            out.push(format!(
                "coordination.prefix: {:?} must start with / and not end with /",
                self.prefix
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            out.push("coordination.lease_ttl: at least 1s".into());
        }
        if cluster_name.is_empty() || cluster_name.contains('/') {
            out.push(format!(
                "cluster.name: {cluster_name:?} must be set and contain no /, to name the cluster in etcd"
            ));
        }
        if self.password.is_some() != self.username.is_some() {
            out.push("coordination.username and coordination.password go together".into());
        }
        out.extend(self.tls_problems());
        out
    }

    /// TLS is all or nothing: the etcd client takes one TLS setting for
    /// every endpoint, and an `https://` endpoint with no CA to check it
    /// against could never be reached.
    fn tls_problems(&self) -> Vec<String> {
        let mut out = vec![];
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https > 0 && https < self.endpoints.len() {
            out.push("coordination.endpoints: either every URL is https:// or none is".to_string());
        }
        if https > 0 && self.tls.ca_file.is_none() {
            out.push(
                "coordination.tls.ca_file: needed with https:// endpoints, to check etcd's certificate"
                    .into(),
            );
        }
        if https == 0 && self.tls.is_set() {
            out.push("coordination.tls: set, but no endpoint is https://".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            out.push("coordination.tls: cert_file and key_file go together".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etcd_section_is_checked_and_none_needs_nothing() {
        let none = CoordinationConfig::default();
        assert!(none.problems("").is_empty());
        let ok = CoordinationConfig {
            backend: Backend::Etcd,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ..Default::default()
        };
        assert!(ok.problems("orders").is_empty());
        let cases: [(CoordinationConfig, &str, &str); 5] = [
            (
                CoordinationConfig {
                    endpoints: vec![],
                    ..ok.clone()
                },
                "orders",
                "endpoints",
            ),
            (
                CoordinationConfig {
                    endpoints: vec!["127.0.0.1:2379".into()],
                    ..ok.clone()
                },
                "orders",
                "no http",
            ),
            (
                CoordinationConfig {
                    prefix: "sy/".into(),
                    ..ok.clone()
                },
                "orders",
                "prefix",
            ),
            (
                CoordinationConfig {
                    lease_ttl: Duration::from_millis(200),
                    ..ok.clone()
                },
                "orders",
                "lease_ttl",
            ),
            (ok.clone(), "", "cluster.name"),
        ];
        for (c, name, want) in cases {
            let p = c.problems(name);
            assert!(p.iter().any(|m| m.contains(want)), "{want}: {p:?}");
        }
    }

    #[test]
    fn tls_needs_https_a_ca_and_both_halves_of_a_client_certificate() {
        let https = |tls: CoordinationTlsConfig| CoordinationConfig {
            backend: Backend::Etcd,
            endpoints: vec![
                "https://10.0.0.5:2379".into(),
                "https://10.0.0.6:2379".into(),
            ],
            tls,
            ..Default::default()
        };
        let ca = CoordinationTlsConfig {
            ca_file: Some("/etc/etcd/ca.pem".into()),
            ..Default::default()
        };
        assert!(https(ca.clone()).problems("orders").is_empty());
        let mutual = CoordinationTlsConfig {
            cert_file: Some("/etc/etcd/client.pem".into()),
            key_file: Some("/etc/etcd/client.key".into()),
            ..ca.clone()
        };
        assert!(https(mutual).problems("orders").is_empty());

        let mixed = CoordinationConfig {
            endpoints: vec![
                "https://10.0.0.5:2379".into(),
                "http://10.0.0.6:2379".into(),
            ],
            ..https(ca.clone())
        };
        let plain = CoordinationConfig {
            endpoints: vec!["http://10.0.0.5:2379".into()],
            ..https(ca.clone())
        };
        let cert_only = CoordinationTlsConfig {
            cert_file: Some("/etc/etcd/client.pem".into()),
            ..ca.clone()
        };
        let key_only = CoordinationTlsConfig {
            key_file: Some("/etc/etcd/client.key".into()),
            ..ca.clone()
        };
        let cases = [
            (mixed, "either every URL is https://"),
            (https(CoordinationTlsConfig::default()), "ca_file: needed"),
            (plain, "no endpoint is https://"),
            (https(cert_only), "cert_file and key_file go together"),
            (https(key_only), "cert_file and key_file go together"),
        ];
        for (c, want) in cases {
            let p = c.problems("orders");
            assert!(p.iter().any(|m| m.contains(want)), "{want}: {p:?}");
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let c = CoordinationConfig {
            username: Some("sy".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
    }
}

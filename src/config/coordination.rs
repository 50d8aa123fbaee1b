//! `[coordination]`: how several proxies in front of one cluster agree on
//! who acts (etcd), where Patroni keeps its view of the cluster (`patroni`),
//! and `failover.quorum`. Only what the file says and the checks serde
//! cannot make; the protocols are `cluster::coord`'s and `cluster::patroni`'s
//! business.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HttpUrl;

/// Which store the proxies coordinate through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Every proxy decides alone (one proxy per cluster).
    #[default]
    None,
    /// etcd v3: one leader acts, the others observe.
    Etcd,
    /// Patroni manages the cluster: its view is read from its keys in etcd
    /// v3 or from its REST API (`[coordination.patroni]`). The proxy takes
    /// no part in Switchyard's own coordination: no lease, no leader among
    /// proxies.
    Patroni,
}

/// `[coordination]` section.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    /// `none` (default), `etcd` or `patroni`. Needs a restart to change.
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
    /// Where Patroni keeps its view of the cluster. Required with
    /// `backend = "patroni"`, refused otherwise.
    pub patroni: Option<PatroniConfig>,
}

/// `[coordination.patroni]` (or `patroni = { ... }` in `[coordination]`):
/// where Patroni's view of the cluster is read, from one of two sources:
/// the etcd v3 that Patroni uses as its DCS (`endpoints`; the cluster's
/// keys are under `<namespace>/<scope>/`, as in Patroni's own
/// configuration), or Patroni's REST API (`rest`), polled.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PatroniConfig {
    /// Patroni's `scope`: the cluster's name. Required.
    pub scope: String,
    /// Patroni's `namespace`. Default `/service`, as Patroni's.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// etcd client URLs (`http://host:2379`): the view is read from
    /// Patroni's keys there. Exactly one of `endpoints` and `rest`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The roots of Patroni's REST API on its members (`http://db1:8008`):
    /// the view is `GET /cluster` of the first that answers. Exactly one of
    /// `endpoints` and `rest`. `https://` takes `tls.ca_file` (no client
    /// certificate: `tls.cert_file` and `tls.key_file` are refused).
    #[serde(default)]
    pub rest: Vec<String>,
    /// etcd user, for an etcd with authentication (read access suffices).
    #[serde(default)]
    pub username: Option<String>,
    /// etcd password for `username`.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// TLS toward etcd, for `https://` endpoints, or toward the REST API.
    #[serde(default)]
    pub tls: CoordinationTlsConfig,
}

/// The configuration key of the CA file that checks Patroni's REST API.
pub const PATRONI_REST_CA: &str = "coordination.patroni.tls.ca_file";

/// `GET /cluster` of the REST API at `root` (`http[s]://host[:port]`):
/// only a root is taken, since Patroni routes a request by its first path
/// segment (`/patroni/cluster` would be answered as `/patroni`).
pub fn rest_cluster_url(root: &str) -> Result<HttpUrl, String> {
    let mut url = HttpUrl::parse(root)?;
    if url.path != "/" {
        return Err(format!(
            "must be the API's root (http://host:port), not {:?}: /cluster is asked of it",
            url.path
        ));
    }
    url.path = "/cluster".into();
    Ok(url)
}

fn default_namespace() -> String {
    "/service".into()
}

// By hand: the password must never reach a log or an error message.
impl fmt::Debug for PatroniConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatroniConfig")
            .field("scope", &self.scope)
            .field("namespace", &self.namespace)
            .field("endpoints", &self.endpoints)
            .field("rest", &self.rest)
            .field("username", &self.username)
            .field("password", &super::redact::redacted(&self.password))
            .field("tls", &self.tls)
            .finish()
    }
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
            patroni: None,
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
            .field("patroni", &self.patroni)
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
        let mut out = vec![];
        if self.patroni.is_some() && self.backend != Backend::Patroni {
            out.push("coordination.patroni: set, but backend is not \"patroni\"".into());
        }
        match self.backend {
            Backend::None => {}
            Backend::Etcd => out.extend(self.etcd_problems(cluster_name)),
            Backend::Patroni => out.extend(self.patroni_problems()),
        }
        out
    }

    fn etcd_problems(&self, cluster_name: &str) -> Vec<String> {
        let mut out = endpoint_problems("coordination", &self.endpoints);
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
        out.extend(tls_problems("coordination", &self.endpoints, &self.tls));
        out
    }

    fn patroni_problems(&self) -> Vec<String> {
        let Some(p) = &self.patroni else {
            return vec![
                "coordination.patroni: needed with backend = \"patroni\": Patroni's scope and the endpoints of its etcd or its REST API"
                    .into(),
            ];
        };
        let mut out = self.etcd_only_settings();
        if p.scope.trim().is_empty() {
            out.push(
                "coordination.patroni.scope: Patroni's scope (the cluster's name) is needed".into(),
            );
        }
        match (p.endpoints.is_empty(), p.rest.is_empty()) {
            (false, false) => out.push(
                "coordination.patroni: endpoints and rest are exclusive: the view is read from Patroni's etcd or from its REST API, not both"
                    .into(),
            ),
            (true, true) => out.push(
                "coordination.patroni: endpoints (Patroni's etcd) or rest (its REST API) is needed"
                    .into(),
            ),
            (true, false) => out.extend(patroni_rest_problems(p)),
            (false, true) => out.extend(patroni_etcd_problems(p)),
        }
        out
    }

    /// The settings of Switchyard's own coordination through etcd, which
    /// `patroni` does not use: set there, they would silently do nothing.
    fn etcd_only_settings(&self) -> Vec<String> {
        let default = CoordinationConfig::default();
        let set = [
            ("endpoints", !self.endpoints.is_empty()),
            ("prefix", self.prefix != default.prefix),
            ("lease_ttl", self.lease_ttl != default.lease_ttl),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("tls", self.tls.is_set()),
            ("advertise", self.advertise.is_some()),
        ];
        set.iter()
            .filter(|(_, on)| *on)
            .map(|(key, _)| {
                format!(
                    "coordination.{key}: for backend = \"etcd\" only; with \"patroni\", Patroni's etcd is set in coordination.patroni"
                )
            })
            .collect()
    }
}

/// `coordination.patroni` with `endpoints`: Patroni's etcd.
fn patroni_etcd_problems(p: &PatroniConfig) -> Vec<String> {
    let mut out = endpoint_problems("coordination.patroni", &p.endpoints);
    if p.password.is_some() != p.username.is_some() {
        out.push(
            "coordination.patroni.username and coordination.patroni.password go together".into(),
        );
    }
    out.extend(tls_problems("coordination.patroni", &p.endpoints, &p.tls));
    out
}

/// `coordination.patroni` with `rest`: each URL an API root; no etcd
/// credentials (`GET /cluster` takes none: they would do nothing); TLS as
/// toward etcd, without a client certificate (the HTTP client sends none).
fn patroni_rest_problems(p: &PatroniConfig) -> Vec<String> {
    let mut out: Vec<String> = p
        .rest
        .iter()
        .filter_map(|r| rest_cluster_url(r).err().map(|e| (r, e)))
        .map(|(r, e)| format!("coordination.patroni.rest: {r:?} {e}"))
        .collect();
    for (key, set) in [
        ("username", p.username.is_some()),
        ("password", p.password.is_some()),
    ] {
        if set {
            out.push(format!(
                "coordination.patroni.{key}: for Patroni's etcd (endpoints) only; its REST API is read without credentials"
            ));
        }
    }
    if p.tls.cert_file.is_some() || p.tls.key_file.is_some() {
        out.push(
            "coordination.patroni.tls: cert_file and key_file are not sent to Patroni's REST API; only ca_file is used"
                .into(),
        );
    }
    out.extend(rest_tls_problems(&p.rest, &p.tls));
    out
}

/// As [`tls_problems`], for the REST API's URLs: one TLS setting for all.
fn rest_tls_problems(rest: &[String], tls: &CoordinationTlsConfig) -> Vec<String> {
    let https = rest.iter().filter(|r| r.starts_with("https://")).count();
    let mut out = vec![];
    if https > 0 && https < rest.len() {
        out.push("coordination.patroni.rest: either every URL is https:// or none is".into());
    }
    if https > 0 && tls.ca_file.is_none() {
        out.push(
            "coordination.patroni.tls.ca_file: needed with https:// rest URLs, to check Patroni's certificate"
                .into(),
        );
    }
    if https == 0 && tls.is_set() {
        out.push("coordination.patroni.tls: set, but no rest URL is https://".into());
    }
    out
}

/// `<section>.endpoints`: at least one, each an `http://` or `https://` URL.
fn endpoint_problems(section: &str, endpoints: &[String]) -> Vec<String> {
    let mut out = vec![];
    if endpoints.is_empty() {
        out.push(format!(
            "{section}.endpoints: at least one etcd URL is needed"
        ));
    }
    for e in endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            out.push(format!(
                "{section}.endpoints: {e:?} is no http:// or https:// URL"
            ));
        }
    }
    out
}

/// TLS is all or nothing: the etcd client takes one TLS setting for
/// every endpoint, and an `https://` endpoint with no CA to check it
/// against could never be reached.
fn tls_problems(section: &str, endpoints: &[String], tls: &CoordinationTlsConfig) -> Vec<String> {
    let mut out = vec![];
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https > 0 && https < endpoints.len() {
        out.push(format!(
            "{section}.endpoints: either every URL is https:// or none is"
        ));
    }
    if https > 0 && tls.ca_file.is_none() {
        out.push(format!(
            "{section}.tls.ca_file: needed with https:// endpoints, to check etcd's certificate"
        ));
    }
    if https == 0 && tls.is_set() {
        out.push(format!("{section}.tls: set, but no endpoint is https://"));
    }
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        out.push(format!("{section}.tls: cert_file and key_file go together"));
    }
    out
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

    fn patroni() -> PatroniConfig {
        PatroniConfig {
            scope: "orders".into(),
            namespace: "/service".into(),
            endpoints: vec!["http://10.0.0.5:2379".into()],
            rest: vec![],
            username: None,
            password: None,
            tls: CoordinationTlsConfig::default(),
        }
    }

    /// Patroni's view from its REST API rather than from etcd.
    fn rest(urls: &[&str]) -> PatroniConfig {
        PatroniConfig {
            endpoints: vec![],
            rest: urls.iter().map(|u| u.to_string()).collect(),
            ..patroni()
        }
    }

    fn following(p: PatroniConfig) -> CoordinationConfig {
        CoordinationConfig {
            backend: Backend::Patroni,
            patroni: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn a_patroni_section_is_checked_and_needs_no_cluster_name() {
        let ca = CoordinationTlsConfig {
            ca_file: Some("/etc/etcd/ca.pem".into()),
            ..Default::default()
        };
        let https = vec!["https://10.0.0.5:2379".into()];
        let good = [
            patroni(),
            PatroniConfig {
                username: Some("patroni".into()),
                password: Some("pw".into()),
                ..patroni()
            },
            PatroniConfig {
                endpoints: https.clone(),
                tls: ca.clone(),
                ..patroni()
            },
        ];
        for p in good {
            let problems = following(p.clone()).problems("");
            assert!(problems.is_empty(), "{p:?}: {problems:?}");
        }
        let cases = [
            (
                CoordinationConfig {
                    patroni: None,
                    ..following(patroni())
                },
                "coordination.patroni: needed with backend = \"patroni\"",
            ),
            (
                following(PatroniConfig {
                    scope: " ".into(),
                    ..patroni()
                }),
                "coordination.patroni.scope",
            ),
            (
                following(PatroniConfig {
                    endpoints: vec![],
                    ..patroni()
                }),
                "coordination.patroni: endpoints (Patroni's etcd) or rest (its REST API) is needed",
            ),
            (
                following(PatroniConfig {
                    endpoints: vec!["10.0.0.5:2379".into()],
                    ..patroni()
                }),
                "coordination.patroni.endpoints: \"10.0.0.5:2379\" is no http",
            ),
            (
                following(PatroniConfig {
                    username: Some("patroni".into()),
                    ..patroni()
                }),
                "coordination.patroni.username and coordination.patroni.password go together",
            ),
            (
                following(PatroniConfig {
                    endpoints: https.clone(),
                    ..patroni()
                }),
                "coordination.patroni.tls.ca_file: needed",
            ),
            (
                following(PatroniConfig {
                    tls: ca.clone(),
                    ..patroni()
                }),
                "coordination.patroni.tls: set, but no endpoint is https://",
            ),
            (
                CoordinationConfig {
                    endpoints: vec!["http://10.0.0.9:2379".into()],
                    ..following(patroni())
                },
                "coordination.endpoints: for backend = \"etcd\" only",
            ),
            (
                CoordinationConfig {
                    lease_ttl: Duration::from_secs(5),
                    ..following(patroni())
                },
                "coordination.lease_ttl: for backend = \"etcd\" only",
            ),
            (
                CoordinationConfig {
                    advertise: Some("10.0.0.1:6432".into()),
                    ..following(patroni())
                },
                "coordination.advertise: for backend = \"etcd\" only",
            ),
            (
                CoordinationConfig {
                    backend: Backend::Etcd,
                    endpoints: vec!["http://10.0.0.9:2379".into()],
                    ..following(patroni())
                },
                "coordination.patroni: set, but backend is not",
            ),
            (
                CoordinationConfig {
                    backend: Backend::None,
                    ..following(patroni())
                },
                "coordination.patroni: set, but backend is not",
            ),
        ];
        for (c, want) in cases {
            let p = c.problems("orders");
            assert!(p.iter().any(|m| m.contains(want)), "{want}: {p:?}");
        }
    }

    #[test]
    fn a_patroni_rest_source_is_checked() {
        let ca = CoordinationTlsConfig {
            ca_file: Some("/etc/patroni/ca.pem".into()),
            ..Default::default()
        };
        let two = ["http://db1:8008", "http://db2:8008/"];
        let https = ["https://db1:8008"];
        let good = [
            rest(&two),
            PatroniConfig {
                tls: ca.clone(),
                ..rest(&https)
            },
        ];
        for p in good {
            let problems = following(p.clone()).problems("");
            assert!(problems.is_empty(), "{p:?}: {problems:?}");
        }
        let cases = [
            (
                PatroniConfig {
                    rest: vec!["http://db1:8008".into()],
                    ..patroni()
                },
                "coordination.patroni: endpoints and rest are exclusive",
            ),
            (
                rest(&[]),
                "coordination.patroni: endpoints (Patroni's etcd) or rest",
            ),
            (
                rest(&["db1:8008"]),
                "coordination.patroni.rest: \"db1:8008\" must start with http://",
            ),
            (
                rest(&["http://db1:8008/patroni"]),
                "coordination.patroni.rest: \"http://db1:8008/patroni\" must be the API's root",
            ),
            (rest(&["http://db1:8008?x=1"]), "must be the API's root"),
            (
                PatroniConfig {
                    username: Some("patroni".into()),
                    password: Some("pw".into()),
                    ..rest(&two)
                },
                "coordination.patroni.password: for Patroni's etcd (endpoints) only",
            ),
            (
                rest(&["https://db1:8008", "http://db2:8008"]),
                "coordination.patroni.rest: either every URL is https:// or none is",
            ),
            (
                rest(&https),
                "coordination.patroni.tls.ca_file: needed with https:// rest URLs",
            ),
            (
                PatroniConfig {
                    tls: ca.clone(),
                    ..rest(&two)
                },
                "coordination.patroni.tls: set, but no rest URL is https://",
            ),
            (
                PatroniConfig {
                    tls: CoordinationTlsConfig {
                        cert_file: Some("/etc/patroni/client.pem".into()),
                        key_file: Some("/etc/patroni/client.key".into()),
                        ..ca.clone()
                    },
                    ..rest(&https)
                },
                "cert_file and key_file are not sent to Patroni's REST API",
            ),
        ];
        for (p, want) in cases {
            let problems = following(p).problems("orders");
            assert!(
                problems.iter().any(|m| m.contains(want)),
                "{want}: {problems:?}"
            );
        }
    }

    #[test]
    fn the_rest_url_asked_is_the_roots_cluster() {
        let asked = |root: &str| rest_cluster_url(root).map(|u| u.to_string());
        let cases = [
            ("http://db1:8008", Ok("http://db1:8008/cluster")),
            ("https://[::1]:8008/", Ok("https://[::1]:8008/cluster")),
            ("http://db1", Ok("http://db1/cluster")),
        ];
        for (root, want) in cases {
            assert_eq!(asked(root), want.map(str::to_string), "{root}");
        }
        for root in ["http://db1:8008/cluster", "http://u:p@db1:8008", "db1:8008"] {
            assert!(asked(root).is_err(), "{root}");
        }
    }

    #[test]
    fn the_patroni_table_reads_like_patronis_own_settings() {
        let load = |table: &str| {
            crate::config::load_str(&format!(
                "[cluster]\nnodes = [\"10.0.0.1:5432\"]\n[failover]\nmode = \"follow\"\n\
                 [coordination]\nbackend = \"patroni\"\npatroni = {table}\n"
            ))
        };
        let cfg = load(r#"{ scope = "orders", endpoints = ["http://10.0.0.5:2379"] }"#).unwrap();
        let p = cfg.coordination.patroni.unwrap();
        assert_eq!(p.namespace, "/service", "Patroni's default namespace");
        assert_eq!(p.scope, "orders");
        let cfg =
            load(r#"{ scope = "orders", rest = ["http://db1:8008", "http://db2:8008"] }"#).unwrap();
        let p = cfg.coordination.patroni.unwrap();
        assert_eq!((p.rest.len(), p.endpoints.len()), (2, 0));
        let refused = [
            (r#"{ endpoints = ["http://10.0.0.5:2379"] }"#, "scope"),
            (
                r#"{ scope = "orders" }"#,
                "endpoints (Patroni's etcd) or rest",
            ),
            (r#"{ scope = "orders", rest = "http://db1:8008" }"#, "rest"),
            (
                r#"{ scope = "orders", endpoints = [], nmespace = "/x" }"#,
                "nmespace",
            ),
        ];
        for (table, want) in refused {
            let err = load(table).unwrap_err().to_string();
            assert!(err.contains(want), "{table}: {err}");
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let c = CoordinationConfig {
            username: Some("sy".into()),
            password: Some("hunter2".into()),
            patroni: Some(PatroniConfig {
                username: Some("patroni".into()),
                password: Some("hunter3".into()),
                ..patroni()
            }),
            ..Default::default()
        };
        for secret in ["hunter2", "hunter3"] {
            assert!(!format!("{c:?}").contains(secret));
            assert!(!serde_json::to_string(&c).unwrap().contains(secret));
        }
    }
}

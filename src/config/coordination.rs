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
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
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

//! The key layout in etcd, under `<prefix>/<cluster.name>/`:
//! `proxies/<id>` (each proxy's view, bound to its lease), `leader` (the
//! leader's id, bound to its lease), `topology` (the record only the
//! leader writes), and `requests/<id>` / `results/<id>` (a switchover asked
//! of another proxy, carried out by the leader, and its outcome).

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// Keys under `<prefix>/<cluster>/`.
    pub fn new(prefix: &str, cluster: &str) -> Keys {
        Keys {
            base: format!("{prefix}/{cluster}/"),
        }
    }

    /// The cluster's prefix, with its trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The leader key.
    pub fn leader(&self) -> String {
        format!("{}leader", self.base)
    }

    /// The topology record.
    pub fn topology(&self) -> String {
        format!("{}topology", self.base)
    }

    /// The prefix of the proxies' views.
    pub fn proxies(&self) -> String {
        format!("{}proxies/", self.base)
    }

    /// One proxy's view.
    pub fn proxy(&self, id: &str) -> String {
        format!("{}proxies/{id}", self.base)
    }

    /// The prefix of switchovers asked of a proxy that does not lead, for
    /// the leader to run (each bound to the asking proxy's lease).
    pub fn requests(&self) -> String {
        format!("{}requests/", self.base)
    }

    /// One such request.
    pub fn request(&self, id: &str) -> String {
        format!("{}requests/{id}", self.base)
    }

    /// The prefix of the leader's answers to them.
    pub fn results(&self) -> String {
        format!("{}results/", self.base)
    }

    /// The answer to request `id`.
    pub fn result(&self, id: &str) -> String {
        format!("{}results/{id}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix_and_cluster_name() {
        let k = Keys::new("/switchyard", "orders");
        assert_eq!(k.leader(), "/switchyard/orders/leader");
        assert_eq!(k.topology(), "/switchyard/orders/topology");
        assert_eq!(k.proxy("a-1"), "/switchyard/orders/proxies/a-1");
        assert!(k.proxy("a-1").starts_with(&k.proxies()));
        assert_eq!(k.request("a-1-7"), "/switchyard/orders/requests/a-1-7");
        assert!(k.result("a-1-7").starts_with(&k.results()));
        assert!(!k.result("a-1-7").starts_with(&k.requests()));
        // One cluster's prefix never covers another's.
        assert!(!Keys::new("/switchyard", "orders2")
            .leader()
            .starts_with(k.base()));
    }
}

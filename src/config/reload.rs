//! What a reload cannot apply. Most settings take effect at once (users,
//! passwords, pool sizes, timeouts) or for new clients (pool mode, limits);
//! these need a restart and are reported, never silently ignored.

use super::Config;

/// Every setting that only changes on restart, by its full `section.key`
/// name, with how to tell it changed. The one list: `SHOW CONFIG`'s
/// `changeable` column reads it too (`is_restart_key`).
/// Whether a setting differs between two configurations.
type Changed = fn(&Config, &Config) -> bool;

const RESTART: &[(&str, Changed)] = &[
    ("proxy.listen", |a, b| a.proxy.listen != b.proxy.listen),
    ("proxy.max_client_conn", |a, b| {
        a.proxy.max_client_conn != b.proxy.max_client_conn
    }),
    ("proxy.max_pending_logins", |a, b| {
        a.proxy.max_pending_logins != b.proxy.max_pending_logins
    }),
    // Shared by the pools of a database (user) from its first pool on.
    ("proxy.max_db_connections", |a, b| {
        a.proxy.max_db_connections != b.proxy.max_db_connections
    }),
    ("proxy.max_user_connections", |a, b| {
        a.proxy.max_user_connections != b.proxy.max_user_connections
    }),
    ("proxy.stats_period", |a, b| {
        a.proxy.stats_period != b.proxy.stats_period
    }),
    ("proxy.workers", |a, b| a.proxy.workers != b.proxy.workers),
    // Keys already issued carry the id the proxy started with.
    ("proxy.peer_id", |a, b| a.proxy.peer_id != b.proxy.peer_id),
    ("http.listen", |a, b| a.http.listen != b.http.listen),
    // Each receiver's delivery task is started with the proxy.
    ("notify", |a, b| a.notify != b.notify),
    ("http.metrics", |a, b| a.http.metrics != b.http.metrics),
    // The monitor reads health, failover, routing and switchover settings at
    // every tick and takes node changes from the reload; its login is fixed
    // when it starts.
    ("cluster.user", |a, b| a.cluster.user != b.cluster.user),
    ("cluster.password", |a, b| {
        a.cluster.password != b.cluster.password
    }),
    ("health.database", |a, b| {
        a.health.database != b.health.database
    }),
    // The coordination task joins etcd once, under one name.
    ("cluster.name", |a, b| a.cluster.name != b.cluster.name),
    ("coordination", |a, b| a.coordination != b.coordination),
    // The binary installs its logger once, before serving.
    ("log.format", |a, b| a.log.format != b.log.format),
    ("log.level", |a, b| a.log.level != b.log.level),
];

/// The settings that differ between `old` and `new` but only change on restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    RESTART
        .iter()
        .filter(|(_, changed)| changed(old, new))
        .map(|(key, _)| key.to_string())
        .collect()
}

/// Whether the setting `key` (`section.key`) only changes on restart.
pub fn is_restart_key(key: &str) -> bool {
    RESTART.iter().any(|(k, _)| *k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::load_str(&format!(
            "[cluster]\nnodes = [\"127.0.0.1:5432\"]\n[[users]]\nname = \"app\"\npassword = \"pw\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn reports_only_restart_settings() {
        let old = config("");
        assert!(needs_restart(&old, &config("[proxy]\ndefault_pool_size = 3\n")).is_empty());
        assert!(needs_restart(&old, &config("[failover]\nhold_timeout = \"9s\"\n")).is_empty());
        assert!(needs_restart(&old, &config("[cluster.tls]\nmode = \"require\"\n")).is_empty());
        assert_eq!(
            needs_restart(&old, &config("[proxy]\nlisten = \"0.0.0.0:7000\"\n")),
            ["proxy.listen"]
        );
        assert_eq!(
            needs_restart(&old, &config("[proxy]\nworkers = 4\n")),
            ["proxy.workers"]
        );
        assert!(needs_restart(&old, &config("[health]\ninterval = \"3s\"\n")).is_empty());
        let peered = config("[proxy]\npeer_id = 1\n");
        assert_eq!(needs_restart(&old, &peered), ["proxy.peer_id"]);
        let more_peers = config("[proxy]\npeer_id = 1\n[[peers]]\nid = 2\naddr = \"b:6432\"\n");
        assert!(
            needs_restart(&peered, &more_peers).is_empty(),
            "peers reload"
        );
        assert_eq!(
            needs_restart(&old, &config("[health]\ndatabase = \"other\"\n")),
            ["health.database"]
        );
        let more_nodes = crate::config::load_str(
            "[cluster]\nnodes = [\"127.0.0.1:5432\", \"127.0.0.1:5433\"]\n[[users]]\nname = \"app\"\npassword = \"pw\"\n",
        )
        .unwrap();
        assert!(needs_restart(&old, &more_nodes).is_empty(), "nodes reload");
        assert_eq!(
            needs_restart(
                &old,
                &config("[log]\nformat = \"json\"\nlevel = \"warn\"\n")
            ),
            ["log.format", "log.level"]
        );
    }
}

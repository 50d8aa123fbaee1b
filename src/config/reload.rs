//! What a reload cannot apply. Most settings take effect at once (users,
//! passwords, pool sizes, timeouts) or for new clients (pool mode, limits);
//! these need a restart and are reported, never silently ignored.

use super::Config;

/// The settings that differ between `old` and `new` but only change on restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = vec![];
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_string());
        }
    };
    check("proxy.listen", old.proxy.listen != new.proxy.listen);
    check(
        "proxy.max_client_conn",
        old.proxy.max_client_conn != new.proxy.max_client_conn,
    );
    check(
        "proxy.stats_period",
        old.proxy.stats_period != new.proxy.stats_period,
    );
    check("proxy.workers", old.proxy.workers != new.proxy.workers);
    check("http.listen", old.http.listen != new.http.listen);
    check("http.metrics", old.http.metrics != new.http.metrics);
    // The monitor reads health, failover, routing and switchover settings at
    // every tick and takes node changes from the reload; its login is fixed
    // when it starts.
    check("cluster.user", old.cluster.user != new.cluster.user);
    check(
        "cluster.password",
        old.cluster.password != new.cluster.password,
    );
    check(
        "health.database",
        old.health.database != new.health.database,
    );
    out
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
        assert_eq!(
            needs_restart(&old, &config("[health]\ndatabase = \"other\"\n")),
            ["health.database"]
        );
        let more_nodes = crate::config::load_str(
            "[cluster]\nnodes = [\"127.0.0.1:5432\", \"127.0.0.1:5433\"]\n[[users]]\nname = \"app\"\npassword = \"pw\"\n",
        )
        .unwrap();
        assert!(needs_restart(&old, &more_nodes).is_empty(), "nodes reload");
    }
}

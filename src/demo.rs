//! `switchyard demo`: a throw-away primary + streaming replica on free ports,
//! Switchyard in front of them, and instructions for connecting. Everything is
//! removed when the demo stops.

use crate::config::{self, Config};
use crate::local_cluster::{
    LocalCluster, APP_DB, APP_PASSWORD, APP_USER, CLUSTER_PASSWORD, CLUSTER_USER,
};

/// The demo's admin console user, password the same (a throw-away cluster
/// on loopback).
pub const DEMO_ADMIN: &str = "admin";

/// The configuration the demo runs: the embedded default pointed at `cluster`.
pub fn demo_config(cluster: &LocalCluster, listen: &str) -> Result<Config, config::ConfigError> {
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("{{ name = {:?}, addr = {:?} }}", n.name(), n.addr()))
        .collect();
    config::load_str(&format!(
        r#"
        [proxy]
        listen = "{listen}"
        pool_mode = "transaction"
        default_pool_size = 20
        auth_type = "scram-sha-256"
        admin_users = ["{DEMO_ADMIN}"]

        [[users]]
        name = "{APP_USER}"
        password = "{APP_PASSWORD}"

        [[users]]
        name = "{DEMO_ADMIN}"
        password = "{DEMO_ADMIN}"

        [cluster]
        nodes = [{nodes}]
        user = "{CLUSTER_USER}"
        password = "{CLUSTER_PASSWORD}"
        "#,
        nodes = nodes.join(", ")
    ))
}

/// What the demo prints once everything is up.
pub fn banner(cluster: &LocalCluster, listen: &str) -> String {
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "6432"));
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("    {:<9} {}", n.name(), n.addr()))
        .collect();
    format!(
        "Switchyard demo is running.\n\n  PostgreSQL nodes (data under {dir}):\n{nodes}\n\n  Connect through the proxy:\n    psql \"postgres://{APP_USER}:{APP_PASSWORD}@{host}:{port}/{APP_DB}\"\n\n  Admin console (SHOW NODES, SHOW EVENTS, SWITCHOVER):\n    psql \"postgres://{DEMO_ADMIN}:{DEMO_ADMIN}@{host}:{port}/switchyard\"\n\n  Rehearse a switchover:\n    switchyard drill --url postgres://{APP_USER}:{APP_PASSWORD}@{host}:{port}/{APP_DB} --admin-url postgres://{DEMO_ADMIN}:{DEMO_ADMIN}@{host}:{port}/switchyard\n\n  Press Ctrl-C to stop; the nodes and their data are removed.\n",
        dir = cluster.base_dir().display(),
        nodes = nodes.join("\n"),
    )
}

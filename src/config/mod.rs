//! Typed configuration: one struct per TOML section, loading from file +
//! environment, and validation. The key names are Switchyard's public interface;
//! renaming one breaks every deployment, so add keys, never rename them.

pub mod coordination;
pub(crate) mod duration;
mod flatten;
pub mod hardware;
pub mod hidden;
mod http_url;
mod load;
pub mod log;
pub mod notify;
pub mod password;
pub mod peers;
pub mod redact;
pub mod reload;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use duration::parse as parse_duration;
pub use flatten::{needs_restart, settings};
pub use hardware::HardwareSpec;
pub use hidden::Hidden;
pub use http_url::{HttpUrl, Scheme};
pub use load::{
    default_file, load, load_env, load_str, ConfigError, DEFAULT_PATHS, NODES_ENV, PEERS_ENV,
    USERS_ENV,
};
pub use log::{level_filter, LevelError, LogConfig, LogFormat};
pub use peers::{PeerConfig, MAX_PEER_ID};
pub use validate::{is_loopback, trust_allowed_on, validate, warnings};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[proxy]`: the client-facing listener and pooling.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// `[[users]]`: who may log in and with which password.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// `[cluster]`: the PostgreSQL nodes behind the proxy.
    pub cluster: ClusterConfig,
    /// `[databases.NAME]`: optional client-facing aliases. Names not listed
    /// pass through to the primary under the same name.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// `[health]`: how nodes are checked.
    #[serde(default)]
    pub health: HealthConfig,
    /// `[failover]`: what happens when the primary fails.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// `[routing]`: where replica traffic may go.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// `[http]`: health, status, events and metrics endpoints.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[switchover]`: planned moves of the primary.
    #[serde(default)]
    pub switchover: SwitchoverConfig,
    /// `[coordination]`: several proxies agreeing on who acts (etcd).
    #[serde(default)]
    pub coordination: coordination::CoordinationConfig,
    /// `[[peers]]`: the other instances behind the same load balancer, where
    /// CancelRequests for their clients' keys are sent on. Needs `proxy.peer_id`.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// `[log]`: format and level of the log lines (the binary's flags and
    /// `RUST_LOG` take precedence).
    #[serde(default)]
    pub log: LogConfig,
    /// `[[notify]]`: receivers of incident notifications.
    #[serde(default)]
    pub notify: Vec<notify::NotifyConfig>,
}

/// `[switchover]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwitchoverConfig {
    /// How long running transactions may take to finish once new ones are
    /// held; later ones are cancelled and get the failover error. Default `5s`.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// How long the target may take to replay the old primary's last WAL
    /// before the switchover is abandoned (and the old primary restored). Default `10s`.
    #[serde(with = "duration")]
    pub catchup_timeout: Duration,
    /// A hardware verdict does not move the primary (a switchover for
    /// `degraded`, a failover for `failing`) within this long of the last
    /// time the primary changed; `0s` never holds one. Default `5m`.
    #[serde(with = "duration")]
    pub min_interval: Duration,
}

impl Default for SwitchoverConfig {
    fn default() -> Self {
        SwitchoverConfig {
            drain_timeout: Duration::from_secs(5),
            catchup_timeout: Duration::from_secs(10),
            min_interval: Duration::from_secs(300),
        }
    }
}

/// `[http]` section.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP endpoints. Default `127.0.0.1:9930` (loopback: set
    /// `0.0.0.0:9930` to expose it). Needs a restart to change.
    pub listen: String,
    /// Record per-query timings, byte counts and latency histograms (the
    /// traffic metrics and `SHOW STATS`). Default true.
    pub metrics: bool,
    /// Bearer token `POST /switchover` must carry, from any address,
    /// loopback included; without one only loopback clients may switch
    /// over. Default none.
    pub switchover_token: Option<String>,
    /// HTTP connections served at once; more are closed on accept.
    /// Default 64.
    pub max_connections: usize,
}

// By hand: the token must never reach a log or an error message.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("metrics", &self.metrics)
            .field("max_connections", &self.max_connections)
            .field(
                "switchover_token",
                &redact::redacted(&self.switchover_token),
            )
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9930".into(),
            metrics: true,
            switchover_token: None,
            max_connections: 64,
        }
    }
}

/// `[health]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Time between probes of a healthy node. Default `1s`.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// A probe slower than this failed. Default `1s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive failed probes before a node is down. Default 3.
    pub failure_threshold: u32,
    /// Database the health connections log into. Default `postgres`.
    pub database: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            database: "postgres".into(),
        }
    }
}

/// Who moves writes when the primary fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// Switchyard promotes the best replica (default).
    Promote,
    /// Something else promotes; Switchyard follows the node that left recovery.
    Follow,
    /// Route only; never move writes.
    Off,
}

/// What a promoted primary does with `synchronous_standby_names`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// Clear it when no standby is connected, so writes do not wait forever (default).
    Availability,
    /// Leave it: writes wait until a synchronous standby connects.
    Durability,
}

/// `[failover]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// `promote` (default), `follow` or `off`.
    pub mode: FailoverMode,
    /// A replica further behind than this (bytes) is never promoted. Default 16 MiB.
    pub max_lag_bytes: u64,
    /// Point the other replicas at the new primary. Default true.
    pub repoint_replicas: bool,
    /// Run with the old primary's address after a promotion (optional).
    pub fence_command: Option<String>,
    /// How long `fence_command` may run before it (and whatever it
    /// started) is killed. Default `30s`.
    #[serde(with = "duration")]
    pub fence_timeout: Duration,
    /// `availability` (default) or `durability`.
    pub sync_policy: SyncPolicy,
    /// How long a query waits for a routable primary before an error. Default `30s`.
    #[serde(with = "duration")]
    pub hold_timeout: Duration,
    /// Start a planned switchover when the primary's hardware probe reports
    /// `degraded`. Default false.
    pub switchover_on_degraded: bool,
    /// With coordination: `majority` (default) or `leader`, whose views of
    /// a down primary start a failover.
    pub quorum: coordination::Quorum,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::Promote,
            max_lag_bytes: 16 * 1024 * 1024,
            repoint_replicas: true,
            fence_command: None,
            fence_timeout: Duration::from_secs(30),
            sync_policy: SyncPolicy::Availability,
            hold_timeout: Duration::from_secs(30),
            switchover_on_degraded: false,
            quorum: coordination::Quorum::Majority,
        }
    }
}

/// `[routing]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Replicas further behind than this (bytes) get no `replica` traffic. Default 16 MiB.
    pub max_replica_lag: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_replica_lag: 16 * 1024 * 1024,
        }
    }
}

/// How long a client keeps its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection per transaction (default).
    Transaction,
    /// A server connection for the whole client session, reset with `DISCARD ALL`.
    Session,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    /// SCRAM-SHA-256 (default), as PostgreSQL does it.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge/response; users whose password is a SCRAM verifier get SCRAM, as in PostgreSQL.
    Md5,
    /// No password: any configured user gets in. Only for local development.
    Trust,
}

/// `[proxy]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Client-facing address. Default `127.0.0.1:6432`. Needs a restart to change.
    pub listen: String,
    /// `transaction` (default) or `session`.
    pub pool_mode: PoolMode,
    /// Server connections per (database, user) pool. Default 20.
    pub default_pool_size: usize,
    /// Client connections accepted at once; more get SQLSTATE 53300. Default 10000.
    pub max_client_conn: usize,
    /// (database, user) pools kept at once; a login that needs another gets
    /// SQLSTATE 53300. Default 1000.
    pub max_pools: usize,
    /// Connections between accept and logged in (TLS handshake, startup,
    /// authentication) at once; past it a connection is refused at once with
    /// SQLSTATE 53300. Default 1000.
    pub max_pending_logins: usize,
    /// Server connections (idle or in use) across all pools of one
    /// database; a checkout past it waits like a full pool. 0 (default):
    /// no limit. Needs a restart to change.
    pub max_db_connections: usize,
    /// Server connections (idle or in use) across all pools of one user; a
    /// checkout past it waits like a full pool. 0 (default): no limit.
    /// Needs a restart to change.
    pub max_user_connections: usize,
    /// Logged-in clients of one database; the next login gets SQLSTATE
    /// 53300. 0 (default): no limit.
    pub max_db_client_connections: usize,
    /// Logged-in clients of one user; the next login gets SQLSTATE 53300.
    /// 0 (default): no limit.
    pub max_user_client_connections: usize,
    /// Longest wait for a server connection before SQLSTATE 53300. Default `5s`.
    #[serde(with = "duration")]
    pub checkout_timeout: Duration,
    /// Longest time a client may take from connect to logged in. Default `15s`.
    #[serde(with = "duration")]
    pub client_login_timeout: Duration,
    /// Idle time before TCP keepalive probes start on client sockets (then
    /// every 10 s, 6 probes; unacknowledged data times out after as long).
    /// `0s`: no keepalives. Default `60s`.
    #[serde(with = "duration")]
    pub tcp_keepidle: Duration,
    /// A client that leaves a transaction open and sends nothing for this
    /// long is disconnected (25P03) and its transaction rolled back. `0s`
    /// (default): never.
    #[serde(with = "duration")]
    pub idle_transaction_timeout: Duration,
    /// A request (a Query, or an extended batch up to Sync) still
    /// unanswered after this long is cancelled on its server; if the server
    /// answers neither within 5 s more, its connection is dropped as lost.
    /// `0s` (default): never.
    #[serde(with = "duration")]
    pub query_timeout: Duration,
    /// Longest a request waits while its pool is paused (`PAUSE`); then it
    /// gets SQLSTATE 57014 and the connection stays. `0s`: as long as it
    /// takes. Default `120s`.
    #[serde(with = "duration")]
    pub query_wait_timeout: Duration,
    /// Idle server connections older than this are closed. Default `10m`.
    #[serde(with = "duration")]
    pub server_idle_timeout: Duration,
    /// Server connections are closed (when idle) after this long. Default `1h`.
    #[serde(with = "duration")]
    pub server_lifetime: Duration,
    /// Longest time to open and log in a server connection. Default `5s`.
    #[serde(with = "duration")]
    pub server_connect_timeout: Duration,
    /// `scram-sha-256` (default), `md5` or `trust`. The admin console never
    /// trusts: its users always give a password (SCRAM, or md5 for a
    /// password stored as an md5 verifier).
    pub auth_type: AuthType,
    /// Allow `auth_type = "trust"` with a `listen` address (and a bound
    /// client socket) other than loopback. Default false: anyone who
    /// reaches the port would get in.
    pub allow_trust_on_network: bool,
    /// Users allowed into the admin console (database `switchyard` / `pgbouncer`).
    pub admin_users: Vec<String>,
    /// Largest client message the proxy holds whole (a Query; in
    /// transaction mode a Parse, Describe, Close, or a Bind up to 64 KiB);
    /// larger is a protocol violation. Other messages stream, bounded only
    /// by PostgreSQL's own 1 GB. Default 64 MiB.
    pub max_message_size: usize,
    /// On SIGTERM/SIGINT, how long running transactions may take to finish. Default `30s`.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Prepared statements kept per server connection (transaction mode); the
    /// least recently used beyond this are closed. Default 200.
    pub max_prepared_statements: usize,
    /// Session settings tracked per client (transaction mode); a client
    /// with more is pinned to its server. Default 64.
    pub max_tracked_parameters: usize,
    /// Bytes all clients together may hold of messages the proxy reads
    /// whole and that are larger than 64 KiB (a large Query or Parse).
    /// A message that finds no room waits up to `checkout_timeout`, then
    /// gets SQLSTATE 53200. Default 1 GiB.
    pub max_memory: usize,
    /// Named prepared statements one client may hold (transaction mode);
    /// a Parse of another gets SQLSTATE 53400. Default 2000.
    pub max_client_prepared_statements: usize,
    /// Bytes of prepared statement text one client may hold (transaction
    /// mode); names preparing the same text share one copy. Default 16 MiB.
    pub max_client_prepared_bytes: usize,
    /// Period of the `SHOW STATS` averages (PgBouncer's `stats_period`). Default `60s`.
    #[serde(with = "duration")]
    pub stats_period: Duration,
    /// Threads that run client sessions and the proxy's own tasks. 0
    /// (default) = one per two CPU cores, at least one; 1 = a single event
    /// loop, like PgBouncer's. Needs a restart to change.
    pub workers: usize,
    /// This instance's id among its `[[peers]]` (0..=255), carried in the
    /// cancel keys it issues. Default none: keys are wholly random and no
    /// CancelRequest is sent on. Needs a restart to change.
    pub peer_id: Option<u16>,
    /// A `[[users]]` user (with a password Switchyard can log in with) that
    /// looks up the passwords of users not in `[[users]]` by running
    /// `auth_query` on the primary. Default none: only `[[users]]` log in.
    pub auth_user: Option<String>,
    /// The lookup `auth_user` runs; `$1` is the user name, the row gives
    /// (name, stored password). Default
    /// `SELECT usename, passwd FROM pg_shadow WHERE usename = $1`.
    pub auth_query: String,
    /// Database the lookup runs in. Default none: the database the client
    /// asked for (its real name), as PgBouncer does.
    pub auth_dbname: Option<String>,
    /// How long a looked-up password (or the absence of a user) is used
    /// before the lookup runs again. Default `60s`.
    #[serde(with = "duration")]
    pub auth_query_ttl: Duration,
    /// `[proxy.tls]`: TLS toward clients.
    pub tls: ProxyTlsConfig,
}

/// Whether clients may or must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyTlsMode {
    /// SSLRequest is answered `N`; direct TLS is refused (default).
    #[default]
    Disable,
    /// TLS for the clients that ask for it; plaintext for the others.
    Allow,
    /// TLS only: a plaintext startup gets SQLSTATE 28000 and is closed.
    Require,
}

/// `[proxy.tls]` section. RELOAD re-reads the files and applies every key to new connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyTlsConfig {
    /// `disable` (default), `allow` or `require`.
    pub mode: ProxyTlsMode,
    /// PEM certificate chain presented to clients, leaf first. Needed unless `mode = "disable"`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Needed unless `mode = "disable"`.
    pub key_file: Option<String>,
    /// PEM CA certificates: when set, every TLS client must present a
    /// certificate signed by one of them. Default none.
    pub client_ca_file: Option<String>,
    /// `none` (default) or `cn`: the client certificate's subject CN must
    /// be the login user, and a client without a certificate (plaintext
    /// under `allow`) is refused. Needs `client_ca_file`.
    pub client_cert_user: ClientCertUser,
}

/// Whether a client certificate must name the user it logs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum ClientCertUser {
    /// Any certificate `client_ca_file` signed will do, for any user (default).
    #[default]
    #[serde(rename = "none")]
    AnyUser,
    /// The subject CN must equal the login user (PostgreSQL's `clientcert=verify-full`).
    #[serde(rename = "cn")]
    Cn,
}

/// How Switchyard's connections to PostgreSQL use TLS (libpq's `sslmode` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterTlsMode {
    /// Never ask for TLS.
    Disable,
    /// Ask for TLS; use plaintext if the server declines (or the handshake
    /// fails); the certificate is not checked (default, as in libpq and PgBouncer).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate chain signed by `ca_file`; any host name.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the node's host.
    VerifyFull,
}

/// `[cluster.tls]` section. RELOAD re-reads the files; new server connections
/// (pools and health checks) use them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTlsConfig {
    /// `disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`.
    pub mode: ClusterTlsMode,
    /// PEM CA certificates that sign the servers' certificates; needed for
    /// `verify-ca` and `verify-full`.
    pub ca_file: Option<String>,
    /// PEM client certificate chain for servers that ask for one (`clientcert`). Default none.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            max_client_conn: 10_000,
            max_pools: 1000,
            max_pending_logins: 1000,
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            checkout_timeout: Duration::from_secs(5),
            client_login_timeout: Duration::from_secs(15),
            idle_transaction_timeout: Duration::ZERO,
            tcp_keepidle: Duration::from_secs(60),
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            server_connect_timeout: Duration::from_secs(5),
            auth_type: AuthType::ScramSha256,
            allow_trust_on_network: false,
            admin_users: vec!["admin".into()],
            max_message_size: 64 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            max_prepared_statements: 200,
            max_tracked_parameters: 64,
            max_memory: 1 << 30,
            max_client_prepared_statements: 2000,
            query_timeout: Duration::ZERO,
            query_wait_timeout: Duration::from_secs(120),
            max_client_prepared_bytes: 16 << 20,
            stats_period: Duration::from_secs(60),
            workers: 0,
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into(),
            auth_dbname: None,
            auth_query_ttl: Duration::from_secs(60),
            peer_id: None,
            tls: ProxyTlsConfig::default(),
        }
    }
}

/// One `[[users]]` entry.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name, the same on the client side and on PostgreSQL.
    pub name: String,
    /// Plaintext, or a `SCRAM-SHA-256$...` / `md5...` verifier, for client auth.
    pub password: String,
    /// What Switchyard sends to PostgreSQL when it differs from `password`
    /// or when `password` is a verifier.
    #[serde(default)]
    pub server_password: Option<String>,
}

// By hand: passwords must never reach a log or an error message.
impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &redact::Redacted)
            .field("server_password", &redact::redacted(&self.server_password))
            .finish()
    }
}

/// `[cluster]` section.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names the cluster across proxies (their keys in etcd). Required
    /// with `[coordination] backend = "etcd"`.
    #[serde(default)]
    pub name: String,
    /// The PostgreSQL nodes: `"host:port"` strings or `{ name, addr, priority }` tables.
    pub nodes: Vec<NodeSpec>,
    /// Login for health checks and control (used by the health checker).
    #[serde(default)]
    pub user: Option<String>,
    /// Password for `user`.
    #[serde(default)]
    pub password: Option<String>,
    /// `[cluster.tls]`: TLS toward PostgreSQL.
    #[serde(default)]
    pub tls: ClusterTlsConfig,
}

// By hand: the password must never reach a log or an error message.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("nodes", &self.nodes)
            .field("user", &self.user)
            .field("password", &redact::redacted(&self.password))
            .field("tls", &self.tls)
            .finish()
    }
}

/// A node as written in the file.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum NodeSpec {
    /// `"host:port"`.
    Addr(String),
    /// `{ name = "db1", addr = "host:port", priority = 10 }` (boxed: with
    /// its hardware probe, far larger than an address).
    Table(Box<NodeTable>),
}

// By hand rather than `untagged`: an untagged enum replaces the table's own
// error (a bad hardware rule, an unknown key) with "did not match any variant".
impl<'de> Deserialize<'de> for NodeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Spec;
        impl<'de> serde::de::Visitor<'de> for Spec {
            type Value = NodeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"host:port\" or a table { name, addr, priority, hardware }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NodeSpec, E> {
                Ok(NodeSpec::Addr(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<NodeSpec, A::Error> {
                NodeTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| NodeSpec::Table(Box::new(t)))
            }
        }
        d.deserialize_any(Spec)
    }
}

/// The table form of a node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTable {
    /// Name used in logs and events; defaults to the address.
    #[serde(default)]
    pub name: Option<String>,
    /// `host:port`.
    pub addr: String,
    /// Tie-breaker for promotion: higher wins. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Optional hardware probe (`[cluster.nodes.hardware]`).
    #[serde(default)]
    pub hardware: Option<HardwareSpec>,
}

/// A node after defaults are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name for logs; the address when not configured.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// Promotion tie-breaker.
    pub priority: i32,
    /// Hardware probe, if configured.
    pub hardware: Option<HardwareSpec>,
}

impl Node {
    /// A node named `name` at `addr`, with priority 0 and no hardware probe.
    pub fn plain(name: &str, addr: &str) -> Node {
        Node {
            name: name.into(),
            addr: addr.into(),
            priority: 0,
            hardware: None,
        }
    }
}

impl NodeSpec {
    /// The node with defaults filled in.
    pub fn resolve(&self) -> Node {
        match self {
            NodeSpec::Addr(addr) => Node::plain(addr, addr),
            NodeSpec::Table(t) => Node {
                name: t.name.clone().unwrap_or_else(|| t.addr.clone()),
                addr: t.addr.clone(),
                priority: t.priority,
                hardware: t.hardware.clone(),
            },
        }
    }
}

/// Where a client-facing database's queries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The current primary (default).
    #[default]
    Primary,
    /// Healthy replicas within the lag bound, else the primary.
    Replica,
    /// Any healthy node.
    Any,
}

/// One `[databases.NAME]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Real database name on PostgreSQL; defaults to the client-facing name.
    #[serde(default)]
    pub dbname: Option<String>,
    /// `primary` (default), `replica` or `any`.
    #[serde(default)]
    pub target: Target,
    /// Overrides `proxy.default_pool_size` for this database.
    #[serde(default)]
    pub pool_size: Option<usize>,
}

impl Config {
    /// What this proxy publishes to the others for cancel forwarding: its
    /// `proxy.peer_id` and the address they reach it at
    /// (`coordination.advertise`, else `proxy.listen` when that names a
    /// specific address). None without a peer id or a usable address.
    pub fn cancel_route(&self) -> Option<(u8, String)> {
        let id = u8::try_from(self.proxy.peer_id?).ok()?;
        let addr = match &self.coordination.advertise {
            Some(a) => a.clone(),
            None => {
                let listen = &self.proxy.listen;
                let host = listen.rsplit_once(':').map_or("", |(h, _)| h);
                let unspecified = matches!(host, "" | "0.0.0.0" | "[::]" | "::" | "*");
                (!unspecified).then(|| listen.clone())?
            }
        };
        Some((id, addr))
    }

    /// The configured nodes with defaults filled in.
    pub fn nodes(&self) -> Vec<Node> {
        self.cluster.nodes.iter().map(NodeSpec::resolve).collect()
    }

    /// The user entry for `name`, if configured.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Real database name, target and pool size for a client-facing database name.
    pub fn database(&self, name: &str) -> (String, Target, usize) {
        match self.databases.get(name) {
            Some(db) => (
                db.dbname.clone().unwrap_or_else(|| name.to_string()),
                db.target,
                db.pool_size.unwrap_or(self.proxy.default_pool_size),
            ),
            None => (
                name.to_string(),
                Target::Primary,
                self.proxy.default_pool_size,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_output_shows_no_secret() {
        let cfg = super::load_str(
            "[cluster]\nnodes = [\"a:1\"]\nuser = \"sw\"\npassword = \"cluster-s3cret\"\n\
             [http]\nswitchover_token = \"token-s3cret\"\n\
             [coordination]\nusername = \"u\"\npassword = \"etcd-s3cret\"\n\
             [[users]]\nname = \"app\"\npassword = \"user-s3cret\"\nserver_password = \"server-s3cret\"\n",
        )
        .unwrap();
        for shown in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            for secret in [
                "cluster-s3cret",
                "token-s3cret",
                "etcd-s3cret",
                "user-s3cret",
                "server-s3cret",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            // What is not secret stays, so the output is still useful.
            assert!(
                shown.contains("<redacted>") && shown.contains("\"app\""),
                "{shown}"
            );
        }
    }
}

//! Switchyard: a PostgreSQL-protocol proxy with connection pooling and
//! transparent failover.
//!
//! A tour of the layout (see docs/ARCHITECTURE.md for the full picture):
//! - [`listener`] accepts clients; [`context::Context`] is the state every task shares (and reload);
//! - [`background`] runs the housekeeping tasks (reaper, stats periods, lag tickers, SIGHUP);
//! - [`client`] runs one task per client: login, then the query relay;
//! - [`cancel_request`] serves a CancelRequest, here or at the peer whose key it is;
//! - [`pool`] keeps server connections per (database, user);
//! - [`server`] opens one connection to PostgreSQL: login, reset, cancel;
//! - [`cluster`] knows which node is the primary;
//! - [`auth`] checks clients and logs into PostgreSQL;
//! - [`protocol`] frames messages and decodes the few bodies the proxy reads;
//! - [`config`] loads and validates the TOML file;
//! - [`http_client`] is the minimal HTTP/1.1 client of hardware probes, notifications and `switchyard healthcheck`;
//! - [`notify`] sends timeline events to `[[notify]]` receivers (webhook, Slack, PagerDuty);
//! - [`tls`] builds the TLS acceptor (clients) and connector (servers), and the stream both use;
//! - [`error`] maps every client-visible error to its SQLSTATE;
//! - [`runtime`] builds the tokio runtime `[proxy] workers` asks for;
//! - [`drill`] rehearses a failover against a running proxy (`switchyard drill`): a write load, a move, a report;
//! - `local_cluster` starts a throw-away PostgreSQL primary + replica (demo, tests, benchmarks;
//!   only with the `local-cluster` feature, on by default).

pub mod admin;
pub mod auth;
pub mod auth_query;
pub mod background;
pub mod cancel_request;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod context;
#[cfg(feature = "local-cluster")]
pub mod demo;
pub mod drill;
pub mod error;
pub mod events;
pub mod http;
pub mod http_client;
pub mod listener;
#[cfg(feature = "local-cluster")]
pub mod local_cluster;
pub mod measure;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod sessions;
pub mod tls;

pub use context::RunError;
pub use listener::{run, run_with_http};

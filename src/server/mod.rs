//! Connections from Switchyard to PostgreSQL, below any pool or routing:
//! `conn.rs` opens one, logs in, runs reset and probe queries; `cancel.rs`
//! sends a cancel and says whether it was acted on; `statements.rs` tracks which prepared statements one holds. It
//! depends only on config, protocol, auth and tls, so both the pool and the
//! cluster's health checks can use it without depending on each other.

mod cancel;
mod conn;
pub mod settings;
pub mod statements;

pub use cancel::{channel, send_cancel, send_cancel_plain, CancelError, Channel};
pub use conn::{ConnectError, Login, ServerConn};

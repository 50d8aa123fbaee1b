//! A logged-in client's side of the proxy: the login exchange (`login`), the
//! query loop (`relay`) and what it reads on the way. `crate::connection`
//! drives one accepted connection through them.

mod cancelled;
pub mod conn;
pub mod expect;
mod limits;
mod link;
pub mod login;
pub mod lost;
mod meter;
pub mod prepared;
mod recycled;
pub mod relay;
mod rewrite;
pub mod session_state;
pub mod settings;
pub mod sql;
pub mod txn;

use crate::cluster::ClusterError;
use crate::error::ClientError;
use crate::pool::PoolError;
use crate::server::ConnectError;

/// The client-facing form of a pool failure. At login the server's own refusal
/// (unknown database, ...) is passed on; detail goes to the log.
pub fn pool_error(err: PoolError, at_login: bool) -> ClientError {
    tracing::warn!(error = %err, "no server connection for client");
    match err {
        PoolError::Timeout => ClientError::CheckoutTimeout,
        PoolError::Connect(ClusterError::Login(ConnectError::Refused { error, .. })) => {
            ClientError::Server(error)
        }
        PoolError::Connect(ClusterError::Login(_)) if at_login => ClientError::ServerLoginFailed,
        PoolError::HoldTimeout | PoolError::Connect(_) => ClientError::NoPrimary,
        PoolError::TooManyPools(max) => ClientError::TooManyPools(max),
        PoolError::PausedTooLong(limit) => ClientError::QueryWaitTimeout(limit),
        PoolError::Limit(hit) => ClientError::ServerLimit(hit.to_string()),
    }
}

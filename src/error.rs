//! Every error a client can see, and its SQLSTATE, in one place. Messages name
//! no addresses or secrets; the detail goes to the log where the error happens.

use bytes::BytesMut;

use crate::protocol::messages::error_response::{self, ServerError, ERROR, FATAL};

/// An error Switchyard reports to a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Wrong password, unknown user, or an unusable method: never says which.
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// `max_client_conn` reached.
    #[error("no more connections allowed (max_client_conn)")]
    TooManyClients,
    /// `max_pending_logins` connections are logging in already.
    #[error("too many connections logging in at once (max_pending_logins = {0})")]
    TooManyPendingLogins(usize),
    /// `max_db_client_connections` or `max_user_client_connections`
    /// clients of the database or user are logged in.
    #[error("{0}")]
    NoSeat(crate::sessions::seats::Refused),
    /// No server connection within `checkout_timeout` because the
    /// database's (`max_db_connections`) or user's
    /// (`max_user_connections`) server connections are all taken.
    /// Carries the limit's description (`pool::LimitHit`, as text).
    #[error("no server connection available within checkout_timeout: {0}")]
    ServerLimit(String),
    /// No server connection became free within `checkout_timeout`.
    #[error("no server connection available within checkout_timeout")]
    CheckoutTimeout,
    /// `proxy.max_pools` pools exist; a new (database, user) gets none.
    #[error("no more pools allowed (max_pools = {0})")]
    TooManyPools(usize),
    /// A Parse past the client's prepared statement bounds; the
    /// connection stays usable.
    #[error("cannot prepare another statement on this connection ({key} = {limit})")]
    PreparedLimit {
        /// The setting that bounds it.
        key: &'static str,
        /// Its value.
        limit: usize,
    },
    /// No room in `proxy.max_memory` for a large message the proxy must
    /// hold whole. Between transactions the message is dropped and the
    /// connection kept; inside one the connection is closed.
    #[error("out of memory: no room within max_memory ({max} bytes) for a message this large")]
    OutOfMemory {
        /// `proxy.max_memory`.
        max: usize,
        /// The connection is closed after it.
        fatal: bool,
    },
    /// The client's pool stayed paused past `query_wait_timeout`: its
    /// request was never run. The connection stays usable.
    #[error("query_wait_timeout: the pool stayed paused for {0:?}; the query was not run")]
    QueryWaitTimeout(std::time::Duration),
    /// The client left a transaction open and idle past
    /// `idle_transaction_timeout` (PostgreSQL's wording and SQLSTATE).
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransactionTimeout,
    /// The client did not finish logging in within `client_login_timeout`.
    #[error("client_login_timeout: login took too long")]
    LoginTimeout,
    /// The client broke the protocol; the connection is closed.
    #[error("{0}")]
    Protocol(String),
    /// A startup packet asked for a protocol we do not speak.
    #[error("{0}")]
    UnsupportedProtocol(String),
    /// `proxy.tls.mode = "require"` and the client did not start TLS.
    #[error("the server accepts only TLS connections (connect with sslmode=require)")]
    TlsRequired,
    /// The TLS handshake failed (a bad certificate, garbage instead of a
    /// ClientHello); the client can no longer be told, but it is counted.
    #[error("TLS handshake failed")]
    TlsHandshake,
    /// A direct TLS connection (no SSLRequest) that did not negotiate ALPN `postgresql`.
    #[error("received direct TLS connection request without ALPN protocol negotiation extension")]
    TlsNoAlpn,
    /// `proxy.tls.client_cert_user` is set and the client presented no
    /// certificate (PostgreSQL's words for a `clientcert` line).
    #[error("connection requires a valid client certificate")]
    CertificateRequired,
    /// The client certificate does not name the user the client logs in as.
    #[error("certificate authentication failed for user \"{0}\"")]
    CertAuthFailed(String),
    /// The startup packet named no user.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// No node accepted a read-write connection.
    #[error("no primary server is available")]
    NoPrimary,
    /// Logging into PostgreSQL failed on Switchyard's side (server password, method).
    #[error("server login failed")]
    ServerLoginFailed,
    /// The transaction's server died (a failover); it was rolled back and can be retried.
    #[error(
        "the transaction was rolled back because its server failed (failover); it is safe to retry"
    )]
    TransactionLost,
    /// The server died before confirming a commit (an explicit COMMIT, or a
    /// statement outside a transaction): it may or may not have committed.
    #[error("the server failed before confirming the outcome (failover); the statement may or may not have committed")]
    CommitUnknown,
    /// The server failed before the client's session settings, just
    /// changed, could be read back: they cannot follow it to another server.
    #[error("the server failed before the session's settings could be carried over (failover); reconnect")]
    SettingsLost,
    /// Statements after a lost transaction, until the client ends it.
    #[error("current transaction is aborted (its server failed), commands ignored until end of transaction block")]
    InFailedTransaction,
    /// The proxy is shutting down.
    #[error("terminating connection due to administrator command")]
    Shutdown,
    /// An operator ran `KILL` on the client's database.
    #[error("terminating connection due to administrator command (KILL)")]
    Killed,
    /// A user not in `proxy.admin_users` asked for the admin console.
    #[error("user \"{0}\" is not allowed to use the admin console (proxy.admin_users)")]
    NotAdmin(String),
    /// The admin console speaks only the simple query protocol.
    #[error("the admin console supports only the simple query protocol")]
    AdminExtendedQuery,
    /// An admin command failed; the console stays usable.
    #[error("{message}")]
    Admin {
        /// SQLSTATE.
        code: &'static str,
        /// What went wrong.
        message: String,
    },
    /// PostgreSQL refused the login; its SQLSTATE and message are passed on.
    #[error("{}", .0.message)]
    Server(ServerError),
}

impl ClientError {
    /// The SQLSTATE clients see.
    pub fn sqlstate(&self) -> &str {
        match self {
            ClientError::AuthFailed(_) => "28P01",
            ClientError::TooManyClients
            | ClientError::TooManyPendingLogins(_)
            | ClientError::NoSeat(_)
            | ClientError::ServerLimit(_)
            | ClientError::CheckoutTimeout
            | ClientError::TooManyPools(_) => "53300",
            ClientError::LoginTimeout => "57014",
            ClientError::PreparedLimit { .. } => "53400",
            ClientError::QueryWaitTimeout(_) => "57014",
            ClientError::OutOfMemory { .. } => "53200",
            ClientError::IdleInTransactionTimeout => "25P03",
            ClientError::Protocol(_) => "08P01",
            ClientError::UnsupportedProtocol(_) => "0A000",
            ClientError::NoUser | ClientError::TlsRequired => "28000",
            ClientError::CertificateRequired | ClientError::CertAuthFailed(_) => "28000",
            ClientError::TlsHandshake | ClientError::TlsNoAlpn => "08P01",
            ClientError::NoPrimary => "08006",
            ClientError::ServerLoginFailed => "08006",
            ClientError::Shutdown | ClientError::Killed => "57P01",
            ClientError::NotAdmin(_) => "42501",
            ClientError::AdminExtendedQuery => "08P01",
            ClientError::Admin { code, .. } => code,
            ClientError::TransactionLost | ClientError::SettingsLost => "08006",
            ClientError::CommitUnknown => "08007",
            ClientError::InFailedTransaction => "25P02",
            ClientError::Server(e) => &e.code,
        }
    }

    /// Who made it: PostgreSQL's own refusals are passed on as they came.
    pub fn origin(&self) -> crate::measure::errors::Origin {
        match self {
            ClientError::Server(_) => crate::measure::errors::Origin::Server,
            _ => crate::measure::errors::Origin::Proxy,
        }
    }

    /// Whether the connection survives it (ERROR) or is closed after it (FATAL).
    pub fn is_fatal(&self) -> bool {
        if let ClientError::OutOfMemory { fatal, .. } = self {
            return *fatal;
        }
        !matches!(
            self,
            ClientError::CheckoutTimeout
                | ClientError::PreparedLimit { .. }
                | ClientError::QueryWaitTimeout(_)
                | ClientError::ServerLimit(_)
                | ClientError::TransactionLost
                | ClientError::CommitUnknown
                | ClientError::InFailedTransaction
                | ClientError::Admin { .. }
        )
    }

    /// Appends the ErrorResponse for this error, with its usual severity.
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_as(out, self.is_fatal());
    }

    /// Appends the ErrorResponse as FATAL (the connection closes) or ERROR
    /// (the session goes on, e.g. when a query could not get a server).
    pub fn encode_as(&self, out: &mut BytesMut, fatal: bool) {
        let severity = if fatal { FATAL } else { ERROR };
        error_response::encode(out, severity, self.sqlstate(), &self.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_follow_postgresql() {
        let cases = [
            (ClientError::AuthFailed("u".into()), "28P01", true),
            (ClientError::TooManyClients, "53300", true),
            (ClientError::CheckoutTimeout, "53300", false),
            (ClientError::TooManyPools(1000), "53300", true),
            (ClientError::TooManyPendingLogins(10), "53300", true),
            (
                ClientError::NoSeat(crate::sessions::seats::Refused::Database {
                    database: "d".into(),
                    max: 1,
                }),
                "53300",
                true,
            ),
            (
                ClientError::ServerLimit("database \"d\" has max_db_connections = 1".into()),
                "53300",
                false,
            ),
            (ClientError::IdleInTransactionTimeout, "25P03", true),
            (ClientError::Protocol("x".into()), "08P01", true),
            (ClientError::UnsupportedProtocol("x".into()), "0A000", true),
            (ClientError::Shutdown, "57P01", true),
            (ClientError::TlsRequired, "28000", true),
            (ClientError::CertificateRequired, "28000", true),
            (ClientError::CertAuthFailed("u".into()), "28000", true),
            (ClientError::TlsHandshake, "08P01", true),
            (ClientError::TlsNoAlpn, "08P01", true),
            (ClientError::NotAdmin("u".into()), "42501", true),
            (ClientError::SettingsLost, "08006", true),
            (
                ClientError::Admin {
                    code: "42601",
                    message: "x".into(),
                },
                "42601",
                false,
            ),
        ];
        for (err, code, fatal) in cases {
            assert_eq!((err.sqlstate(), err.is_fatal()), (code, fatal), "{err:?}");
            let mut out = BytesMut::new();
            err.encode(&mut out);
            let decoded = error_response::decode(&out[5..]).unwrap();
            assert_eq!(decoded.code, code);
        }
    }
}

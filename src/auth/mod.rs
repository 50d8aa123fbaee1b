//! Authentication, both directions: proving a client is who it says (SCRAM-SHA-256,
//! md5, trust) against the configured secrets, and logging Switchyard into
//! PostgreSQL. The exchanges themselves are pure state machines (`scram`, `md5`);
//! the async drivers that move their messages live in `client_side` and `server_side`.

pub mod client_side;
pub mod md5;
pub mod pass_through;
pub mod scram;
pub mod secret;
pub mod server_side;

pub use secret::Secret;

/// Why an authentication exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The proof did not match, the user is unknown, or the method cannot be used.
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The peer broke the exchange's grammar.
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    /// PostgreSQL asked for a method Switchyard does not speak.
    #[error("server requested an unsupported authentication method (code {0})")]
    Unsupported(i32),
    /// PostgreSQL asked for a password and none is configured for the server side.
    #[error("no server password configured for user \"{0}\"")]
    NoServerPassword(String),
    /// A looked-up user's server holds another verifier than the one the
    /// client logged in against: the password changed since the lookup.
    #[error("the server's SCRAM verifier differs from the looked-up one (password changed)")]
    StaleVerifier,
}

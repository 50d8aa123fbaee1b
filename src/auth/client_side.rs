//! Checking a client's credentials: runs the configured method's exchange over
//! the client connection. The cryptography lives in `scram` and `md5`; this file
//! only moves messages and decides which method applies.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::BytesMut;

use super::scram::{Channel, ClientKey, ScramServer, Step};
use super::secret::{Credentials, ScramVerifier};
use super::{md5, AuthError, Secret};
use crate::config::AuthType;
use crate::protocol::messages::{backend, password};

/// The one operation auth needs from a connection: send bytes, get the next `p` body.
#[allow(async_fn_in_trait)]
pub trait AuthChannel {
    /// Writes `out` and reads the next message, which must be a `p`.
    async fn round_trip(&mut self, out: &[u8]) -> Result<Vec<u8>, AuthChannelError>;
}

/// Why the exchange stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuthChannelError {
    /// The credentials did not check out.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The connection failed or the client sent something else.
    #[error("{0}")]
    Io(String),
}

/// A login that passed.
#[derive(Debug)]
pub struct Passed {
    /// What must be sent before AuthenticationOk (SCRAM's final message).
    pub reply: BytesMut,
    /// The client's SCRAM key, after a SCRAM login: what logs in to a
    /// server storing the same verifier (`pass_through`).
    pub client_key: Option<ClientKey>,
}

impl Passed {
    fn plain() -> Passed {
        Passed {
            reply: BytesMut::new(),
            client_key: None,
        }
    }
}

/// Authenticates `user`; `secret` is `None` for an unknown user, who still goes
/// through the whole exchange so the reply never reveals whether the user exists.
/// `end_point` is our certificate's channel binding data when the client is on
/// TLS: SCRAM-SHA-256-PLUS is then offered too.
/// On success returns what must be sent before AuthenticationOk (SCRAM's final
/// message), so the caller can write it together with the rest of the login reply.
pub async fn authenticate(
    ch: &mut impl AuthChannel,
    method: AuthType,
    user: &str,
    creds: Option<&Credentials>,
    end_point: Option<&[u8]>,
) -> Result<Passed, AuthChannelError> {
    let secret = creds.map(|c| &c.secret);
    let fail = || AuthChannelError::Auth(AuthError::Failed(user.to_string()));
    match method {
        AuthType::Trust => secret.map(|_| Passed::plain()).ok_or_else(fail),
        AuthType::Md5 if !matches!(secret, Some(Secret::Scram(_))) => {
            let salt: [u8; 4] = rand::random();
            let mut out = BytesMut::new();
            backend::auth_md5(&mut out, salt);
            let reply = ch.round_trip(&out).await?;
            let response = password::decode_password(&reply)
                .ok_or(AuthError::Malformed("password message"))?;
            match secret {
                Some(s) if md5::verify(s, user, salt, response) => Ok(Passed::plain()),
                _ => Err(fail()),
            }
        }
        _ => scram(ch, user, creds, end_point)
            .await
            .map_err(|e| match e {
                AuthChannelError::Auth(AuthError::Failed(_)) => fail(),
                other => other,
            }),
    }
}

async fn scram(
    ch: &mut impl AuthChannel,
    user: &str,
    creds: Option<&Credentials>,
    end_point: Option<&[u8]>,
) -> Result<Passed, AuthChannelError> {
    // Unknown users (and md5-only secrets) get a verifier nobody knows the password of.
    let real = creds.and_then(|c| c.scram.clone());
    let known = real.is_some();
    let verifier = real.unwrap_or_else(|| ScramVerifier::decoy(user));
    let nonce: [u8; 18] = rand::random();
    let mut out = BytesMut::new();
    backend::auth_sasl(&mut out, end_point.is_some());
    let first = ch.round_trip(&out).await?;
    let (mechanism, data) =
        password::decode_sasl_initial(&first).ok_or(AuthError::Malformed("SASLInitialResponse"))?;
    let channel = match (mechanism, end_point) {
        ("SCRAM-SHA-256-PLUS", Some(cb)) => Channel::Bound(cb.to_vec()),
        ("SCRAM-SHA-256", Some(_)) => Channel::Declined,
        ("SCRAM-SHA-256", None) => Channel::Unavailable,
        _ => return Err(AuthError::Malformed("unsupported SASL mechanism").into()),
    };
    let mut state = ScramServer::new(verifier, STANDARD.encode(nonce), channel);
    let mut data = data.to_vec();
    loop {
        let (next, step) = state.step(&data)?;
        state = next;
        out.clear();
        match step {
            Step::Continue(msg) => backend::auth_sasl_step(&mut out, 11, &msg.0),
            Step::Done(..) if !known => return Err(AuthError::Failed(String::new()).into()),
            Step::Done(msg, client_key) => {
                backend::auth_sasl_step(&mut out, 12, &msg.0);
                return Ok(Passed {
                    reply: out,
                    client_key: Some(client_key),
                });
            }
        }
        data = ch.round_trip(&out).await?;
    }
}

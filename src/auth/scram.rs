//! SCRAM-SHA-256 (RFC 5802/7677), server side, as a pure state machine: the
//! caller passes the client's messages and the nonce; no socket, clock or RNG here.
//! Channel binding (SCRAM-SHA-256-PLUS, `tls-server-end-point`, RFC 5929) is
//! checked here against the data the caller passes ([`Channel`]); which
//! mechanisms to offer is the caller's business (`client_side`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::md5::constant_time_eq;
use super::secret::ScramVerifier;
use super::AuthError;

/// What the client's channel binding must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Only SCRAM-SHA-256 was offered (no TLS): `n` or `y`.
    Unavailable,
    /// -PLUS was offered and the client chose plain SCRAM-SHA-256: `n` only
    /// (`y`, "I could bind but you can't", means someone removed -PLUS: a downgrade).
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: `p=tls-server-end-point` with this data.
    Bound(Vec<u8>),
}

/// Where the exchange stands.
#[derive(Debug)]
pub enum ScramServer {
    /// Waiting for client-first-message.
    Initial {
        verifier: ScramVerifier,
        server_nonce: String,
        channel: Channel,
    },
    /// server-first-message sent; waiting for client-final-message.
    SaltSent {
        verifier: ScramVerifier,
        nonce: String,
        auth_prefix: String,
        /// The `c=` attribute the client-final-message must carry.
        binding: String,
    },
}

/// What to do after a step.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this as AuthenticationSASLContinue and wait for the next client message.
    Continue(ScramServer2Client),
    /// The proof matched: send this as AuthenticationSASLFinal, then
    /// AuthenticationOk. The client's key, recovered from its proof, lets
    /// Switchyard log into a server holding the same verifier.
    Done(ScramServer2Client, ClientKey),
}

/// SCRAM's ClientKey, HMAC(SaltedPassword, "Client Key"): with the verifier
/// it logs in as the user wherever that verifier is stored, so it is kept
/// in memory only and never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(pub [u8; 32]);

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientKey")
            .field(&crate::config::redact::Redacted)
            .finish()
    }
}

/// Bytes to send to the client.
#[derive(Debug, PartialEq, Eq)]
pub struct ScramServer2Client(pub Vec<u8>);

impl ScramServer {
    /// Starts an exchange; `server_nonce` must be fresh random printable text.
    pub fn new(verifier: ScramVerifier, server_nonce: String, channel: Channel) -> ScramServer {
        ScramServer::Initial {
            verifier,
            server_nonce,
            channel,
        }
    }

    /// Feeds one client message; returns the next state and what to send.
    pub fn step(self, msg: &[u8]) -> Result<(ScramServer, Step), AuthError> {
        let msg = std::str::from_utf8(msg)
            .map_err(|_| AuthError::Malformed("SCRAM message is not UTF-8"))?;
        match self {
            ScramServer::Initial {
                verifier,
                server_nonce,
                channel,
            } => client_first(verifier, &server_nonce, &channel, msg),
            ScramServer::SaltSent {
                verifier,
                nonce,
                auth_prefix,
                binding,
            } => client_final(verifier, &nonce, &auth_prefix, &binding, msg),
        }
    }
}

/// Checks the gs2 header (`flag,authzid,`) against `channel`; returns the
/// `c=` value the final message must carry.
fn gs2_binding(header: &str, channel: &Channel) -> Result<String, AuthError> {
    let flag = header.strip_suffix(",,").ok_or(AuthError::Malformed(
        "SCRAM authorization identity is not supported",
    ))?;
    let mut bound = header.as_bytes().to_vec();
    match (flag, channel) {
        ("p=tls-server-end-point", Channel::Bound(data)) => bound.extend_from_slice(data),
        (_, Channel::Bound(_)) => {
            return Err(AuthError::Malformed(
                "SCRAM-SHA-256-PLUS needs channel binding type tls-server-end-point",
            ))
        }
        ("n", _) | ("y", Channel::Unavailable) => {}
        // PostgreSQL's words for it: the client supports binding but thinks we don't.
        ("y", _) => {
            return Err(AuthError::Malformed(
                "SCRAM channel binding negotiation error",
            ))
        }
        _ => {
            return Err(AuthError::Malformed(
                "channel binding requested without SCRAM-SHA-256-PLUS",
            ))
        }
    }
    Ok(STANDARD.encode(bound))
}

fn client_first(
    verifier: ScramVerifier,
    server_nonce: &str,
    channel: &Channel,
    msg: &str,
) -> Result<(ScramServer, Step), AuthError> {
    // gs2-header: "n,," (no binding), "y,," (client could bind, thinks we
    // can't) or "p=tls-server-end-point,," (-PLUS); then the bare message.
    let (header, bare) = msg
        .match_indices(',')
        .nth(1)
        .map(|(i, _)| msg.split_at(i + 1))
        .ok_or(AuthError::Malformed("SCRAM gs2 header missing"))?;
    let binding = gs2_binding(header, channel)?;
    let client_nonce = bare
        .split(',')
        .find_map(|attr| attr.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or(AuthError::Malformed("SCRAM client nonce missing"))?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        STANDARD.encode(&verifier.salt),
        verifier.iterations
    );
    let auth_prefix = format!("{bare},{server_first}");
    let next = ScramServer::SaltSent {
        verifier,
        nonce,
        auth_prefix,
        binding,
    };
    Ok((
        next,
        Step::Continue(ScramServer2Client(server_first.into_bytes())),
    ))
}

fn client_final(
    verifier: ScramVerifier,
    nonce: &str,
    auth_prefix: &str,
    binding: &str,
    msg: &str,
) -> Result<(ScramServer, Step), AuthError> {
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or(AuthError::Malformed("SCRAM proof missing"))?;
    let mut attrs = without_proof.split(',');
    if attrs.next().and_then(|a| a.strip_prefix("c=")) != Some(binding) {
        return Err(AuthError::Malformed("SCRAM channel binding does not match"));
    }
    if attrs.next().and_then(|a| a.strip_prefix("r=")) != Some(nonce) {
        return Err(AuthError::Malformed("SCRAM nonce does not match"));
    }
    let proof = STANDARD
        .decode(proof)
        .map_err(|_| AuthError::Malformed("SCRAM proof is not base64"))?;
    let auth_message = format!("{auth_prefix},{without_proof}");
    let client_signature = hmac(&verifier.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(AuthError::Malformed("SCRAM proof has the wrong length"));
    }
    let mut client_key = [0u8; 32];
    for (k, (p, s)) in client_key
        .iter_mut()
        .zip(proof.iter().zip(&client_signature))
    {
        *k = p ^ s;
    }
    if !constant_time_eq(Sha256::digest(client_key).as_slice(), &verifier.stored_key) {
        return Err(AuthError::Failed(String::new()));
    }
    let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", STANDARD.encode(server_signature));
    let next = ScramServer::SaltSent {
        verifier,
        nonce: nonce.to_string(),
        auth_prefix: auth_prefix.to_string(),
        binding: binding.to_string(),
    };
    Ok((
        next,
        Step::Done(
            ScramServer2Client(server_final.into_bytes()),
            ClientKey(client_key),
        ),
    ))
}

pub(super) fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn verifier(pw: &str) -> ScramVerifier {
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(pw.as_bytes())).unwrap()
    }

    /// Runs a real client (postgres-protocol's, the one tokio-postgres uses) against the server.
    fn exchange(client_pw: &str, server_pw: &str) -> Result<(), AuthError> {
        exchange_bound(
            client_pw,
            server_pw,
            ChannelBinding::unsupported(),
            Channel::Unavailable,
        )
    }

    fn exchange_bound(
        client_pw: &str,
        server_pw: &str,
        client_binding: ChannelBinding,
        channel: Channel,
    ) -> Result<(), AuthError> {
        let mut client = ScramSha256::new(client_pw.as_bytes(), client_binding);
        let server = ScramServer::new(verifier(server_pw), "servernonce123".into(), channel);
        let (server, step) = server.step(client.message())?;
        let Step::Continue(first) = step else {
            panic!("expected continue")
        };
        client.update(&first.0).unwrap();
        let (_, step) = server.step(client.message())?;
        let Step::Done(last, _) = step else {
            panic!("expected done")
        };
        client
            .finish(&last.0)
            .expect("client accepts the server signature");
        Ok(())
    }

    #[test]
    fn right_password_passes_and_server_proves_itself() {
        exchange("s3cret", "s3cret").unwrap();
    }

    #[test]
    fn wrong_password_fails() {
        assert!(matches!(
            exchange("wrong", "s3cret"),
            Err(AuthError::Failed(_))
        ));
    }

    #[test]
    fn channel_binding_must_match_what_was_offered() {
        let cb = || ChannelBinding::tls_server_end_point(vec![7; 32]);
        exchange_bound("pw", "pw", cb(), Channel::Bound(vec![7; 32])).unwrap();
        // Bound to another certificate (a man in the middle): refused.
        assert!(exchange_bound("pw", "pw", cb(), Channel::Bound(vec![8; 32])).is_err());
        // -PLUS data on the plain mechanism, or no binding on -PLUS: refused.
        assert!(exchange_bound("pw", "pw", cb(), Channel::Declined).is_err());
        let plain = ChannelBinding::unsupported;
        assert!(exchange_bound("pw", "pw", plain(), Channel::Bound(vec![7; 32])).is_err());
        // "n" is fine whether or not -PLUS was offered; "y" only when it was not.
        exchange_bound("pw", "pw", plain(), Channel::Declined).unwrap();
        exchange_bound(
            "pw",
            "pw",
            ChannelBinding::unrequested(),
            Channel::Unavailable,
        )
        .unwrap();
        assert!(
            exchange_bound("pw", "pw", ChannelBinding::unrequested(), Channel::Declined).is_err()
        );
        // The right binding does not make a wrong password pass.
        assert!(matches!(
            exchange_bound("no", "pw", cb(), Channel::Bound(vec![7; 32])),
            Err(AuthError::Failed(_))
        ));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let first_msgs: [&[u8]; 6] = [
            b"",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,,n=,",
            b"n,,n=,r=",
            b"\xff\xfe",
            b"n,,n=,r=a,b",
        ];
        for m in first_msgs {
            let s = ScramServer::new(verifier("x"), "sn".into(), Channel::Unavailable);
            let _ = s.step(m); // must not panic; most are errors
        }
        let finals: [&[u8]; 5] = [
            b"",
            b"c=biws,r=cnsn",
            b"c=biws,r=wrong,p=AAAA",
            b"c=xx,r=cnsn,p=AAAA",
            b"c=biws,r=cnsn,p=!!!",
        ];
        for m in finals {
            let s = ScramServer::new(verifier("x"), "sn".into(), Channel::Unavailable);
            let (s, _) = s.step(b"n,,n=,r=cn").unwrap();
            assert!(s.step(m).is_err(), "{:?}", String::from_utf8_lossy(m));
        }
    }
}

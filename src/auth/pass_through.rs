//! Logging into PostgreSQL as a user whose password Switchyard never sees
//! (users found by `auth_query`), as pure functions: no socket, clock or RNG.
//!
//! SCRAM: a client's proof gives away its ClientKey to whoever holds the
//! verifier (`scram::Step::Done`). PostgreSQL stores the same verifier (same
//! salt and iteration count), so with ClientKey Switchyard answers the
//! server's exchange itself: ClientProof = ClientKey XOR HMAC(StoredKey,
//! AuthMessage), and checks the server's signature with ServerKey.
//!
//! md5: the stored hash `md5` + hex(md5(password || user)) is all an md5
//! answer needs (`md5` + hex(md5(hash || salt))), so it serves as is.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use md5::{Digest, Md5};
use sha2::Sha256;

use super::md5::constant_time_eq;
use super::scram::{hmac, ClientKey};
use super::secret::ScramVerifier;
use super::AuthError;

/// What logs in as a SCRAM user without the password: the verifier's public
/// half (salt, iterations), ServerKey to check the server, and ClientKey.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    iterations: u32,
    salt: Vec<u8>,
    client_key: ClientKey,
    server_key: [u8; 32],
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .field("salt", &self.salt)
            .field("client_key", &self.client_key)
            .field("server_key", &crate::config::redact::Redacted)
            .finish()
    }
}

impl ScramKeys {
    /// Keys for the user `verifier` belongs to, `client_key` recovered from a
    /// client's proof against it.
    pub fn new(verifier: &ScramVerifier, client_key: ClientKey) -> ScramKeys {
        ScramKeys {
            iterations: verifier.iterations,
            salt: verifier.salt.clone(),
            client_key,
            server_key: verifier.server_key,
        }
    }
}

/// The exchange after client-first-message: what the final message needs.
#[derive(Debug)]
pub struct Started {
    /// gs2 header followed by the channel binding data (the `c=` input).
    binding: Vec<u8>,
    /// client-first-message-bare.
    bare: String,
    client_nonce: String,
}

/// The exchange after client-final-message: the server signature to expect.
#[derive(Debug)]
pub struct Sent {
    server_signature: Vec<u8>,
}

/// client-first-message for `gs2_header` (`n,,`, `y,,` or
/// `p=tls-server-end-point,,`) and `cb_data` (the certificate hash under -PLUS).
pub fn first(gs2_header: &str, cb_data: &[u8], client_nonce: &str) -> (String, Started) {
    let bare = format!("n=,r={client_nonce}");
    let mut binding = gs2_header.as_bytes().to_vec();
    binding.extend_from_slice(cb_data);
    let message = format!("{gs2_header}{bare}");
    let started = Started {
        binding,
        bare,
        client_nonce: client_nonce.to_string(),
    };
    (message, started)
}

/// client-final-message for the server-first-message `server_first`. The
/// server must use the salt and iteration count of `keys`: otherwise its
/// verifier is another one (the password changed since the lookup).
pub fn proof(
    keys: &ScramKeys,
    started: &Started,
    server_first: &[u8],
) -> Result<(String, Sent), AuthError> {
    let server_first = std::str::from_utf8(server_first)
        .map_err(|_| AuthError::Malformed("server SCRAM message is not UTF-8"))?;
    let attr = |name: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(name))
            .ok_or(AuthError::Malformed("server-first-message"))
    };
    let nonce = attr("r=")?;
    if !nonce.starts_with(&started.client_nonce) || nonce.len() == started.client_nonce.len() {
        return Err(AuthError::Malformed("server SCRAM nonce"));
    }
    let salt = STANDARD
        .decode(attr("s=")?)
        .map_err(|_| AuthError::Malformed("server SCRAM salt"))?;
    let iterations: u32 = attr("i=")?
        .parse()
        .map_err(|_| AuthError::Malformed("server SCRAM iteration count"))?;
    if salt != keys.salt || iterations != keys.iterations {
        return Err(AuthError::StaleVerifier);
    }
    let without_proof = format!("c={},r={nonce}", STANDARD.encode(&started.binding));
    let auth_message = format!("{},{server_first},{without_proof}", started.bare);
    let stored_key = <Sha256 as sha2::Digest>::digest(keys.client_key.0);
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = keys
        .client_key
        .0
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let message = format!("{without_proof},p={}", STANDARD.encode(proof));
    let sent = Sent {
        server_signature: hmac(&keys.server_key, auth_message.as_bytes()),
    };
    Ok((message, sent))
}

/// Checks server-final-message: a server that cannot sign with ServerKey
/// does not hold the verifier, so it is not our server.
pub fn verify(sent: &Sent, server_final: &[u8]) -> Result<(), AuthError> {
    let bad = AuthError::Malformed("server SCRAM signature is invalid");
    let v = std::str::from_utf8(server_final)
        .ok()
        .and_then(|s| s.strip_prefix("v="))
        .and_then(|v| STANDARD.decode(v.trim_end_matches(',')).ok())
        .ok_or(AuthError::Malformed("server SCRAM signature is invalid"))?;
    if constant_time_eq(&v, &sent.server_signature) {
        Ok(())
    } else {
        Err(bad)
    }
}

/// The answer to an md5 challenge from a stored md5 hash.
pub fn md5_answer(stored: &str, salt: [u8; 4]) -> Result<String, AuthError> {
    let inner = stored
        .strip_prefix("md5")
        .ok_or(AuthError::Malformed("stored md5 hash"))?;
    let digest = Md5::digest([inner.as_bytes(), &salt].concat());
    Ok(format!(
        "md5{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::super::scram::{Channel, ScramServer, Step};
    use super::*;

    fn verifier(pw: &str) -> ScramVerifier {
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(pw.as_bytes())).unwrap()
    }

    /// A real client (postgres-protocol's) logs in to our SCRAM server; the
    /// ClientKey it gives away is what `pass_through` needs.
    fn recovered_key(pw: &str, v: &ScramVerifier) -> ClientKey {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut client = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
        let server = ScramServer::new(v.clone(), "sn1".into(), Channel::Unavailable);
        let (server, Step::Continue(first)) = server.step(client.message()).unwrap() else {
            panic!("expected continue")
        };
        client.update(&first.0).unwrap();
        let (_, Step::Done(_, key)) = server.step(client.message()).unwrap() else {
            panic!("expected done")
        };
        key
    }

    /// Runs pass-through against our own SCRAM server holding `server_v`.
    fn log_in(keys: &ScramKeys, server_v: &ScramVerifier, cb: &[u8]) -> Result<(), AuthError> {
        let (header, channel) = if cb.is_empty() {
            ("n,,", Channel::Unavailable)
        } else {
            ("p=tls-server-end-point,,", Channel::Bound(cb.to_vec()))
        };
        let (msg, started) = first(header, cb, "clientnonce");
        let server = ScramServer::new(server_v.clone(), "servernonce".into(), channel);
        let (server, Step::Continue(sf)) = server.step(msg.as_bytes())? else {
            panic!("expected continue")
        };
        let (msg, sent) = proof(keys, &started, &sf.0)?;
        let (_, Step::Done(last, _)) = server.step(msg.as_bytes())? else {
            panic!("expected done")
        };
        verify(&sent, &last.0)
    }

    #[test]
    fn a_recovered_client_key_logs_in_where_the_verifier_is_stored() {
        let v = verifier("s3cret");
        let keys = ScramKeys::new(&v, recovered_key("s3cret", &v));
        log_in(&keys, &v, b"").unwrap();
        log_in(&keys, &v, &[7; 32]).unwrap();
    }

    #[test]
    fn a_changed_password_or_a_forged_server_is_refused() {
        let v = verifier("s3cret");
        let keys = ScramKeys::new(&v, recovered_key("s3cret", &v));
        // The server now stores another verifier (new salt): refused before any proof.
        assert!(matches!(
            log_in(&keys, &verifier("new"), b""),
            Err(AuthError::StaleVerifier)
        ));
        // Same salt, another password: the server refuses the proof.
        let same_salt = ScramVerifier::derive("other", v.salt.clone());
        assert!(matches!(
            log_in(&keys, &same_salt, b""),
            Err(AuthError::Failed(_))
        ));
        // A server signature made without ServerKey is not accepted.
        let (_, started) = first("n,,", b"", "cn");
        let (_, sent) = proof(
            &keys,
            &started,
            format!("r=cnsn,s={},i=4096", STANDARD.encode(&v.salt)).as_bytes(),
        )
        .unwrap();
        assert!(verify(&sent, b"v=AAAA").is_err());
        assert!(verify(&sent, b"e=invalid-proof").is_err());
    }

    #[test]
    fn a_stored_md5_hash_answers_like_the_password() {
        let salt = [1, 2, 3, 4];
        let stored = postgres_protocol::password::md5(b"pw", "ann");
        let want = postgres_protocol::authentication::md5_hash(b"ann", b"pw", salt);
        assert_eq!(md5_answer(&stored, salt).unwrap(), want);
    }

    #[test]
    fn keys_are_not_shown() {
        let v = verifier("pw");
        let keys = ScramKeys::new(&v, ClientKey([9; 32]));
        let shown = format!("{keys:?}");
        // The whole key, not a fragment: the random salt is shown, and a
        // fragment such as "9, 9" turns up in it now and then ("49, 90").
        assert!(!shown.contains(&format!("{:?}", [9u8; 32])), "{shown}");
        assert!(!shown.contains(&format!("{:?}", v.server_key)), "{shown}");
    }
}

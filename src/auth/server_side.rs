//! Logging Switchyard into PostgreSQL: answers each Authentication request
//! (cleartext, md5, SCRAM-SHA-256, and SCRAM-SHA-256-PLUS over TLS when the
//! server offers it) with the configured server password, or, for users
//! found by `auth_query`, with what `pass_through` derives from their
//! login. No I/O here: the caller feeds `R` message bodies and sends back
//! what it returns.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::pass_through::{self, ScramKeys};
use super::AuthError;

/// What Switchyard logs into PostgreSQL with.
#[derive(Clone)]
pub enum ServerSecret {
    /// A plaintext password: answers every method.
    Password(String),
    /// A stored md5 hash (`md5...`): answers md5 only.
    Md5(String),
    /// SCRAM keys recovered from a client's login: answer SCRAM only.
    Scram(ScramKeys),
}

// By hand: each form is enough to log in as the user.
impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let form = match self {
            ServerSecret::Password(_) => "Password",
            ServerSecret::Md5(_) => "Md5",
            ServerSecret::Scram(_) => "Scram",
        };
        f.debug_tuple(form)
            .field(&crate::config::redact::Redacted)
            .finish()
    }
}

/// A SCRAM exchange in progress, by what it answers with.
enum Exchange {
    Password(ScramSha256),
    KeysStarted(ScramKeys, pass_through::Started),
    KeysSent(pass_through::Sent),
}

/// What the login sequence should do after an `R` message.
#[derive(Debug)]
pub enum Reply {
    /// Send these bytes and wait for the next message.
    Send(BytesMut),
    /// Nothing to send; wait for the next message.
    Wait,
    /// AuthenticationOk: authentication finished.
    Ok,
}

/// Server-side login state for one connection.
pub struct ServerAuth {
    user: String,
    secret: Option<ServerSecret>,
    /// tls-server-end-point data of the server's certificate, under TLS.
    end_point: Option<Vec<u8>>,
    scram: Option<Exchange>,
}

impl ServerAuth {
    /// `secret` is what PostgreSQL is answered with, if any is known;
    /// `end_point` the channel binding data when the connection is TLS.
    pub fn new(
        user: &str,
        secret: Option<&ServerSecret>,
        end_point: Option<Vec<u8>>,
    ) -> ServerAuth {
        ServerAuth {
            user: user.to_string(),
            secret: secret.cloned(),
            end_point,
            scram: None,
        }
    }

    fn password(&self) -> Result<&str, AuthError> {
        match &self.secret {
            Some(ServerSecret::Password(p)) => Ok(p),
            _ => Err(AuthError::NoServerPassword(self.user.clone())),
        }
    }

    /// The md5 answer to `salt`, from the password or a stored md5 hash.
    fn md5(&self, salt: [u8; 4]) -> Result<String, AuthError> {
        match &self.secret {
            Some(ServerSecret::Md5(hash)) => pass_through::md5_answer(hash, salt),
            _ => Ok(postgres_protocol::authentication::md5_hash(
                self.user.as_bytes(),
                self.password()?.as_bytes(),
                salt,
            )),
        }
    }

    /// Whether answering this Authentication body derives the SCRAM key
    /// (PBKDF2, thousands of HMACs: milliseconds of CPU), which belongs off
    /// the event loop.
    pub fn is_costly(body: &[u8]) -> bool {
        body.get(..4) == Some(&11i32.to_be_bytes()[..])
    }

    /// Handles one Authentication message body (after tag and length).
    pub fn on_request(&mut self, body: &[u8]) -> Result<Reply, AuthError> {
        let code = body
            .get(..4)
            .ok_or(AuthError::Malformed("short authentication request"))?;
        let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
        let data = &body[4..];
        let mut out = BytesMut::new();
        let io = |_| AuthError::Malformed("cannot encode password message");
        match code {
            0 => return Ok(Reply::Ok),
            3 => frontend::password_message(self.password()?.as_bytes(), &mut out).map_err(io)?,
            5 => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| AuthError::Malformed("md5 salt"))?;
                let hash = self.md5(salt)?;
                frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
            }
            10 => {
                let offered = |name: &[u8]| data.split(|&b| b == 0).any(|m| m == name);
                let (mechanism, header, cb) = match &self.end_point {
                    Some(cb) if offered(b"SCRAM-SHA-256-PLUS") => {
                        ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", cb.clone())
                    }
                    // "y": we could bind, the server did not offer it.
                    Some(_) => ("SCRAM-SHA-256", "y,,", vec![]),
                    None => ("SCRAM-SHA-256", "n,,", vec![]),
                };
                if !offered(mechanism.as_bytes()) {
                    return Err(AuthError::Unsupported(code));
                }
                let (first, exchange) = self.start_scram(header, cb)?;
                frontend::sasl_initial_response(mechanism, &first, &mut out).map_err(io)?;
                self.scram = Some(exchange);
            }
            11 => {
                let next = self.continue_scram(data)?;
                frontend::sasl_response(&next, &mut out).map_err(io)?;
            }
            12 => {
                // A server that cannot prove it knows the verifier is not our server.
                let invalid = AuthError::Malformed("server SCRAM signature is invalid");
                match self.scram.as_mut() {
                    Some(Exchange::Password(scram)) => scram.finish(data).map_err(|_| invalid)?,
                    Some(Exchange::KeysSent(sent)) => pass_through::verify(sent, data)?,
                    _ => return Err(AuthError::Malformed("SASL final before start")),
                }
                return Ok(Reply::Wait);
            }
            other => return Err(AuthError::Unsupported(other)),
        }
        Ok(Reply::Send(out))
    }

    /// client-first-message, from the password or from recovered keys.
    fn start_scram(&self, header: &str, cb: Vec<u8>) -> Result<(Vec<u8>, Exchange), AuthError> {
        if let Some(ServerSecret::Scram(keys)) = &self.secret {
            let nonce: [u8; 18] = rand::random();
            let nonce = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, nonce);
            let (first, started) = pass_through::first(header, &cb, &nonce);
            return Ok((
                first.into_bytes(),
                Exchange::KeysStarted(keys.clone(), started),
            ));
        }
        let binding = match header {
            "n,," => ChannelBinding::unsupported(),
            "y,," => ChannelBinding::unrequested(),
            _ => ChannelBinding::tls_server_end_point(cb),
        };
        let scram = ScramSha256::new(self.password()?.as_bytes(), binding);
        Ok((scram.message().to_vec(), Exchange::Password(scram)))
    }

    /// client-final-message for the server-first-message `data`.
    fn continue_scram(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        match self.scram.take() {
            Some(Exchange::Password(mut scram)) => {
                scram
                    .update(data)
                    .map_err(|_| AuthError::Malformed("server SCRAM message"))?;
                let msg = scram.message().to_vec();
                self.scram = Some(Exchange::Password(scram));
                Ok(msg)
            }
            Some(Exchange::KeysStarted(keys, started)) => {
                let (msg, sent) = pass_through::proof(&keys, &started, data)?;
                self.scram = Some(Exchange::KeysSent(sent));
                Ok(msg.into_bytes())
            }
            _ => Err(AuthError::Malformed("SASL continue before start")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl(mechanisms: &[&str]) -> Vec<u8> {
        let mut body = 10i32.to_be_bytes().to_vec();
        for m in mechanisms {
            body.extend_from_slice(m.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    /// The mechanism and gs2 header of the SASLInitialResponse we send.
    fn first(end_point: Option<Vec<u8>>, offered: &[&str]) -> Result<String, AuthError> {
        let pw = ServerSecret::Password("pw".into());
        let mut auth = ServerAuth::new("u", Some(&pw), end_point);
        let Reply::Send(out) = auth.on_request(&sasl(offered))? else {
            panic!("expected a SASLInitialResponse")
        };
        let body = &out[5..];
        let nul = body.iter().position(|&b| b == 0).unwrap();
        let data = &body[nul + 5..];
        Ok(format!(
            "{} {}",
            String::from_utf8_lossy(&body[..nul]),
            String::from_utf8_lossy(&data[..data.len().min(24)])
        ))
    }

    #[test]
    fn binds_to_the_server_certificate_when_it_can() {
        let both = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
        let tls = || Some(vec![1; 32]);
        assert!(first(tls(), &both)
            .unwrap()
            .starts_with("SCRAM-SHA-256-PLUS p=tls-server-end-point,,"));
        assert!(first(tls(), &["SCRAM-SHA-256"])
            .unwrap()
            .starts_with("SCRAM-SHA-256 y,,"));
        assert!(first(None, &both).unwrap().starts_with("SCRAM-SHA-256 n,,"));
        assert!(matches!(
            first(None, &["SCRAM-SHA-256-PLUS"]),
            Err(AuthError::Unsupported(10))
        ));
    }
}

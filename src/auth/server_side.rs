//! Logging Switchyard into PostgreSQL: answers each Authentication request
//! (cleartext, md5, SCRAM-SHA-256, and SCRAM-SHA-256-PLUS over TLS when the
//! server offers it) with the configured server password. No I/O here: the
//! caller feeds `R` message bodies and sends back what it returns.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::AuthError;

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
    password: Option<String>,
    /// tls-server-end-point data of the server's certificate, under TLS.
    end_point: Option<Vec<u8>>,
    scram: Option<ScramSha256>,
}

impl ServerAuth {
    /// `password` is the plaintext PostgreSQL expects, if any is configured;
    /// `end_point` the channel binding data when the connection is TLS.
    pub fn new(user: &str, password: Option<&str>, end_point: Option<Vec<u8>>) -> ServerAuth {
        ServerAuth {
            user: user.to_string(),
            password: password.map(str::to_string),
            end_point,
            scram: None,
        }
    }

    fn password(&self) -> Result<&str, AuthError> {
        self.password
            .as_deref()
            .ok_or_else(|| AuthError::NoServerPassword(self.user.clone()))
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
                let hash = postgres_protocol::authentication::md5_hash(
                    self.user.as_bytes(),
                    self.password()?.as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
            }
            10 => {
                let offered = |name: &[u8]| data.split(|&b| b == 0).any(|m| m == name);
                let (mechanism, binding) = match &self.end_point {
                    Some(cb) if offered(b"SCRAM-SHA-256-PLUS") => (
                        "SCRAM-SHA-256-PLUS",
                        ChannelBinding::tls_server_end_point(cb.clone()),
                    ),
                    // "y": we could bind, the server did not offer it.
                    Some(_) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                    None => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                };
                if !offered(mechanism.as_bytes()) {
                    return Err(AuthError::Unsupported(code));
                }
                let scram = ScramSha256::new(self.password()?.as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, scram.message(), &mut out)
                    .map_err(io)?;
                self.scram = Some(scram);
            }
            11 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(AuthError::Malformed("SASL continue before start"))?;
                scram
                    .update(data)
                    .map_err(|_| AuthError::Malformed("server SCRAM message"))?;
                frontend::sasl_response(scram.message(), &mut out).map_err(io)?;
            }
            12 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(AuthError::Malformed("SASL final before start"))?;
                // A server that cannot prove it knows the verifier is not our server.
                scram
                    .finish(data)
                    .map_err(|_| AuthError::Malformed("server SCRAM signature is invalid"))?;
                return Ok(Reply::Wait);
            }
            other => return Err(AuthError::Unsupported(other)),
        }
        Ok(Reply::Send(out))
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
        let mut auth = ServerAuth::new("u", Some("pw"), end_point);
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

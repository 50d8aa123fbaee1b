//! The forms a `[[users]]` password may take, as PostgreSQL stores them in
//! `pg_authid`: plaintext, an md5 hash, or a SCRAM-SHA-256 verifier. Only the
//! syntax lives here, so that loading a file can refuse a broken verifier;
//! what the forms are good for (deriving verifiers, checking logins) is the
//! business of `auth`, which builds on [`PasswordForm::of`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The stored form of a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordForm {
    /// The password itself.
    Plain,
    /// `md5` + hex(md5(password || username)).
    Md5,
    /// A SCRAM-SHA-256 verifier, decoded.
    Scram(ScramVerifierParts),
}

/// The fields of `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifierParts {
    /// PBKDF2 iteration count (never 0).
    pub iterations: u32,
    /// Raw salt bytes (never empty).
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

// By hand: the keys are as good as the password to whoever holds them.
impl std::fmt::Debug for ScramVerifierParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifierParts")
            .field("iterations", &self.iterations)
            .field("salt", &self.salt)
            .field("stored_key", &super::redact::Redacted)
            .field("server_key", &super::redact::Redacted)
            .finish()
    }
}

impl PasswordForm {
    /// Recognises the stored form the way PostgreSQL does: a `SCRAM-SHA-256$`
    /// prefix is a verifier (and must parse), `md5` + 32 hex digits is an md5
    /// hash, anything else is plaintext.
    pub fn of(s: &str) -> Result<PasswordForm, &'static str> {
        if s.starts_with("SCRAM-SHA-256$") {
            return ScramVerifierParts::parse(s).map(PasswordForm::Scram);
        }
        let hex = s.strip_prefix("md5").unwrap_or("");
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(PasswordForm::Md5);
        }
        Ok(PasswordForm::Plain)
    }
}

impl ScramVerifierParts {
    /// Parses PostgreSQL's verifier text.
    pub fn parse(s: &str) -> Result<ScramVerifierParts, &'static str> {
        const BAD: &str = "not a valid SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>)";
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(BAD)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(BAD)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or(BAD)?;
        let (stored, server) = keys.split_once(':').ok_or(BAD)?;
        let iterations: u32 = iter.parse().map_err(|_| BAD)?;
        let salt = STANDARD.decode(salt).map_err(|_| BAD)?;
        let key = |k: &str| -> Result<[u8; 32], &'static str> {
            STANDARD
                .decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(BAD)
        };
        if iterations == 0 || salt.is_empty() {
            return Err(BAD);
        }
        Ok(ScramVerifierParts {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_stored_forms() {
        assert_eq!(PasswordForm::of("hunter2"), Ok(PasswordForm::Plain));
        assert_eq!(PasswordForm::of("md5abc"), Ok(PasswordForm::Plain));
        let md5 = "md5".to_string() + &"a".repeat(32);
        assert_eq!(PasswordForm::of(&md5), Ok(PasswordForm::Md5));
        assert!(PasswordForm::of("SCRAM-SHA-256$4096:c2FsdA==$x:y").is_err());
        let generated = postgres_protocol::password::scram_sha_256(b"pw");
        let Ok(PasswordForm::Scram(v)) = PasswordForm::of(&generated) else {
            panic!("{generated}")
        };
        assert_eq!(v.iterations, 4096);
    }
}

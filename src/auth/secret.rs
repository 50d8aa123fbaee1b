//! The stored form of a user's password, as PostgreSQL keeps it in `pg_authid`:
//! plaintext, an md5 hash, or a SCRAM-SHA-256 verifier.

use std::fmt;

use crate::config::password::{PasswordForm, ScramVerifierParts};
use crate::config::redact::{redacted, Redacted};

/// A parsed SCRAM-SHA-256 verifier: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Raw salt bytes.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

/// A configured password in one of the forms PostgreSQL accepts.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// `md5` + hex(md5(password || username)).
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
}

// By hand, as for the other types here: a plaintext password, an md5 hash
// and SCRAM keys are each enough to log in (or to pose as the server), so
// none reaches a log; the salt is shown to every client anyway.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.debug_tuple("Plain").field(&Redacted).finish(),
            Secret::Md5(_) => f.debug_tuple("Md5").field(&Redacted).finish(),
            Secret::Scram(v) => f.debug_tuple("Scram").field(v).finish(),
        }
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &self.salt)
            .field("stored_key", &Redacted)
            .field("server_key", &Redacted)
            .finish()
    }
}

impl Secret {
    /// Recognises the stored form the way PostgreSQL does (see
    /// [`PasswordForm::of`]: the configuration checks passwords with the same rules).
    pub fn parse(s: &str) -> Result<Secret, &'static str> {
        Ok(match PasswordForm::of(s)? {
            PasswordForm::Plain => Secret::Plain(s.to_string()),
            PasswordForm::Md5 => Secret::Md5(s.to_string()),
            PasswordForm::Scram(parts) => Secret::Scram(parts.into()),
        })
    }

    /// The SCRAM verifier to check `user` against, derived from plaintext
    /// when needed. A derived verifier's salt is the one a decoy for `user`
    /// has (`ScramVerifier::decoy`): stable across reloads, and the same
    /// whether or not the user exists, so salts reveal no user.
    pub fn scram_verifier(&self, user: &str) -> Option<ScramVerifier> {
        match self {
            Secret::Scram(v) => Some(v.clone()),
            Secret::Plain(p) => Some(ScramVerifier::derive(p, keyed(user, "salt")[..16].to_vec())),
            Secret::Md5(_) => None,
        }
    }

    /// The plaintext, when this secret is one (what the server side can log in with).
    pub fn plaintext(&self) -> Option<&str> {
        match self {
            Secret::Plain(p) => Some(p),
            _ => None,
        }
    }
}

/// A keyed hash of `user` and `what` with a secret made once per process.
fn keyed(user: &str, what: &str) -> [u8; 32] {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(rand::random);
    super::scram::hmac(secret, format!("{what}\0{user}").as_bytes())
        .try_into()
        .unwrap_or_else(|_| unreachable!("HMAC-SHA-256 is 32 bytes"))
}

/// PBKDF2-HMAC-SHA-256, one block (SCRAM's SaltedPassword).
fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = super::scram::hmac(password, &block);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = super::scram::hmac(password, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

impl ScramVerifier {
    /// A verifier for a user that does not exist, which no password matches.
    /// Like PostgreSQL's mock authentication, its salt is stable per user name
    /// (a keyed hash with a per-process secret), so a client cannot tell an
    /// unknown user from a known one by the salt, and it costs no key
    /// derivation, so neither by the time taken.
    pub fn decoy(user: &str) -> ScramVerifier {
        ScramVerifier {
            iterations: 4096,
            salt: keyed(user, "salt")[..16].to_vec(),
            stored_key: keyed(user, "stored"),
            server_key: keyed(user, "server"),
        }
    }

    /// The verifier PostgreSQL would store for `password` with `salt` and
    /// 4096 iterations (SASLprep applied where the password allows, as
    /// clients do).
    pub fn derive(password: &str, salt: Vec<u8>) -> ScramVerifier {
        let iterations = 4096;
        let normalized = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let salted = pbkdf2(normalized.as_bytes(), &salt, iterations);
        let key = |what: &[u8]| -> [u8; 32] {
            super::scram::hmac(&salted, what)
                .try_into()
                .unwrap_or_else(|_| unreachable!("HMAC-SHA-256 is 32 bytes"))
        };
        let client_key = key(b"Client Key");
        ScramVerifier {
            iterations,
            salt,
            stored_key: <sha2::Sha256 as sha2::Digest>::digest(client_key).into(),
            server_key: key(b"Server Key"),
        }
    }

    /// Parses PostgreSQL's verifier text.
    pub fn parse(s: &str) -> Result<ScramVerifier, &'static str> {
        ScramVerifierParts::parse(s).map(ScramVerifier::from)
    }
}

impl From<ScramVerifierParts> for ScramVerifier {
    fn from(p: ScramVerifierParts) -> Self {
        ScramVerifier {
            iterations: p.iterations,
            salt: p.salt,
            stored_key: p.stored_key,
            server_key: p.server_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_stored_forms() {
        assert_eq!(
            Secret::parse("hunter2"),
            Ok(Secret::Plain("hunter2".into()))
        );
        assert_eq!(Secret::parse("md5abc"), Ok(Secret::Plain("md5abc".into())));
        let md5 = "md5".to_string() + &"a".repeat(32);
        assert_eq!(Secret::parse(&md5), Ok(Secret::Md5(md5.clone())));
        assert!(Secret::parse("SCRAM-SHA-256$4096:c2FsdA==$x:y").is_err());
        let generated = postgres_protocol::password::scram_sha_256(b"pw");
        let Ok(Secret::Scram(v)) = Secret::parse(&generated) else {
            panic!("{generated}")
        };
        assert_eq!(v.iterations, 4096);
    }

    #[test]
    fn salts_do_not_tell_known_users_from_unknown_ones() {
        // A reload derives the verifier again: the salt must not change,
        // and must be the one an unknown user of that name would get.
        let a = Credentials::new("ann", "pw", None).unwrap().scram.unwrap();
        let again = Credentials::new("ann", "other pw", None)
            .unwrap()
            .scram
            .unwrap();
        assert_eq!(a.salt, again.salt);
        assert_eq!(a.salt, ScramVerifier::decoy("ann").salt);
        assert_ne!(a.salt, ScramVerifier::decoy("bob").salt);
    }

    #[test]
    fn derived_verifiers_match_postgresql() {
        // The same password and salt as a verifier PostgreSQL's client
        // library made give the same keys, ASCII or not (SASLprep).
        for pw in ["pencil", "p\u{00e9}ncil", "\u{2168}"] {
            let theirs =
                ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(pw.as_bytes()))
                    .unwrap();
            assert_eq!(
                ScramVerifier::derive(pw, theirs.salt.clone()),
                theirs,
                "{pw}"
            );
        }
    }

    #[test]
    fn decoys_are_stable_per_user_and_differ_between_users() {
        let (a, b) = (ScramVerifier::decoy("ann"), ScramVerifier::decoy("bob"));
        assert_eq!(a, ScramVerifier::decoy("ann"));
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.salt.len(), 16);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        // Plaintext, md5 hashes and SCRAM keys are all password equivalents.
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        let (parsed, decoy) = (
            ScramVerifier::parse(&scram).unwrap(),
            ScramVerifier::decoy("ann"),
        );
        let md5 = postgres_protocol::password::md5(b"pw", "ann");
        let shown = [
            format!(
                "{:?}",
                Credentials::new("ann", "plain-s3cret", Some("server-s3cret"))
            ),
            format!("{:?}", Credentials::new("ann", &scram, None)),
            format!("{:?}", Secret::parse(&md5)),
            format!("{decoy:?}"),
        ]
        .join("\n");
        let mut secrets = vec![
            "plain-s3cret".to_string(),
            "server-s3cret".into(),
            md5[3..].into(),
        ];
        for v in [&parsed, &decoy] {
            secrets.extend([format!("{:?}", v.stored_key), format!("{:?}", v.server_key)]);
        }
        for secret in secrets {
            assert!(!shown.contains(&secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn plaintext_yields_a_verifier() {
        let v = Secret::Plain("pw".into()).scram_verifier("ann").unwrap();
        assert_eq!(v.salt.len(), 16);
        assert!(Secret::Md5("md5".to_string() + &"0".repeat(32))
            .scram_verifier("ann")
            .is_none());
    }
}

/// A configured user's secrets, with the SCRAM verifier computed once at load
/// (PBKDF2 is deliberately slow; doing it per login would cost milliseconds).
#[derive(Clone)]
pub struct Credentials {
    /// The password as configured.
    pub secret: Secret,
    /// Verifier to check SCRAM clients against.
    pub scram: Option<ScramVerifier>,
    /// Plaintext Switchyard sends to PostgreSQL.
    pub server_password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret", &self.secret)
            .field("scram", &self.scram)
            .field("server_password", &redacted(&self.server_password))
            .finish()
    }
}

impl Credentials {
    /// Builds credentials from a `[[users]]` entry's password and server password.
    pub fn new(
        user: &str,
        password: &str,
        server_password: Option<&str>,
    ) -> Result<Credentials, &'static str> {
        let secret = Secret::parse(password)?;
        let scram = secret.scram_verifier(user);
        let server_password = server_password
            .map(str::to_string)
            .or_else(|| secret.plaintext().map(str::to_string));
        Ok(Credentials {
            secret,
            scram,
            server_password,
        })
    }
}

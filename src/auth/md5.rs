//! MD5 password challenge (AuthenticationMD5Password), server side: PostgreSQL's
//! legacy method. The response is `md5` + hex(md5(hex(md5(password || user)) || salt)).

use md5::{Digest, Md5};

use super::Secret;

/// Checks a client's md5 response against the configured secret.
/// A SCRAM verifier cannot answer an md5 challenge, so it never matches.
pub fn verify(secret: &Secret, user: &str, salt: [u8; 4], response: &str) -> bool {
    let inner = match secret {
        Secret::Plain(p) => format!(
            "md5{}",
            hex(&Md5::digest([p.as_bytes(), user.as_bytes()].concat()))
        ),
        Secret::Md5(h) => h.clone(),
        Secret::Scram(_) => return false,
    };
    let Some(inner_hex) = inner.strip_prefix("md5") else {
        return false;
    };
    let expected = format!(
        "md5{}",
        hex(&Md5::digest([inner_hex.as_bytes(), &salt].concat()))
    );
    constant_time_eq(expected.as_bytes(), response.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_what_libpq_sends() {
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        let response = postgres_protocol::authentication::md5_hash(b"md5_user", b"password", salt);
        assert!(verify(
            &Secret::Plain("password".into()),
            "md5_user",
            salt,
            &response
        ));
        let stored = postgres_protocol::password::md5(b"password", "md5_user");
        assert!(verify(
            &Secret::parse(&stored).unwrap(),
            "md5_user",
            salt,
            &response
        ));
        assert!(!verify(
            &Secret::Plain("wrong".into()),
            "md5_user",
            salt,
            &response
        ));
        assert!(!verify(
            &Secret::Plain("password".into()),
            "other",
            salt,
            &response
        ));
        assert!(!verify(
            &Secret::Plain("password".into()),
            "md5_user",
            [0; 4],
            &response
        ));
    }
}

//! PasswordMessage / SASLInitialResponse / SASLResponse (F, tag `p`). The same
//! tag carries all three; which one it is depends on what the server asked for.

/// A cleartext or md5 password: a NUL-terminated string.
pub fn decode_password(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body.strip_suffix(b"\0")?)
        .ok()
        .filter(|s| !s.contains('\0'))
}

/// SASLInitialResponse: mechanism name, then an int32 length (-1: none) and the data.
pub fn decode_sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let rest = &body[nul + 1..];
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    match len {
        -1 if data.is_empty() => Some((mechanism, data)),
        n if n >= 0 && n as usize == data.len() => Some((mechanism, data)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects() {
        assert_eq!(decode_password(b"secret\0"), Some("secret"));
        assert_eq!(decode_password(b"secret"), None);
        assert_eq!(decode_password(b"a\0b\0"), None);
        let mut m = b"SCRAM-SHA-256\0".to_vec();
        m.extend_from_slice(&3i32.to_be_bytes());
        m.extend_from_slice(b"abc");
        assert_eq!(
            decode_sasl_initial(&m),
            Some(("SCRAM-SHA-256", &b"abc"[..]))
        );
        m.push(b'x');
        assert_eq!(decode_sasl_initial(&m), None);
        assert_eq!(decode_sasl_initial(b"SCRAM"), None);
        assert_eq!(decode_sasl_initial(b"SCRAM\0\0\0"), None);
        assert_eq!(
            decode_sasl_initial(b"SCRAM\0\xff\xff\xff\xff"),
            Some(("SCRAM", &b""[..]))
        );
    }
}

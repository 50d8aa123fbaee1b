//! The few DER reads the proxy makes of certificates itself (a signature
//! algorithm for channel binding, a client's subject CN): bounds-checked
//! slices, never a panic, whatever the bytes. rustls and webpki have
//! already checked the certificate; this only finds one field in it.

/// One DER element at the start of `input`: (tag, content, rest).
pub(super) fn any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        rest = &rest[n..];
        bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize)
    };
    let content = rest.get(..len)?;
    Some((tag, content, &rest[len..]))
}

/// One DER element with tag `tag` at the start of `input`: (content, rest).
pub(super) fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match any(input)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_short_long_and_cut() {
        assert_eq!(
            any(b"\x02\x01\x05rest"),
            Some((2, &b"\x05"[..], &b"rest"[..]))
        );
        let long = [&[0x04, 0x81, 0x80][..], &[7u8; 128]].concat();
        assert_eq!(
            any(&long).map(|(_, c, r)| (c.len(), r.len())),
            Some((128, 0))
        );
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x02\x01",
            b"\x30\x80",
            b"\x30\x85\x01\x01\x01\x01\x01",
            b"\x30\x84\xff\xff\xff\xff",
        ] {
            assert_eq!(any(bad), None, "{bad:02x?}");
        }
        assert_eq!(element(b"\x02\x01\x05", 0x30), None);
    }
}

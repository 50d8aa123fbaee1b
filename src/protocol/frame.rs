//! Framing of tagged messages (everything after startup): 1-byte tag, then a
//! big-endian u32 length that counts itself but not the tag.

/// A frame header that cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Length below 4 or above the configured maximum.
    #[error("invalid message length {len} for message type {:?}", *.tag as char)]
    BadLength {
        /// The message tag.
        tag: u8,
        /// The length field as sent.
        len: u32,
    },
}

/// PostgreSQL's own bound on a message (its `PQ_LARGE_MESSAGE_LIMIT`, 1 GB):
/// what streams through the proxy is bounded by it alone.
pub const MAX_FRAME: usize = 0x3fff_ffff;

/// Size of a tag + length header.
pub const HEADER_LEN: usize = 5;

/// Reads the tag and length of the frame at the front of `buf`, if a whole
/// header is there. The length is checked against `max` before any body is
/// awaited, so a lying length cannot make the proxy allocate.
pub fn header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len < 4 || len as usize > max {
        return Err(FrameError::BadLength { tag: h[0], len });
    }
    Ok(Some((h[0], len as usize)))
}

/// Size (tag + length + body) of the first whole frame in `buf`; `None` if incomplete.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    Ok(header(buf, max)?.and_then(|(_, len)| (buf.len() > len).then_some(len + 1)))
}

/// Appends a frame with `tag` whose body is `parts` one after another, with
/// no body built first: a rewritten Bind is a few slices of the client's.
pub fn put_frame_parts(out: &mut bytes::BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((len + 4) as u32).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Appends a frame with `tag` and `body` to `out`.
pub fn put_frame(out: &mut bytes::BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_checks_then_splits() {
        let max = 1024;
        assert_eq!(frame_len(b"", max), Ok(None));
        assert_eq!(frame_len(b"Q\0\0", max), Ok(None));
        assert_eq!(frame_len(b"Q\0\0\0\x05", max), Ok(None));
        assert_eq!(frame_len(b"Q\0\0\0\x05x", max), Ok(Some(6)));
        assert_eq!(frame_len(b"S\0\0\0\x04rest", max), Ok(Some(5)));
        assert!(frame_len(b"Q\0\0\0\x03", max).is_err());
        assert!(frame_len(b"Q\xff\xff\xff\xff", max).is_err());
        assert!(frame_len(b"Q\0\0\x04\x01", max).is_err());
    }

    #[test]
    fn put_frame_round_trips() {
        let mut out = bytes::BytesMut::new();
        put_frame(&mut out, b'Q', b"select 1\0");
        assert_eq!(frame_len(&out, 1024), Ok(Some(out.len())));
    }

    #[test]
    fn a_frame_of_parts_is_the_frame_of_their_concatenation() {
        let mut whole = bytes::BytesMut::new();
        put_frame(&mut whole, b'B', b"\0s1\0\0\0");
        let mut parts = bytes::BytesMut::from(&b"xy"[..]);
        put_frame_parts(&mut parts, b'B', &[b"", b"\0", b"s1", b"\0", b"\0\0"]);
        assert_eq!(&parts[..2], b"xy");
        assert_eq!(&parts[2..], &whole[..]);
    }
}

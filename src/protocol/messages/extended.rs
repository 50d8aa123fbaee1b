//! Extended-query messages whose statement names the proxy rewrites (F):
//! Parse (`P`), Bind (`B`), Describe (`D`), Close (`C`). Decoders take one
//! whole frame (tag + length + body) and never panic; encoders build the same
//! message with another statement name, leaving every other byte as sent.

use bytes::{BufMut, BytesMut};

use crate::protocol::frame::put_frame_parts;

fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = nul_at(buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Where the first NUL is. Names are short, and a byte loop finds their end
/// fastest; a Parse's query text is long, and memchr finds its end in a
/// fraction of the byte loop's several instructions a byte.
fn nul_at(buf: &[u8]) -> Option<usize> {
    const SHORT: usize = 16;
    let head = &buf[..buf.len().min(SHORT)];
    match head.iter().position(|&b| b == 0) {
        Some(i) => Some(i),
        None => memchr::memchr(0, &buf[head.len()..]).map(|i| head.len() + i),
    }
}

fn body(frame: &[u8]) -> &[u8] {
    frame.get(5..).unwrap_or_default()
}

/// Parse: statement name, query text, and the raw parameter-type section.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name ("" = unnamed).
    pub name: &'a [u8],
    /// Query text.
    pub query: &'a [u8],
    /// int16 count + int32 OIDs, as sent.
    pub param_types: &'a [u8],
}

/// Decodes a Parse frame.
pub fn decode_parse(frame: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = cstr(body(frame))?;
    let (query, param_types) = cstr(rest)?;
    let count = u16::from_be_bytes(param_types.get(..2)?.try_into().ok()?) as usize;
    (param_types.len() == 2 + 4 * count).then_some(Parse {
        name,
        query,
        param_types,
    })
}

/// Appends a Parse frame for `p` under `name`.
pub fn encode_parse(out: &mut BytesMut, name: &[u8], p: &Parse<'_>) {
    put_frame_parts(out, b'P', &[name, b"\0", p.query, b"\0", p.param_types]);
}

/// Bind: the statement name and where it sits, so it can be replaced.
pub fn decode_bind_statement(frame: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (portal, rest) = cstr(body(frame))?;
    let (stmt, tail) = cstr(rest)?;
    Some((portal, stmt, tail))
}

/// Appends a Bind frame with the statement name replaced.
pub fn encode_bind(out: &mut BytesMut, portal: &[u8], stmt: &[u8], tail: &[u8]) {
    put_frame_parts(out, b'B', &[portal, b"\0", stmt, b"\0", tail]);
}

/// Appends the head of a Bind whose statement name is replaced, for a
/// body of `len` bytes (length field included) that streams on after it:
/// tag, length, portal and statement name.
pub fn encode_bind_head(out: &mut BytesMut, portal: &[u8], stmt: &[u8], len: usize) {
    out.put_u8(b'B');
    out.put_u32(len as u32);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(stmt);
    out.put_u8(0);
}

/// Describe or Close: kind (`S` statement / `P` portal) and name.
pub fn decode_target(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body(frame).split_first()?;
    let (name, tail) = cstr(rest)?;
    (tail.is_empty() && matches!(kind, b'S' | b'P')).then_some((kind, name))
}

/// Appends a Describe (`D`) or Close (`C`) frame.
pub fn encode_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    put_frame_parts(out, tag, &[&[kind], name, b"\0"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::put_frame;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame(&mut out, tag, body);
        out.to_vec()
    }

    #[test]
    fn parse_round_trips_under_a_new_name() {
        let f = frame(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        let p = decode_parse(&f).unwrap();
        assert_eq!((p.name, p.query), (&b"s1"[..], &b"SELECT $1"[..]));
        let mut out = BytesMut::new();
        encode_parse(&mut out, b"sy_abc", &p);
        let q = decode_parse(&out).unwrap();
        assert_eq!(
            (q.name, q.query, q.param_types),
            (&b"sy_abc"[..], p.query, p.param_types)
        );
    }

    #[test]
    fn the_first_nul_is_found_before_and_past_the_short_head() {
        for len in [0, 1, 15, 16, 17, 40, 200] {
            let mut buf = vec![b'x'; len];
            assert_eq!(nul_at(&buf), None, "no NUL in {len} bytes");
            buf.extend_from_slice(b"\0tail\0");
            assert_eq!(nul_at(&buf), Some(len), "NUL after {len} bytes");
        }
    }

    #[test]
    fn malformed_frames_decode_to_none() {
        assert!(decode_parse(&frame(b'P', b"s1\0SELECT")).is_none());
        assert!(
            decode_parse(&frame(b'P', b"s1\0q\0\0\x02\0\0\0\x17")).is_none(),
            "count lies"
        );
        assert!(decode_parse(&frame(b'P', b"")).is_none());
        assert!(decode_bind_statement(&frame(b'B', b"portal")).is_none());
        assert!(decode_target(&frame(b'D', b"Xname\0")).is_none());
        assert!(decode_target(&frame(b'D', b"Sname\0junk")).is_none());
        assert!(decode_target(&frame(b'D', b"")).is_none());
    }

    #[test]
    fn bind_and_targets_round_trip() {
        let f = frame(b'B', b"p\0s1\0\0\0\0\0\0\0");
        let (portal, stmt, tail) = decode_bind_statement(&f).unwrap();
        assert_eq!((portal, stmt), (&b"p"[..], &b"s1"[..]));
        let mut out = BytesMut::new();
        encode_bind(&mut out, portal, b"sy_x", tail);
        assert_eq!(decode_bind_statement(&out).unwrap().1, b"sy_x");
        let d = frame(b'D', b"Ss1\0");
        assert_eq!(decode_target(&d), Some((b'S', &b"s1"[..])));
        out.clear();
        encode_target(&mut out, b'C', b'S', b"sy_x");
        assert_eq!(decode_target(&out), Some((b'S', &b"sy_x"[..])));
    }
}

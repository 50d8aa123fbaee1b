//! Streaming scanner for the relay hot path. It walks message headers in a
//! byte stream and says how many leading bytes may be forwarded *now*, so a
//! 1 GB DataRow passes through in buffer-sized pieces while the proxy still
//! knows where every message starts. Bodies are only held back (and shown to
//! the caller) for tags the caller asks for, such as ReadyForQuery.

use super::frame::{header, FrameError};

/// The caller's decision about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Forward it.
    Forward,
    /// Stop before it: it stays in the buffer for the caller to handle.
    Stop,
}

/// How the caller wants one message, given its tag and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Shown to the visitor complete (`Some(frame)`), once all of it arrived.
    Whole,
    /// Shown at its header (`None`) and streamed.
    Stream,
    /// It should be held, and is too large to: the stream is broken.
    TooLarge,
}

/// Position within a message stream; carries a partially forwarded body across reads.
#[derive(Debug, Default)]
pub struct Scanner {
    body_left: usize,
}

impl Scanner {
    /// The next `n` bytes are the rest of a message the caller took the
    /// head of itself: they are forwarded as they come.
    pub fn continue_body(&mut self, n: usize) {
        self.body_left = n;
    }

    /// True when the next byte starts a new message.
    pub fn at_boundary(&self) -> bool {
        self.body_left == 0
    }

    /// Scans `buf` (bytes not yet scanned) and returns how many leading bytes
    /// may be forwarded. `hold(tag, len)` says which messages must be
    /// complete before they are shown to `visit` (with `Some(frame)`);
    /// other messages are shown at their header (`None`) and streamed. A
    /// frame longer than `max`, or one to hold that is too large to, is an
    /// error.
    pub fn scan(
        &mut self,
        buf: &[u8],
        max: usize,
        hold: impl Fn(u8, usize) -> Hold,
        mut visit: impl FnMut(u8, Option<&[u8]>) -> Visit,
    ) -> Result<usize, FrameError> {
        let mut pos = self.body_left.min(buf.len());
        self.body_left -= pos;
        while self.body_left == 0 {
            let rest = &buf[pos..];
            let Some((tag, len)) = header(rest, max)? else {
                break;
            };
            let total = len + 1;
            match hold(tag, len) {
                Hold::TooLarge => {
                    return Err(FrameError::BadLength {
                        tag,
                        len: len as u32,
                    })
                }
                Hold::Whole => {
                    let Some(frame) = rest.get(..total) else {
                        break;
                    };
                    if visit(tag, Some(frame)) == Visit::Stop {
                        break;
                    }
                    pos += total;
                }
                Hold::Stream => {
                    if visit(tag, None) == Visit::Stop {
                        break;
                    }
                    let avail = rest.len().min(total);
                    pos += avail;
                    self.body_left = total - avail;
                }
            }
        }
        Ok(pos)
    }
}

/// [`Hold::Whole`] if `whole`, else [`Hold::Stream`].
pub fn whole_if(whole: bool) -> Hold {
    if whole {
        Hold::Whole
    } else {
        Hold::Stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn streams_big_bodies_and_holds_wanted_frames() {
        let mut stream = frame(b'D', &[7u8; 100]);
        stream.extend(frame(b'Z', b"I"));
        let mut s = Scanner::default();
        let mut seen = vec![];
        // Feed in 13-byte pieces, forwarding what the scanner allows.
        let mut buf: Vec<u8> = vec![];
        let mut forwarded = 0;
        for piece in stream.chunks(13) {
            buf.extend_from_slice(piece);
            let n = s
                .scan(
                    &buf,
                    1 << 20,
                    |t, _| whole_if(t == b'Z'),
                    |t, f| {
                        seen.push((t, f.map(|f| f[5])));
                        Visit::Forward
                    },
                )
                .unwrap();
            forwarded += n;
            buf.drain(..n);
        }
        assert_eq!(forwarded, stream.len());
        assert!(buf.is_empty());
        assert_eq!(seen, vec![(b'D', None), (b'Z', Some(b'I'))]);
        assert!(s.at_boundary());
    }

    #[test]
    fn stop_leaves_the_message_in_place() {
        let mut stream = frame(b'Q', b"x\0");
        stream.extend(frame(b'X', b""));
        let mut s = Scanner::default();
        let n = s
            .scan(
                &stream,
                1024,
                |_, _| Hold::Stream,
                |t, _| {
                    if t == b'X' {
                        Visit::Stop
                    } else {
                        Visit::Forward
                    }
                },
            )
            .unwrap();
        assert_eq!(n, 7);
        assert!(s.at_boundary());
    }

    #[test]
    fn lying_length_is_an_error() {
        let mut s = Scanner::default();
        assert!(s
            .scan(
                b"Q\0\0\0\x01",
                1024,
                |_, _| Hold::Stream,
                |_, _| Visit::Forward
            )
            .is_err());
        assert!(s
            .scan(
                b"Q\x7f\0\0\0",
                1024,
                |_, _| Hold::Stream,
                |_, _| Visit::Forward
            )
            .is_err());
        // A message to hold that is too large to is refused at its header.
        let big = frame(b'Q', &[b'x'; 100]);
        let hold = |_, len| {
            if len > 50 {
                Hold::TooLarge
            } else {
                Hold::Whole
            }
        };
        assert!(s
            .scan(&big[..5], 1024, hold, |_, _| Visit::Forward)
            .is_err());
        let stream = |_, _| Hold::Stream;
        assert_eq!(
            s.scan(&big, 1024, stream, |_, _| Visit::Forward),
            Ok(big.len())
        );
    }
}

//! The untagged first packet of a connection (F): StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest. Length-prefixed with no tag; PostgreSQL caps
//! it at 10000 bytes and so do we.

/// Largest startup packet accepted (PostgreSQL's MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A decoded first packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on the connection with this key.
    Cancel {
        /// BackendKeyData process id.
        pid: i32,
        /// BackendKeyData secret.
        secret: i32,
    },
    /// A protocol 3.x startup.
    Startup {
        /// Minor protocol version requested.
        minor: u16,
        /// Parameters in order (user, database, options, application_name, `_pq_.*` ...).
        params: Vec<(String, String)>,
    },
}

/// Why a startup packet was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Length outside 8..=10000.
    #[error("invalid length of startup packet")]
    BadLength,
    /// A protocol other than 3.x.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedProtocol(u16, u16),
    /// Parameters not NUL-terminated pairs, or not UTF-8.
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Reads the length prefix: `Some(total_len)` once 4 bytes are there.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(h) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(StartupError::BadLength);
    }
    Ok(Some(len))
}

/// Decodes one whole packet (length prefix included).
pub fn decode(packet: &[u8]) -> Result<Startup, StartupError> {
    let code = packet.get(4..8).ok_or(StartupError::BadLength)?;
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST if body.is_empty() => Ok(Startup::SslRequest),
        GSSENC_REQUEST if body.is_empty() => Ok(Startup::GssEncRequest),
        CANCEL_REQUEST if body.len() == 8 => Ok(Startup::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::BadLength),
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol(major, minor));
            }
            Ok(Startup::Startup {
                minor,
                params: decode_params(body)?,
            })
        }
    }
}

fn decode_params(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let body = body
        .strip_suffix(b"\0")
        .ok_or(StartupError::Malformed("missing terminator"))?;
    if body.is_empty() {
        return Ok(vec![]);
    }
    let body = body
        .strip_suffix(b"\0")
        .ok_or(StartupError::Malformed("missing terminator"))?;
    let mut parts = body.split(|&b| b == 0);
    let mut params = vec![];
    while let Some(name) = parts.next() {
        let value = parts
            .next()
            .ok_or(StartupError::Malformed("name without value"))?;
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| StartupError::Malformed("not UTF-8"))
        };
        if name.is_empty() {
            return Err(StartupError::Malformed("empty parameter name"));
        }
        params.push((text(name)?, text(value)?));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_each_kind() {
        assert_eq!(decode(&packet(SSL_REQUEST, b"")), Ok(Startup::SslRequest));
        assert_eq!(
            decode(&packet(GSSENC_REQUEST, b"")),
            Ok(Startup::GssEncRequest)
        );
        let mut key = 7i32.to_be_bytes().to_vec();
        key.extend_from_slice(&(-3i32).to_be_bytes());
        assert_eq!(
            decode(&packet(CANCEL_REQUEST, &key)),
            Ok(Startup::Cancel { pid: 7, secret: -3 })
        );
        let s = decode(&packet(196_608, b"user\0app\0database\0db\0\0")).unwrap();
        assert_eq!(
            s,
            Startup::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        let s = decode(&packet(196_610, b"user\0a\0\0")).unwrap();
        assert!(matches!(s, Startup::Startup { minor: 2, .. }));
    }

    #[test]
    fn refuses_bad_packets() {
        assert_eq!(packet_len(&[0, 0, 0, 4]), Err(StartupError::BadLength));
        assert_eq!(packet_len(&[0xff, 0, 0, 0]), Err(StartupError::BadLength));
        assert_eq!(packet_len(&[0, 0]), Ok(None));
        assert_eq!(
            decode(&packet(SSL_REQUEST, b"x")),
            Err(StartupError::BadLength)
        );
        assert_eq!(
            decode(&packet(CANCEL_REQUEST, b"short")),
            Err(StartupError::BadLength)
        );
        assert_eq!(
            decode(&packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedProtocol(2, 0))
        );
        assert_eq!(
            decode(&packet(1234 << 16 | 5681, b"\0")),
            Err(StartupError::UnsupportedProtocol(1234, 5681))
        );
        assert!(decode(&packet(196_608, b"user\0app\0")).is_err());
        assert!(decode(&packet(196_608, b"user\0\0")).is_err());
        assert!(decode(&packet(196_608, b"user")).is_err());
        assert!(decode(&packet(196_608, b"\xff\0x\0\0")).is_err());
        assert_eq!(
            decode(&packet(196_608, b"\0")),
            Ok(Startup::Startup {
                minor: 0,
                params: vec![]
            })
        );
    }
}

//! ErrorResponse / NoticeResponse (B, tags `E` / `N`): writing the proxy's own
//! errors, and reading the SQLSTATE and message of a server's.

use bytes::BytesMut;

use crate::protocol::frame::put_frame;

/// ERROR: the statement failed, the session goes on.
pub const ERROR: &str = "ERROR";
/// FATAL: the connection is about to close.
pub const FATAL: &str = "FATAL";

/// NOTICE: information; nothing failed.
pub const NOTICE: &str = "NOTICE";

/// Appends a NoticeResponse (severity NOTICE, SQLSTATE 00000) with `message`.
pub fn encode_notice(out: &mut BytesMut, message: &str) {
    encode_tagged(out, b'N', NOTICE, "00000", message);
}

/// Appends an ErrorResponse with severity, SQLSTATE and message.
pub fn encode(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    encode_tagged(out, b'E', severity, code, message);
}

fn encode_tagged(out: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    let mut body = Vec::with_capacity(32 + message.len());
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    put_frame(out, tag, &body);
}

/// The fields a proxy cares about in a server's ErrorResponse body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `V` severity, never localized (PostgreSQL 9.6 and later); else `S`.
    pub severity: String,
    /// `C` SQLSTATE.
    pub code: String,
    /// `M` message.
    pub message: String,
}

impl ServerError {
    /// FATAL or PANIC: the server ends the session after sending it.
    pub fn ends_session(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

/// Reads an ErrorResponse body (after tag and length). Unknown fields are skipped.
pub fn decode(body: &[u8]) -> Option<ServerError> {
    let mut err = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
    };
    // `S` may be translated; `V` never is, and wins when present.
    let mut untranslated = None;
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            if let Some(v) = untranslated {
                err.severity = v;
            }
            return Some(err);
        }
        let nul = tail.iter().position(|&b| b == 0)?;
        let value = String::from_utf8_lossy(&tail[..nul]).into_owned();
        match field {
            b'S' => err.severity = value,
            b'V' => untranslated = Some(value),
            b'C' => err.code = value,
            b'M' => err.message = value,
            _ => {}
        }
        rest = &tail[nul + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut out = BytesMut::new();
        encode(&mut out, ERROR, "53300", "too many");
        let e = decode(&out[5..]).unwrap();
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("ERROR", "53300", "too many")
        );
        for cut in 5..out.len() - 1 {
            assert_eq!(decode(&out[5..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn the_untranslated_severity_says_whether_the_session_ends() {
        type Fields = &'static [(u8, &'static str)];
        // (fields) -> severity, ends the session
        let cases: [(Fields, &str, bool); 5] = [
            (&[(b'S', "FATAL"), (b'V', "FATAL")], "FATAL", true),
            (&[(b'S', "SCHWERWIEGEND"), (b'V', "FATAL")], "FATAL", true),
            (&[(b'S', "PANIC")], "PANIC", true),
            (&[(b'S', "ERROR"), (b'V', "ERROR")], "ERROR", false),
            (&[(b'S', "FEHLER")], "FEHLER", false),
        ];
        for (fields, severity, ends) in cases {
            let mut body = vec![];
            for (f, v) in fields {
                body.push(*f);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            let e = decode(&body).unwrap();
            assert_eq!(
                (e.severity.as_str(), e.ends_session()),
                (severity, ends),
                "{fields:?}"
            );
        }
    }
}

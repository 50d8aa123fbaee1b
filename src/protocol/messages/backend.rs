//! Backend (B) messages the proxy writes itself: authentication requests,
//! ParameterStatus, BackendKeyData, ReadyForQuery, NegotiateProtocolVersion.

use bytes::{BufMut, BytesMut};

use crate::protocol::frame::put_frame;

/// Transaction status carried by ReadyForQuery.
pub const IDLE: u8 = b'I';

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    put_frame(out, b'R', &0i32.to_be_bytes());
}

/// AuthenticationMD5Password with `salt`.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    let mut body = 5i32.to_be_bytes().to_vec();
    body.extend_from_slice(&salt);
    put_frame(out, b'R', &body);
}

/// AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl(out: &mut BytesMut, plus: bool) {
    let mut body = 10i32.to_be_bytes().to_vec();
    if plus {
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0");
    }
    body.extend_from_slice(b"SCRAM-SHA-256\0\0");
    put_frame(out, b'R', &body);
}

/// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12) with `data`.
pub fn auth_sasl_step(out: &mut BytesMut, code: i32, data: &[u8]) {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    put_frame(out, b'R', &body);
}

/// Decodes a ParameterStatus body (after tag and length): name and value.
pub fn decode_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name.to_string(), value.to_string()))
}

/// ParameterStatus `name` = `value`.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let mut body = Vec::with_capacity(name.len() + value.len() + 2);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(value.as_bytes());
    body.push(0);
    put_frame(out, b'S', &body);
}

/// BackendKeyData: the key a client uses to cancel its query.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(&secret.to_be_bytes());
    put_frame(out, b'K', &body);
}

/// ReadyForQuery with transaction `status` (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_frame(out, b'Z', &[status]);
}

/// NegotiateProtocolVersion: we speak 3.0 and none of the `_pq_.` options.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognized: &[&str]) {
    let mut body = BytesMut::new();
    body.put_i32(0);
    body.put_i32(unrecognized.len() as i32);
    for opt in unrecognized {
        body.extend_from_slice(opt.as_bytes());
        body.put_u8(0);
    }
    put_frame(out, b'v', &body);
}

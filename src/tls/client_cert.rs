//! `proxy.tls.client_cert_user = "cn"`: a client logs in only as the user
//! its certificate's subject CN names, as PostgreSQL's
//! `clientcert=verify-full` (and the `cert` method) require. Whether the
//! certificate is trusted at all is the handshake's business
//! (`client_ca_file`); this reads the name in a certificate already checked.

use super::der::{any, element};
use crate::config::ClientCertUser;

/// OID 2.5.4.3, commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Why a client may not log in as the user it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No certificate: plaintext, or TLS without one.
    NoCertificate,
    /// The certificate's CN is another user's, or it has no single CN (`None`).
    OtherUser(Option<String>),
}

/// Whether the client with certificate `cert` (DER, the leaf) may log in
/// as `user` under `rule`. The comparison is exact, as PostgreSQL's.
pub fn check(rule: ClientCertUser, user: &str, cert: Option<&[u8]>) -> Result<(), Refusal> {
    if rule == ClientCertUser::AnyUser {
        return Ok(());
    }
    let cert = cert.ok_or(Refusal::NoCertificate)?;
    match common_name(cert) {
        Some(cn) if cn == user => Ok(()),
        cn => Err(Refusal::OtherUser(cn)),
    }
}

/// The subject's CN as text. `None` when there is none, when there are
/// several (which one would name the user is not clear), when it is not a
/// UTF8String, PrintableString or IA5String, or holds a NUL (PostgreSQL
/// refuses an embedded NUL too), or the DER is malformed.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let mut found = None;
    let mut rdns = subject(cert)?;
    while !rdns.is_empty() {
        let (rdn, rest) = element(rdns, 0x31)?;
        rdns = rest;
        let mut attributes = rdn;
        while !attributes.is_empty() {
            let (attribute, rest) = element(attributes, 0x30)?;
            attributes = rest;
            let (oid, value) = element(attribute, 0x06)?;
            if oid == COMMON_NAME {
                if found.is_some() {
                    return None;
                }
                found = Some(text(value)?);
            }
        }
    }
    found
}

/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { version [0]
/// OPTIONAL, serialNumber, signature, issuer, validity, subject, ... } ... }`:
/// the content of `subject` (a SEQUENCE OF RelativeDistinguishedName).
fn subject(cert: &[u8]) -> Option<&[u8]> {
    let (cert, _) = element(cert, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let rest = element(tbs, 0xa0).map_or(tbs, |(_, rest)| rest);
    let (_serial, rest) = element(rest, 0x02)?;
    let (_signature, rest) = element(rest, 0x30)?;
    let (_issuer, rest) = element(rest, 0x30)?;
    let (_validity, rest) = element(rest, 0x30)?;
    let (subject, _) = element(rest, 0x30)?;
    Some(subject)
}

fn text(value: &[u8]) -> Option<String> {
    let (tag, content, _) = any(value)?;
    // UTF8String, PrintableString, IA5String: the rest are not used for names.
    if !matches!(tag, 0x0c | 0x13 | 0x16) {
        return None;
    }
    let s = std::str::from_utf8(content).ok()?;
    (!s.contains('\0')).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn cert_with(subject: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn cn(name: &str) -> Vec<u8> {
        cert_with(&[
            (DnType::OrganizationName, DnValue::Utf8String("Acme".into())),
            (DnType::CommonName, DnValue::Utf8String(name.into())),
        ])
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        assert_eq!(common_name(&cn("app")).as_deref(), Some("app"));
        assert_eq!(common_name(&cn("José")).as_deref(), Some("José"));
        let printable = DnValue::PrintableString("batch".try_into().unwrap());
        let cert = cert_with(&[(DnType::CommonName, printable)]);
        assert_eq!(common_name(&cert).as_deref(), Some("batch"));
        let none = cert_with(&[(DnType::OrganizationName, DnValue::Utf8String("Acme".into()))]);
        assert_eq!(common_name(&none), None);
        // Two CNs (the second under the same OID spelled as a custom type).
        let two = cert_with(&[
            (DnType::CommonName, DnValue::Utf8String("app".into())),
            (
                DnType::CustomDnType(vec![2, 5, 4, 3]),
                DnValue::Utf8String("admin".into()),
            ),
        ]);
        assert_eq!(common_name(&two), None);
        let nul = cert_with(&[(DnType::CommonName, DnValue::Utf8String("app\0x".into()))]);
        assert_eq!(common_name(&nul), None);
    }

    #[test]
    fn malformed_der_has_no_name_and_no_panic() {
        let good = cn("app");
        for cut in [0, 1, 2, 5, 20, good.len() / 2, good.len() - 1] {
            assert_eq!(common_name(&good[..cut]), None, "cut at {cut}");
        }
        let mut flipped = good.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0xff;
            let _ = common_name(&flipped);
        }
    }

    #[test]
    fn only_the_named_user_passes() {
        use ClientCertUser::{AnyUser, Cn};
        let app = cn("app");
        let app = Some(app.as_slice());
        let cases = [
            (AnyUser, "app", None, Ok(())),
            (AnyUser, "other", app, Ok(())),
            (Cn, "app", app, Ok(())),
            (Cn, "App", app, Err(Refusal::OtherUser(Some("app".into())))),
            (
                Cn,
                "other",
                app,
                Err(Refusal::OtherUser(Some("app".into()))),
            ),
            (Cn, "app", None, Err(Refusal::NoCertificate)),
        ];
        for (rule, user, cert, want) in cases {
            assert_eq!(check(rule, user, cert), want, "{rule:?} {user}");
        }
        let nameless = cert_with(&[]);
        assert_eq!(
            check(Cn, "app", Some(&nameless)),
            Err(Refusal::OtherUser(None))
        );
    }
}

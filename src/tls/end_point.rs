//! The `tls-server-end-point` channel binding (RFC 5929 §4.1) that
//! SCRAM-SHA-256-PLUS binds to: a hash of the server's certificate, with the
//! hash function of the certificate's signature algorithm, except that MD5 and
//! SHA-1 are replaced by SHA-256. A signature algorithm without a single hash
//! (Ed25519, RSASSA-PSS, unknown ones) has no binding: then -PLUS is not used,
//! as PostgreSQL does.
//!
//! Only the `signatureAlgorithm` OID is read, with a bounds-checked DER walk:
//! the certificate comes from a file or a peer and must never panic us.

use sha2::{Digest, Sha256, Sha384, Sha512};

use super::der::element;

/// Hash functions a signature algorithm can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashFn {
    Sha256,
    Sha384,
    Sha512,
}

/// OID content bytes of the signature algorithms we know, and their binding hash.
const ALGORITHMS: &[(&[u8], HashFn)] = &[
    // md5WithRSAEncryption, sha1WithRSAEncryption: SHA-256 by the RFC's rule.
    (b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x04", HashFn::Sha256),
    (b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x05", HashFn::Sha256),
    // sha256/384/512WithRSAEncryption
    (b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b", HashFn::Sha256),
    (b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0c", HashFn::Sha384),
    (b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0d", HashFn::Sha512),
    // ecdsa-with-SHA1, ecdsa-with-SHA256/384/512
    (b"\x2a\x86\x48\xce\x3d\x04\x01", HashFn::Sha256),
    (b"\x2a\x86\x48\xce\x3d\x04\x03\x02", HashFn::Sha256),
    (b"\x2a\x86\x48\xce\x3d\x04\x03\x03", HashFn::Sha384),
    (b"\x2a\x86\x48\xce\x3d\x04\x03\x04", HashFn::Sha512),
];

/// The channel binding data for the DER certificate `cert`, `None` when its
/// signature algorithm defines none (or the DER is malformed).
pub fn hash(cert: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm(cert)?;
    let (_, f) = ALGORITHMS.iter().find(|(o, _)| *o == oid)?;
    Some(match f {
        HashFn::Sha256 => Sha256::digest(cert).to_vec(),
        HashFn::Sha384 => Sha384::digest(cert).to_vec(),
        HashFn::Sha512 => Sha512::digest(cert).to_vec(),
    })
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// AlgorithmIdentifier, signatureValue }`: the OID of the second element.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = element(der, 0x30)?;
    let (_tbs, rest) = element(cert, 0x30)?;
    let (algorithm, _) = element(rest, 0x30)?;
    let (oid, _) = element(algorithm, 0x06)?;
    Some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(hash(&p256), Some(Sha256::digest(&p256).to_vec()));
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(hash(&p384), Some(Sha384::digest(&p384).to_vec()));
        // Ed25519 has no hash of its own: no channel binding.
        assert_eq!(hash(&cert(&rcgen::PKCS_ED25519)), None);
    }

    #[test]
    fn malformed_der_is_none_not_a_panic() {
        let good = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        for cut in [0, 1, 2, 3, 4, 10, good.len() / 2, good.len() - 1] {
            assert_eq!(hash(&good[..cut]), None, "cut at {cut}");
        }
        for bad in [
            &b"\x30\x84\xff\xff\xff\xff"[..],
            b"\x30\x85\x01",
            b"\x31\x00",
            b"\x30\x80",
        ] {
            assert_eq!(hash(bad), None);
        }
    }
}

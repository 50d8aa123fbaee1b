#![allow(dead_code)]
//! What each fuzz target checks, in one place: the cargo-fuzz targets call
//! these, and `tests/fuzz_corpus.rs` replays the committed corpus through
//! them under plain `cargo test`. A check panics when an invariant breaks;
//! the code under test must never panic, loop or allocate without bound.

use switchyard::protocol::{frame_len, whole_if, Scanner, Visit};

/// The framing limit of the check: small, so lying lengths are exercised.
const MAX: usize = 64 * 1024;

/// Frame reader and streaming scanner. The first byte picks which tags are
/// held whole (as the client or the server direction does) and the chunk
/// sizes the stream arrives in; the rest is the stream.
pub fn frames(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let client_side = mode & 1 == 0;
    let whole = move |t: u8, _len: usize| {
        whole_if(if client_side {
            matches!(t, b'Q' | b'P' | b'B' | b'D' | b'C')
        } else {
            matches!(t, b'Z' | b'S' | b'E')
        })
    };
    let chunk = usize::from(mode >> 1).max(1);
    // Reference: whole-buffer framing with frame_len.
    let mut reference = vec![];
    let mut rest = stream;
    let mut bad = false;
    while let Ok(len) = frame_len(rest, MAX) {
        let Some(len) = len else { break };
        assert!(len >= 5 && len <= rest.len(), "frame_len beyond its input");
        reference.push((rest[0], len));
        rest = &rest[len..];
    }
    if frame_len(rest, MAX).is_err() {
        bad = true;
    }
    // The scanner fed in chunks: it forwards only bytes it was given and
    // sees the same message starts as frame_len.
    let mut scanner = Scanner::default();
    let mut buf: Vec<u8> = vec![];
    let (mut fed, mut seen) = (0, vec![]);
    let mut errored = false;
    while fed < stream.len() {
        let end = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        let result = scanner.scan(&buf, MAX, whole, |tag, frame| {
            if let Some(f) = frame {
                assert_eq!(f[0], tag);
                assert_eq!(frame_len(f, MAX), Ok(Some(f.len())));
            }
            seen.push(tag);
            Visit::Forward
        });
        match result {
            Ok(n) => {
                assert!(n <= buf.len(), "scanner forwarded bytes it was not given");
                buf.drain(..n);
            }
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    let tags: Vec<u8> = reference.iter().map(|r| r.0).collect();
    assert!(
        seen.len() <= tags.len() + 1,
        "scanner saw more messages than exist"
    );
    assert_eq!(
        &seen[..seen.len().min(tags.len())],
        &tags[..seen.len().min(tags.len())]
    );
    if errored {
        assert!(bad, "scanner refused a stream frame_len accepts");
    }
}

/// Startup packets, SSLRequest and GSSENCRequest, CancelRequest.
pub fn startup(data: &[u8]) {
    use switchyard::protocol::messages::startup::{decode, packet_len};
    if let Ok(Some(len)) = packet_len(data) {
        assert!(len >= 4, "a packet shorter than its length field");
        if let Some(packet) = data.get(..len) {
            let _ = decode(packet);
        }
    }
    let _ = decode(data);
}

/// SCRAM server messages: the client-first and client-final messages are
/// split at the first 0xff byte; the password-message decoders see it all.
pub fn scram(data: &[u8]) {
    use switchyard::auth::scram::{Channel, ScramServer, Step};
    use switchyard::protocol::messages::password::{decode_password, decode_sasl_initial};
    let _ = decode_password(data);
    let _ = decode_sasl_initial(data);
    let verifier = switchyard::auth::secret::ScramVerifier::decoy("fuzz");
    let (first, last) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    for channel in [
        Channel::Unavailable,
        Channel::Declined,
        Channel::Bound(vec![7; 32]),
    ] {
        let server = ScramServer::new(verifier.clone(), "servernonce".into(), channel);
        if let Ok((next, step)) = server.step(first) {
            assert!(
                matches!(step, Step::Continue(_)),
                "first step must continue"
            );
            if let Ok((_, Step::Done(..))) = next.step(last) {
                panic!("a proof against an unknown password was accepted");
            }
        }
    }
}

/// The admin console's command parser.
pub fn admin(data: &[u8]) {
    if let Ok(sql) = std::str::from_utf8(data) {
        let _ = switchyard::admin::command::parse(sql);
    }
}

/// The Prometheus exposition-format parser, judged by rules of every kind.
pub fn hardware(data: &[u8]) {
    use switchyard::cluster::hardware::{evaluate, exposition, Op, Rule, Severity};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(samples) = exposition::parse(text) else {
        return;
    };
    let ops = [Op::Gt, Op::Ge, Op::Lt, Op::Le, Op::Eq, Op::Ne];
    let rules: Vec<Rule> = samples
        .iter()
        .take(4)
        .zip(ops)
        .map(|(s, op)| Rule {
            metric: s.name.clone(),
            labels: s.labels.clone(),
            op,
            value: 1.0,
            status: Severity::Failing,
        })
        .collect();
    let _ = evaluate(&rules, &samples);
}

/// The TOML configuration loader (validation included).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = switchyard::config::load_str(text);
    }
}

//! pgwire as an oracle for our framing and decoders.
//!
//! Property tests generate valid frontend and backend messages, encode them
//! with pgwire (an independent implementation of the wire protocol) into one
//! byte stream, and check that
//!
//! - our framing (`packet_len` for the untagged first packets, `frame_len`,
//!   and the streaming `Scanner` the relay drives) cuts the stream where
//!   pgwire put the boundaries, with the same tags and lengths, however the
//!   stream is split into reads, and where pgwire's own decoder cuts it;
//! - length bounds are enforced at the frame that exceeds them;
//! - our body decoders read the fields pgwire encoded, and our encoders
//!   rebuild pgwire's bytes exactly;
//! - the other way round, pgwire decodes the messages we write (including
//!   the replies the login code sends PostgreSQL) into the fields we meant.
//!
//! pgwire's decoders trust the length field and panic on malformed bodies,
//! so they only ever see whole, valid messages here: either pgwire's own
//! encoding or ours.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{
    CopyBothResponse, CopyData, CopyDone, CopyFail, CopyInResponse, CopyOutResponse,
};
use pgwire::messages::data::{
    DataRow, FieldDescription, NoData, ParameterDescription, RowDescription,
};
use pgwire::messages::extendedquery as xq;
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, NotificationResponse,
    ReadyForQuery, TransactionStatus,
};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, GssEncRequest, NegotiateProtocolVersion, ParameterStatus,
    Password, PasswordMessageFamily, SASLInitialResponse, SASLResponse, SecretKey, SslRequest,
    Startup as PgStartup,
};
use pgwire::messages::terminate::Terminate;
use pgwire::messages::{
    DecodeContext, Message, PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion,
    SslNegotiationMetaMessage,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use switchyard::auth::server_side::{Reply, ServerAuth, ServerSecret};
use switchyard::auth::{md5, AuthError, Secret};
use switchyard::protocol::messages::startup::{self, Startup};
use switchyard::protocol::messages::{backend, error_response, extended, password};
use switchyard::protocol::{frame_len, FrameError, Scanner, Visit};

/// Frame bound for the framing checks: far above anything generated.
const MAX: usize = 1 << 20;

/// 256 cases per property from a fixed seed, so CI runs the same inputs every
/// time; PROPTEST_CASES / PROPTEST_RNG_SEED explore further locally.
fn config() -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x5317_c4a2);
    }
    c.failure_persistence = None;
    c
}

// ---------------------------------------------------------------- generation

/// A C string's content: valid UTF-8 without NUL, ASCII or anything else.
fn text(max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        proptest::string::string_regex(&format!("[a-zA-Z0-9_ ,.;$()*=']{{0,{max}}}")).unwrap(),
        proptest::string::string_regex(&format!("[^\\x00]{{0,{max}}}")).unwrap(),
    ]
    .boxed()
}

fn nonempty_text(max: usize) -> BoxedStrategy<String> {
    text(max)
        .prop_filter("non-empty", |s| !s.is_empty())
        .boxed()
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Mostly small payloads, sometimes a few kilobytes that span many reads.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![8 => bytes(24), 1 => bytes(3000)]
}

fn kind() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'S'), Just(b'P')]
}

fn mechanism() -> BoxedStrategy<String> {
    prop_oneof![
        Just("SCRAM-SHA-256".to_string()),
        Just("SCRAM-SHA-256-PLUS".to_string()),
        Just("OAUTHBEARER".to_string()),
        nonempty_text(20),
    ]
    .boxed()
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// How the stream is cut into reads: chunk sizes, used in turn.
#[derive(Debug, Clone)]
struct Chunks(Vec<usize>);

impl Chunks {
    fn split<'a>(&self, stream: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = vec![];
        let mut rest = stream;
        for &n in self.0.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push(a);
            rest = b;
        }
        out
    }
}

fn chunks() -> impl Strategy<Value = Chunks> {
    prop_oneof![
        Just(Chunks(vec![usize::MAX])),
        vec(1usize..=6, 1..8).prop_map(Chunks),
        vec(1usize..=300, 1..12).prop_map(Chunks),
    ]
}

/// Which tags the scanner must hold whole: the relay's own choice plus a
/// random subset of the tags in play.
fn held(always: &'static [u8], tags: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    proptest::sample::subsequence(tags, 0..=tags.len()).prop_map(move |mut v| {
        v.extend_from_slice(always);
        v
    })
}

// ----------------------------------------------------------- frontend model

/// The untagged first packet(s) of a connection.
#[derive(Debug, Clone)]
enum Opening {
    /// No first packet: the stream starts after login.
    None,
    /// Optionally an SSLRequest (`S`) or GSSENCRequest (`G`), then a StartupMessage.
    Startup {
        pre: Option<u8>,
        minor: u16,
        params: BTreeMap<String, String>,
    },
    Cancel {
        pid: i32,
        secret: i32,
    },
}

fn opening() -> impl Strategy<Value = Opening> {
    prop_oneof![
        4 => Just(Opening::None),
        4 => (
            prop_oneof![Just(None), Just(Some(b'S')), Just(Some(b'G'))],
            0u16..=3,
            btree_map(nonempty_text(12), text(12), 0..6),
        )
            .prop_map(|(pre, minor, params)| Opening::Startup { pre, minor, params }),
        1 => (any::<i32>(), any::<i32>()).prop_map(|(pid, secret)| Opening::Cancel { pid, secret }),
    ]
}

/// Each untagged packet as pgwire encodes it, with what our decoder must make of it.
fn opening_packets(o: &Opening) -> Vec<(Vec<u8>, Startup)> {
    let mut out = vec![];
    match o {
        Opening::None => {}
        Opening::Startup { pre, minor, params } => {
            match pre {
                Some(b'S') => out.push((encode(&SslRequest::new()), Startup::SslRequest)),
                Some(_) => out.push((encode(&GssEncRequest::new()), Startup::GssEncRequest)),
                None => {}
            }
            let mut m = PgStartup::new();
            m.protocol_number_minor = *minor;
            m.parameters = params.clone();
            // pgwire keeps parameters in a map, so it writes them sorted by name.
            let expected = Startup::Startup {
                minor: *minor,
                params: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            };
            out.push((encode(&m), expected));
        }
        Opening::Cancel { pid, secret } => out.push((
            encode(&CancelRequest::new(*pid, SecretKey::I32(*secret))),
            Startup::Cancel {
                pid: *pid,
                secret: *secret,
            },
        )),
    }
    out
}

/// A tagged frontend message and the fields it carries.
#[derive(Debug, Clone)]
enum Fe {
    Query(String),
    Parse {
        name: String,
        query: String,
        oids: Vec<u32>,
    },
    Bind {
        portal: String,
        stmt: String,
        tail: BindTail,
    },
    Describe {
        kind: u8,
        name: String,
    },
    Close {
        kind: u8,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Sync,
    Flush,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(String),
    Password(String),
    SaslInitial {
        mechanism: String,
        data: Option<Vec<u8>>,
    },
    SaslResponse(Vec<u8>),
    Terminate,
}

/// What follows the statement name in a Bind.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BindTail {
    formats: Vec<i16>,
    params: Vec<Option<Vec<u8>>>,
    results: Vec<i16>,
}

fn bind_tail() -> impl Strategy<Value = BindTail> {
    (
        vec(any::<i16>(), 0..4),
        vec(proptest::option::of(bytes(24)), 0..5),
        vec(any::<i16>(), 0..4),
    )
        .prop_map(|(formats, params, results)| BindTail {
            formats,
            params,
            results,
        })
}

const FE_TAGS: &[u8] = b"QPBDCESHdcfpX";

impl Fe {
    /// The tag the protocol documentation gives this message.
    fn tag(&self) -> u8 {
        match self {
            Fe::Query(_) => b'Q',
            Fe::Parse { .. } => b'P',
            Fe::Bind { .. } => b'B',
            Fe::Describe { .. } => b'D',
            Fe::Close { .. } => b'C',
            Fe::Execute { .. } => b'E',
            Fe::Sync => b'S',
            Fe::Flush => b'H',
            Fe::CopyData(_) => b'd',
            Fe::CopyDone => b'c',
            Fe::CopyFail(_) => b'f',
            Fe::Password(_) | Fe::SaslInitial { .. } | Fe::SaslResponse(_) => b'p',
            Fe::Terminate => b'X',
        }
    }
}

fn fe() -> impl Strategy<Value = Fe> {
    prop_oneof![
        text(64).prop_map(Fe::Query),
        (text(12), text(64), vec(any::<u32>(), 0..6)).prop_map(|(name, query, oids)| Fe::Parse {
            name,
            query,
            oids
        }),
        (text(12), text(12), bind_tail()).prop_map(|(portal, stmt, tail)| Fe::Bind {
            portal,
            stmt,
            tail
        }),
        (kind(), text(12)).prop_map(|(kind, name)| Fe::Describe { kind, name }),
        (kind(), text(12)).prop_map(|(kind, name)| Fe::Close { kind, name }),
        (text(12), any::<i32>()).prop_map(|(portal, max_rows)| Fe::Execute { portal, max_rows }),
        Just(Fe::Sync),
        Just(Fe::Flush),
        payload().prop_map(Fe::CopyData),
        Just(Fe::CopyDone),
        text(24).prop_map(Fe::CopyFail),
        text(40).prop_map(Fe::Password),
        (mechanism(), proptest::option::of(bytes(64)))
            .prop_map(|(mechanism, data)| Fe::SaslInitial { mechanism, data }),
        bytes(64).prop_map(Fe::SaslResponse),
        Just(Fe::Terminate),
    ]
}

fn encode<M: Message>(m: &M) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b).expect("pgwire encodes a valid message");
    b.to_vec()
}

fn encode_fe(m: &Fe) -> Vec<u8> {
    match m {
        Fe::Query(q) => encode(&Query::new(q.clone())),
        Fe::Parse { name, query, oids } => {
            encode(&xq::Parse::new(opt(name), query.clone(), oids.clone()))
        }
        Fe::Bind { portal, stmt, tail } => encode(&xq::Bind::new(
            opt(portal),
            opt(stmt),
            tail.formats.clone(),
            tail.params
                .iter()
                .map(|p| p.clone().map(Bytes::from))
                .collect(),
            tail.results.clone(),
        )),
        Fe::Describe { kind, name } => encode(&xq::Describe::new(*kind, opt(name))),
        Fe::Close { kind, name } => encode(&xq::Close::new(*kind, opt(name))),
        Fe::Execute { portal, max_rows } => encode(&xq::Execute::new(opt(portal), *max_rows)),
        Fe::Sync => encode(&xq::Sync::new()),
        Fe::Flush => encode(&xq::Flush::new()),
        Fe::CopyData(d) => encode(&CopyData::new(Bytes::from(d.clone()))),
        Fe::CopyDone => encode(&CopyDone::new()),
        Fe::CopyFail(m) => encode(&CopyFail::new(m.clone())),
        Fe::Password(p) => encode(&Password::new(p.clone())),
        Fe::SaslInitial { mechanism, data } => encode(&SASLInitialResponse::new(
            mechanism.clone(),
            data.clone().map(Bytes::from),
        )),
        Fe::SaslResponse(d) => encode(&SASLResponse::new(Bytes::from(d.clone()))),
        Fe::Terminate => encode(&Terminate::new()),
    }
}

/// Reads a Bind's tail (format codes, parameters, result format codes) the
/// way the protocol documentation lays it out. Only ever given valid input.
fn read_bind_tail(tail: &[u8]) -> BindTail {
    let mut r = Reader(tail);
    let n = r.int16() as u16;
    let formats = (0..n).map(|_| r.int16()).collect();
    let n = r.int16() as u16;
    let params = (0..n)
        .map(|_| {
            let len = r.int32();
            (len >= 0).then(|| r.take(len as usize).to_vec())
        })
        .collect();
    let n = r.int16() as u16;
    let results = (0..n).map(|_| r.int16()).collect();
    assert!(r.0.is_empty(), "bytes after the Bind tail");
    BindTail {
        formats,
        params,
        results,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at_checked(n).expect("Bind tail too short");
        self.0 = b;
        a
    }

    fn int16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }

    fn int32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
}

fn write_bind_tail(t: &BindTail) -> Vec<u8> {
    let mut v = (t.formats.len() as u16).to_be_bytes().to_vec();
    t.formats.iter().for_each(|f| v.extend(f.to_be_bytes()));
    v.extend((t.params.len() as u16).to_be_bytes());
    for p in &t.params {
        match p {
            Some(p) => {
                v.extend((p.len() as i32).to_be_bytes());
                v.extend(p);
            }
            None => v.extend((-1i32).to_be_bytes()),
        }
    }
    v.extend((t.results.len() as u16).to_be_bytes());
    t.results.iter().for_each(|f| v.extend(f.to_be_bytes()));
    v
}

fn write_oids(oids: &[u32]) -> Vec<u8> {
    let mut v = (oids.len() as u16).to_be_bytes().to_vec();
    oids.iter().for_each(|o| v.extend(o.to_be_bytes()));
    v
}

/// Our decoders must read the fields pgwire wrote into `frame`, and our
/// encoders must rebuild pgwire's bytes from what they read.
fn check_fe(m: &Fe, frame: &[u8]) {
    let body = &frame[5..];
    match m {
        Fe::Query(q) => assert_eq!(body, cstring(q), "Query text"),
        Fe::Parse { name, query, oids } => {
            let p = extended::decode_parse(frame).expect("decode_parse refused a valid Parse");
            assert_eq!(p.name, name.as_bytes(), "Parse statement name");
            assert_eq!(p.query, query.as_bytes(), "Parse query");
            assert_eq!(p.param_types, write_oids(oids), "Parse parameter types");
            let mut again = BytesMut::new();
            extended::encode_parse(&mut again, p.name, &p);
            assert_eq!(&again[..], frame, "encode_parse(decode_parse(frame))");
        }
        Fe::Bind { portal, stmt, tail } => {
            let (p, s, t) =
                extended::decode_bind_statement(frame).expect("decode_bind_statement refused");
            assert_eq!(p, portal.as_bytes(), "Bind portal");
            assert_eq!(s, stmt.as_bytes(), "Bind statement");
            assert_eq!(&read_bind_tail(t), tail, "Bind tail");
            let mut again = BytesMut::new();
            extended::encode_bind(&mut again, p, s, t);
            assert_eq!(
                &again[..],
                frame,
                "encode_bind(decode_bind_statement(frame))"
            );
        }
        Fe::Describe { kind, name } | Fe::Close { kind, name } => {
            assert_eq!(
                extended::decode_target(frame),
                Some((*kind, name.as_bytes())),
                "Describe/Close target"
            );
            let mut again = BytesMut::new();
            extended::encode_target(&mut again, frame[0], *kind, name.as_bytes());
            assert_eq!(&again[..], frame, "encode_target");
        }
        Fe::Execute { portal, max_rows } => {
            let mut v = cstring(portal);
            v.extend(max_rows.to_be_bytes());
            assert_eq!(body, v, "Execute");
        }
        Fe::Password(p) => {
            assert_eq!(
                password::decode_password(body),
                Some(p.as_str()),
                "password"
            )
        }
        Fe::SaslInitial { mechanism, data } => assert_eq!(
            password::decode_sasl_initial(body),
            Some((mechanism.as_str(), data.as_deref().unwrap_or_default())),
            "SASLInitialResponse"
        ),
        Fe::SaslResponse(d) | Fe::CopyData(d) => assert_eq!(body, &d[..], "opaque body"),
        Fe::CopyFail(msg) => assert_eq!(body, cstring(msg), "CopyFail message"),
        Fe::Sync | Fe::Flush | Fe::CopyDone | Fe::Terminate => assert!(body.is_empty()),
    }
}

// ------------------------------------------------------------ backend model

/// Authentication requests pgwire can write.
#[derive(Debug, Clone)]
enum Auth {
    Ok,
    Kerberos,
    Cleartext,
    Md5([u8; 4]),
    Sasl(Vec<String>),
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
}

/// A backend message and the fields it carries.
#[derive(Debug, Clone)]
enum Be {
    Auth(Auth),
    ParameterStatus(String, String),
    BackendKeyData(i32, i32),
    Negotiate(i32, Vec<String>),
    Ready(u8),
    Error(Vec<(u8, String)>),
    Notice(Vec<(u8, String)>),
    Notification(i32, String, String),
    RowDescription(Vec<(String, i32, i16, u32, i16, i32, i16)>),
    DataRow(Vec<Option<Vec<u8>>>),
    CommandComplete(String),
    ParameterDescription(Vec<u32>),
    /// CopyInResponse `G`, CopyOutResponse `H` or CopyBothResponse `W`.
    CopyResponse(u8, i8, Vec<i16>),
    CopyData(Vec<u8>),
    /// A message without a body: EmptyQueryResponse `I`, ParseComplete `1`,
    /// BindComplete `2`, CloseComplete `3`, NoData `n`, PortalSuspended `s`, CopyDone `c`.
    Empty(u8),
}

const BE_TAGS: &[u8] = b"RSKvZENATDCtGHWdI123nsc";

impl Be {
    fn tag(&self) -> u8 {
        match self {
            Be::Auth(_) => b'R',
            Be::ParameterStatus(..) => b'S',
            Be::BackendKeyData(..) => b'K',
            Be::Negotiate(..) => b'v',
            Be::Ready(_) => b'Z',
            Be::Error(_) => b'E',
            Be::Notice(_) => b'N',
            Be::Notification(..) => b'A',
            Be::RowDescription(_) => b'T',
            Be::DataRow(_) => b'D',
            Be::CommandComplete(_) => b'C',
            Be::ParameterDescription(_) => b't',
            Be::CopyResponse(tag, ..) | Be::Empty(tag) => *tag,
            Be::CopyData(_) => b'd',
        }
    }
}

/// ErrorResponse / NoticeResponse fields: the usual codes, sometimes repeated,
/// sometimes one we do not know.
fn error_fields() -> impl Strategy<Value = Vec<(u8, String)>> {
    let code = prop_oneof![
        4 => proptest::sample::select(b"SVCMDHPpqWstcdnFLR".to_vec()),
        1 => 1u8..=255,
    ];
    vec((code, text(32)), 0..8)
}

fn be() -> impl Strategy<Value = Be> {
    let auth = prop_oneof![
        Just(Auth::Ok),
        Just(Auth::Kerberos),
        Just(Auth::Cleartext),
        any::<[u8; 4]>().prop_map(Auth::Md5),
        vec(mechanism(), 0..4).prop_map(Auth::Sasl),
        bytes(64).prop_map(Auth::SaslContinue),
        bytes(64).prop_map(Auth::SaslFinal),
    ];
    let field = (
        text(12),
        any::<i32>(),
        any::<i16>(),
        any::<u32>(),
        any::<i16>(),
        any::<i32>(),
        0i16..=1,
    );
    prop_oneof![
        auth.prop_map(Be::Auth),
        (text(16), text(32)).prop_map(|(n, v)| Be::ParameterStatus(n, v)),
        (any::<i32>(), any::<i32>()).prop_map(|(p, s)| Be::BackendKeyData(p, s)),
        (any::<i32>(), vec(text(16), 0..3)).prop_map(|(v, o)| Be::Negotiate(v, o)),
        proptest::sample::select(b"ITE".to_vec()).prop_map(Be::Ready),
        error_fields().prop_map(Be::Error),
        error_fields().prop_map(Be::Notice),
        (any::<i32>(), text(12), text(32)).prop_map(|(p, c, m)| Be::Notification(p, c, m)),
        vec(field, 0..5).prop_map(Be::RowDescription),
        prop_oneof![
            4 => vec(proptest::option::of(bytes(16)), 0..6),
            1 => vec(proptest::option::of(bytes(1500)), 0..3),
        ]
        .prop_map(Be::DataRow),
        text(24).prop_map(Be::CommandComplete),
        vec(any::<u32>(), 0..6).prop_map(Be::ParameterDescription),
        (
            proptest::sample::select(b"GHW".to_vec()),
            0i8..=1,
            vec(0i16..=1, 0..6)
        )
            .prop_map(|(t, f, c)| Be::CopyResponse(t, f, c)),
        payload().prop_map(Be::CopyData),
        proptest::sample::select(b"I123nsc".to_vec()).prop_map(Be::Empty),
    ]
}

fn encode_be(m: &Be) -> Vec<u8> {
    match m {
        Be::Auth(a) => encode(&match a {
            Auth::Ok => Authentication::Ok,
            Auth::Kerberos => Authentication::KerberosV5,
            Auth::Cleartext => Authentication::CleartextPassword,
            Auth::Md5(salt) => Authentication::MD5Password(salt.to_vec()),
            Auth::Sasl(m) => Authentication::SASL(m.clone()),
            Auth::SaslContinue(d) => Authentication::SASLContinue(Bytes::from(d.clone())),
            Auth::SaslFinal(d) => Authentication::SASLFinal(Bytes::from(d.clone())),
        }),
        Be::ParameterStatus(n, v) => encode(&ParameterStatus::new(n.clone(), v.clone())),
        Be::BackendKeyData(pid, secret) => {
            encode(&BackendKeyData::new(*pid, SecretKey::I32(*secret)))
        }
        Be::Negotiate(v, o) => encode(&NegotiateProtocolVersion::new(*v, o.clone())),
        Be::Ready(s) => encode(&ReadyForQuery::new(
            TransactionStatus::try_from(*s).expect("I, T or E"),
        )),
        Be::Error(f) => encode(&ErrorResponse::new(f.clone())),
        Be::Notice(f) => encode(&NoticeResponse::new(f.clone())),
        Be::Notification(p, c, m) => encode(&NotificationResponse::new(*p, c.clone(), m.clone())),
        Be::RowDescription(fields) => encode(&RowDescription::new(
            fields
                .iter()
                .map(|(n, t, c, ty, sz, md, f)| {
                    FieldDescription::new(n.clone(), *t, *c, *ty, *sz, *md, *f)
                })
                .collect(),
        )),
        Be::DataRow(values) => {
            let mut data = BytesMut::new();
            for v in values {
                match v {
                    Some(v) => {
                        data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        data.extend_from_slice(v);
                    }
                    None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            encode(&DataRow::new(data, values.len() as i16))
        }
        Be::CommandComplete(t) => encode(&CommandComplete::new(t.clone())),
        Be::ParameterDescription(t) => encode(&ParameterDescription::new(t.clone())),
        Be::CopyResponse(tag, f, c) => {
            let n = c.len() as i16;
            match tag {
                b'G' => encode(&CopyInResponse::new(*f, n, c.clone())),
                b'H' => encode(&CopyOutResponse::new(*f, n, c.clone())),
                _ => encode(&CopyBothResponse::new(*f, n, c.clone())),
            }
        }
        Be::CopyData(d) => encode(&CopyData::new(Bytes::from(d.clone()))),
        Be::Empty(tag) => match tag {
            b'I' => encode(&EmptyQueryResponse::new()),
            b'1' => encode(&xq::ParseComplete::new()),
            b'2' => encode(&xq::BindComplete::new()),
            b'3' => encode(&xq::CloseComplete::new()),
            b'n' => encode(&NoData::new()),
            b's' => encode(&xq::PortalSuspended::new()),
            _ => encode(&CopyDone::new()),
        },
    }
}

/// What `error_response::decode` should make of these fields: the last `S`,
/// `C` and `M` win, a missing one is empty.
fn server_error(fields: &[(u8, String)]) -> error_response::ServerError {
    let last = |code: u8| {
        fields
            .iter()
            .rev()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    // The untranslated severity (`V`) wins over the localized one (`S`).
    let has_v = fields.iter().any(|(c, _)| *c == b'V');
    error_response::ServerError {
        severity: if has_v { last(b'V') } else { last(b'S') },
        code: last(b'C'),
        message: last(b'M'),
    }
}

fn frontend_ctx() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

/// pgwire decodes one whole, valid frontend frame (ours), consuming all of it.
fn pgwire_frontend(frame: &[u8]) -> PgWireFrontendMessage {
    let mut buf = BytesMut::from(frame);
    let m = PgWireFrontendMessage::decode(&mut buf, &frontend_ctx())
        .expect("pgwire decodes our frame")
        .expect("whole frame");
    assert!(
        buf.is_empty(),
        "pgwire left {} bytes of our frame",
        buf.len()
    );
    m
}

/// pgwire decodes one whole, valid backend frame (ours), consuming all of it.
fn pgwire_backend(frame: &[u8]) -> PgWireBackendMessage {
    let mut buf = BytesMut::from(frame);
    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let m = PgWireBackendMessage::decode(&mut buf, &ctx)
        .expect("pgwire decodes our frame")
        .expect("whole frame");
    assert!(
        buf.is_empty(),
        "pgwire left {} bytes of our frame",
        buf.len()
    );
    m
}

/// The `p` message the login code sent, read back by pgwire.
fn sent_password_message(reply: Result<Reply, AuthError>) -> PasswordMessageFamily {
    let out = match reply {
        Ok(Reply::Send(out)) => out,
        other => panic!("expected a password message, got {other:?}"),
    };
    match pgwire_frontend(&out) {
        PgWireFrontendMessage::PasswordMessageFamily(p) => p,
        other => panic!("expected a password message, got {other:?}"),
    }
}

/// Our decoders (and the login code, for Authentication requests) must read
/// the fields pgwire wrote into `frame`.
fn check_be(m: &Be, frame: &[u8], user: &str, tls: bool) {
    let body = &frame[5..];
    match m {
        Be::Auth(a) => {
            let pw = "pw\u{e9}";
            let end_point = tls.then(|| vec![7u8; 32]);
            let secret = ServerSecret::Password(pw.into());
            let reply = ServerAuth::new(user, Some(&secret), end_point).on_request(body);
            match a {
                Auth::Ok => assert!(matches!(reply, Ok(Reply::Ok)), "{reply:?}"),
                Auth::Kerberos => {
                    assert!(matches!(reply, Err(AuthError::Unsupported(2))), "{reply:?}")
                }
                Auth::Cleartext => {
                    let p = sent_password_message(reply).into_password().unwrap();
                    assert_eq!(p.password, pw, "cleartext password sent");
                }
                Auth::Md5(salt) => {
                    let p = sent_password_message(reply).into_password().unwrap();
                    let expected = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        pw.as_bytes(),
                        *salt,
                    );
                    assert_eq!(p.password, expected, "md5 response sent");
                    // And our own md5 check accepts it once decoded.
                    let wire = cstring(&p.password);
                    let response = password::decode_password(&wire).unwrap();
                    let secret = Secret::Plain(pw.to_string());
                    assert!(md5::verify(&secret, user, *salt, response));
                }
                Auth::Sasl(offered) => {
                    let has = |m: &str| offered.iter().any(|o| o == m);
                    let chosen = match tls {
                        true if has("SCRAM-SHA-256-PLUS") => {
                            Some(("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,"))
                        }
                        true if has("SCRAM-SHA-256") => Some(("SCRAM-SHA-256", "y,,")),
                        false if has("SCRAM-SHA-256") => Some(("SCRAM-SHA-256", "n,,")),
                        _ => None,
                    };
                    match chosen {
                        None => {
                            assert!(
                                matches!(reply, Err(AuthError::Unsupported(10))),
                                "{reply:?}"
                            )
                        }
                        Some((mechanism, gs2)) => {
                            let i = sent_password_message(reply)
                                .into_sasl_initial_response()
                                .unwrap();
                            assert_eq!(i.auth_method, mechanism, "SASL mechanism chosen");
                            let data = i.data.expect("client-first-message");
                            assert!(data.starts_with(gs2.as_bytes()), "gs2 header {data:?}");
                        }
                    }
                }
                Auth::SaslContinue(_) | Auth::SaslFinal(_) => {
                    assert!(matches!(reply, Err(AuthError::Malformed(_))), "{reply:?}")
                }
            }
        }
        Be::ParameterStatus(n, v) => assert_eq!(
            backend::decode_parameter_status(body),
            Some((n.clone(), v.clone())),
            "ParameterStatus"
        ),
        Be::BackendKeyData(pid, secret) => {
            // The pool reads exactly 8 bytes: process id, then secret.
            assert_eq!(body.len(), 8, "BackendKeyData length");
            assert_eq!(body[..4], pid.to_be_bytes(), "BackendKeyData pid");
            assert_eq!(body[4..], secret.to_be_bytes(), "BackendKeyData secret");
        }
        Be::Ready(status) => assert_eq!(body, [*status], "ReadyForQuery status"),
        Be::Error(fields) | Be::Notice(fields) => assert_eq!(
            error_response::decode(body),
            Some(server_error(fields)),
            "ErrorResponse/NoticeResponse fields"
        ),
        _ => {}
    }
}

// ------------------------------------------------------------- the checks

/// Boundaries pgwire's own streaming decoder finds in a frontend stream that
/// begins with `untagged` first packets (DecodeContext moved along as a
/// server would: past SSL negotiation, then past startup).
fn pgwire_frontend_sizes(stream: &[u8], untagged: usize) -> Vec<usize> {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    if untagged == 0 {
        ctx = frontend_ctx();
    }
    let mut buf = BytesMut::from(stream);
    let mut sizes = vec![];
    while !buf.is_empty() {
        let before = buf.len();
        let m = PgWireFrontendMessage::decode(&mut buf, &ctx)
            .expect("pgwire decodes its own stream")
            .expect("whole message");
        match m {
            // A peek: not SSL or GSS, so startup or cancel follows.
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::None) => {
                ctx.awaiting_frontend_ssl = false;
                continue;
            }
            PgWireFrontendMessage::SslNegotiation(_) => ctx.awaiting_frontend_ssl = false,
            PgWireFrontendMessage::Startup(_) | PgWireFrontendMessage::CancelRequest(_) => {
                ctx.awaiting_frontend_startup = false
            }
            _ => {}
        }
        sizes.push(before - buf.len());
    }
    sizes
}

fn pgwire_backend_sizes(stream: &[u8]) -> Vec<usize> {
    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let mut buf = BytesMut::from(stream);
    let mut sizes = vec![];
    while !buf.is_empty() {
        let before = buf.len();
        PgWireBackendMessage::decode(&mut buf, &ctx)
            .expect("pgwire decodes its own stream")
            .expect("whole message");
        sizes.push(before - buf.len());
    }
    sizes
}

/// Feeds `stream` in chunks and cuts whole messages as the proxy does when it
/// reads them one at a time: `packet_len` for the first `untagged` packets,
/// then `frame_len`.
fn cut(stream: &[u8], untagged: usize, chunks: &Chunks) -> Vec<Vec<u8>> {
    let mut buf = BytesMut::new();
    let mut out = vec![];
    for piece in chunks.split(stream) {
        buf.extend_from_slice(piece);
        loop {
            let len = if out.len() < untagged {
                match startup::packet_len(&buf).expect("valid first packet") {
                    Some(len) if buf.len() >= len => len,
                    _ => break,
                }
            } else {
                match frame_len(&buf, MAX).expect("valid frame") {
                    Some(len) => len,
                    None => break,
                }
            };
            out.push(buf.split_to(len).to_vec());
        }
    }
    assert!(buf.is_empty(), "{} bytes left uncut", buf.len());
    out
}

/// Drives the Scanner over `frames` fed in chunks, as the relay does: forward
/// what it allows, keep the rest. Messages whose `stops` entry is set are
/// stopped at once (the relay does that to rewrite or terminate) and must be
/// presented again, at their exact start, on the next scan.
fn drive_scanner(frames: &[Vec<u8>], chunks: &Chunks, held: &[u8], stops: &[bool]) {
    let stream = frames.concat();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(frames.iter().scan(0, |at, f| {
            *at += f.len();
            Some(*at)
        }))
        .collect();
    let whole = |t: u8, _: usize| switchyard::protocol::whole_if(held.contains(&t));
    let mut s = Scanner::default();
    let mut buf: Vec<u8> = vec![];
    let mut at = 0; // stream offset of buf[0]
    let mut seen: Vec<(u8, Option<Vec<u8>>)> = vec![];
    let mut stopped_at: Vec<(usize, usize)> = vec![];
    let mut resume = false;
    let mut pieces = chunks.split(&stream).into_iter();
    loop {
        let mut stopped = false;
        let n = s
            .scan(&buf, MAX, whole, |tag, frame| {
                if !resume && stops.get(seen.len()) == Some(&true) {
                    stopped = true;
                    return Visit::Stop;
                }
                resume = false;
                seen.push((tag, frame.map(<[u8]>::to_vec)));
                Visit::Forward
            })
            .expect("valid stream");
        buf.drain(..n);
        at += n;
        assert_eq!(
            s.at_boundary(),
            starts.contains(&at),
            "at_boundary() at offset {at}"
        );
        if stopped {
            stopped_at.push((seen.len(), at));
            resume = true;
            continue;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => break,
        }
    }
    assert_eq!(at, stream.len(), "scanner forwarded the whole stream");
    assert!(s.at_boundary());
    assert_eq!(seen.len(), frames.len(), "messages seen");
    for (k, ((tag, frame), f)) in seen.iter().zip(frames).enumerate() {
        assert_eq!(*tag, f[0], "tag of message {k}");
        assert_eq!(
            frame.is_some(),
            held.contains(&f[0]),
            "held whole: message {k}"
        );
        if let Some(frame) = frame {
            assert_eq!(frame, f, "held frame {k}");
        }
    }
    for (k, offset) in stopped_at {
        assert_eq!(offset, starts[k], "stopped before message {k}");
    }
}

/// Length bounds: a frame whose length field is at the limit passes, one
/// above it is refused with its tag and length, at that frame and not earlier;
/// every strict prefix of a frame is incomplete.
fn bounds(frames: &[Vec<u8>]) {
    let len_field = |f: &Vec<u8>| f.len() - 1;
    for f in frames {
        assert_eq!(frame_len(f, len_field(f)), Ok(Some(f.len())));
        for cut in 0..f.len() {
            assert_eq!(frame_len(&f[..cut], MAX), Ok(None), "prefix of {cut} bytes");
        }
    }
    let Some(biggest) = frames.iter().map(len_field).max() else {
        return;
    };
    let max = biggest - 1;
    let over = frames.iter().position(|f| len_field(f) > max).unwrap();
    let refused = || FrameError::BadLength {
        tag: frames[over][0],
        len: len_field(&frames[over]) as u32,
    };
    let stream = frames.concat();
    let mut rest = &stream[..];
    for f in &frames[..over] {
        assert_eq!(frame_len(rest, max), Ok(Some(f.len())));
        rest = &rest[f.len()..];
    }
    assert_eq!(frame_len(rest, max), Err(refused()));
    let mut s = Scanner::default();
    assert_eq!(
        s.scan(
            &stream,
            max,
            |_, _| switchyard::protocol::Hold::Stream,
            |_, _| Visit::Forward
        ),
        Err(refused())
    );
}

/// Our encoders' output, and what pgwire must read from it.
#[derive(Debug, Clone)]
enum Ours {
    AuthOk,
    AuthMd5([u8; 4]),
    AuthSasl(bool),
    AuthStep(i32, Vec<u8>),
    ParameterStatus(String, String),
    BackendKeyData(i32, i32),
    Ready(u8),
    Negotiate(Vec<String>),
    Error(String, String, String),
    Notice(String),
    Parse(String, String, Vec<u32>),
    Bind(String, String, BindTail),
    Target(u8, u8, String),
}

fn ours() -> impl Strategy<Value = Ours> {
    prop_oneof![
        Just(Ours::AuthOk),
        any::<[u8; 4]>().prop_map(Ours::AuthMd5),
        any::<bool>().prop_map(Ours::AuthSasl),
        (11..=12, bytes(64)).prop_map(|(c, d)| Ours::AuthStep(c, d)),
        (text(16), text(32)).prop_map(|(n, v)| Ours::ParameterStatus(n, v)),
        (any::<i32>(), any::<i32>()).prop_map(|(p, s)| Ours::BackendKeyData(p, s)),
        proptest::sample::select(b"ITE".to_vec()).prop_map(Ours::Ready),
        vec(text(16), 0..3).prop_map(Ours::Negotiate),
        (text(8), text(5), text(40)).prop_map(|(s, c, m)| Ours::Error(s, c, m)),
        text(40).prop_map(Ours::Notice),
        (text(12), text(64), vec(any::<u32>(), 0..6)).prop_map(|(n, q, o)| Ours::Parse(n, q, o)),
        (text(12), text(12), bind_tail()).prop_map(|(p, s, t)| Ours::Bind(p, s, t)),
        (proptest::sample::select(b"DC".to_vec()), kind(), text(12))
            .prop_map(|(t, k, n)| Ours::Target(t, k, n)),
    ]
}

fn check_ours(m: &Ours) {
    use PgWireBackendMessage as B;
    use PgWireFrontendMessage as F;
    let mut out = BytesMut::new();
    let name = |s: &Option<String>| s.clone().unwrap_or_default();
    match m {
        Ours::AuthOk => {
            backend::auth_ok(&mut out);
            assert!(matches!(
                pgwire_backend(&out),
                B::Authentication(Authentication::Ok)
            ));
        }
        Ours::AuthMd5(salt) => {
            backend::auth_md5(&mut out, *salt);
            let B::Authentication(Authentication::MD5Password(s)) = pgwire_backend(&out) else {
                panic!("not an md5 request")
            };
            assert_eq!(s, salt);
        }
        Ours::AuthSasl(plus) => {
            backend::auth_sasl(&mut out, *plus);
            let B::Authentication(Authentication::SASL(m)) = pgwire_backend(&out) else {
                panic!("not a SASL request")
            };
            let expected: &[&str] = match plus {
                true => &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
                false => &["SCRAM-SHA-256"],
            };
            assert_eq!(m, expected);
        }
        Ours::AuthStep(code, data) => {
            backend::auth_sasl_step(&mut out, *code, data);
            match (code, pgwire_backend(&out)) {
                (11, B::Authentication(Authentication::SASLContinue(d)))
                | (12, B::Authentication(Authentication::SASLFinal(d))) => assert_eq!(d, data),
                (_, other) => panic!("SASL step {code} read as {other:?}"),
            }
        }
        Ours::ParameterStatus(n, v) => {
            backend::parameter_status(&mut out, n, v);
            let B::ParameterStatus(p) = pgwire_backend(&out) else {
                panic!("not a ParameterStatus")
            };
            assert_eq!((&p.name, &p.value), (n, v));
        }
        Ours::BackendKeyData(pid, secret) => {
            backend::backend_key_data(&mut out, *pid, *secret);
            let B::BackendKeyData(k) = pgwire_backend(&out) else {
                panic!("not a BackendKeyData")
            };
            assert_eq!((k.pid, k.secret_key), (*pid, SecretKey::I32(*secret)));
        }
        Ours::Ready(status) => {
            backend::ready_for_query(&mut out, *status);
            let B::ReadyForQuery(r) = pgwire_backend(&out) else {
                panic!("not a ReadyForQuery")
            };
            assert_eq!(r.status as u8, *status);
        }
        Ours::Negotiate(options) => {
            let opts: Vec<&str> = options.iter().map(String::as_str).collect();
            backend::negotiate_protocol_version(&mut out, &opts);
            let B::NegotiateProtocolVersion(n) = pgwire_backend(&out) else {
                panic!("not a NegotiateProtocolVersion")
            };
            assert_eq!(
                (n.newest_minor_protocol, &n.unsupported_options),
                (0, options)
            );
        }
        Ours::Error(severity, code, message) => {
            error_response::encode(&mut out, severity, code, message);
            let B::ErrorResponse(e) = pgwire_backend(&out) else {
                panic!("not an ErrorResponse")
            };
            let expected = [
                (b'S', severity),
                (b'V', severity),
                (b'C', code),
                (b'M', message),
            ];
            assert_eq!(e.fields, expected.map(|(c, v)| (c, v.clone())));
        }
        Ours::Notice(message) => {
            error_response::encode_notice(&mut out, message);
            let B::NoticeResponse(n) = pgwire_backend(&out) else {
                panic!("not a NoticeResponse")
            };
            let expected = [
                (b'S', "NOTICE"),
                (b'V', "NOTICE"),
                (b'C', "00000"),
                (b'M', message.as_str()),
            ];
            assert_eq!(n.fields, expected.map(|(c, v)| (c, v.to_string())));
        }
        Ours::Parse(stmt, query, oids) => {
            let types = write_oids(oids);
            let p = extended::Parse {
                name: b"client_name",
                query: query.as_bytes(),
                param_types: &types,
            };
            extended::encode_parse(&mut out, stmt.as_bytes(), &p);
            let F::Parse(p) = pgwire_frontend(&out) else {
                panic!("not a Parse")
            };
            assert_eq!(
                (name(&p.name), &p.query, &p.type_oids),
                (stmt.clone(), query, oids)
            );
        }
        Ours::Bind(portal, stmt, tail) => {
            extended::encode_bind(
                &mut out,
                portal.as_bytes(),
                stmt.as_bytes(),
                &write_bind_tail(tail),
            );
            let F::Bind(b) = pgwire_frontend(&out) else {
                panic!("not a Bind")
            };
            assert_eq!(name(&b.portal_name), *portal);
            assert_eq!(name(&b.statement_name), *stmt);
            let params: Vec<Option<Vec<u8>>> = b
                .parameters
                .iter()
                .map(|p| p.as_ref().map(|p| p.to_vec()))
                .collect();
            let got = BindTail {
                formats: b.parameter_format_codes.clone(),
                params,
                results: b.result_column_format_codes.clone(),
            };
            assert_eq!(&got, tail);
        }
        Ours::Target(tag, kind, target) => {
            extended::encode_target(&mut out, *tag, *kind, target.as_bytes());
            let (k, n) = match pgwire_frontend(&out) {
                F::Describe(d) if *tag == b'D' => (d.target_type, d.name),
                F::Close(c) if *tag == b'C' => (c.target_type, c.name),
                other => panic!("{:?} read as {other:?}", *tag as char),
            };
            assert_eq!((k, name(&n)), (*kind, target.clone()));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Client streams: first packets, then tagged messages.
    #[test]
    fn frontend_streams_frame_and_decode_like_pgwire(
        opening in opening(),
        msgs in vec(fe(), 0..24),
        chunks in chunks(),
        held in held(b"QPBDC", FE_TAGS),
        stops in vec(any::<bool>(), 24),
    ) {
        let packets = opening_packets(&opening);
        // A cancel request is all its connection carries.
        let msgs = if matches!(opening, Opening::Cancel { .. }) { vec![] } else { msgs };
        let frames: Vec<Vec<u8>> = msgs.iter().map(encode_fe).collect();
        for (m, f) in msgs.iter().zip(&frames) {
            prop_assert_eq!(f[0], m.tag(), "pgwire's tag for {:?}", m);
        }
        let mut all: Vec<Vec<u8>> = packets.iter().map(|(p, _)| p.clone()).collect();
        all.extend(frames.iter().cloned());
        let stream = all.concat();

        // (a) boundaries: pgwire's decoder, our framing in chunks, the scanner.
        let sizes: Vec<usize> = all.iter().map(Vec::len).collect();
        prop_assert_eq!(pgwire_frontend_sizes(&stream, packets.len()), sizes);
        prop_assert_eq!(cut(&stream, packets.len(), &chunks), all);
        drive_scanner(&frames, &chunks, &held, &stops);
        bounds(&frames);

        // (b) fields.
        for (p, expected) in &packets {
            prop_assert_eq!(startup::packet_len(p), Ok(Some(p.len())));
            match startup::decode(p) {
                Ok(got) => prop_assert_eq!(&got, expected),
                Err(e) => panic!("startup::decode refused {expected:?}: {e}"),
            }
        }
        for (m, f) in msgs.iter().zip(&frames) {
            check_fe(m, f);
        }
    }

    /// Server streams: the messages the relay and the pool read or forward.
    #[test]
    fn backend_streams_frame_and_decode_like_pgwire(
        msgs in vec(be(), 1..24),
        chunks in chunks(),
        held in held(b"ZSE", BE_TAGS),
        stops in vec(any::<bool>(), 24),
        user in text(12),
        tls in any::<bool>(),
    ) {
        let frames: Vec<Vec<u8>> = msgs.iter().map(encode_be).collect();
        for (m, f) in msgs.iter().zip(&frames) {
            prop_assert_eq!(f[0], m.tag(), "pgwire's tag for {:?}", m);
        }
        let stream = frames.concat();
        let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
        prop_assert_eq!(pgwire_backend_sizes(&stream), sizes);
        prop_assert_eq!(cut(&stream, 0, &chunks), frames.clone());
        drive_scanner(&frames, &chunks, &held, &stops);
        bounds(&frames);
        for (m, f) in msgs.iter().zip(&frames) {
            check_be(m, f, &user, tls);
        }
    }

    /// The messages we write, read back by pgwire.
    #[test]
    fn pgwire_reads_what_we_write(msgs in vec(ours(), 1..8)) {
        for m in &msgs {
            check_ours(m);
        }
    }
}

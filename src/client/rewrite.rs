//! Statement names under transaction pooling, as pure functions: a client's
//! Parse/Bind/Describe/Close naming a prepared statement becomes the bytes
//! the server gets (possibly none, possibly with a Parse injected before or
//! Closes for evicted statements), and entries in the `expect` queue saying
//! which replies go to the client, which are dropped, and where the proxy
//! answers itself. The link does the I/O around them.

use std::sync::Arc;

use bytes::BytesMut;

use super::expect::{Expect, Expectations, Sent};
use super::prepared::{name_text, ClientStatements, OverBound, Statement};
use super::session_state::Effects;
use crate::error::ClientError;
use crate::protocol::messages::extended::{
    decode_bind_statement, decode_parse, decode_target, encode_bind, encode_bind_head,
    encode_target,
};
use crate::server::statements::ServerStatements;

/// A statement name no server holds: a Bind of it fails.
const REFUSED: &[u8] = b"sy_refused";

/// A Parse, Bind, Describe or Close that names a (non-empty) prepared
/// statement: held whole and rewritten. Anything else (the unnamed
/// statement, portals) is forwarded as sent.
pub(super) fn names_statement(tag: u8, frame: &[u8]) -> bool {
    match tag {
        // The unnamed statement (what most drivers send) is known by its
        // first byte, with no scan of the query text.
        b'P' => !unnamed(frame) && decode_parse(frame).is_some(),
        b'B' => bind_names_statement(frame),
        b'D' | b'C' => decode_target(frame).is_some_and(|(k, n)| k == b'S' && !n.is_empty()),
        _ => false,
    }
}

/// A Bind whose statement name (the body's second string) is not empty.
/// Only the portal name is looked for: the rewrite decodes the rest.
fn bind_names_statement(bind: &[u8]) -> bool {
    let body = bind.get(5..).unwrap_or_default();
    match body.iter().position(|&b| b == 0) {
        Some(end) => body.get(end + 1).is_some_and(|&b| b != 0),
        None => false,
    }
}

/// A Parse of the unnamed statement: its name, the body's first string, is empty.
fn unnamed(parse: &[u8]) -> bool {
    parse.get(5) == Some(&0)
}

/// A named Parse whose text some server already accepted (`known` says so
/// for a server name): the client's name and the statement, which the proxy
/// registers and answers with no server at all.
pub(super) fn known_parse(
    frame: &[u8],
    known: impl FnOnce(&str) -> bool,
) -> Option<(Arc<str>, Statement)> {
    if unnamed(frame) {
        return None;
    }
    let p = decode_parse(frame)?;
    let stmt = Statement::new(&p);
    if !known(&stmt.server_name) {
        return None;
    }
    Some((Arc::from(&*name_text(p.name)), stmt))
}

/// The server side of a rewrite: what the server holds and what goes to it.
/// Built from borrows for one message.
pub(super) struct Upstream<'a> {
    /// Proxy-named statements the server connection holds.
    pub held: &'a mut ServerStatements,
    /// `proxy.max_prepared_statements`.
    pub max_prepared: usize,
    /// Bytes for the server, appended.
    pub out: &'a mut BytesMut,
    /// Replies owed, appended.
    pub expect: &'a mut Expectations,
    /// Parse frames written to `out` (counted for `SHOW STATS`).
    pub parses: u32,
}

impl Upstream<'_> {
    /// Rewrites one whole message for which [`names_statement`] held, with
    /// the client's statements `stmts`. Returns what the statement a Parse
    /// or Bind names does to the session (it may pin the client, or change
    /// settings).
    pub fn rewrite(&mut self, frame: &[u8], stmts: &mut ClientStatements) -> Effects {
        match frame.first() {
            Some(b'P') => return self.parse(frame, stmts),
            Some(b'B') => {
                let Some((portal, name, tail)) = decode_bind_statement(frame) else {
                    self.pass(frame, Sent::Bind);
                    return Effects::default();
                };
                match stmts.get(name) {
                    Some(stmt) => {
                        self.ensure_prepared(stmt);
                        encode_bind(self.out, portal, stmt.server_name.as_bytes(), tail);
                        self.expect.push(Expect::Forward(Sent::Bind));
                        // Running it does what its text does (it may have
                        // been parsed with no server, as a known statement).
                        return stmt.effects;
                    }
                    None => self.pass(frame, Sent::Bind),
                }
            }
            Some(b'D') => {
                let Some((_, name)) = decode_target(frame) else {
                    self.pass(frame, Sent::DescribePortal);
                    return Effects::default();
                };
                match stmts.get(name) {
                    Some(stmt) => {
                        self.ensure_prepared(stmt);
                        encode_target(self.out, b'D', b'S', stmt.server_name.as_bytes());
                        self.expect.push(Expect::Forward(Sent::DescribeStatement));
                    }
                    None => self.pass(frame, Sent::DescribeStatement),
                }
            }
            _ => {
                // Close of a named statement: the client's name goes, the
                // shared server statement stays; the proxy answers itself.
                if let Some((_, name)) = decode_target(frame) {
                    stmts.remove(&name_text(name));
                }
                self.expect.push(Expect::Answer(b'3'));
            }
        }
        Effects::default()
    }

    /// The head of a Bind too large to hold (`len`, its length field),
    /// naming `name`: the head is rewritten and the body streams after it.
    /// `None`: no such statement here, so the Bind goes unchanged (and
    /// PostgreSQL answers 26000).
    pub fn bind_head(
        &mut self,
        portal: &[u8],
        name: &[u8],
        len: usize,
        stmts: &ClientStatements,
    ) -> Option<Effects> {
        let stmt = stmts.get(name)?;
        self.ensure_prepared(stmt);
        let server = stmt.server_name.as_bytes();
        encode_bind_head(self.out, portal, server, len - name.len() + server.len());
        self.expect.push(Expect::Forward(Sent::Bind));
        Some(stmt.effects)
    }

    /// A named Parse: registered under the client's name; sent under the
    /// server name only if this server lacks it, else answered by the proxy.
    fn parse(&mut self, frame: &[u8], stmts: &mut ClientStatements) -> Effects {
        let Some(p) = decode_parse(frame) else {
            self.pass(frame, Sent::Bind);
            return Effects::default();
        };
        let client_name: Arc<str> = Arc::from(&*name_text(p.name));
        let stmt = match stmts.insert(client_name.clone(), Statement::new(&p)) {
            Ok(stmt) => stmt,
            Err(over) => {
                self.refuse(over);
                return Effects::default();
            }
        };
        if self.held.touch(&stmt.server_name) {
            self.expect.push(Expect::Answer(b'1'));
        } else {
            let evicted = self.held.add(stmt.server_name.clone(), self.max_prepared);
            self.evict(evicted);
            self.out.extend_from_slice(&stmt.parse);
            self.parses += 1;
            let sent = Sent::Parse {
                server: Some(stmt.server_name.clone()),
                client: Some(client_name),
            };
            self.expect.push(Expect::Forward(sent));
        }
        stmt.effects
    }

    /// A Parse past the client's bounds: the server gets a Bind of a
    /// statement that cannot exist (`sy_` names are 16 hex digits), whose
    /// error the client sees as the bound's.
    fn refuse(&mut self, over: OverBound) {
        let (key, limit) = match over {
            OverBound::Count(n) => ("max_client_prepared_statements", n),
            OverBound::Bytes(n) => ("max_client_prepared_bytes", n),
        };
        let mut err = BytesMut::new();
        ClientError::PreparedLimit { key, limit }.encode_as(&mut err, false);
        // No parameters, no parameter or result formats.
        encode_bind(self.out, b"", REFUSED, &[0; 6]);
        self.expect.push(Expect::Refused(err.freeze()));
    }

    /// Sends a message unchanged (malformed or naming an unknown statement:
    /// PostgreSQL gives the client the error it expects).
    fn pass(&mut self, frame: &[u8], sent: Sent) {
        self.out.extend_from_slice(frame);
        self.expect.push(Expect::Forward(sent));
    }

    /// Injects the statement's Parse if this server does not hold it; its
    /// reply is the proxy's business.
    fn ensure_prepared(&mut self, stmt: &Statement) {
        if self.held.touch(&stmt.server_name) {
            return;
        }
        let evicted = self.held.add(stmt.server_name.clone(), self.max_prepared);
        self.evict(evicted);
        self.out.extend_from_slice(&stmt.parse);
        self.parses += 1;
        self.expect.push(Expect::Swallow(Sent::Parse {
            server: Some(stmt.server_name.clone()),
            client: None,
        }));
    }

    /// Closes statements evicted from the server, replies swallowed.
    fn evict(&mut self, names: Vec<Arc<str>>) {
        for name in names {
            encode_target(self.out, b'C', b'S', name.as_bytes());
            self.expect.push(Expect::Swallow(Sent::Close));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use postgres_protocol::message::frontend;
    use postgres_protocol::IsNull;

    use super::*;

    // Frames as a real client (tokio-postgres) encodes them.
    fn parse(name: &str, text: &str) -> BytesMut {
        let mut b = BytesMut::new();
        frontend::parse(name, text, [], &mut b).unwrap();
        b
    }

    fn bind(portal: &str, stmt: &str) -> BytesMut {
        let mut b = BytesMut::new();
        let put = |v: &[u8], buf: &mut BytesMut| {
            buf.put_slice(v);
            Ok(IsNull::No)
        };
        let done = frontend::bind(portal, stmt, [1], [&b"\x00\x2a"[..]], put, [1], &mut b);
        assert!(done.is_ok());
        b
    }

    fn describe(kind: u8, name: &str) -> BytesMut {
        let mut b = BytesMut::new();
        frontend::describe(kind, name, &mut b).unwrap();
        b
    }

    fn close(kind: u8, name: &str) -> BytesMut {
        let mut b = BytesMut::new();
        frontend::close(kind, name, &mut b).unwrap();
        b
    }

    fn cat(frames: &[BytesMut]) -> BytesMut {
        frames.iter().flat_map(|f| f.iter().copied()).collect()
    }

    /// The proxy-wide server name of a text (no parameter types).
    fn sy(text: &str) -> String {
        Statement::new(&decode_parse(&parse("", text)).unwrap())
            .server_name
            .to_string()
    }

    fn sent_parse(text: &str, client: Option<&str>) -> Sent {
        Sent::Parse {
            server: Some(sy(text).into()),
            client: client.map(Into::into),
        }
    }

    struct Case {
        what: &'static str,
        /// The client's statements before: (name, text).
        known: &'static [(&'static str, &'static str)],
        /// Texts the server connection holds before, least recently used first.
        held: &'static [&'static str],
        max_prepared: usize,
        frame: BytesMut,
        /// What the server gets.
        out: BytesMut,
        expect: Vec<Expect>,
        /// The client's names afterwards: (name, its text or None if unknown).
        names: &'static [(&'static str, Option<&'static str>)],
        /// Texts the server connection holds afterwards.
        held_after: &'static [&'static str],
        pin: Option<&'static str>,
    }

    fn cases() -> Vec<Case> {
        let (s1, s2) = ("SELECT 1", "SELECT 2");
        vec![
            Case {
                what: "Parse of a new name goes up under the server name",
                known: &[],
                held: &[],
                max_prepared: 10,
                frame: parse("s1", s1),
                out: parse(&sy(s1), s1),
                expect: vec![Expect::Forward(sent_parse(s1, Some("s1")))],
                names: &[("s1", Some("SELECT 1"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Parse of a text the server holds: answered by the proxy, nothing sent",
                known: &[],
                held: &["SELECT 1"],
                max_prepared: 10,
                frame: parse("s1", s1),
                out: BytesMut::new(),
                expect: vec![Expect::Answer(b'1')],
                names: &[("s1", Some("SELECT 1"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Parse reusing a name for another text replaces it",
                known: &[("s1", "SELECT 1")],
                held: &["SELECT 1"],
                max_prepared: 10,
                frame: parse("s1", s2),
                out: parse(&sy(s2), s2),
                expect: vec![Expect::Forward(sent_parse(s2, Some("s1")))],
                names: &[("s1", Some("SELECT 2"))],
                held_after: &["SELECT 1", "SELECT 2"],
                pin: None,
            },
            Case {
                what: "Parse beyond max_prepared closes the least recently used first",
                known: &[],
                held: &["SELECT 2"],
                max_prepared: 1,
                frame: parse("s1", s1),
                out: cat(&[close(b'S', &sy(s2)), parse(&sy(s1), s1)]),
                expect: vec![
                    Expect::Swallow(Sent::Close),
                    Expect::Forward(sent_parse(s1, Some("s1"))),
                ],
                names: &[("s1", Some("SELECT 1"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Parse of a text that ties the client to its server",
                known: &[],
                held: &[],
                max_prepared: 10,
                frame: parse("s1", "LISTEN x"),
                out: parse(&sy("LISTEN x"), "LISTEN x"),
                expect: vec![Expect::Forward(sent_parse("LISTEN x", Some("s1")))],
                names: &[("s1", Some("LISTEN x"))],
                held_after: &["LISTEN x"],
                pin: Some("LISTEN"),
            },
            Case {
                what: "Bind of a held statement: renamed, portal and values untouched",
                known: &[("s1", "SELECT 1")],
                held: &["SELECT 1"],
                max_prepared: 10,
                frame: bind("p1", "s1"),
                out: bind("p1", &sy(s1)),
                expect: vec![Expect::Forward(Sent::Bind)],
                names: &[("s1", Some("SELECT 1"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Bind of a statement the server lacks: its Parse injected, reply swallowed",
                known: &[("s1", "SELECT 1")],
                held: &[],
                max_prepared: 10,
                frame: bind("", "s1"),
                out: cat(&[parse(&sy(s1), s1), bind("", &sy(s1))]),
                expect: vec![
                    Expect::Swallow(sent_parse(s1, None)),
                    Expect::Forward(Sent::Bind),
                ],
                names: &[("s1", Some("SELECT 1"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Bind of an unknown name goes up as sent: PostgreSQL answers 26000",
                known: &[],
                held: &["SELECT 1"],
                max_prepared: 10,
                frame: bind("", "nope"),
                out: bind("", "nope"),
                expect: vec![Expect::Forward(Sent::Bind)],
                names: &[("nope", None)],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Describe of a held statement is renamed",
                known: &[("s1", "SELECT 1")],
                held: &["SELECT 1"],
                max_prepared: 10,
                frame: describe(b'S', "s1"),
                out: describe(b'S', &sy(s1)),
                expect: vec![Expect::Forward(Sent::DescribeStatement)],
                names: &[("s1", Some("SELECT 1"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Describe of a statement the server lacks: its Parse injected",
                known: &[("s1", "SELECT 1")],
                held: &[],
                max_prepared: 10,
                frame: describe(b'S', "s1"),
                out: cat(&[parse(&sy(s1), s1), describe(b'S', &sy(s1))]),
                expect: vec![
                    Expect::Swallow(sent_parse(s1, None)),
                    Expect::Forward(Sent::DescribeStatement),
                ],
                names: &[("s1", Some("SELECT 1"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Describe of an unknown name goes up as sent: PostgreSQL answers 26000",
                known: &[],
                held: &[],
                max_prepared: 10,
                frame: describe(b'S', "nope"),
                out: describe(b'S', "nope"),
                expect: vec![Expect::Forward(Sent::DescribeStatement)],
                names: &[("nope", None)],
                held_after: &[],
                pin: None,
            },
            Case {
                what: "Close of a named statement: the client's name goes, the server keeps it",
                known: &[("s1", "SELECT 1"), ("s2", "SELECT 2")],
                held: &["SELECT 1"],
                max_prepared: 10,
                frame: close(b'S', "s1"),
                out: BytesMut::new(),
                expect: vec![Expect::Answer(b'3')],
                names: &[("s1", None), ("s2", Some("SELECT 2"))],
                held_after: &["SELECT 1"],
                pin: None,
            },
            Case {
                what: "Close of an unknown name is answered too, as PostgreSQL would",
                known: &[],
                held: &[],
                max_prepared: 10,
                frame: close(b'S', "nope"),
                out: BytesMut::new(),
                expect: vec![Expect::Answer(b'3')],
                names: &[("nope", None)],
                held_after: &[],
                pin: None,
            },
        ]
    }

    #[test]
    fn a_parse_past_the_bounds_fails_on_the_server_as_the_bound() {
        use crate::client::expect::Verdict;
        use crate::client::prepared::StatementBounds;
        let bounds = StatementBounds {
            count: 1,
            bytes: usize::MAX,
        };
        let mut stmts = ClientStatements::new(bounds);
        let mut held = ServerStatements::default();
        let (mut out, mut expect) = (BytesMut::new(), Expectations::default());
        let mut up = Upstream {
            held: &mut held,
            max_prepared: 10,
            out: &mut out,
            expect: &mut expect,
            parses: 0,
        };
        up.rewrite(&parse("s1", "SELECT 1"), &mut stmts);
        up.rewrite(&parse("s2", "SELECT 2"), &mut stmts);
        assert!(stmts.get(b"s2").is_none(), "not registered");
        let mut want = parse(&sy("SELECT 1"), "SELECT 1");
        encode_bind(&mut want, b"", REFUSED, &[0; 6]);
        assert_eq!(out, want, "the refused Parse becomes a Bind that fails");
        let queued = expect.queued();
        let Some(Expect::Refused(err)) = queued.get(1) else {
            panic!("{queued:?}");
        };
        let text = String::from_utf8_lossy(err);
        assert!(text.contains("53400") && text.contains("max_client_prepared_statements = 1"));
        assert_eq!(
            expect.verdict(b'E'),
            Verdict::Forward,
            "the Parse's reply is first"
        );
        expect.on_server(b'1');
        assert_eq!(
            expect.verdict(b'E'),
            Verdict::Drop,
            "replaced by the proxy's"
        );
    }

    #[test]
    fn rewrites_statement_names() {
        for c in cases() {
            let mut stmts = ClientStatements::default();
            for (name, text) in c.known {
                let stmt = Statement::new(&decode_parse(&parse(name, text)).unwrap());
                stmts.insert((*name).into(), stmt).unwrap();
            }
            let mut held = ServerStatements::default();
            for text in c.held {
                held.add(sy(text).into(), 100);
            }
            let (mut out, mut expect) = (BytesMut::new(), Expectations::default());
            let mut up = Upstream {
                held: &mut held,
                max_prepared: c.max_prepared,
                out: &mut out,
                expect: &mut expect,
                parses: 0,
            };
            assert!(names_statement(c.frame[0], &c.frame), "{}", c.what);
            let pin = up.rewrite(&c.frame, &mut stmts).pin;
            let parses = up.parses;
            assert_eq!(out, c.out, "{}: bytes for the server", c.what);
            assert_eq!(expect.queued(), c.expect, "{}: replies owed", c.what);
            assert_eq!(pin, c.pin, "{}", c.what);
            let injected = c.expect.iter().filter(|e| {
                matches!(
                    e,
                    Expect::Forward(Sent::Parse { .. }) | Expect::Swallow(Sent::Parse { .. })
                )
            });
            assert_eq!(
                parses as usize,
                injected.count(),
                "{}: Parses counted",
                c.what
            );
            for (name, text) in c.names {
                let got = stmts
                    .get(name.as_bytes())
                    .map(|s| s.server_name.to_string());
                assert_eq!(got, text.map(sy), "{}: client name {name}", c.what);
            }
            assert_eq!(held.len(), c.held_after.len(), "{}: held", c.what);
            for text in c.held_after {
                assert!(held.touch(&sy(text)), "{}: server holds {text}", c.what);
            }
        }
    }

    #[test]
    fn only_messages_naming_a_statement_are_held() {
        let mut execute = BytesMut::new();
        frontend::execute("p1", 0, &mut execute).unwrap();
        let mut sync = BytesMut::new();
        frontend::sync(&mut sync);
        let cases = [
            (parse("s1", "SELECT 1"), true),
            // The unnamed statement and portals pass through as sent.
            (parse("", "SELECT 1"), false),
            (bind("p1", ""), false),
            (bind("", "s1"), true),
            (bind("p1", "s1"), true),
            (describe(b'S', "s1"), true),
            (describe(b'S', ""), false),
            (describe(b'P', "p1"), false),
            (close(b'S', "s1"), true),
            (close(b'P', "p1"), false),
            (close(b'S', ""), false),
            (execute, false),
            (sync, false),
            // Malformed: forwarded for PostgreSQL to reject.
            (BytesMut::from(&b"P\0\0\0\x08s1\0\0"[..]), false),
            (BytesMut::from(&b"B\0\0\0\x06p1"[..]), false),
            (BytesMut::from(&b"B\0\0\0\x05\0"[..]), false),
            // A name with no end is held, then passed on undecoded.
            (BytesMut::from(&b"B\0\0\0\x07\0s1"[..]), true),
        ];
        for (frame, held) in cases {
            assert_eq!(names_statement(frame[0], &frame), held, "{frame:?}");
        }
    }

    #[test]
    fn a_named_parse_of_a_known_text_needs_no_server() {
        let known = |n: &str| n == sy("SELECT 1");
        let got = known_parse(&parse("s1", "SELECT 1"), known);
        let got = got.map(|(name, stmt)| (name.to_string(), stmt.server_name.to_string()));
        assert_eq!(got, Some(("s1".to_string(), sy("SELECT 1"))));
        assert!(known_parse(&parse("s1", "SELECT 2"), known).is_none());
        assert!(
            known_parse(&parse("", "SELECT 1"), known).is_none(),
            "unnamed"
        );
        assert!(
            known_parse(&b"P\0\0\0\x05"[..], known).is_none(),
            "malformed"
        );
    }
}

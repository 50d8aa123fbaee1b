//! Named prepared statements under transaction pooling. A client's statement
//! name maps to a proxy-wide server name derived from its text and parameter
//! types, so every client preparing the same query shares one server-side
//! statement, and two clients using one name for different texts never mix.
//! Each server connection remembers which it holds (`pool::statements`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::protocol::messages::extended::{encode_parse, Parse};

/// A statement as the client prepared it.
#[derive(Debug)]
pub struct Statement {
    /// Server-side name: `sy_` + 16 hex digits of the text's hash.
    pub server_name: Arc<str>,
    /// A Parse frame under `server_name`, ready to inject on any server.
    pub parse: Bytes,
    /// What running it does to the session (read once, from its text).
    pub effects: super::session_state::Effects,
}

impl Statement {
    /// The statement for a client's Parse.
    pub fn new(p: &Parse<'_>) -> Statement {
        let mut h = Sha256::new();
        h.update(p.query);
        h.update([0]);
        h.update(p.param_types);
        let digest = h.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let server_name: Arc<str> = format!("sy_{hex}").into();
        let mut out = BytesMut::new();
        encode_parse(&mut out, server_name.as_bytes(), p);
        Statement {
            server_name,
            parse: out.freeze(),
            effects: super::session_state::effects(p.query),
        }
    }
}

/// How many named statements one client may hold, and how many bytes of
/// distinct statement text (`proxy.max_client_prepared_statements`,
/// `proxy.max_client_prepared_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementBounds {
    /// Names.
    pub count: usize,
    /// Bytes of the Parse frames kept, each distinct text counted once.
    pub bytes: usize,
}

impl Default for StatementBounds {
    fn default() -> StatementBounds {
        StatementBounds {
            count: usize::MAX,
            bytes: usize::MAX,
        }
    }
}

/// A statement a client may not add: which bound it would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBound {
    /// `count` names held already.
    Count(usize),
    /// The text would take the client past `bytes` bytes.
    Bytes(usize),
}

/// One client's named statements. Names preparing the same text (and
/// parameter types) share one [`Statement`], so a client cannot multiply
/// one large text by preparing it under many names. The maps are made at
/// the first statement: most clients never prepare one, and every idle
/// client carries this.
#[derive(Debug, Default)]
pub struct ClientStatements {
    held: Option<Box<Held>>,
    bounds: StatementBounds,
}

/// A statement name as the maps key it: the text of a valid UTF-8 name
/// (borrowed), else the name with its invalid bytes replaced, as the Parse
/// that registered it was. A valid name takes one validation, not the
/// chunked decoding of `String::from_utf8_lossy`.
pub fn name_text(name: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(name) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(name),
    }
}

/// The maps' hasher: a lookup by name runs for every Bind of a named
/// statement, and std's SipHash cost more than the rest of the lookup.
/// Seeded at random per process and per map; a client's maps are bounded
/// (`StatementBounds`), so colliding names cost that client alone, and only
/// so much.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Held {
    by_name: HashMap<Arc<str>, Arc<Statement>, Hasher>,
    /// Distinct statements by server name, with how many names use each.
    texts: HashMap<Arc<str>, (Arc<Statement>, usize), Hasher>,
    /// Bytes of the distinct statements' Parse frames.
    bytes: usize,
}

impl ClientStatements {
    /// No statements yet, bounded by `bounds`.
    pub fn new(bounds: StatementBounds) -> ClientStatements {
        ClientStatements { held: None, bounds }
    }

    /// Registers (or replaces) `name`; returns the statement now kept for
    /// it (shared with other names of the same text). Refused, changing
    /// nothing, past the bounds.
    pub fn insert(&mut self, name: Arc<str>, stmt: Statement) -> Result<Arc<Statement>, OverBound> {
        let bounds = self.bounds;
        self.held
            .get_or_insert_with(Default::default)
            .insert(name, stmt, bounds)
    }

    /// The statement called `name`, as the client sent it (looked up for
    /// every Bind: borrowed, not counted, and no text made of the name).
    pub fn get(&self, name: &[u8]) -> Option<&Statement> {
        let held = self.held.as_ref()?;
        held.by_name.get(&*name_text(name)).map(|s| &**s)
    }

    /// Forgets `name` (Close, or its Parse failed).
    pub fn remove(&mut self, name: &str) {
        if let Some(held) = self.held.as_mut() {
            held.remove(name);
        }
    }

    /// Forgets every name (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.held = None;
    }
}

impl Held {
    fn insert(
        &mut self,
        name: Arc<str>,
        stmt: Statement,
        bounds: StatementBounds,
    ) -> Result<Arc<Statement>, OverBound> {
        let replacing = self.by_name.contains_key(&name);
        if !replacing && self.by_name.len() >= bounds.count {
            return Err(OverBound::Count(bounds.count));
        }
        let shared = match self.texts.get_mut(&stmt.server_name) {
            Some((kept, uses)) => {
                *uses += 1;
                kept.clone()
            }
            None => {
                let size = stmt.parse.len();
                if self.bytes.saturating_add(size) > bounds.bytes {
                    return Err(OverBound::Bytes(bounds.bytes));
                }
                self.bytes += size;
                let kept = Arc::new(stmt);
                self.texts
                    .insert(kept.server_name.clone(), (kept.clone(), 1));
                kept
            }
        };
        if let Some(old) = self.by_name.insert(name, shared.clone()) {
            self.release(&old);
        }
        Ok(shared)
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.release(&old);
        }
    }

    /// One name less uses `stmt`; its text goes with the last.
    fn release(&mut self, stmt: &Statement) {
        let Some((kept, uses)) = self.texts.get_mut(&stmt.server_name) else {
            return;
        };
        *uses -= 1;
        if *uses == 0 {
            self.bytes -= kept.parse.len();
            self.texts.remove(&stmt.server_name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'a>(name: &'a [u8], query: &'a [u8]) -> Parse<'a> {
        Parse {
            name,
            query,
            param_types: b"\0\0",
        }
    }

    #[test]
    fn same_text_same_server_name_different_text_different() {
        let a = Statement::new(&parse(b"s1", b"SELECT 1"));
        let b = Statement::new(&parse(b"other", b"SELECT 1"));
        let c = Statement::new(&parse(b"s1", b"SELECT 2"));
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert!(a.server_name.starts_with("sy_") && a.server_name.len() == 19);
    }

    #[test]
    fn names_share_one_text_and_the_bounds_hold() {
        let one = Statement::new(&parse(b"", b"SELECT 1")).parse.len();
        let mut s = ClientStatements::new(StatementBounds {
            count: 3,
            bytes: 2 * one + 1,
        });
        let stmt = |q: &'static [u8]| Statement::new(&parse(b"", q));
        let a = s.insert("a".into(), stmt(b"SELECT 1")).unwrap();
        let b = s.insert("b".into(), stmt(b"SELECT 1")).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one text, one copy");
        s.insert("c".into(), stmt(b"SELECT 2")).unwrap();
        assert_eq!(
            s.insert("d".into(), stmt(b"SELECT 1")).err(),
            Some(OverBound::Count(3))
        );
        // Replacing a name is not a new name; a third text is over the bytes.
        assert_eq!(
            s.insert("a".into(), stmt(b"SELECT 3")).err(),
            Some(OverBound::Bytes(2 * one + 1))
        );
        assert_eq!(s.get(b"a").unwrap().server_name, a.server_name, "unchanged");
        // The last name of a text gives its bytes back.
        s.remove("c");
        s.insert("a".into(), stmt(b"SELECT 3")).unwrap();
        let held = s.held.as_ref().unwrap();
        assert_eq!(
            (held.by_name.len(), held.texts.len(), held.bytes),
            (2, 2, 2 * one)
        );
        s.clear();
        assert!(s.held.is_none() && s.get(b"a").is_none());
    }

    #[test]
    fn a_name_is_found_by_its_bytes_valid_utf8_or_not() {
        let mut s = ClientStatements::default();
        for name in [&b"s1"[..], "sélect".as_bytes(), b"\xffs\xfe", b""] {
            let key: Arc<str> = Arc::from(&*name_text(name));
            s.insert(key, Statement::new(&parse(b"", name))).unwrap();
            let found = s.get(name).map(|st| st.server_name.clone());
            assert_eq!(found, Some(Statement::new(&parse(b"", name)).server_name));
        }
        assert!(matches!(name_text(b"s1"), std::borrow::Cow::Borrowed("s1")));
        assert_eq!(name_text(b"a\xffb"), String::from_utf8_lossy(b"a\xffb"));
        assert!(s.get(b"s2").is_none());
    }
}

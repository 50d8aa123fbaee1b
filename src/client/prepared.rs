//! Named prepared statements under transaction pooling. A client's statement
//! name maps to a proxy-wide server name derived from its text and parameter
//! types, so every client preparing the same query shares one server-side
//! statement, and two clients using one name for different texts never mix.
//! Each server connection remembers which server names it has prepared (least
//! recently used first, bounded by `proxy.max_prepared_statements`).

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
        Statement { server_name, parse: out.freeze() }
    }
}

/// One client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Arc<str>, Arc<Statement>>,
}

impl ClientStatements {
    /// Registers (or replaces) `name`.
    pub fn insert(&mut self, name: Arc<str>, stmt: Arc<Statement>) {
        self.by_name.insert(name, stmt);
    }

    /// The statement called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Statement>> {
        self.by_name.get(name).cloned()
    }

    /// Forgets `name` (Close, or its Parse failed).
    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }
}

/// Server names prepared on one server connection, least recently used first.
#[derive(Debug, Default)]
pub struct ServerStatements {
    names: Vec<Arc<str>>,
}

impl ServerStatements {
    /// Whether `name` is prepared here; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        match self.names.iter().position(|n| &**n == name) {
            Some(i) => {
                let n = self.names.remove(i);
                self.names.push(n);
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared; returns the names to evict (Close) to stay within `max`.
    pub fn add(&mut self, name: Arc<str>, max: usize) -> Vec<Arc<str>> {
        if !self.touch(&name) {
            self.names.push(name);
        }
        let excess = self.names.len().saturating_sub(max.max(1));
        self.names.drain(..excess).collect()
    }

    /// Forgets `name` (its Parse failed or was skipped).
    pub fn remove(&mut self, name: &str) {
        self.names.retain(|n| &**n != name);
    }

    /// How many are prepared.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// None prepared.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'a>(name: &'a [u8], query: &'a [u8]) -> Parse<'a> {
        Parse { name, query, param_types: b"\0\0" }
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
    fn server_set_evicts_least_recently_used() {
        let mut s = ServerStatements::default();
        assert!(s.add("a".into(), 2).is_empty());
        assert!(s.add("b".into(), 2).is_empty());
        assert!(s.touch("a"));
        assert_eq!(s.add("c".into(), 2), vec![Arc::<str>::from("b")]);
        assert!(!s.touch("b"));
        assert_eq!(s.len(), 2);
        s.remove("a");
        assert!(!s.touch("a"));
    }
}

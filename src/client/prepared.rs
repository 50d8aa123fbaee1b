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

    /// Forgets every name (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.by_name.clear();
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
}

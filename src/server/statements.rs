//! Which proxy-named prepared statements one server connection holds, least
//! recently used first, bounded by `proxy.max_prepared_statements`.

use std::sync::Arc;

/// Server names prepared on one server connection.
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

    /// Forgets all (after DISCARD ALL).
    pub fn clear(&mut self) {
        self.names.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
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

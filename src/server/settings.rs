//! The session settings of one server connection, and how to change or read
//! them: a sorted, fingerprinted set of `(name, value)`; the changes that
//! turn one set into another; the one query that applies them; the query
//! that reads back what the session holds now. Pure: `ServerConn` runs the
//! queries.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// One setting: a lower-case name (GUC names ignore case) and its value as text.
pub type Setting = (String, String);

/// A set of settings kept sorted by name, with a fingerprint to compare
/// two sets without walking them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingSet {
    items: Vec<Setting>,
    fingerprint: u64,
}

impl SettingSet {
    /// A set from `(name, value)` pairs; a later duplicate wins.
    pub fn new(pairs: impl IntoIterator<Item = Setting>) -> SettingSet {
        let mut items: Vec<Setting> = Vec::new();
        for (name, value) in pairs {
            let name = name.to_ascii_lowercase();
            match items.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
                Ok(i) => items[i].1 = value,
                Err(i) => items.insert(i, (name, value)),
            }
        }
        // Every client keeps one for as long as it stays: no spare room.
        items.shrink_to_fit();
        let mut h = DefaultHasher::new();
        items.hash(&mut h);
        SettingSet {
            items,
            fingerprint: h.finish(),
        }
    }

    /// The settings, by name.
    pub fn items(&self) -> &[Setting] {
        &self.items
    }

    /// Compares cheaply with another set (equal sets, equal fingerprints).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.items
            .binary_search_by(|(n, _)| n.as_str().cmp(&name))
            .ok()
            .map(|i| self.items[i].1.as_str())
    }
}

/// What must change on a server whose session has `applied` so that it
/// has `want`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    /// `set_config(name, value, false)`.
    Set(&'a str, &'a str),
    /// `RESET name`: the client does not have it.
    Reset(&'a str),
}

/// The changes from `applied` to `want`, sets first.
pub fn changes<'a>(want: &'a SettingSet, applied: &'a SettingSet) -> Vec<Change<'a>> {
    if want.fingerprint == applied.fingerprint && want.items == applied.items {
        return Vec::new();
    }
    let mut out: Vec<Change<'a>> = want
        .items
        .iter()
        .filter(|(n, v)| applied.get(n) != Some(v.as_str()))
        .map(|(n, v)| Change::Set(n, v))
        .collect();
    out.extend(
        applied
            .items
            .iter()
            .filter(|(n, _)| want.get(n).is_none())
            .map(|(n, _)| Change::Reset(n)),
    );
    out
}

/// One simple query making `changes`. Its statements run as one implicit
/// transaction: if any fails, none applies, and the server keeps what it had.
/// Literals are `E''` strings, read the same whatever
/// `standard_conforming_strings` is.
pub fn apply_sql(changes: &[Change<'_>]) -> String {
    let mut resets = String::new();
    let mut sets = Vec::new();
    for c in changes {
        match c {
            Change::Reset(n) => resets.push_str(&format!("RESET {}; ", ident(n))),
            Change::Set(n, v) => {
                sets.push(format!("set_config({}, {}, false)", literal(n), literal(v)))
            }
        }
    }
    if sets.is_empty() {
        return resets.trim_end().to_string();
    }
    format!("{resets}SELECT {}", sets.join(", "))
}

/// Asks for the session's settings as PostgreSQL holds them now: the ones
/// whose source is the session, plus `custom` names (placeholders such as
/// `app.tenant`, which `pg_settings` does not list) that have a value.
pub fn readback_sql(custom: &[&str]) -> String {
    let mut sql =
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'".to_string();
    if !custom.is_empty() {
        let names: Vec<String> = custom.iter().map(|n| literal(n)).collect();
        sql.push_str(&format!(
            " UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM \
             pg_catalog.unnest(ARRAY[{}]::text[]) AS n WHERE \
             pg_catalog.current_setting(n, true) IS NOT NULL AND \
             n NOT IN (SELECT name FROM pg_catalog.pg_settings)",
            names.join(", ")
        ));
    }
    sql
}

/// A string literal, `E''` form: backslash and quote escaped.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A quoted identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn set(pairs: &[(&str, &str)]) -> SettingSet {
        SettingSet::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
    }

    #[test]
    fn changes_set_what_differs_and_reset_what_the_client_lacks() {
        let cases: [(Pairs<'_>, Pairs<'_>, &[Change<'_>]); 5] = [
            (&[("timezone", "UTC")], &[("timezone", "UTC")], &[]),
            (
                &[("TimeZone", "UTC")],
                &[],
                &[Change::Set("timezone", "UTC")],
            ),
            (
                &[],
                &[("search_path", "evil")],
                &[Change::Reset("search_path")],
            ),
            (
                &[("a", "1"), ("b", "2")],
                &[("b", "3"), ("c", "4")],
                &[
                    Change::Set("a", "1"),
                    Change::Set("b", "2"),
                    Change::Reset("c"),
                ],
            ),
            (&[], &[], &[]),
        ];
        for (want, applied, expect) in cases {
            let (want, applied) = (set(want), set(applied));
            assert_eq!(
                changes(&want, &applied),
                expect,
                "{want:?} over {applied:?}"
            );
        }
    }

    #[test]
    fn sql_quotes_whatever_standard_conforming_strings_is() {
        let sql = apply_sql(&[
            Change::Reset("app.x\"y"),
            Change::Set("search_path", r"it's\here"),
            Change::Set("timezone", "UTC"),
        ]);
        assert_eq!(
            sql,
            r#"RESET "app.x""y"; SELECT set_config(E'search_path', E'it\'s\\here', false), set_config(E'timezone', E'UTC', false)"#
        );
        assert_eq!(apply_sql(&[Change::Reset("a")]), r#"RESET "a";"#);
        assert!(readback_sql(&[]).ends_with("source = 'session'"));
        assert!(readback_sql(&["app.tenant"]).contains("ARRAY[E'app.tenant']"));
    }

    #[test]
    fn sets_are_sorted_deduplicated_and_bounded() {
        let s = set(&[("B", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(
            s.items(),
            &[("a".into(), "2".into()), ("b".into(), "3".into())]
        );
        assert_eq!(s.get("A"), Some("2"));
        assert_eq!(
            s.fingerprint(),
            set(&[("a", "2"), ("b", "3")]).fingerprint()
        );
    }
}

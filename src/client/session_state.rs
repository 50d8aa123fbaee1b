//! Session state that transaction pooling must carry between server
//! connections, decided from cheap text checks, not a SQL parser:
//! - parameters PostgreSQL reports (ParameterStatus) plus `search_path`: the
//!   client's values are set on whichever server it gets;
//! - statements that tie a client to one server session (SQL `PREPARE`,
//!   `LISTEN`, temporary tables, session advisory locks, `DECLARE ... WITH
//!   HOLD`, `SET` of an untracked parameter): the client is pinned to its server.

/// Parameters carried from server to server for a client.
pub const TRACKED: [&str; 7] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
    "search_path",
];

/// The tracked name matching `name` (GUC names are case-insensitive).
pub fn tracked(name: &str) -> Option<&'static str> {
    TRACKED
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
}

/// Sets `name = value` in a parameter list.
pub fn set(params: &mut Vec<(String, String)>, name: &str, value: &str) {
    match params
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
    {
        Some(slot) => slot.1 = value.to_string(),
        None => params.push((name.to_string(), value.to_string())),
    }
}

/// The client's values that the server does not have.
pub fn diff<'a>(
    desired: &'a [(String, String)],
    server: &[(String, String)],
) -> Vec<&'a (String, String)> {
    desired
        .iter()
        .filter(|(k, v)| {
            !server
                .iter()
                .any(|(sk, sv)| sk.eq_ignore_ascii_case(k) && sv == v)
        })
        .collect()
}

/// One simple query setting every parameter of `diff`.
pub fn set_sql(diff: &[&(String, String)]) -> String {
    diff.iter()
        .map(|(k, v)| {
            format!(
                "SET \"{}\" = '{}'",
                k.replace('"', ""),
                v.replace('\'', "''")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How much of a query string is examined for what pins (a bound on the
/// work per query; statements past it are not seen).
const PIN_SCAN: usize = 64 * 1024;

/// Why `sql` pins the session to its server, if it does: any of its
/// statements may. Runs on every simple query and Parse, so it works on the
/// bytes as they came: no decoding, no copy.
pub fn pins(sql: &[u8]) -> Option<&'static str> {
    let text = &sql[..sql.len().min(PIN_SCAN)];
    super::sql::statements(text).find_map(|head| statement_pins(&head, text))
}

/// Why one statement (its leading words; `text` the whole query) pins.
fn statement_pins(head: &super::sql::Head<'_>, text: &[u8]) -> Option<&'static str> {
    if head.is(0, "PREPARE") {
        return Some("SQL PREPARE");
    }
    if head.is(0, "LISTEN") {
        return Some("LISTEN");
    }
    if head.is(0, "CREATE")
        && (head.is(1, "TEMP")
            || head.is(1, "TEMPORARY")
            || contains(text, " TEMP TABLE")
            || contains(text, " TEMPORARY TABLE"))
    {
        return Some("temporary table");
    }
    if head.is(0, "DECLARE") && contains(text, "WITH HOLD") {
        return Some("DECLARE ... WITH HOLD");
    }
    if head.is(0, "SET") && !head.is(1, "LOCAL") && !head.is(1, "TRANSACTION") {
        let name = if head.is(1, "SESSION") {
            head.word(2)
        } else {
            head.word(1)
        };
        // search_path is applied from the startup packet, but PostgreSQL
        // (15, checked) does not report a SET of it, so a SET must pin.
        let reported = std::str::from_utf8(name)
            .ok()
            .and_then(tracked)
            .is_some_and(|t| t != "search_path");
        if !reported && !name.eq_ignore_ascii_case(b"SESSION") {
            return Some("SET of an untracked parameter");
        }
    }
    if contains(text, "PG_ADVISORY_LOCK") || contains(text, "PG_TRY_ADVISORY_LOCK") {
        return Some("session advisory lock");
    }
    None
}

/// Whether `hay` contains `needle` (upper-case ASCII), ignoring ASCII case.
fn contains(hay: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_pins_and_what_does_not() {
        let cases: [(&str, bool); 26] = [
            // Comments, later statements and quoting are seen as PostgreSQL sees them.
            ("/* x */ SET foo = 1", true),
            ("-- why\nLISTEN chan", true),
            ("SELECT 1; SET foo = 1", true),
            ("SELECT 1; PREPARE p AS SELECT 1", true),
            ("SELECT 'LISTEN x; SET y = 1'", false),
            ("SELECT $$;SET y = 1$$", false),
            ("/* SET x = 1 */ SELECT 1", false),
            ("PREPARE p AS SELECT 1", true),
            ("listen chan", true),
            ("CREATE TEMP TABLE t (a int)", true),
            ("create temporary table t (a int)", true),
            ("CREATE GLOBAL TEMPORARY TABLE t (a int)", true),
            ("SELECT pg_advisory_lock(1)", true),
            ("SELECT pg_try_advisory_lock(1)", true),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", true),
            ("SET statement_timeout = 5", true),
            ("SELECT pg_advisory_xact_lock(1)", false),
            ("SET LOCAL statement_timeout = 5", false),
            ("SET TimeZone = 'UTC'", false),
            ("set application_name to 'x'", false),
            ("SET SESSION search_path = public", true),
            ("SET SESSION TimeZone = 'UTC'", false),
            ("CREATE TABLE temperature (a int)", false),
            ("SELECT 1", false),
            ("select PG_ADVISORY_LOCK(1)", true),
            ("", false),
        ];
        for (sql, pinned) in cases {
            assert_eq!(pins(sql.as_bytes()).is_some(), pinned, "{sql}");
        }
    }

    #[test]
    fn diff_and_set_sql() {
        let desired = vec![
            ("TimeZone".to_string(), "Asia/Tokyo".to_string()),
            ("application_name".to_string(), "it's".to_string()),
        ];
        let server = vec![
            ("TimeZone".to_string(), "UTC".to_string()),
            ("application_name".to_string(), "it's".to_string()),
        ];
        let d = diff(&desired, &server);
        assert_eq!(d.len(), 1);
        assert_eq!(set_sql(&d), "SET \"TimeZone\" = 'Asia/Tokyo'");
        assert_eq!(
            set_sql(&diff(&desired[1..], &[])),
            "SET \"application_name\" = 'it''s'"
        );
        let mut p = server.clone();
        set(&mut p, "timezone", "Europe/Paris");
        assert_eq!(p[0].1, "Europe/Paris");
        assert_eq!(tracked("datestyle"), Some("DateStyle"));
    }
}

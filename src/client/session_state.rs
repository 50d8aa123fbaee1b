//! What a query does to session state that transaction pooling must carry
//! between server connections, decided from the one SQL scanner's view of
//! it, not a SQL parser:
//! - statements that may change session settings (`SET`, `RESET`, `DISCARD
//!   ALL`, `set_config`): the client's settings are read back from the
//!   server once its transaction is over (`settings`), and follow it;
//! - statements that tie a client to one server session (SQL `PREPARE`,
//!   `LISTEN`, `LOAD`, temporary tables, session advisory locks, `DECLARE ...
//!   WITH HOLD`, `SET ROLE` / `SET SESSION AUTHORIZATION`): the client is
//!   pinned to its server.

/// How much of a query string is examined (a bound on the work per query;
/// statements past it are not seen, so a longer query counts as one that
/// may change settings).
const SCAN: usize = 64 * 1024;

/// What one query string (a simple Query, or a Parse's text) does to the
/// session, as far as transaction pooling cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Why the client must keep its server from now on, if it must.
    pub pin: Option<&'static str>,
    /// It may change session settings: once its transaction is over, the
    /// settings are read back from the server.
    pub settings: bool,
    /// It drops the session's prepared statements (`DISCARD ALL`,
    /// `DEALLOCATE ALL`): the client's, and the ones the proxy made there.
    pub forgets_statements: bool,
    /// A statement of it commits (`COMMIT`, `END`), as
    /// [`super::lost::commits`] says: found in the same pass.
    pub commits: bool,
}

/// What `sql` does; any of its statements may pin or change settings. Runs
/// on every simple query and Parse, so it works on the bytes as they came:
/// no decoding, no copy.
pub fn effects(sql: &[u8]) -> Effects {
    let text = &sql[..sql.len().min(SCAN)];
    let calls = Calls::in_text(text);
    let mut out = Effects {
        pin: None,
        settings: sql.len() > SCAN || calls.set_config,
        forgets_statements: false,
        commits: false,
    };
    // Most queries (SELECT, INSERT, ...) begin no statement with a word
    // that matters here: their first words decide, and the statements'
    // further words are not read.
    let mut words_matter = false;
    let mut class = |word: &[u8]| match first_word(word) {
        First::Matters => words_matter = true,
        First::Commits => out.commits = true,
        First::Other => {}
    };
    match super::sql::lone_first_word(text) {
        Some(word) => class(word),
        None => super::sql::first_words(text).for_each(|h| class(h.word(0))),
    }
    if sql.len() > SCAN {
        out.commits = super::lost::commits(sql);
    }
    let heads = words_matter.then(|| super::sql::statements(text));
    for head in heads.into_iter().flatten() {
        out.settings |= changes_settings(&head);
        out.forgets_statements |= (head.is(0, "DISCARD") && head.is(1, "ALL"))
            || (head.is(0, "DEALLOCATE") && (head.is(1, "ALL") || head.is(2, "ALL")));
        if out.pin.is_none() {
            out.pin = statement_pins(&head, text);
        }
    }
    out.pin = out.pin.or_else(|| calls.pin());
    out
}

/// What a statement's first word tells [`effects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// `SET`, `RESET`, `DISCARD`, `DEALLOCATE`, `PREPARE`, `LISTEN`,
    /// `LOAD`, `CREATE` or `DECLARE`: the statement's further words are read.
    Matters,
    /// `COMMIT` or `END`.
    Commits,
    /// Anything else (`SELECT`, `INSERT`, ...: most statements).
    Other,
}

/// The class of a statement's first word. Runs for every statement of
/// every query: a word whose length and first letter match no keyword
/// (most words) is told apart without a comparison.
fn first_word(word: &[u8]) -> First {
    let candidates: &[&str] = match (word.len(), word.first().map(u8::to_ascii_uppercase)) {
        (3, Some(b'S')) => &["SET"],
        (3, Some(b'E')) => &["END"],
        (4, Some(b'L')) => &["LOAD"],
        (5, Some(b'R')) => &["RESET"],
        (6, Some(b'L')) => &["LISTEN"],
        (6, Some(b'C')) => &["CREATE", "COMMIT"],
        (7, Some(b'D')) => &["DISCARD", "DECLARE"],
        (7, Some(b'P')) => &["PREPARE"],
        (10, Some(b'D')) => &["DEALLOCATE"],
        _ => &[],
    };
    match candidates
        .iter()
        .find(|k| word.eq_ignore_ascii_case(k.as_bytes()))
    {
        Some(&"COMMIT" | &"END") => First::Commits,
        Some(_) => First::Matters,
        None => First::Other,
    }
}

/// Functions named anywhere in a query's text (quoted, in a comment or a
/// function body too: a false match only costs a read-back or a pin).
/// Looked for once per query, not per statement.
#[derive(Debug, Clone, Copy)]
struct Calls {
    set_config: bool,
    /// `set_config` of `role` or `session_authorization`.
    sets_identity: bool,
    advisory_lock: bool,
}

impl Calls {
    /// One pass over the text's `_`s, which every name looked for has.
    fn in_text(text: &[u8]) -> Calls {
        // The first letters are compared before the whole name: most
        // candidates (`pgbench_accounts`) differ there already.
        let at = |start: Option<usize>, name: &str| {
            start
                .and_then(|s| text.get(s..s + name.len()))
                .is_some_and(|w| {
                    w[0].eq_ignore_ascii_case(&name.as_bytes()[0])
                        && w.eq_ignore_ascii_case(name.as_bytes())
                })
        };
        let (mut set_config, mut advisory_lock) = (false, false);
        for i in memchr::memchr_iter(b'_', text) {
            // The letter after the `_` rules out all names but one (most
            // `_`s are in table and column names).
            match text.get(i + 1).map(u8::to_ascii_uppercase) {
                Some(b'C') => set_config |= at(i.checked_sub(3), "SET_CONFIG"),
                Some(b'A') => advisory_lock |= at(i.checked_sub(2), "PG_ADVISORY_LOCK"),
                Some(b'T') => advisory_lock |= at(i.checked_sub(2), "PG_TRY_ADVISORY_LOCK"),
                _ => {}
            }
        }
        Calls {
            set_config,
            sets_identity: set_config
                && (contains(text, "'ROLE'") || contains(text, "'SESSION_AUTHORIZATION'")),
            advisory_lock,
        }
    }

    /// Why these calls pin the session, if they do.
    fn pin(self) -> Option<&'static str> {
        if self.sets_identity {
            // Another client must never run as this one's role.
            Some(IDENTITY)
        } else if self.advisory_lock {
            Some("session advisory lock")
        } else {
            None
        }
    }
}

const IDENTITY: &str = "SET ROLE or SET SESSION AUTHORIZATION";

/// Why `sql` pins the session to its server, if it does.
pub fn pins(sql: &[u8]) -> Option<&'static str> {
    effects(sql).pin
}

/// Whether a statement may change a session-level setting (`SET LOCAL`,
/// `SET TRANSACTION` and `SET CONSTRAINTS` last one transaction at most).
fn changes_settings(head: &super::sql::Head<'_>) -> bool {
    (head.is(0, "SET")
        && !head.is(1, "LOCAL")
        && !head.is(1, "TRANSACTION")
        && !head.is(1, "CONSTRAINTS"))
        || head.is(0, "RESET")
        || (head.is(0, "DISCARD") && head.is(1, "ALL"))
}

/// Why one statement (its leading words; `text` the whole query) pins.
fn statement_pins(head: &super::sql::Head<'_>, text: &[u8]) -> Option<&'static str> {
    if head.is(0, "PREPARE") {
        return Some("SQL PREPARE");
    }
    if head.is(0, "LISTEN") {
        return Some("LISTEN");
    }
    if head.is(0, "LOAD") {
        return Some("LOAD of a library");
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
    if sets_identity(head) {
        // Another client must never run as this one's role.
        return Some(IDENTITY);
    }
    None
}

/// `SET [SESSION] ROLE` or `SET [SESSION] SESSION AUTHORIZATION`.
fn sets_identity(head: &super::sql::Head<'_>) -> bool {
    let set_session = head.is(0, "SET") && head.is(1, "SESSION");
    (head.is(0, "SET") && head.is(1, "ROLE"))
        || (set_session
            && (head.is(2, "ROLE") || head.is(2, "SESSION") || head.is(2, "AUTHORIZATION")))
}

/// Whether `hay` contains `needle` (upper-case ASCII), ignoring ASCII case.
/// Runs on every query: only the places holding the needle's first byte
/// that is not a letter (`_`, a blank, a quote), which case cannot change,
/// are compared in full.
fn contains(hay: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    let matches_at = |start: usize| {
        hay.get(start..start + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    };
    match needle.iter().position(|c| !c.is_ascii_alphabetic()) {
        Some(k) => memchr::memchr_iter(needle[k], hay).any(|at| at >= k && matches_at(at - k)),
        None => (0..hay.len()).any(matches_at),
    }
}

/// The custom settings (`app.tenant`: a dotted name, which PostgreSQL keeps
/// as a placeholder and `pg_settings` does not list) that `sql` SETs or
/// RESETs, or passes to `set_config` as a literal. Runs only for queries
/// `effects` says change settings.
pub fn custom_names(sql: &[u8]) -> Vec<String> {
    let text = &sql[..sql.len().min(SCAN)];
    let mut names = Vec::new();
    for head in super::sql::statements(text) {
        let at = match (
            head.is(0, "SET") || head.is(0, "RESET"),
            head.is(1, "SESSION"),
        ) {
            (true, true) => 2,
            (true, false) => 1,
            _ => continue,
        };
        let word = head.word(at);
        if word.is_empty() {
            continue;
        }
        // Words are slices of `text`: the dotted rest follows the first part.
        let start = word.as_ptr() as usize - text.as_ptr() as usize;
        let name = dotted(&text[start..]);
        if name.contains('.') {
            names.push(name);
        }
    }
    let upper = text.to_ascii_uppercase();
    let mut from = 0;
    while let Some(p) = find(&upper[from..], b"SET_CONFIG") {
        from += p + b"SET_CONFIG".len();
        if let Some(name) = first_literal(&text[from..]).filter(|n| n.contains('.')) {
            names.push(name.to_ascii_lowercase());
        }
    }
    names.sort();
    names.dedup();
    names
}

/// `a.b.c` at the start of `s` (words joined by dots), lower-cased.
fn dotted(s: &[u8]) -> String {
    let end = s
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c >= 0x80))
        .unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).to_ascii_lowercase()
}

/// The string literal right after `(` at the start of `s` (`set_config('a.b', ...`).
fn first_literal(s: &[u8]) -> Option<String> {
    let s = s.trim_ascii_start().strip_prefix(b"(")?.trim_ascii_start();
    let s = s
        .strip_prefix(b"E")
        .or_else(|| s.strip_prefix(b"e"))
        .unwrap_or(s);
    let body = s.strip_prefix(b"'")?;
    let end = body.iter().position(|&c| c == b'\'')?;
    Some(String::from_utf8_lossy(&body[..end]).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_pins_and_what_does_not() {
        let cases: [(&str, bool); 35] = [
            // Calls pin wherever they are, whatever the first words.
            ("WITH x AS (SELECT 1) SELECT pg_try_advisory_lock(2)", true),
            (
                "INSERT INTO t SELECT set_config('session_authorization', 'u', false)",
                true,
            ),
            // Comments, later statements and quoting are seen as PostgreSQL sees them.
            ("/* x */ SET ROLE foo", true),
            ("-- why\nLISTEN chan", true),
            ("SELECT 1; SET SESSION AUTHORIZATION foo", true),
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
            ("SELECT PG_TRY_ADVISORY_LOCK(1), PG_ADVISORY_LOCK(2)", true),
            ("SELECT a_b, c_d FROM t_pg_advisory_lock", true),
            ("SELECT Set_Config('ROLE', 'foo', false)", true),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", true),
            ("SET statement_timeout = 5", false),
            ("SET SESSION ROLE foo", true),
            ("SELECT set_config('role', 'foo', false)", true),
            ("SET LOCAL ROLE foo", false),
            ("LOAD 'auto_explain'", true),
            ("SELECT pg_advisory_xact_lock(1)", false),
            ("SET LOCAL statement_timeout = 5", false),
            ("SET TimeZone = 'UTC'", false),
            ("set application_name to 'x'", false),
            ("SET SESSION search_path = public", false),
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
    fn what_may_change_settings() {
        let cases: [(&str, bool); 14] = [
            ("SET statement_timeout = 5", true),
            ("/* why */ set search_path to a, b", true),
            ("SET SESSION timezone TO 'UTC'", true),
            ("SET TIME ZONE 'UTC'", true),
            ("RESET ALL", true),
            ("DISCARD ALL", true),
            ("SELECT 1; SET x.y = 1", true),
            (
                "SELECT pg_catalog.set_config('search_path', 'evil', false)",
                true,
            ),
            ("SET LOCAL statement_timeout = 5", false),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false),
            ("SET CONSTRAINTS ALL DEFERRED", false),
            ("SELECT 'SET x = 1'", false),
            ("DISCARD PLANS", false),
            ("SELECT 1", false),
        ];
        for (sql, changes) in cases {
            assert_eq!(effects(sql.as_bytes()).settings, changes, "{sql}");
        }
        for (sql, forgets) in [
            ("DISCARD ALL", true),
            ("deallocate all", true),
            ("DEALLOCATE PREPARE ALL", true),
            ("DEALLOCATE s1", false),
            ("RESET ALL", false),
        ] {
            assert_eq!(effects(sql.as_bytes()).forgets_statements, forgets, "{sql}");
        }
        let long = format!("SELECT '{}'", "x".repeat(SCAN));
        assert!(
            effects(long.as_bytes()).settings,
            "too long to scan: read back"
        );
    }

    #[test]
    fn effects_commits_as_lost_commits_says() {
        let long = format!("SELECT '{}'; COMMIT", "x".repeat(SCAN));
        for sql in [
            "COMMIT",
            "select 1; end;",
            "SELECT 'COMMIT'",
            "/* c */ Commit",
            "BEGIN; UPDATE t SET a = 1",
            long.as_str(),
        ] {
            let sql = sql.as_bytes();
            assert_eq!(effects(sql).commits, super::super::lost::commits(sql));
        }
        assert!(effects(long.as_bytes()).commits);
    }

    /// The first words of the statements whose further words `effects` reads.
    const MATTERS: [&str; 9] = [
        "SET",
        "RESET",
        "DISCARD",
        "DEALLOCATE",
        "PREPARE",
        "LISTEN",
        "LOAD",
        "CREATE",
        "DECLARE",
    ];

    #[test]
    fn first_words_are_told_apart_as_by_comparing_every_keyword() {
        let mut words: Vec<&str> = MATTERS.to_vec();
        words.extend(["COMMIT", "END", "SELECT", "SETS", "SE", "", "ENDS", "LOCK"]);
        words.extend(["CLOSE", "DELETE", "DECLARES", "reset", "Commit", "lisTEN"]);
        for w in words {
            let upper = w.to_ascii_uppercase();
            let want = if MATTERS.contains(&upper.as_str()) {
                First::Matters
            } else if upper == "COMMIT" || upper == "END" {
                First::Commits
            } else {
                First::Other
            };
            assert_eq!(first_word(w.as_bytes()), want, "{w}");
        }
    }

    #[test]
    fn contains_ignores_case_wherever_the_needle_is() {
        let cases: [(&str, &str, bool); 9] = [
            ("select set_config('a', 'b', false)", "SET_CONFIG", true),
            ("SET_CONFIG", "SET_CONFIG", true),
            ("xset_configx", "SET_CONFIG", true),
            ("_config set_confi", "SET_CONFIG", false),
            ("pgbench_accounts", "SET_CONFIG", false),
            ("x = 'Role'", "'ROLE'", true),
            ("'role", "'ROLE'", false),
            ("create temp table", " TEMP TABLE", true),
            ("listen", "LISTEN", true),
        ];
        for (hay, needle, want) in cases {
            assert_eq!(contains(hay.as_bytes(), needle), want, "{needle} in {hay}");
        }
    }

    #[test]
    fn custom_settings_named_by_a_query() {
        let cases: [(&str, &[&str]); 6] = [
            ("SET app.tenant = 'a'", &["app.tenant"]),
            (
                "set session App.Tenant to 1; RESET my.other",
                &["app.tenant", "my.other"],
            ),
            (
                "SELECT set_config('app.user_id', '7', false)",
                &["app.user_id"],
            ),
            (
                "SELECT set_config ( E'a.b', 'x', false), set_config('plain', 'y', false)",
                &["a.b"],
            ),
            ("SET statement_timeout = 1", &[]),
            ("SELECT 'SET app.x = 1'", &[]),
        ];
        for (sql, want) in cases {
            assert_eq!(custom_names(sql.as_bytes()), want, "{sql}");
        }
    }
}

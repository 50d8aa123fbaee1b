//! The one SQL scanner: splits a query string into statements and yields the
//! first words of each, the way PostgreSQL's lexer would see them. Comments
//! (`--`, nested `/* */`), string literals (`'...'`, `E'...'` with backslash
//! escapes), quoted identifiers and dollar-quoted bodies never count as
//! words or as statement ends. Pure; runs on the bytes as they came.

/// Words kept per statement: enough for `SET SESSION name`, `CREATE TEMP`.
pub const WORDS: usize = 3;

/// The leading words of one statement (fewer when it is shorter).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    words: [&'a [u8]; WORDS],
    len: usize,
}

impl<'a> Head<'a> {
    /// The `i`th word, or empty.
    pub fn word(&self, i: usize) -> &'a [u8] {
        if i < self.len {
            self.words[i]
        } else {
            b""
        }
    }

    /// Whether the `i`th word is `keyword` (ASCII case ignored).
    pub fn is(&self, i: usize, keyword: &str) -> bool {
        self.word(i).eq_ignore_ascii_case(keyword.as_bytes())
    }
}

/// The statements of `sql`, each as its leading words. Empty statements
/// (`;;`, a trailing `;`) are skipped.
pub fn statements(sql: &[u8]) -> Statements<'_> {
    statements_keeping(sql, WORDS)
}

/// [`statements`] keeping only each statement's first word: a query whose
/// only `;` ends it is read no further than that word.
pub fn first_words(sql: &[u8]) -> Statements<'_> {
    statements_keeping(sql, 1)
}

/// The first word of `sql`'s one statement, when it plainly has one: no
/// `;` before its trailing ones, and a bare word first. `None` when it is
/// not that plain (a comment or a quote first, several statements, a `;`
/// in a literal): then [`first_words`] says. Most queries are plain, and
/// this reads them without the lexer's state.
pub fn lone_first_word(sql: &[u8]) -> Option<&[u8]> {
    let sql = trimmed(sql);
    if memchr::memchr(b';', sql).is_some() {
        return None;
    }
    let start = sql.iter().position(|c| !c.is_ascii_whitespace())?;
    let rest = &sql[start..];
    // `E'...'` is a literal, not the word `E`.
    if !is_word_byte(rest[0]) || (rest[0] | 0x20 == b'e' && rest.get(1) == Some(&b'\'')) {
        return None;
    }
    let len = rest
        .iter()
        .position(|&c| !is_word_byte(c))
        .unwrap_or(rest.len());
    Some(&rest[..len])
}

/// `sql` without its trailing `;`s, blanks and the message's NUL: they end
/// no statement that has words.
fn trimmed(sql: &[u8]) -> &[u8] {
    let end = sql
        .iter()
        .rposition(|&c| !(c == b';' || c == 0 || c.is_ascii_whitespace()))
        .map_or(0, |p| p + 1);
    &sql[..end]
}

fn statements_keeping(sql: &[u8], keep: usize) -> Statements<'_> {
    // Without its trailing terminators, a query whose only `;` ends it is
    // one statement, and its scan stops at its leading words (most
    // queries: the hot path).
    let sql = trimmed(sql);
    Statements {
        sql,
        pos: 0,
        keep,
        last_semicolon: memchr::memrchr(b';', sql),
    }
}

/// Iterator over the statements of a query string.
pub struct Statements<'a> {
    sql: &'a [u8],
    pos: usize,
    /// Words kept per statement (at most `WORDS`).
    keep: usize,
    /// Where the last `;` byte is, quoted or not: past it no statement can end.
    last_semicolon: Option<usize>,
}

impl<'a> Iterator for Statements<'a> {
    type Item = Head<'a>;

    fn next(&mut self) -> Option<Head<'a>> {
        let sql = self.sql;
        while self.pos < sql.len() {
            let mut head = Head::default();
            let mut saw_token = false;
            loop {
                let Some((token, next)) = token(sql, self.pos) else {
                    self.pos = sql.len();
                    break;
                };
                self.pos = next;
                match token {
                    Token::End => break,
                    Token::Word(w) => {
                        saw_token = true;
                        if head.len < self.keep {
                            head.words[head.len] = w;
                            head.len += 1;
                        }
                        // Its words are all kept, and no `;` lies ahead: the
                        // statement runs to the end, unread.
                        if head.len == self.keep && self.last_semicolon.is_none_or(|p| p < self.pos)
                        {
                            self.pos = sql.len();
                            break;
                        }
                    }
                    Token::Other => saw_token = true,
                }
            }
            if saw_token {
                return Some(head);
            }
        }
        None
    }
}

/// What the lexer found at a position.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    /// A bare or double-quoted word (quotes stripped).
    Word(&'a [u8]),
    /// `;` at top level.
    End,
    /// A literal, an operator, a parameter: part of a statement, not a word.
    Other,
}

/// The next token at or after `i`, and where scanning resumes; `None` at the end.
fn token(sql: &[u8], mut i: usize) -> Option<(Token<'_>, usize)> {
    loop {
        let &b = sql.get(i)?;
        let rest = &sql[i..];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if rest.starts_with(b"--") {
            i = sql[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(sql.len(), |p| i + p + 1);
        } else if rest.starts_with(b"/*") {
            i = block_comment_end(sql, i);
        } else {
            break;
        }
    }
    let b = sql[i];
    let rest = &sql[i..];
    Some(match b {
        b';' => (Token::End, i + 1),
        b'\'' => (Token::Other, quoted_end(sql, i + 1, b'\'', false)),
        b'"' => {
            let end = quoted_end(sql, i + 1, b'"', false);
            (
                Token::Word(&sql[i + 1..end.saturating_sub(1).max(i + 1)]),
                end,
            )
        }
        b'$' => (Token::Other, dollar_end(sql, i)),
        b'e' | b'E' if rest.get(1) == Some(&b'\'') => {
            (Token::Other, quoted_end(sql, i + 2, b'\'', true))
        }
        c if is_word_byte(c) => {
            let len = rest
                .iter()
                .position(|&c| !is_word_byte(c))
                .unwrap_or(rest.len());
            (Token::Word(&rest[..len]), i + len)
        }
        _ => (Token::Other, i + 1),
    })
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Just past the `*/` closing the (nested) comment opened at `start`.
fn block_comment_end(sql: &[u8], start: usize) -> usize {
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < sql.len() {
        match &sql[i..i + 2] {
            b"/*" => {
                depth += 1;
                i += 2;
            }
            b"*/" => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    sql.len()
}

/// Just past the `quote` that closes a literal whose body starts at `i`. A
/// doubled quote is an escaped one; with `backslash`, so is `\'`.
fn quoted_end(sql: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < sql.len() {
        match sql[i] {
            b'\\' if backslash => i += 2,
            c if c == quote && sql.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    sql.len()
}

/// Past a dollar-quoted body (`$tag$ ... $tag$`) starting at `start`, or
/// past a lone `$` / positional parameter (`$1`).
fn dollar_end(sql: &[u8], start: usize) -> usize {
    let tag_len = sql[start + 1..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
        .unwrap_or(sql.len() - start - 1);
    let close = start + 1 + tag_len;
    let starts_with_digit = sql.get(start + 1).is_some_and(u8::is_ascii_digit);
    if sql.get(close) != Some(&b'$') || starts_with_digit {
        return close;
    }
    let delim = &sql[start..=close];
    sql[close + 1..]
        .windows(delim.len())
        .position(|w| w == delim)
        .map_or(sql.len(), |p| close + 1 + p + delim.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(sql: &str) -> Vec<Vec<String>> {
        statements(sql.as_bytes())
            .map(|h| {
                (0..h.len)
                    .map(|i| String::from_utf8_lossy(h.word(i)).to_lowercase())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn statements_and_their_first_words() {
        let cases: &[(&str, &[&[&str]])] = &[
            ("", &[]),
            (" ; ;", &[]),
            ("SELECT 1", &[&["select", "1"]]),
            ("SET foo = 1", &[&["set", "foo", "1"]]),
            ("/* x */ SET foo = 1", &[&["set", "foo", "1"]]),
            ("/* a /* nested */ b */ LISTEN c", &[&["listen", "c"]]),
            (
                "-- line\nSET SESSION foo TO 1",
                &[&["set", "session", "foo"]],
            ),
            (
                "SELECT 1; SET foo = 2",
                &[&["select", "1"], &["set", "foo", "2"]],
            ),
            ("SELECT ';SET x=1'; COMMIT", &[&["select"], &["commit"]]),
            ("SELECT 'it''s;' ; END", &[&["select"], &["end"]]),
            (
                r"SELECT E'a\';SET b=1' ; ROLLBACK",
                &[&["select"], &["rollback"]],
            ),
            (
                "SELECT $$;LISTEN x$$; LISTEN y",
                &[&["select"], &["listen", "y"]],
            ),
            (
                "DO $body$ BEGIN; END $body$; SET z=1",
                &[&["do"], &["set", "z", "1"]],
            ),
            (
                "SELECT $1; PREPARE p AS SELECT 1",
                &[&["select"], &["prepare", "p", "as"]],
            ),
            (r#"SET "Foo" = 1"#, &[&["set", "foo", "1"]]),
            ("SELECT 1 -- ; SET x = 1", &[&["select", "1"]]),
            ("SELECT 1 /* unclosed ; SET x", &[&["select", "1"]]),
            ("SELECT 'unclosed ; SET x", &[&["select"]]),
            // Trailing terminators, and statements past the words kept.
            ("SELECT a, b FROM t WHERE c ;; \n", &[&["select", "a", "b"]]),
            (
                "SELECT a, b FROM t; LISTEN x;\n",
                &[&["select", "a", "b"], &["listen", "x"]],
            ),
            (
                "SELECT a, b, 'x;y' FROM t LISTEN z",
                &[&["select", "a", "b"]],
            ),
            ("SELECT a, b, c; ", &[&["select", "a", "b"]]),
            ("SELECT a, b FROM t;\0", &[&["select", "a", "b"]]),
        ];
        for (sql, want) in cases {
            let want: Vec<Vec<String>> = want
                .iter()
                .map(|h| h.iter().map(|w| w.to_string()).collect())
                .collect();
            assert_eq!(heads(sql), want, "{sql}");
        }
    }

    #[test]
    fn first_words_are_the_statements_first_words() {
        for sql in [
            "SELECT a, b FROM t;\0",
            "/* x */ SET a = 1; -- y\n commit ;",
            "SELECT ';'; LISTEN x",
            "",
        ] {
            let firsts: Vec<&[u8]> = first_words(sql.as_bytes()).map(|h| h.word(0)).collect();
            let all: Vec<&[u8]> = statements(sql.as_bytes()).map(|h| h.word(0)).collect();
            assert_eq!(firsts, all, "{sql}");
            assert!(first_words(sql.as_bytes()).all(|h| h.word(1).is_empty()));
        }
    }

    /// Wherever the plain reading answers, it is the lexer's: one
    /// statement, with that first word.
    #[test]
    fn a_lone_first_word_is_the_lexers_first_word() {
        let plain = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
                "SELECT",
            ),
            ("  \n\tset x = 1 ;; \n\0", "set"),
            ("commit", "commit"),
            ("END", "END"),
            ("e", "e"),
            ("ex'y'", "ex"),
            ("_x", "_x"),
            ("\u{e9}t\u{e9}", "\u{e9}t\u{e9}"),
        ];
        for (sql, want) in plain {
            assert_eq!(
                lone_first_word(sql.as_bytes()),
                Some(want.as_bytes()),
                "{sql}"
            );
        }
        let not_plain = [
            "",
            " ;\0",
            "SELECT 1; SET x = 1",
            "SELECT ';'",
            "/* c */ SET x = 1",
            "-- c\nSET x = 1",
            "\"set\" x",
            "E'x'",
            "e'x'",
            "(SELECT 1)",
            "$$x$$",
        ];
        for sql in not_plain {
            assert_eq!(lone_first_word(sql.as_bytes()), None, "{sql}");
        }
        let ragged = ["$", "E'", "\"", "/*", "--", "'", "x\u{80}", "a;b", "a b;"];
        for sql in plain.iter().map(|(s, _)| *s).chain(not_plain).chain(ragged) {
            if let Some(word) = lone_first_word(sql.as_bytes()) {
                let firsts: Vec<&[u8]> = first_words(sql.as_bytes()).map(|h| h.word(0)).collect();
                assert_eq!(firsts, vec![word], "{sql}");
            }
        }
    }

    #[test]
    fn never_panics_on_ragged_input() {
        for sql in [
            "$", "$a", "$a$", "E'", "e'\\", "\"", "/*", "--", "'", "$1$", "/*/", "x\u{80}",
        ] {
            let _ = heads(sql);
        }
    }
}

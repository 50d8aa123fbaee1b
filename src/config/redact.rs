//! Keeping secrets out of what the proxy prints. Passwords, tokens and
//! verifiers live in a few structs whose `Debug` is written by hand with
//! [`Redacted`] where the secret is; and a message about a value the
//! configuration could not use may quote that value ([`without_values`]),
//! which in a password field is the password.

use std::fmt;

/// What `Debug` prints where a secret is.
pub struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a secret that may be unset shows in `Debug`: `Some(<redacted>)` or `None`.
pub fn redacted<T>(secret: &Option<T>) -> Option<Redacted> {
    secret.as_ref().map(|_| Redacted)
}

/// What serde says before the value it could not use.
const QUOTING: [&str; 2] = ["invalid type: ", "invalid value: "];

/// `msg` without the values serde quotes in it: "invalid type: integer
/// `1234`, expected a string" becomes "invalid type: integer, expected a
/// string". The kind of value stays, which is what the reader needs.
pub fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some((at, prefix)) = QUOTING
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, *p)))
        .min()
    {
        let (head, after) = rest.split_at(at + prefix.len());
        out.push_str(head);
        // serde writes `<kind> <value>, expected <what>`: the kind is one or
        // two words ("floating point"), the value is quoted with ` or ".
        let kind_end = [" `", " \"", ","]
            .iter()
            .filter_map(|stop| after.find(stop))
            .min()
            .unwrap_or(after.len());
        out.push_str(&after[..kind_end]);
        let after = &after[kind_end..];
        rest = &after[quoted_len(after)..];
    }
    out.push_str(rest);
    out
}

/// The length of the value serde quoted at the start of `s`, with the space
/// before it: `` `1234` `` (a character value may be `` ` `` itself), or a
/// string as Rust's `Debug` writes it (`"a\"b"`); 0 when `s` starts with
/// neither; all of `s` when the quote is never closed.
fn quoted_len(s: &str) -> usize {
    if s.starts_with(" ```") {
        return 4;
    }
    if let Some(value) = s.strip_prefix(" `") {
        return value.find('`').map_or(s.len(), |end| end + 3);
    }
    let Some(value) = s.strip_prefix(" \"") else {
        return 0;
    };
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i + 3,
            _ => {}
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_values_and_keep_the_rest() {
        let cases = [
            (
                "invalid type: integer `1234`, expected a string",
                "invalid type: integer, expected a string",
            ),
            (
                "invalid type: floating point `3.5`, expected a string at line 1 column 9",
                "invalid type: floating point, expected a string at line 1 column 9",
            ),
            (
                "invalid type: boolean `true`, expected a string",
                "invalid type: boolean, expected a string",
            ),
            (
                "invalid type: string \"pw, expected x\", expected u16",
                "invalid type: string, expected u16",
            ),
            (
                "invalid value: string \"s3cret\", expected a duration",
                "invalid value: string, expected a duration",
            ),
            (
                "invalid type: character ```, expected a string",
                "invalid type: character, expected a string",
            ),
            (
                "invalid type: string \"a\\\"b, expected c\", expected u16",
                "invalid type: string, expected u16",
            ),
            (
                "invalid type: string \"cut off",
                "invalid type: string",
            ),
            (
                "invalid type: sequence, expected a string",
                "invalid type: sequence, expected a string",
            ),
            (
                "invalid type: unit value, expected a string",
                "invalid type: unit value, expected a string",
            ),
            ("missing field `password`", "missing field `password`"),
            (
                "unknown field `pasword`, expected one of `name`, `password`",
                "unknown field `pasword`, expected one of `name`, `password`",
            ),
            (
                "entry 0: invalid type: integer `1`, expected a string; entry 1: invalid value: string \"x\", expected y",
                "entry 0: invalid type: integer, expected a string; entry 1: invalid value: string, expected y",
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(without_values(msg), want, "{msg}");
        }
    }

    #[test]
    fn secrets_show_as_redacted() {
        assert_eq!(format!("{:?}", redacted(&Some("pw"))), "Some(<redacted>)");
        assert_eq!(format!("{:?}", redacted::<String>(&None)), "None");
    }
}

//! A client's session settings under transaction pooling: every parameter
//! the client set for its session (in the startup packet, with
//! `options=-c name=value`, or later with SET, RESET, `set_config(...,
//! false)`, `SET TIME ZONE`...), as PostgreSQL accepted it, so that it can be
//! replayed on whichever server the client gets next. Pure: the relay does
//! the I/O.
//!
//! The proxy does not interpret what a statement did to the settings. After
//! a transaction that may have changed them it asks the server what its
//! session-level values now are (`readback_sql`), so rolled-back SETs, `SET
//! LOCAL`, `RESET ALL` and `DISCARD ALL` come out exactly as PostgreSQL
//! applied them.

use crate::server::settings::{Setting, SettingSet};

/// Startup-packet keys that are not settings.
const NOT_SETTINGS: [&str; 4] = ["user", "database", "replication", "options"];

/// Why a client's settings cannot follow it from server to server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Untracked {
    /// More settings than `proxy.max_tracked_parameters`.
    #[error("more session settings than proxy.max_tracked_parameters")]
    TooMany,
    /// The values add up to more than the per-client byte budget.
    #[error("session settings larger than 8 KiB")]
    TooLarge,
    /// A startup `options` switch other than `-c name=value` / `--name=value`.
    #[error("a startup option other than -c name=value")]
    Option,
}

impl Untracked {
    /// The reason a client is pinned for it (log, `SHOW CLIENTS`, metrics).
    pub fn reason(self) -> &'static str {
        match self {
            Untracked::TooMany => "more session settings than proxy.max_tracked_parameters",
            Untracked::TooLarge => "session settings larger than 8 KiB",
            Untracked::Option => "a startup option other than -c name=value",
        }
    }
}

/// Bounds on what one client may have tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// At most this many settings.
    pub count: usize,
    /// At most this many bytes of names and values together.
    pub bytes: usize,
}

/// The settings a startup packet asks for: every parameter that is not
/// `user`/`database`/`replication`, a protocol extension (`_pq_.`), and
/// each `-c name=value` or `--name=value` in `options`.
pub fn from_startup(params: &[(String, String)]) -> Result<Vec<Setting>, Untracked> {
    let mut out = Vec::new();
    for (k, v) in params {
        if k == "options" {
            out.extend(options(v)?);
        } else if !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
            out.push((k.to_ascii_lowercase(), v.clone()));
        }
    }
    Ok(out)
}

/// The settings in a startup `options` string. Arguments are split on
/// spaces; a backslash keeps the next character (libpq's convention).
fn options(s: &str) -> Result<Vec<Setting>, Untracked> {
    let args = split_args(s);
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let pair = if arg == "-c" {
            i += 1;
            args.get(i).map(String::as_str)
        } else if let Some(p) = arg.strip_prefix("--").or_else(|| arg.strip_prefix("-c")) {
            Some(p)
        } else {
            return Err(Untracked::Option);
        };
        let (name, value) = pair
            .and_then(|p| p.split_once('='))
            .ok_or(Untracked::Option)?;
        // PostgreSQL reads `-` in a switch's name as `_`.
        out.push((
            name.replace('-', "_").to_ascii_lowercase(),
            value.to_string(),
        ));
        i += 1;
    }
    Ok(out)
}

fn split_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

/// Whether `set` fits `bounds`.
pub fn check(set: &SettingSet, bounds: Bounds) -> Result<(), Untracked> {
    if set.items().len() > bounds.count {
        return Err(Untracked::TooMany);
    }
    let bytes: usize = set.items().iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > bounds.bytes {
        return Err(Untracked::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = Result<Vec<(&'static str, &'static str)>, Untracked>;

    fn set(pairs: &[(&str, &str)]) -> SettingSet {
        SettingSet::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
    }

    #[test]
    fn startup_parameters_and_options_become_settings() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases: Vec<(Vec<(String, String)>, Parsed)> = vec![
            (
                p(&[
                    ("user", "u"),
                    ("database", "d"),
                    ("TimeZone", "UTC"),
                    ("extra_float_digits", "2"),
                ]),
                Ok(vec![("timezone", "UTC"), ("extra_float_digits", "2")]),
            ),
            (
                p(&[(
                    "options",
                    "-c search_path=a,b  --statement-timeout=5s -cwork_mem=4MB",
                )]),
                Ok(vec![
                    ("search_path", "a,b"),
                    ("statement_timeout", "5s"),
                    ("work_mem", "4MB"),
                ]),
            ),
            (
                p(&[("options", r"-c application_name=my\ app")]),
                Ok(vec![("application_name", "my app")]),
            ),
            (p(&[("_pq_.x", "1"), ("replication", "off")]), Ok(vec![])),
            (p(&[("options", "-B 100")]), Err(Untracked::Option)),
            (p(&[("options", "-c")]), Err(Untracked::Option)),
            (p(&[("options", "-c noequals")]), Err(Untracked::Option)),
        ];
        for (params, want) in cases {
            let got = from_startup(&params);
            let want = want.map(|v| {
                v.into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{params:?}");
        }
    }

    #[test]
    fn settings_are_bounded() {
        let s = set(&[("b", "3"), ("a", "2")]);
        let b = Bounds { count: 2, bytes: 4 };
        assert_eq!(check(&s, b), Ok(()));
        assert_eq!(
            check(&set(&[("a", "1"), ("b", "1"), ("c", "1")]), b),
            Err(Untracked::TooMany)
        );
        assert_eq!(check(&set(&[("a", "1234")]), b), Err(Untracked::TooLarge));
    }
}

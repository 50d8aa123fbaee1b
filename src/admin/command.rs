//! Parsing admin console commands: PgBouncer's (`SHOW POOLS`, `PAUSE db`,
//! ...) and Switchyard's own (`SHOW NODES`, `SHOW EVENTS`, `READMIT node`).
//! Keywords are case-insensitive; names may be double-quoted; one trailing
//! semicolon is allowed. Pure: no I/O, so every form is unit tested.

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Per-pool client and server counts.
    Pools,
    /// Totals and averages per database.
    Stats,
    /// Totals per database.
    StatsTotals,
    /// Averages per database.
    StatsAverages,
    /// Server connections.
    Servers,
    /// Client connections.
    Clients,
    /// Configured databases.
    Databases,
    /// Settings.
    Config,
    /// Internal list sizes.
    Lists,
    /// Configured users.
    Users,
    /// Version string.
    Version,
    /// The commands.
    Help,
    /// Nodes and their health (Switchyard).
    Nodes,
    /// The proxies coordinating through etcd (Switchyard).
    Proxies,
    /// The incident timeline (Switchyard).
    Events,
}

/// One admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW ...`.
    Show(Show),
    /// `PAUSE [db]`: hold new transactions once running ones finish.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `RELOAD`: re-read the configuration file.
    Reload,
    /// `RECONNECT [db]`: replace server connections as they are released.
    Reconnect(Option<String>),
    /// `KILL db`: disconnect the database's clients and servers; it stays paused.
    Kill(String),
    /// `SHUTDOWN`.
    Shutdown,
    /// `READMIT node`: un-fence a node an operator rebuilt.
    Readmit(String),
    /// `SWITCHOVER [TO node]`: move the primary on purpose.
    Switchover(Option<String>),
    /// An empty query string.
    Empty,
}

/// Why a command was not understood (SQLSTATE 42601).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Parses one command.
pub fn parse(sql: &str) -> Result<Command, ParseError> {
    let words = words(sql)?;
    let upper: Vec<String> = words.iter().map(|w| w.0.to_ascii_uppercase()).collect();
    let kw: Vec<&str> = upper.iter().map(String::as_str).collect();
    // The argument keeps its case; quoted or not.
    let arg = |i: usize| words.get(i).map(|w| w.0.clone());
    let cmd = match kw.as_slice() {
        [] => Command::Empty,
        ["SHOW", what] => Command::Show(show(what)?),
        ["SHOW"] => return Err(err("SHOW needs an argument; try SHOW HELP")),
        ["PAUSE"] | ["PAUSE", _] => Command::Pause(arg(1)),
        ["RESUME"] | ["RESUME", _] => Command::Resume(arg(1)),
        ["RELOAD"] => Command::Reload,
        ["RECONNECT"] | ["RECONNECT", _] => Command::Reconnect(arg(1)),
        ["KILL", _] => Command::Kill(arg(1).unwrap_or_default()),
        ["KILL"] => return Err(err("KILL needs a database name")),
        ["SHUTDOWN"] => Command::Shutdown,
        ["READMIT", _] => Command::Readmit(arg(1).unwrap_or_default()),
        ["READMIT"] => return Err(err("READMIT needs a node name")),
        ["SWITCHOVER"] => Command::Switchover(None),
        ["SWITCHOVER", "TO", _] => Command::Switchover(arg(2)),
        [first, ..] if is_command(first) => {
            return Err(err(&format!("syntax error: too many arguments to {first}")))
        }
        _ => {
            return Err(err(&format!(
                "unsupported admin command \"{}\"; try SHOW HELP",
                truncate(&words[0].0)
            )))
        }
    };
    Ok(cmd)
}

fn is_command(w: &str) -> bool {
    matches!(
        w,
        "SHOW"
            | "PAUSE"
            | "RESUME"
            | "RELOAD"
            | "RECONNECT"
            | "KILL"
            | "SHUTDOWN"
            | "READMIT"
            | "SWITCHOVER"
    )
}

fn show(what: &str) -> Result<Show, ParseError> {
    Ok(match what {
        "POOLS" => Show::Pools,
        "STATS" => Show::Stats,
        "STATS_TOTALS" => Show::StatsTotals,
        "STATS_AVERAGES" => Show::StatsAverages,
        "SERVERS" => Show::Servers,
        "CLIENTS" => Show::Clients,
        "DATABASES" => Show::Databases,
        "CONFIG" => Show::Config,
        "LISTS" => Show::Lists,
        "USERS" => Show::Users,
        "VERSION" => Show::Version,
        "HELP" => Show::Help,
        "NODES" => Show::Nodes,
        "PROXIES" => Show::Proxies,
        "EVENTS" => Show::Events,
        other => {
            return Err(err(&format!(
                "unsupported SHOW argument \"{}\"; try SHOW HELP",
                truncate(other)
            )))
        }
    })
}

/// Splits into words; a double-quoted word keeps its case and may contain
/// spaces (`""` is a quote). `.1` tells whether it was quoted.
fn words(sql: &str) -> Result<Vec<(String, bool)>, ParseError> {
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql).trim_end();
    let mut out = vec![];
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::new();
            loop {
                match chars.next() {
                    None => return Err(err("unterminated quoted identifier")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        w.push('"');
                    }
                    Some('"') => break,
                    Some(c) => w.push(c),
                }
            }
            out.push((w, true));
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                if c == ';' {
                    return Err(err("one command per query"));
                }
                w.push(c);
                chars.next();
            }
            out.push((w, false));
        }
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn err(msg: &str) -> ParseError {
    ParseError(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbouncer_commands_parse() {
        let cases = [
            ("SHOW POOLS", Command::Show(Show::Pools)),
            ("show stats_totals;", Command::Show(Show::StatsTotals)),
            ("  Show   Help ; ", Command::Show(Show::Help)),
            ("PAUSE", Command::Pause(None)),
            ("pause app", Command::Pause(Some("app".into()))),
            ("RESUME \"My Db\"", Command::Resume(Some("My Db".into()))),
            ("RELOAD", Command::Reload),
            ("RECONNECT", Command::Reconnect(None)),
            ("KILL app", Command::Kill("app".into())),
            ("SHUTDOWN", Command::Shutdown),
            ("READMIT db1", Command::Readmit("db1".into())),
            ("SHOW NODES", Command::Show(Show::Nodes)),
            ("show proxies", Command::Show(Show::Proxies)),
            ("SWITCHOVER", Command::Switchover(None)),
            ("switchover to db2", Command::Switchover(Some("db2".into()))),
            ("", Command::Empty),
            (";", Command::Empty),
        ];
        for (sql, want) in cases {
            assert_eq!(parse(sql), Ok(want), "{sql}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for sql in [
            "SHOW",
            "SHOW NOTHING",
            "SELECT 1",
            "KILL",
            "READMIT",
            "PAUSE a b",
            "SHOW POOLS; SHOW STATS",
            "RESUME \"unterminated",
            "\u{0}\u{ffff}",
            "SHUTDOWN NOW",
            "SWITCHOVER db2",
            "SWITCHOVER TO",
        ] {
            assert!(parse(sql).is_err(), "{sql:?} parsed");
        }
        // Arbitrary bytes (lossily decoded) never panic.
        let mut seed = 7u64;
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let s: String = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    char::from_u32((seed >> 33) as u32 % 0x250).unwrap_or('x')
                })
                .collect();
            let _ = parse(&s);
        }
    }
}

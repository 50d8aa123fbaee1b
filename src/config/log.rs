//! `[log]`: what the proxy's log lines look like and which are written.
//! The binary decides between this section, its flags and `RUST_LOG`
//! (docs/configuration.md); here are the section and the one parser of
//! level directives they share.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event (default).
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// `[log]` section. Needs a restart to change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// `tracing` filter directives: a level (`info`, the default), or
    /// comma-separated `TARGET=LEVEL` entries, e.g. `warn,switchyard=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Why a level directive string was refused.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// Nothing to filter by; an empty filter would silently log nothing.
    #[error("empty; use \"off\" to log nothing")]
    Empty,
    /// A bare word that is not a level.
    #[error(
        "{0:?} is not a level (error, warn, info, debug, trace or off); \
         for a target, write TARGET=LEVEL"
    )]
    NotALevel(String),
    /// `tracing`'s own parser refused it (not a `source`: the message
    /// already quotes it, and would twice in an error chain).
    #[error(
        "{0}; write LEVEL or TARGET=LEVEL entries separated by commas, \
         e.g. \"warn,switchyard=debug\""
    )]
    Syntax(tracing_subscriber::filter::ParseError),
}

/// The filter for `directives`, as `RUST_LOG` would parse them, except that
/// a bare word must be a level: `tracing` takes any other (a typo such as
/// `warning`) as a target name at every level, which leaves the proxy silent.
/// A module path (`switchyard::pool`) is still a target.
pub fn level_filter(directives: &str) -> Result<EnvFilter, LevelError> {
    if directives.trim().is_empty() {
        return Err(LevelError::Empty);
    }
    for entry in directives.split(',').map(str::trim) {
        let bare = !entry.is_empty() && !entry.contains(['=', '[', ':']);
        if bare
            && entry
                .parse::<tracing::level_filters::LevelFilter>()
                .is_err()
        {
            return Err(LevelError::NotALevel(entry.to_string()));
        }
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(LevelError::Syntax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_parse() {
        for ok in [
            "info",
            "WARN",
            "warn,switchyard=debug",
            "switchyard::pool=trace",
            "switchyard::pool",
            "off",
            "3",
        ] {
            assert!(level_filter(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn typos_and_bad_levels_are_refused_with_a_reason() {
        for (bad, says) in [
            ("", "empty"),
            ("  ", "empty"),
            ("warning", "\"warning\" is not a level"),
            ("info,verbose", "\"verbose\" is not a level"),
            ("switchyard=loud", "error parsing level filter"),
            ("info,=debug", "TARGET=LEVEL"),
        ] {
            let err = level_filter(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}

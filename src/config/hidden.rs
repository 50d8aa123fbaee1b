//! A secret the configuration holds (a probe's bearer token or password):
//! kept as written, but its `Debug` and `Serialize` forms never show it, so
//! it cannot reach a log line, an error message or `SHOW CONFIG` by accident.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What [`Hidden`] shows instead of the secret.
pub const REDACTED: &str = "<redacted>";

/// A secret string from the configuration.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Hidden(String);

impl Hidden {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Hidden {
        Hidden(secret.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Hidden {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_secret() {
        let h = Hidden::new("s3cret");
        assert_eq!(format!("{h:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&h)), format!("Some({REDACTED})"));
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(h.expose(), "s3cret");
    }
}

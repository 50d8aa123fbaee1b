//! Durations written as human strings (`"500ms"`, `"5s"`, `"10m"`, `"1h"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `"<number><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number followed by ms, s, m, h or d")
    })?;
    let ms_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// serde adapter: `#[serde(with = "duration")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let cases = [
            ("500ms", Some(500)),
            ("5s", Some(5_000)),
            ("10m", Some(600_000)),
            ("1h", Some(3_600_000)),
            ("2d", Some(172_800_000)),
            (" 7s ", Some(7_000)),
            ("5", None),
            ("s", None),
            ("-1s", None),
            ("1.5s", None),
            ("5 parsecs", None),
            ("99999999999999999999d", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).ok().map(|d| d.as_millis() as u64),
                want,
                "{input:?}"
            );
        }
    }
}

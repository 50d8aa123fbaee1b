//! Durations written as human strings (`"500ms"`, `"5s"`, `"10m"`, `"1h"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

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

/// serde adapter: writes the largest exact unit (`"10m"`, `"1500ms"`).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// The duration in the largest unit that represents it exactly.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_the_largest_exact_unit() {
        for (ms, text) in [
            (0, "0ms"),
            (500, "500ms"),
            (1500, "1500ms"),
            (5000, "5s"),
            (600_000, "10m"),
            (3_600_000, "1h"),
        ] {
            assert_eq!(format(Duration::from_millis(ms)), text);
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)));
        }
    }

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

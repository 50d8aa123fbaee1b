//! A parser of the Prometheus text exposition format, version 0.0.4 — what
//! node_exporter, ipmi_exporter and Redfish exporters serve on `/metrics`.
//! Pure: text in, samples out. It owns the syntax only; which series matter is
//! the business of [`super::rules`].
//!
//! Format: <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>.
//! Every line is either blank, a comment (`# HELP`, `# TYPE` or free text) or
//! a sample: `name[{label="value",...}] value [timestamp]`. The syntax of every
//! line is checked, but not the consistency of the metadata (a repeated `TYPE`,
//! samples that do not fit their type): rules look at series values only, and
//! refusing a whole scrape over a metadata slip would turn a healthy node
//! `unknown`.
//!
//! The input may come from any host on the network, so nothing here indexes
//! or unwraps: every malformed line is an [`ExpositionError`] naming the line.

use std::collections::BTreeMap;

use crate::config::hardware::{is_label_char, is_metric_char};
pub use crate::config::hardware::{is_label_name, is_metric_name};

/// One series value from a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `ipmi_sensor_state`.
    pub name: String,
    /// Label pairs, sorted by label name (each name at most once).
    pub labels: BTreeMap<String, String>,
    /// The value; may be `NaN` or infinite.
    pub value: f64,
}

/// Why a scrape could not be parsed: the 1-based line and what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ExpositionError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong on that line.
    pub problem: Problem,
}

/// What was wrong on a line. Quoted excerpts are cut to a few dozen characters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// The line does not start with a valid metric name.
    #[error("expected a metric name, found {0:?}")]
    MetricName(String),
    /// A label name is missing or invalid.
    #[error("expected a label name, found {0:?}")]
    LabelName(String),
    /// A label name appears twice in one sample.
    #[error("label {0:?} appears twice")]
    DuplicateLabel(String),
    /// Something other than the expected character inside `{...}`.
    #[error("expected {expected} in the label set, found {found:?}")]
    LabelSyntax {
        /// What the grammar required here.
        expected: &'static str,
        /// What the line had instead.
        found: String,
    },
    /// A label value has no closing quote before the end of the line.
    #[error("label value is not terminated by '\"'")]
    UnterminatedValue,
    /// A backslash not followed by `\`, `"` or `n`.
    #[error("invalid escape sequence {0:?} in a label value")]
    Escape(String),
    /// The sample has no value.
    #[error("missing sample value")]
    MissingValue,
    /// The value is not a float.
    #[error("invalid sample value {0:?}")]
    Value(String),
    /// The timestamp is not an integer (milliseconds since the epoch).
    #[error("invalid timestamp {0:?}")]
    Timestamp(String),
    /// Text after the timestamp.
    #[error("unexpected text after the timestamp: {0:?}")]
    Trailing(String),
    /// `# HELP` or `# TYPE` without a valid metric name.
    #[error("# {0} needs a valid metric name")]
    MetadataName(&'static str),
    /// `# TYPE` with an unknown type.
    #[error("unknown metric type {0:?} (counter, gauge, histogram, summary or untyped)")]
    Type(String),
}

/// Parses a whole scrape. Blank lines and comments yield nothing; CRLF line
/// ends are accepted. Stops at the first malformed line.
pub fn parse(text: &str) -> Result<Vec<Sample>, ExpositionError> {
    let mut samples = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let at = |problem| ExpositionError {
            line: i + 1,
            problem,
        };
        let mut cur = Cursor::new(line);
        cur.skip_blanks();
        match cur.peek() {
            None => {}
            Some('#') => comment(&mut cur).map_err(at)?,
            Some(_) => samples.push(sample(&mut cur).map_err(at)?),
        }
    }
    Ok(samples)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `# HELP name doc`, `# TYPE name type`, or any other comment.
fn comment(cur: &mut Cursor<'_>) -> Result<(), Problem> {
    cur.bump(); // '#'
    cur.skip_blanks();
    let keyword = match cur.take_while(|c| !is_blank(c)) {
        "HELP" => "HELP",
        "TYPE" => "TYPE",
        _ => return Ok(()),
    };
    cur.skip_blanks();
    if !is_metric_name(cur.take_while(|c| !is_blank(c))) {
        return Err(Problem::MetadataName(keyword));
    }
    if keyword == "TYPE" {
        // The docstring of HELP is free text and not used; a type is one word.
        cur.skip_blanks();
        let kind = cur.take_while(|c| !is_blank(c));
        cur.skip_blanks();
        let known = ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind);
        if !known || !cur.rest().is_empty() {
            return Err(Problem::Type(excerpt(kind)));
        }
    }
    Ok(())
}

fn sample(cur: &mut Cursor<'_>) -> Result<Sample, Problem> {
    let line = cur.rest();
    let name = cur.take_while(is_metric_char);
    let ends_well = cur.peek().is_none_or(|c| is_blank(c) || c == '{');
    if !is_metric_name(name) || !ends_well {
        return Err(Problem::MetricName(excerpt(line)));
    }
    cur.skip_blanks();
    let labels = if cur.peek() == Some('{') {
        cur.bump();
        label_set(cur)?
    } else {
        BTreeMap::new()
    };
    cur.skip_blanks();
    let value = cur.take_while(|c| !is_blank(c));
    if value.is_empty() {
        return Err(Problem::MissingValue);
    }
    let value = parse_value(value).ok_or_else(|| Problem::Value(excerpt(value)))?;
    cur.skip_blanks();
    let timestamp = cur.take_while(|c| !is_blank(c));
    if !timestamp.is_empty() && timestamp.parse::<i64>().is_err() {
        return Err(Problem::Timestamp(excerpt(timestamp)));
    }
    cur.skip_blanks();
    if !cur.rest().is_empty() {
        return Err(Problem::Trailing(excerpt(cur.rest())));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The inside of `{...}`, after the `{`; a trailing comma is allowed.
fn label_set(cur: &mut Cursor<'_>) -> Result<BTreeMap<String, String>, Problem> {
    let mut labels = BTreeMap::new();
    loop {
        cur.skip_blanks();
        if cur.peek() == Some('}') {
            cur.bump();
            return Ok(labels);
        }
        let name = cur.take_while(is_label_char);
        if !is_label_name(name) {
            let found = if name.is_empty() { cur.rest() } else { name };
            return Err(Problem::LabelName(excerpt(found)));
        }
        cur.skip_blanks();
        expect(cur, '=', "'='")?;
        cur.skip_blanks();
        expect(cur, '"', "'\"'")?;
        let value = label_value(cur)?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(Problem::DuplicateLabel(name.to_owned()));
        }
        cur.skip_blanks();
        match cur.bump() {
            Some(',') => {}
            Some('}') => return Ok(labels),
            _ => return Err(syntax("',' or '}'", cur)),
        }
    }
}

/// A quoted label value, after the opening quote, up to and including the closing one.
fn label_value(cur: &mut Cursor<'_>) -> Result<String, Problem> {
    let mut value = String::new();
    loop {
        match cur.bump() {
            None => return Err(Problem::UnterminatedValue),
            Some('"') => return Ok(value),
            Some('\\') => match cur.bump() {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                Some(c) => return Err(Problem::Escape(format!("\\{c}"))),
                None => return Err(Problem::UnterminatedValue),
            },
            Some(c) => value.push(c),
        }
    }
}

fn expect(cur: &mut Cursor<'_>, want: char, expected: &'static str) -> Result<(), Problem> {
    if cur.peek() == Some(want) {
        cur.bump();
        Ok(())
    } else {
        Err(syntax(expected, cur))
    }
}

fn syntax(expected: &'static str, cur: &Cursor<'_>) -> Problem {
    let found = if cur.rest().is_empty() {
        "end of line".to_owned()
    } else {
        excerpt(cur.rest())
    };
    Problem::LabelSyntax { expected, found }
}

/// A float as Go's `strconv.ParseFloat` reads it for this format: decimal or
/// exponent notation, `NaN`, `+Inf`, `-Inf` (any case). Rust's parser agrees on
/// these and, like the Prometheus parser, rejects hex floats and `_`.
fn parse_value(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}

/// At most 40 characters of `s`, for error messages.
fn excerpt(s: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// A position in one line. `pos` only ever moves by whole characters, so it
/// stays on a char boundary and `get(pos..)` never fails.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(line: &'a str) -> Self {
        Cursor { line, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        self.line.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn take_while(&mut self, mut keep: impl FnMut(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.pos += len;
        rest.get(..len).unwrap_or("")
    }

    fn skip_blanks(&mut self) {
        self.take_while(is_blank);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged from ipmi_exporter 1.8 on a two-PSU server.
    const IPMI: &str = r#"# HELP ipmi_up '1' if a scrape of the IPMI device was successful, '0' otherwise.
# TYPE ipmi_up gauge
ipmi_up{collector="ipmi"} 1
ipmi_up{collector="chassis"} 1
# HELP ipmi_sensor_state Indicates the severity of the state reported by an IPMI sensor (0=nominal, 1=warning, 2=critical).
# TYPE ipmi_sensor_state gauge
ipmi_sensor_state{id="52",name="PSU1 Status",type="Power Supply"} 0
ipmi_sensor_state{id="53",name="PSU2 Status",type="Power Supply"} 1
ipmi_sensor_state{id="4",name="Inlet Temp",type="Temperature"} 0
# HELP ipmi_temperature_celsius Temperature reading in degree Celsius.
# TYPE ipmi_temperature_celsius gauge
ipmi_temperature_celsius{id="4",name="Inlet Temp"} 23
ipmi_temperature_celsius{id="5",name="Exhaust Temp"} NaN
# HELP ipmi_chassis_power_state Current power state (1=on, 0=off).
# TYPE ipmi_chassis_power_state gauge
ipmi_chassis_power_state 1
"#;

    /// Abridged from node_exporter 1.8 (hwmon and a histogram), CRLF line ends.
    const NODE: &str =
        "# HELP node_hwmon_temp_celsius Hardware monitor for temperature (input)\r\n\
# TYPE node_hwmon_temp_celsius gauge\r\n\
node_hwmon_temp_celsius{chip=\"platform_coretemp_0\",sensor=\"temp1\"} 45.0\r\n\
node_hwmon_temp_celsius{chip=\"platform_coretemp_0\",sensor=\"temp2\",} 91.5\r\n\
\r\n\
# TYPE http_request_duration_seconds histogram\r\n\
http_request_duration_seconds_bucket{le=\"0.5\"} 129389 1712000000000\r\n\
http_request_duration_seconds_bucket{le=\"+Inf\"} 144320 1712000000000\r\n\
http_request_duration_seconds_sum 53423\r\n\
node_load1 -Inf\r\n\
node_boot_time_seconds 1.712e+09\r\n";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_ipmi_exporter_output() {
        let samples = parse(IPMI).unwrap();
        assert_eq!(samples.len(), 8);
        assert_eq!(
            samples[3],
            Sample {
                name: "ipmi_sensor_state".into(),
                labels: labels(&[
                    ("id", "53"),
                    ("name", "PSU2 Status"),
                    ("type", "Power Supply")
                ]),
                value: 1.0,
            }
        );
        assert!(samples[6].value.is_nan());
        assert_eq!(samples[7].name, "ipmi_chassis_power_state");
        assert!(samples[7].labels.is_empty());
    }

    #[test]
    fn parses_node_exporter_output_with_crlf() {
        let samples = parse(NODE).unwrap();
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        assert_eq!(
            values,
            [
                45.0,
                91.5,
                129389.0,
                144320.0,
                53423.0,
                f64::NEG_INFINITY,
                1.712e9
            ]
        );
        assert_eq!(samples[1].labels["sensor"], "temp2");
        assert_eq!(samples[3].labels["le"], "+Inf");
    }

    #[test]
    fn accepts_the_corners_of_the_grammar() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64);
        let cases: &[Case] = &[
            ("a 1", "a", &[], 1.0),
            ("  a\t1  ", "a", &[], 1.0),
            ("a{} 1", "a", &[], 1.0),
            ("a {b=\"c\"} 1", "a", &[("b", "c")], 1.0),
            ("a{ b = \"c\" , } 1", "a", &[("b", "c")], 1.0),
            (r#"a{b="x\\y\"z\nw"} 1"#, "a", &[("b", "x\\y\"z\nw")], 1.0),
            ("a{b=\"} {\"} 1", "a", &[("b", "} {")], 1.0),
            ("a{b=\"Ünïcode ✓\"} 1", "a", &[("b", "Ünïcode ✓")], 1.0),
            ("a{b=\"\"} 1", "a", &[("b", "")], 1.0),
            ("ns:sub_metric 1", "ns:sub_metric", &[], 1.0),
            ("_x 1 -5", "_x", &[], 1.0),
            ("a +Inf", "a", &[], f64::INFINITY),
            ("a -1.5e-3", "a", &[], -1.5e-3),
            ("a .5", "a", &[], 0.5),
        ];
        for (line, name, want_labels, value) in cases {
            let got = parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(got.len(), 1, "{line:?}");
            assert_eq!(got[0].name, *name, "{line:?}");
            assert_eq!(got[0].labels, labels(want_labels), "{line:?}");
            assert_eq!(got[0].value, *value, "{line:?}");
        }
    }

    #[test]
    fn comments_and_blank_lines_yield_nothing() {
        let text =
            "\n# just a comment\n#\n   \n# HELP a some \\n doc\n# HELP b\n# TYPE a counter\n";
        assert_eq!(parse(text).unwrap(), []);
    }

    #[test]
    fn malformed_lines_name_the_line_and_the_problem() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok 1\n1abc 2", 2, "expected a metric name"),
            ("a-b 1", 1, "expected a metric name, found \"a-b 1\""),
            ("{a=\"b\"} 1", 1, "expected a metric name"),
            ("a{b=\"c\" 1", 1, "expected ',' or '}'"),
            ("a{b=\"c} 1", 1, "not terminated"),
            ("a{b=\"c\\", 1, "not terminated"),
            ("a{b=c} 1", 1, "expected '\"'"),
            ("a{b} 1", 1, "expected '='"),
            ("a{,} 1", 1, "expected a label name"),
            ("a{1b=\"c\"} 1", 1, "expected a label name"),
            ("a{b=\"c\",b=\"d\"} 1", 1, "\"b\" appears twice"),
            ("a{b=\"\\t\"} 1", 1, "invalid escape sequence \"\\\\t\""),
            ("a{b=\"c\"}", 1, "missing sample value"),
            ("a", 1, "missing sample value"),
            ("a one", 1, "invalid sample value \"one\""),
            ("a 0x1p3", 1, "invalid sample value"),
            ("a 1_000", 1, "invalid sample value"),
            ("a 1 1.5", 1, "invalid timestamp \"1.5\""),
            ("a 1 2 3", 1, "unexpected text after the timestamp"),
            ("# TYPE a gauges", 1, "unknown metric type \"gauges\""),
            ("# TYPE a", 1, "unknown metric type \"\""),
            ("# TYPE a gauge extra", 1, "unknown metric type"),
            ("# TYPE 9a gauge", 1, "# TYPE needs a valid metric name"),
            ("\n\n# HELP", 3, "# HELP needs a valid metric name"),
        ];
        for (text, line, needle) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, *line, "{text:?}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(*needle), "{text:?}: {msg}");
        }
    }

    #[test]
    fn long_excerpts_are_cut() {
        let line = format!("a {}", "x".repeat(500));
        let msg = parse(&line).unwrap_err().to_string();
        assert!(msg.len() < 100, "{msg}");
        assert!(msg.ends_with("…\""), "{msg}");
    }

    #[test]
    fn every_truncation_of_real_output_is_handled() {
        for text in [IPMI, NODE] {
            for (cut, _) in text.char_indices() {
                let _ = parse(&text[..cut]);
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        // A fixed-seed xorshift: reproducible, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Characters the grammar cares about, plus some it does not.
        let alphabet: Vec<char> = "a_:{}=\",\\ \t\n\r#01.e+-InfNaHELPTY\u{fffd}é✓\0"
            .chars()
            .collect();
        for _ in 0..5_000 {
            let len = (next() % 80) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = parse(&text);
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }
}

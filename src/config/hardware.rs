//! `[cluster.nodes.hardware]`: a node's hardware probe as the file writes it
//! ([`HardwareSpec`]) and the rules that judge its scrapes ([`Rule`]), with
//! the checks serde cannot make. Running the probe and applying the rules is
//! the cluster's business (`cluster::hardware`); this module only says what a
//! valid probe looks like, so that a bad one is refused when the file is loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Hidden, HttpUrl, Scheme};

/// `[cluster.nodes.hardware]`: where a node's hardware status comes from.
/// Exactly one of `url`, `command` and `redfish`. `Debug` shows no secret
/// (they are [`Hidden`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareSpec {
    /// A Prometheus text endpoint (`http[s]://host:port/path`; node_exporter,
    /// ipmi_exporter, a Redfish exporter) whose series `rules` judge.
    #[serde(default)]
    pub url: Option<String>,
    /// A shell command (run with `sh -c`): exit 0 ok, 1 degraded, 2 failing,
    /// anything else unknown; the first line of stdout is the reason.
    #[serde(default)]
    pub command: Option<String>,
    /// A BMC's Redfish service root (`http[s]://bmc/redfish/v1`), whose
    /// chassis and systems report their own health: no exporter needed.
    #[serde(default)]
    pub redfish: Option<String>,
    /// Time between probes. Default `5s`.
    #[serde(default = "default_interval", with = "super::duration")]
    pub interval: Duration,
    /// A probe taking longer is `unknown` (a command is killed). Default `2s`.
    #[serde(default = "default_timeout", with = "super::duration")]
    pub timeout: Duration,
    /// Rules over the scraped series (with `url` only). Default: none.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Consecutive readings it takes before a worse status than the one in
    /// force is acted on (1: every reading at once). Default 3.
    #[serde(default = "default_failing_after")]
    pub failing_after: u32,
    /// PEM CA certificates that sign an `https://` exporter's (or BMC's)
    /// certificate; needed with `https://`, which trusts nothing else.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Sent as `Authorization: Bearer <token>` (`https://` only).
    #[serde(default)]
    pub token: Option<Hidden>,
    /// With `password`: sent as HTTP basic authentication (`https://` only).
    #[serde(default)]
    pub username: Option<String>,
    /// The password of `username`.
    #[serde(default)]
    pub password: Option<Hidden>,
}

fn default_failing_after() -> u32 {
    3
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Where a probe's verdict comes from: the one of `url`, `command` and
/// `redfish` that is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A Prometheus text endpoint judged by rules.
    Url(&'a str),
    /// A shell command whose exit status is the verdict.
    Command(&'a str),
    /// A Redfish service root.
    Redfish(&'a str),
}

impl HardwareSpec {
    /// The probe's source; an error unless exactly one is set.
    pub fn source(&self) -> Result<Source<'_>, String> {
        match (&self.url, &self.command, &self.redfish) {
            (Some(url), None, None) => Ok(Source::Url(url)),
            (None, Some(command), None) => Ok(Source::Command(command)),
            (None, None, Some(root)) => Ok(Source::Redfish(root)),
            (None, None, None) => Err("hardware: set url (a Prometheus metrics endpoint), \
                                       command, or redfish (a BMC's service root)"
                .into()),
            _ => Err("hardware: set one of url, command and redfish, not several".into()),
        }
    }

    /// Checks what serde cannot; the message names the offending key (and
    /// never repeats a secret).
    pub fn validate(&self) -> Result<(), String> {
        let url = match self.source()? {
            Source::Url(url) => {
                let parsed =
                    HttpUrl::parse(url).map_err(|e| format!("hardware.url = {url:?}: {e}"))?;
                if self.rules.is_empty() {
                    return Err("hardware.rules: a url probe needs at least one rule".into());
                }
                Some(parsed)
            }
            Source::Command(command) => {
                if command.trim().is_empty() {
                    return Err("hardware.command is empty".into());
                }
                self.check_no_rules("a command reports through its exit status")?;
                None
            }
            Source::Redfish(root) => {
                let parsed = HttpUrl::parse(root)
                    .map_err(|e| format!("hardware.redfish = {root:?}: {e}"))?;
                self.check_no_rules("a redfish probe reads the health the BMC reports")?;
                if self.token.is_some() {
                    return Err("hardware.token applies to url probes only; \
                                a redfish probe sends username and password (basic)"
                        .into());
                }
                Some(parsed)
            }
        };
        self.check_access(url.as_ref().map(|u| u.scheme))?;
        if self.interval.is_zero() {
            return Err("hardware.interval must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return Err("hardware.timeout must be more than 0".into());
        }
        if self.failing_after == 0 {
            return Err("hardware.failing_after must be at least 1".into());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|e| format!("hardware.rules[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// `rules` judge scraped series, which only a url probe has.
    fn check_no_rules(&self, why: &str) -> Result<(), String> {
        if self.rules.is_empty() {
            Ok(())
        } else {
            Err(format!("hardware.rules apply to url probes only; {why}"))
        }
    }

    /// The keys that reach an exporter or a BMC: `ca_file` for `https://`
    /// (and only there), credentials over `https://` only (over `http://`
    /// anyone on the path would read them, a spoofed exporter first), never
    /// for a command (`scheme` `None`).
    fn check_access(&self, scheme: Option<Scheme>) -> Result<(), String> {
        let credentials = [
            ("token", self.token.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
        ];
        let set = credentials.iter().find(|(_, set)| *set).map(|(k, _)| *k);
        match (scheme, set) {
            (None, _) if self.ca_file.is_some() => {
                return Err("hardware.ca_file applies to url and redfish probes only".into())
            }
            (None, Some(key)) => {
                return Err(format!(
                    "hardware.{key} applies to url and redfish probes only"
                ))
            }
            (Some(Scheme::Http), _) if self.ca_file.is_some() => {
                return Err("hardware.ca_file is for https:// urls".into())
            }
            (Some(Scheme::Http), Some(key)) => {
                return Err(format!(
                "hardware.{key} would cross the network in clear over http://; use an https:// url"
            ))
            }
            (Some(Scheme::Https), _) if self.ca_file.is_none() => {
                return Err("hardware.ca_file is needed with an https:// url: \
                            the PEM CA that signs the exporter's or BMC's certificate"
                    .into())
            }
            _ => {}
        }
        self.check_credentials()
    }

    /// `token`, or `username` with `password`, each usable in a header.
    fn check_credentials(&self) -> Result<(), String> {
        let unfit = |s: &str| s.is_empty() || s.chars().any(char::is_control);
        match (&self.token, &self.username, &self.password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err("hardware: set token, or username and password, not both".into())
            }
            (Some(t), None, None) if unfit(t.expose()) || t.expose().contains(' ') => {
                Err("hardware.token must be non-empty, without spaces or control characters".into())
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err("hardware.username and hardware.password go together".into())
            }
            (None, Some(u), Some(_)) if unfit(u) || u.contains(':') => {
                Err("hardware.username must be non-empty, without ':' or control characters".into())
            }
            (None, Some(_), Some(p)) if unfit(p.expose()) => {
                Err("hardware.password must be non-empty, without control characters".into())
            }
            _ => Ok(()),
        }
    }
}

/// The status a matching rule sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Severity {
    /// Redundancy lost; worth a planned switchover.
    Degraded,
    /// The node counts as down now.
    Failing,
}

// By hand rather than derived, so that a typo gets a message listing the
// choices (the `config` crate's own enum error does not).
impl TryFrom<String> for Severity {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "degraded" => Ok(Severity::Degraded),
            "failing" => Ok(Severity::Failing),
            _ => Err(format!(
                "unknown status {s:?}: expected \"degraded\" or \"failing\""
            )),
        }
    }
}

/// How a sample's value is compared with a rule's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==` (exact: sensor states and `up` gauges are small integers)
    Eq,
    /// `!=`
    Ne,
}

impl From<Op> for &'static str {
    fn from(op: Op) -> &'static str {
        op.as_str()
    }
}

impl TryFrom<String> for Op {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        const ALL: [Op; 6] = [Op::Gt, Op::Ge, Op::Lt, Op::Le, Op::Eq, Op::Ne];
        ALL.into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| format!("unknown op {s:?}: expected one of >, >=, <, <=, ==, !="))
    }
}

impl Op {
    /// The operator as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// Whether `sample op threshold` holds. A `NaN` on either side never
    /// holds, not even for `!=`: a sensor that reads `NaN` has no reading, and
    /// "no reading" must not count as "not nominal".
    pub fn holds(self, sample: f64, threshold: f64) -> bool {
        if sample.is_nan() || threshold.is_nan() {
            return false;
        }
        match self {
            Op::Gt => sample > threshold,
            Op::Ge => sample >= threshold,
            Op::Lt => sample < threshold,
            Op::Le => sample <= threshold,
            Op::Eq => sample == threshold,
            Op::Ne => sample != threshold,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `rules = [...]`: when a series of `metric` whose labels
/// include all of `labels` satisfies `value op threshold`, the node is `status`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Metric name, e.g. `ipmi_sensor_state`.
    pub metric: String,
    /// Labels a series must carry, with exactly these values; other labels
    /// of the series do not matter. Default: none (every series of `metric`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Comparison: `>`, `>=`, `<`, `<=`, `==` or `!=`.
    pub op: Op,
    /// The threshold the series' value is compared with.
    pub value: f64,
    /// `degraded` or `failing`.
    pub status: Severity,
}

/// Why a rule cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// `metric` is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("metric {0:?} is not a valid Prometheus metric name")]
    Metric(String),
    /// A key of `labels` is not `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("label {0:?} is not a valid Prometheus label name")]
    Label(String),
    /// `value` is NaN, which no sample ever matches.
    #[error("value is NaN, which never matches")]
    NanValue,
}

impl Rule {
    /// Checks what serde cannot: the names are valid Prometheus names and the
    /// threshold can match something.
    pub fn validate(&self) -> Result<(), RuleError> {
        if !is_metric_name(&self.metric) {
            return Err(RuleError::Metric(self.metric.clone()));
        }
        if let Some(bad) = self.labels.keys().find(|k| !is_label_name(k)) {
            return Err(RuleError::Label(bad.clone()));
        }
        if self.value.is_nan() {
            return Err(RuleError::NanValue);
        }
        Ok(())
    }
}

// The Prometheus name grammar. It is here, not beside the exposition parser
// that also needs it, because a rule's names are checked when the file is
// loaded, before any scrape.

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(is_metric_char)
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(is_label_char)
}

/// A character of a metric name after the first.
pub fn is_metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A character of a label name after the first.
pub fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: &str, labels: &[(&str, &str)], op: Op, value: f64, status: Severity) -> Rule {
        Rule {
            metric: metric.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            op,
            value,
            status,
        }
    }

    fn psu_rule() -> Rule {
        rule(
            "ipmi_sensor_state",
            &[("type", "Power Supply")],
            Op::Ne,
            0.0,
            Severity::Degraded,
        )
    }

    fn temp_rule(threshold: f64) -> Rule {
        rule(
            "node_hwmon_temp_celsius",
            &[],
            Op::Gt,
            threshold,
            Severity::Failing,
        )
    }

    #[test]
    fn ops_and_nan() {
        let cases = [
            (Op::Gt, 2.0, 1.0, true),
            (Op::Gt, 1.0, 1.0, false),
            (Op::Ge, 1.0, 1.0, true),
            (Op::Lt, 0.0, 1.0, true),
            (Op::Le, 1.0, 1.0, true),
            (Op::Le, 1.5, 1.0, false),
            (Op::Eq, 1.0, 1.0, true),
            (Op::Ne, 1.0, 1.0, false),
            (Op::Ne, 2.0, 1.0, true),
            (Op::Ne, f64::NAN, 0.0, false),
            (Op::Eq, f64::NAN, f64::NAN, false),
            (Op::Lt, f64::NAN, 1.0, false),
            (Op::Gt, f64::INFINITY, 1e308, true),
        ];
        for (op, sample, threshold, want) in cases {
            assert_eq!(
                op.holds(sample, threshold),
                want,
                "{sample} {op} {threshold}"
            );
        }
    }

    /// Rules as the config loader will read them: TOML through the `config` crate.
    fn from_toml(toml: &str) -> Result<Vec<Rule>, String> {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            rules: Vec<Rule>,
        }
        let w: Wrapper = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| e.to_string())?;
        Ok(w.rules)
    }

    #[test]
    fn rules_deserialize_from_toml() {
        let rules = from_toml(
            r#"rules = [
                { metric = "ipmi_sensor_state", labels = { type = "Power Supply" }, op = "!=", value = 0, status = "degraded" },
                { metric = "node_hwmon_temp_celsius", op = ">", value = 90.5, status = "failing" },
            ]"#,
        )
        .unwrap();
        assert_eq!(rules, [psu_rule(), temp_rule(90.5)]);
        assert!(rules.iter().all(|r| r.validate().is_ok()));
    }

    #[test]
    fn bad_rules_are_rejected_clearly() {
        let base = r#"metric = "m", op = ">", value = 1, status = "failing""#;
        let cases = [
            (
                base.replace("\">\"", "\"=>\""),
                "unknown op \"=>\": expected one of >, >=, <, <=, ==, !=",
            ),
            (
                base.replace("failing", "broken"),
                "unknown status \"broken\": expected \"degraded\" or \"failing\"",
            ),
            (base.replace("value = 1", "value = \"high\""), "high"),
            (base.replace(", value = 1", ""), "value"),
            (format!("{base}, threshold = 3"), "threshold"),
        ];
        for (entry, needle) in cases {
            let err = from_toml(&format!("rules = [{{ {entry} }}]")).unwrap_err();
            assert!(err.contains(needle), "{entry}: {err}");
        }
    }

    #[test]
    fn validate_checks_names_and_nan() {
        let mut r = psu_rule();
        assert_eq!(r.validate(), Result::Ok(()));
        for (metric, ok) in [("", false), ("1x", false), ("a-b", false), ("ns:x_1", true)] {
            r.metric = metric.into();
            assert_eq!(r.validate().is_ok(), ok, "{metric:?}");
        }
        let msg = rule("", &[], Op::Gt, 1.0, Severity::Failing)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a valid Prometheus metric name"), "{msg}");
        let r = rule("m", &[("bad-label", "x")], Op::Gt, 1.0, Severity::Failing);
        assert_eq!(r.validate(), Err(RuleError::Label("bad-label".into())));
        let r = rule("m", &[], Op::Gt, f64::NAN, Severity::Failing);
        assert_eq!(r.validate(), Err(RuleError::NanValue));
    }

    fn spec(toml: &str) -> Result<HardwareSpec, String> {
        #[derive(serde::Deserialize)]
        struct Node {
            hardware: HardwareSpec,
        }
        let node: Node = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| e.to_string())?;
        node.hardware.validate()?;
        Ok(node.hardware)
    }

    #[test]
    fn spec_from_the_issue_example() {
        let s = spec(
            r#"[hardware]
            url = "http://db1.internal:9290/metrics"
            interval = "5s"
            timeout = "2s"
            rules = [
              { metric = "ipmi_sensor_state", labels = { type = "Power Supply" }, op = "!=", value = 0, status = "degraded" },
              { metric = "node_hwmon_temp_celsius", op = ">", value = 90, status = "failing" },
            ]"#,
        )
        .unwrap();
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.timeout, Duration::from_secs(2));
        let s = spec("[hardware]\ncommand = \"/usr/local/bin/check-psu\"").unwrap();
        assert_eq!(s.command.as_deref(), Some("/usr/local/bin/check-psu"));
        assert_eq!(
            (s.interval, s.timeout),
            (default_interval(), default_timeout())
        );
    }

    #[test]
    fn bad_specs_are_rejected_clearly() {
        let rule = r#"rules = [{ metric = "m", op = ">", value = 1, status = "failing" }]"#;
        let cases = [
            (
                "command = \"a\"\nurl = \"http://h/m\"".to_string(),
                "not several",
            ),
            (
                "redfish = \"http://bmc/redfish/v1\"\ncommand = \"a\"".to_string(),
                "not several",
            ),
            (
                "redfish = \"bmc/redfish/v1\"".to_string(),
                "hardware.redfish = \"bmc/redfish/v1\": must start with http://",
            ),
            (
                "redfish = \"http://bmc/redfish/v1\"\n".to_string() + rule,
                "rules apply to url probes only; a redfish probe",
            ),
            (
                "redfish = \"https://bmc/redfish/v1\"".to_string(),
                "ca_file is needed with an https:// url",
            ),
            (
                "redfish = \"http://bmc/redfish/v1\"\nusername = \"u\"\npassword = \"s3cret\""
                    .to_string(),
                "hardware.username would cross the network in clear over http://",
            ),
            (
                format!("{REDFISH}token = \"s3cret\""),
                "hardware.token applies to url probes only",
            ),
            (
                format!("{REDFISH}username = \"u\""),
                "username and hardware.password go together",
            ),
            (rule.to_string(), "set url"),
            (
                "url = \"https://h/m\"\n".to_string() + rule,
                "ca_file is needed with an https:// url",
            ),
            (
                "url = \"http://h/m\"\nca_file = \"/ca.pem\"\n".to_string() + rule,
                "ca_file is for https:// urls",
            ),
            (
                "url = \"http://h/m\"\ntoken = \"s3cret\"\n".to_string() + rule,
                "hardware.token would cross the network in clear over http://",
            ),
            (
                "command = \"x\"\npassword = \"s3cret\"".to_string(),
                "hardware.password applies to url and redfish probes only",
            ),
            (
                "command = \"x\"\nca_file = \"/ca.pem\"".to_string(),
                "ca_file applies to url and redfish probes only",
            ),
            (
                format!(
                    "{HTTPS}token = \"s3cret\"\nusername = \"u\"\npassword = \"s3cret\"\n{rule}"
                ),
                "not both",
            ),
            (
                format!("{HTTPS}token = \"s3cret\\r\\nX-Evil: 1\"\n{rule}"),
                "hardware.token must be non-empty",
            ),
            (
                format!("{HTTPS}token = \"s3 cret\"\n{rule}"),
                "hardware.token must be non-empty",
            ),
            (
                format!("{HTTPS}password = \"s3cret\"\n{rule}"),
                "username and hardware.password go together",
            ),
            (
                format!("{HTTPS}username = \"a:b\"\npassword = \"s3cret\"\n{rule}"),
                "hardware.username must be non-empty",
            ),
            (
                format!("{HTTPS}username = \"u\"\npassword = \"s3\\ncret\"\n{rule}"),
                "hardware.password must be non-empty",
            ),
            (
                "command = \"x\"\nfailing_after = 0".to_string(),
                "failing_after must be at least 1",
            ),
            ("url = \"http://h/m\"".to_string(), "at least one rule"),
            ("command = \" \"".to_string(), "command is empty"),
            ("command = \"x\"\n".to_string() + rule, "url probes only"),
            (
                "command = \"x\"\ntimeout = \"0s\"".to_string(),
                "timeout must be more than 0",
            ),
            (
                "command = \"x\"\ninterval = \"0ms\"".to_string(),
                "interval must be more than 0",
            ),
            (
                "command = \"x\"\ntimeout = \"2 parsecs\"".to_string(),
                "invalid duration",
            ),
            ("command = \"x\"\nretries = 3".to_string(), "retries"),
            (
                "url = \"http://h/m\"\n".to_string() + &rule.replace("\"m\"", "\"bad-name\""),
                "rules[0]: metric \"bad-name\"",
            ),
        ];
        for (body, needle) in cases {
            let err = spec(&format!("[hardware]\n{body}")).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
            assert!(!err.contains("s3"), "a secret in the message: {err}");
        }
    }

    /// The start of an https probe, as the error cases above use it.
    const HTTPS: &str = "url = \"https://bmc1/metrics\"\nca_file = \"/etc/ca.pem\"\n";
    /// The start of an https Redfish probe.
    const REDFISH: &str = "redfish = \"https://bmc1/redfish/v1\"\nca_file = \"/etc/ca.pem\"\n";

    #[test]
    fn redfish_probes_load_with_basic_credentials_and_hide_them() {
        let s = spec(&format!(
            "[hardware]\n{REDFISH}username = \"probe\"\npassword = \"pa55word\"\ntimeout = \"5s\""
        ))
        .unwrap();
        assert_eq!(s.source(), Ok(Source::Redfish("https://bmc1/redfish/v1")));
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.interval, default_interval());
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("pa55") && shown.contains("<redacted>"),
            "{shown}"
        );
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("pa55word"), "{json}");
        // Without credentials (a lab BMC, an emulator), plain http is fine.
        let plain = spec("[hardware]\nredfish = \"http://127.0.0.1:8000/redfish/v1\"").unwrap();
        assert_eq!(plain.failing_after, 3);
    }

    #[test]
    fn https_probes_with_credentials_load_and_hide_them() {
        let rule = r#"rules = [{ metric = "m", op = ">", value = 1, status = "failing" }]"#;
        let bearer = spec(&format!(
            "[hardware]\n{HTTPS}token = \"s3cret-t0ken\"\n{rule}"
        ))
        .unwrap();
        assert_eq!(
            bearer.token.as_ref().map(Hidden::expose),
            Some("s3cret-t0ken")
        );
        assert_eq!(bearer.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(bearer.failing_after, 3);
        let basic = spec(&format!(
            "[hardware]\n{HTTPS}username = \"probe\"\npassword = \"pa55word\"\nfailing_after = 1\n{rule}"
        ))
        .unwrap();
        assert_eq!(
            basic.password.as_ref().map(Hidden::expose),
            Some("pa55word")
        );
        assert_eq!(basic.failing_after, 1);
        for shown in [format!("{bearer:?}"), format!("{basic:?}")] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("pa55"),
                "{shown}"
            );
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        let json = serde_json::to_string(&basic).unwrap();
        assert!(!json.contains("pa55word"), "{json}");
    }
}

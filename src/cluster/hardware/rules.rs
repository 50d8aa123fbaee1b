//! Hardware rules and their verdict. A [`Rule`] names a series of a scrape
//! and a threshold; [`evaluate`] turns the samples of one scrape into a
//! [`Verdict`]. Pure: no network, no clock — the probe fetches, this decides.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::exposition::{is_label_name, is_metric_name, Sample};

/// At most this many reasons are listed in a verdict; a rule matching every
/// series of a big exporter would otherwise flood `/status` and the event log.
pub const MAX_REASONS: usize = 16;

/// What a node's hardware looks like, from best to worst.
///
/// The order is by how strongly the status argues for action: `Unknown` (the
/// probe could not say) ranks above `Ok` but below any finding, because an
/// unreachable exporter says nothing about the power supplies behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HardwareStatus {
    /// No rule matched (or the command exited 0).
    Ok,
    /// The probe failed: unreachable, timed out, unparsable, odd exit status.
    Unknown,
    /// Redundancy lost; worth a planned switchover.
    Degraded,
    /// The node counts as down now.
    Failing,
}

impl HardwareStatus {
    /// The lowercase name, as in configs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            HardwareStatus::Ok => "ok",
            HardwareStatus::Unknown => "unknown",
            HardwareStatus::Degraded => "degraded",
            HardwareStatus::Failing => "failing",
        }
    }
}

impl fmt::Display for HardwareStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status a matching rule sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Severity {
    /// See [`HardwareStatus::Degraded`].
    Degraded,
    /// See [`HardwareStatus::Failing`].
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

impl From<Severity> for HardwareStatus {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Degraded => HardwareStatus::Degraded,
            Severity::Failing => HardwareStatus::Failing,
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

    fn selects(&self, s: &Sample) -> bool {
        s.name == self.metric
            && self
                .labels
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == v))
    }
}

/// The outcome of one probe: a status and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The worst status found.
    pub status: HardwareStatus,
    /// One line per finding, worst first; empty when all is well.
    pub reasons: Vec<String>,
}

impl Verdict {
    /// All well, nothing to say.
    pub fn ok() -> Verdict {
        Verdict {
            status: HardwareStatus::Ok,
            reasons: Vec::new(),
        }
    }

    /// The probe could not tell, because of `reason`.
    pub fn unknown(reason: impl Into<String>) -> Verdict {
        Verdict {
            status: HardwareStatus::Unknown,
            reasons: vec![reason.into()],
        }
    }
}

/// Applies `rules` to one scrape: the worst matching rule sets the status,
/// and every match gives a reason (worst first, at most [`MAX_REASONS`]).
///
/// A rule whose metric is absent from the scrape contributes nothing. Absence
/// is ambiguous — an exporter omits sensors a host does not have, and some
/// drop a sensor they failed to read — so treating it as a failure would fail
/// healthy nodes. To catch a broken collector, add a rule on its own health
/// series (e.g. `ipmi_up == 0`).
pub fn evaluate(rules: &[Rule], samples: &[Sample]) -> Verdict {
    let mut found: Vec<(Severity, String)> = Vec::new();
    let mut matches = 0usize;
    for rule in rules {
        for s in samples.iter().filter(|s| rule.selects(s)) {
            if rule.op.holds(s.value, rule.value) {
                matches += 1;
                found.push((rule.status, reason(rule, s)));
            }
        }
    }
    // Stable: among equals, config order then scrape order.
    found.sort_by_key(|(severity, _)| std::cmp::Reverse(*severity));
    let status = found
        .first()
        .map_or(HardwareStatus::Ok, |(severity, _)| (*severity).into());
    let mut reasons: Vec<String> = found
        .into_iter()
        .take(MAX_REASONS)
        .map(|(_, r)| r)
        .collect();
    if matches > MAX_REASONS {
        reasons.push(format!("... and {} more", matches - MAX_REASONS));
    }
    Verdict { status, reasons }
}

/// `ipmi_sensor_state{name="PSU1",type="Power Supply"} = 1 (!= 0) -> degraded`
fn reason(rule: &Rule, s: &Sample) -> String {
    let mut out = s.name.clone();
    if !s.labels.is_empty() {
        let pairs: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        out.push('{');
        out.push_str(&pairs.join(","));
        out.push('}');
    }
    let status = HardwareStatus::from(rule.status);
    out.push_str(&format!(
        " = {} ({} {}) -> {status}",
        number(s.value),
        rule.op,
        number(rule.value)
    ));
    out
}

/// Label values as the exposition format writes them, so a reason stays one line.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `1` rather than `1.0`; infinities as Prometheus writes them.
fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::exposition::parse;
    use super::*;

    const SCRAPE: &str = r#"
ipmi_up{collector="ipmi"} 1
ipmi_sensor_state{id="52",name="PSU1",type="Power Supply"} 0
ipmi_sensor_state{id="53",name="PSU2",type="Power Supply"} 1
ipmi_sensor_state{id="4",name="Inlet Temp",type="Temperature"} 2
node_hwmon_temp_celsius{chip="coretemp",sensor="temp1"} 45
node_hwmon_temp_celsius{chip="coretemp",sensor="temp2"} 95.5
node_hwmon_temp_celsius{chip="nvme",sensor="temp1"} NaN
"#;

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
    fn verdicts_over_a_real_looking_scrape() {
        let samples = parse(SCRAPE).unwrap();
        let psu =
            r#"ipmi_sensor_state{id="53",name="PSU2",type="Power Supply"} = 1 (!= 0) -> degraded"#;
        let hot =
            r#"node_hwmon_temp_celsius{chip="coretemp",sensor="temp2"} = 95.5 (> 90) -> failing"#;
        let cases: Vec<(Vec<Rule>, HardwareStatus, Vec<&str>)> = vec![
            (vec![], HardwareStatus::Ok, vec![]),
            (vec![psu_rule()], HardwareStatus::Degraded, vec![psu]),
            (vec![temp_rule(99.0)], HardwareStatus::Ok, vec![]),
            (
                vec![psu_rule(), temp_rule(90.0)],
                HardwareStatus::Failing,
                vec![hot, psu],
            ),
            (
                vec![rule("ipmi_up", &[], Op::Eq, 0.0, Severity::Failing)],
                HardwareStatus::Ok,
                vec![],
            ),
            // Labels must all match, exactly.
            (
                vec![rule(
                    "ipmi_sensor_state",
                    &[("type", "Power Supply"), ("name", "PSU1")],
                    Op::Ne,
                    0.0,
                    Severity::Failing,
                )],
                HardwareStatus::Ok,
                vec![],
            ),
            (
                vec![rule(
                    "ipmi_sensor_state",
                    &[("type", "power supply")],
                    Op::Ne,
                    0.0,
                    Severity::Failing,
                )],
                HardwareStatus::Ok,
                vec![],
            ),
            // A metric the exporter does not serve contributes nothing.
            (
                vec![rule(
                    "ipmi_fan_speed_rpm",
                    &[],
                    Op::Lt,
                    1e9,
                    Severity::Failing,
                )],
                HardwareStatus::Ok,
                vec![],
            ),
        ];
        for (i, (rules, status, reasons)) in cases.into_iter().enumerate() {
            let v = evaluate(&rules, &samples);
            assert_eq!(v.status, status, "case {i}: {v:?}");
            assert_eq!(v.reasons, reasons, "case {i}");
        }
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

    #[test]
    fn reasons_escape_labels_and_are_bounded() {
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample {
                name: "fan_ok".into(),
                labels: [("name".to_string(), format!("Fan \"{i}\"\nrear"))].into(),
                value: f64::NEG_INFINITY,
            })
            .collect();
        let v = evaluate(
            &[rule("fan_ok", &[], Op::Lt, 1.0, Severity::Degraded)],
            &samples,
        );
        assert_eq!(v.status, HardwareStatus::Degraded);
        assert_eq!(v.reasons.len(), MAX_REASONS + 1);
        assert_eq!(
            v.reasons[0],
            r#"fan_ok{name="Fan \"0\"\nrear"} = -Inf (< 1) -> degraded"#
        );
        assert_eq!(v.reasons[MAX_REASONS], "... and 24 more");
    }

    #[test]
    fn status_orders_by_severity_and_displays_lowercase() {
        use HardwareStatus::*;
        assert!(Ok < Unknown && Unknown < Degraded && Degraded < Failing);
        let shown: Vec<String> = [Ok, Unknown, Degraded, Failing]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shown, ["ok", "unknown", "degraded", "failing"]);
        assert_eq!(serde_json::to_string(&Degraded).unwrap(), "\"degraded\"");
    }

    /// Rules as the config loader will read them: TOML through the `config` crate.
    fn from_toml(toml: &str) -> Result<Vec<Rule>, String> {
        #[derive(Deserialize)]
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
}

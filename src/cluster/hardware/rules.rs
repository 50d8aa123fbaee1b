//! Hardware verdicts. A [`Rule`] (configured, see [`crate::config::hardware`])
//! names a series of a scrape and a threshold; [`evaluate`] turns the samples
//! of one scrape into a [`Verdict`]. Pure: no network, no clock — the probe
//! fetches, this decides.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::exposition::Sample;
use crate::config::hardware::{Rule, Severity};

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

impl From<Severity> for HardwareStatus {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Degraded => HardwareStatus::Degraded,
            Severity::Failing => HardwareStatus::Failing,
        }
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
        for s in samples.iter().filter(|s| selects(rule, s)) {
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

/// Whether `s` is a series of the rule's metric carrying all its labels.
fn selects(rule: &Rule, s: &Sample) -> bool {
    s.name == rule.metric
        && rule
            .labels
            .iter()
            .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == v))
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
    use crate::config::hardware::Op;

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
}

//! The SLO kit under deploy/: Prometheus rules, their unit tests and the
//! Grafana dashboard. promtool checks the rules, runs their tests and parses
//! the dashboard's queries; every metric they name must be one the proxy
//! exports, so renaming a metric fails here rather than in someone's empty
//! panel or silent alert.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use switchyard::metrics::{Type, LATENCY_BUCKETS, METRICS};

const RULES: &str = "deploy/prometheus/switchyard-rules.yml";
const RULES_TEST: &str = "deploy/prometheus/switchyard-rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/switchyard-dashboard.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A missing promtool fails the test instead of skipping it: a skipped check
/// looks like a passed one.
fn promtool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH: install it with `apt-get install prometheus` \
                 (Debian's package has /usr/bin/promtool; .ci/run installs it)"
            )
        })
}

fn run_promtool(args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules() {
    run_promtool(&["check", "rules", RULES]);
}

#[test]
fn promtool_rule_tests_pass() {
    run_promtool(&["test", "rules", RULES_TEST]);
}

/// The dashboard's queries, as promtool can parse them: each becomes a
/// recording rule, with Grafana's variables replaced by values of their kind.
#[test]
fn dashboard_queries_are_promql() {
    let exprs = dashboard_exprs(&dashboard());
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "6h")
            .replace("$instance", ".*")
            .replace("$job", ".*");
        assert!(!expr.contains('$'), "unknown variable in {expr}");
        yaml.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: |\n"
        ));
        for line in expr.lines() {
            yaml.push_str(&format!("          {line}\n"));
        }
    }
    let dir = std::env::temp_dir().join(format!("switchyard-slo-kit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dashboard-queries.yml");
    std::fs::write(&file, yaml).unwrap();
    let checked = std::panic::catch_unwind(|| {
        run_promtool(&["check", "rules", file.to_str().unwrap()]);
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

/// Every match of `switchyard_[a-z0-9_]+`. Recording rules are named
/// `switchyard:...` so that this finds only exported series.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("switchyard_") {
        let tail = &rest[at..];
        let len = tail
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        names.insert(tail[..len].to_string());
        rest = &tail[len..];
    }
    names
}

/// Why `name` is not a series Switchyard exports, if it is not.
fn not_exported(name: &str) -> Option<String> {
    let ty = |n: &str| METRICS.iter().find(|m| m.0 == n).map(|m| m.1);
    if let Some(ty) = ty(name) {
        // A histogram's samples are only its _bucket, _sum and _count.
        return (ty == Type::Histogram)
            .then(|| format!("{name} is a histogram: select _bucket, _sum or _count"));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        let Some(ty) = name.strip_suffix(suffix).and_then(ty) else {
            continue;
        };
        return (ty != Type::Histogram).then(|| format!("{name}: a {ty:?} has no {suffix}"));
    }
    Some(format!("{name} is not in switchyard::metrics::METRICS"))
}

#[test]
fn every_metric_named_is_exported() {
    let mut problems = Vec::new();
    for file in [RULES, RULES_TEST, DASHBOARD] {
        let names = metric_names(&read(file));
        assert!(!names.is_empty(), "{file} names no metric");
        for name in names {
            if let Some(why) = not_exported(&name) {
                problems.push(format!("{file}: {why}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A misspelt recording rule in a panel is an empty panel, not an error.
#[test]
fn every_recording_rule_used_is_defined() {
    let rules = read(RULES);
    let defined: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .collect();
    for file in [RULES_TEST, DASHBOARD] {
        let text = read(file);
        for (at, _) in text.match_indices("switchyard:") {
            let len = text[at..]
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_:".contains(b))
                .count();
            let name = &text[at..at + len];
            assert!(
                defined.contains(name),
                "{file}: {name} is not recorded in {RULES}"
            );
        }
    }
}

#[test]
fn the_scanner_finds_series_not_recording_rules() {
    let found = metric_names(
        "rate(switchyard_queries_total[5m]) / switchyard:slow_queries:ratio_rate5m \
         {{ $labels.job }} switchyard_query_duration_seconds_bucket{le=\"0.1\"}",
    );
    let want = [
        "switchyard_queries_total",
        "switchyard_query_duration_seconds_bucket",
    ];
    assert_eq!(found, want.iter().map(|s| s.to_string()).collect());
    assert_eq!(not_exported("switchyard_queries_total"), None);
    assert!(not_exported("switchyard_queries_total_bucket").is_some());
    assert!(not_exported("switchyard_no_such_metric").is_some());
}

/// Each alert carries what Alertmanager routes on and what a person reads.
#[test]
fn every_alert_has_severity_summary_and_description() {
    let rules = read(RULES);
    let mut alerts = 0;
    for block in rules.split("- alert: ").skip(1) {
        // The block ends where the next rule starts.
        let block = block.split("- record: ").next().unwrap();
        let name = block.lines().next().unwrap().trim();
        for key in ["severity:", "summary:", "description:"] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
        alerts += 1;
    }
    assert!(alerts >= 8, "only {alerts} alerts in {RULES}");
}

/// Each alert has a case where it fires and one where it stays silent.
#[test]
fn every_alert_is_tested_firing_and_silent() {
    let rules = read(RULES);
    let tests = read(RULES_TEST);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname: ") else {
            continue;
        };
        match lines.get(i + 1).copied() {
            Some("exp_alerts: []") => silent.insert(name),
            Some("exp_alerts:") => fires.insert(name),
            other => panic!("alertname {name} is followed by {other:?}, not exp_alerts"),
        };
    }
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(silent.contains(name), "no test where {name} stays silent");
    }
}

/// promtool orders groups it is not told about at random at every step, so
/// an alert reads its recording rules as of this step or the one before and
/// a tested value changes from run to run. The tests name every group, in
/// the rules file's order.
#[test]
fn rule_tests_evaluate_every_group_in_file_order() {
    let groups: Vec<String> = read(RULES)
        .lines()
        .filter_map(|l| l.strip_prefix("  - name: "))
        .map(str::to_owned)
        .collect();
    let tests = read(RULES_TEST);
    let order: Vec<String> = tests
        .split("group_eval_order:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{RULES_TEST} has no group_eval_order"))
        .lines()
        .map_while(|l| l.strip_prefix("  - "))
        .map(str::to_owned)
        .collect();
    assert!(groups.len() >= 4, "only {} groups in {RULES}", groups.len());
    assert_eq!(order, groups, "{RULES_TEST}: group_eval_order");
}

/// A latency threshold must be a bucket bound: `le="0.2"` selects no series.
/// Compared as numbers: Prometheus 3 writes `le="1"` as `le="1.0"`.
#[test]
fn latency_thresholds_are_bucket_bounds() {
    let mut checked = 0;
    for file in [RULES, DASHBOARD] {
        let text = read(file).replace("\\\"", "\"");
        for (at, _) in text.match_indices("le=\"") {
            // Not the end of another label's name (`role="primary"`).
            let before = text[..at].bytes().next_back();
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            let value = text[at + 4..].split('"').next().unwrap();
            assert!(
                value
                    .parse::<f64>()
                    .is_ok_and(|v| LATENCY_BUCKETS.contains(&v)),
                "{file}: le=\"{value}\" is not one of {LATENCY_BUCKETS:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no le=\"...\" threshold found");
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Panels, with those nested in collapsed rows.
fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn annotation_exprs(dash: &Value) -> Vec<&str> {
    dash["annotations"]["list"]
        .as_array()
        .expect("annotations.list")
        .iter()
        .filter_map(|a| a["expr"].as_str())
        .collect()
}

/// Every query of the dashboard: its panels' and its annotations'.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = panels(dash)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("target without expr").to_string())
        .collect();
    exprs.extend(annotation_exprs(dash).into_iter().map(str::to_string));
    exprs
}

#[test]
fn dashboard_has_panels_variables_and_annotations() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36);

    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["includeAll"], true);

    let all = panels(&dash);
    let shown: Vec<_> = all.iter().filter(|p| p["type"] != "row").collect();
    assert!(shown.len() >= 10, "only {} panels", shown.len());
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_u64()), "panel id of {title} repeated");
    }
    for p in shown {
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        for t in targets.unwrap_or_else(|| panic!("panel {title} has no query")) {
            // Queries follow the data source the viewer picked.
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
        }
    }

    let annotations = annotation_exprs(&dash);
    for counter in ["switchyard_failovers_total", "switchyard_switchovers_total"] {
        assert!(
            annotations
                .iter()
                .any(|e| e.contains(&format!("changes({counter}"))),
            "no annotation from changes({counter}[1m]): {annotations:?}"
        );
    }

    // "All" and multi-select expand to a regular expression: an `=` matcher
    // would then match nothing.
    for expr in dashboard_exprs(&dash) {
        for var in ["\"$job\"", "\"$instance\""] {
            for (at, _) in expr.match_indices(var) {
                assert!(expr[..at].ends_with("=~"), "{var} without =~ in {expr}");
            }
        }
    }
}

//! The drill's report: built from the load's ledger, the drill's own
//! timings and the proxy's timeline by pure functions, printed for people
//! (`Display`) or as one JSON object (`Serialize`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::console::{Event, Node};
use super::load::Offsets;
use super::verdict::{self, ms, Exceeded, Measures, Promote, Thresholds};
use super::{Mode, Stop};

/// What the drill did, as offsets from the load's start.
#[derive(Debug, Default)]
pub(super) struct Exercise {
    /// The first move (or the crash).
    pub(super) start: Duration,
    /// The load stopped.
    pub(super) end: Duration,
    pub(super) moves: Vec<MoveTiming>,
    pub(super) rebuilds: Vec<RebuildTiming>,
    pub(super) crash: Option<CrashTiming>,
    /// Why the exercise ended early, if it did.
    pub(super) stop: Option<Stop>,
}

/// One `SWITCHOVER TO`.
#[derive(Debug)]
pub(super) struct MoveTiming {
    pub(super) from: String,
    pub(super) to: String,
    /// As the admin command took it.
    pub(super) command: Duration,
    /// What the console answered instead of success.
    pub(super) error: Option<String>,
}

/// One rebuild of a fenced node.
#[derive(Debug)]
pub(super) struct RebuildTiming {
    pub(super) node: String,
    pub(super) command: Duration,
    /// From the command's start until the node was a healthy replica.
    pub(super) rejoined: Duration,
}

/// The crash command's start.
#[derive(Debug)]
pub(super) struct CrashTiming {
    pub(super) node: String,
    /// Wall clock, to compare with the proxy's event times.
    pub(super) at_unix_ms: i64,
}

/// Everything the report is built from.
pub(super) struct Input<'a> {
    pub(super) mode: &'a Mode,
    pub(super) table: String,
    pub(super) writers: u32,
    pub(super) ledger: Offsets,
    pub(super) lost: Option<u64>,
    pub(super) exercise: Exercise,
    /// The timeline since the drill began, oldest first.
    pub(super) events: Vec<Event>,
    /// `SHOW NODES` at the end.
    pub(super) after: &'a [Node],
}

/// The drill's report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `switchover` or `crash`.
    mode: &'static str,
    table: String,
    writers: u32,
    acked: u64,
    errors: u64,
    /// By SQLSTATE, or `connection lost` / `connect failed`.
    errors_by_sqlstate: BTreeMap<String, u64>,
    reconnects: u64,
    /// `None`: the table could not be read back.
    lost: Option<u64>,
    /// The longest gap between acknowledged writes, all writers merged,
    /// from the first move to the end.
    write_pause_ms: f64,
    switchovers: Vec<SwitchoverReport>,
    rebuilds: Vec<RebuildReport>,
    crash: Option<CrashReport>,
    primary_after: Option<String>,
    fenced_after: Vec<String>,
    events: Vec<Event>,
    /// Why the rehearsal is incomplete (the drill's own step failed).
    incomplete: Option<String>,
    passed: bool,
    exceeded: Vec<Exceeded>,
    #[serde(skip)]
    exit_code: u8,
}

#[derive(Debug, Serialize)]
struct SwitchoverReport {
    from: String,
    to: String,
    /// The admin command, start to answer.
    command_ms: f64,
    /// `switchover_started` → `writes_resumed` on the timeline.
    write_pause_ms: Option<f64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RebuildReport {
    node: String,
    command_ms: f64,
    rejoined_ms: f64,
}

#[derive(Debug, Serialize)]
struct CrashReport {
    node: String,
    /// Crash command started → first `node_suspect`, `node_down` or
    /// `failover_started`.
    detect_ms: Option<f64>,
    /// `failover_started` → `writes_resumed`.
    promote_ms: Option<f64>,
}

impl Report {
    pub(super) fn build(input: Input<'_>, thresholds: &Thresholds) -> Report {
        let Input {
            mode,
            table,
            writers,
            ledger,
            lost,
            exercise: ex,
            events,
            after,
        } = input;
        let pause = longest_gap(&ledger.acks, ex.start, ex.end);
        let (crash, promote) = match &ex.crash {
            None => (None, Promote::NotApplicable),
            Some(c) => crash_report(c, &events),
        };
        let measures = Measures {
            pause,
            errors: ledger.errors.len() as u64,
            lost,
            promote,
        };
        let exceeded = verdict::exceeded(&measures, thresholds, ex.stop.as_ref());
        let exit_code = verdict::exit_code(ex.stop.as_ref(), &exceeded);
        let (primary_after, fenced_after) = standing(after);
        Report {
            mode: match mode {
                Mode::Switchover { .. } => "switchover",
                Mode::Crash { .. } => "crash",
            },
            table,
            writers,
            acked: ledger.acks.len() as u64,
            errors: measures.errors,
            errors_by_sqlstate: tally(&ledger.errors),
            reconnects: ledger.reconnects,
            lost,
            write_pause_ms: ms(pause),
            switchovers: switchover_reports(ex.moves, &events),
            rebuilds: ex.rebuilds.into_iter().map(RebuildReport::from).collect(),
            crash,
            primary_after,
            fenced_after,
            events,
            incomplete: match ex.stop {
                Some(Stop::Tooling(why)) => Some(why),
                _ => None,
            },
            passed: exit_code == 0,
            exceeded,
            exit_code,
        }
    }

    /// 0 within every threshold, 1 past one, 2 when incomplete.
    pub fn exit_code(&self) -> u8 {
        self.exit_code
    }
}

/// Each move with its write pause from the timeline (the n-th
/// `switchover_started` is the n-th move's).
fn switchover_reports(moves: Vec<MoveTiming>, events: &[Event]) -> Vec<SwitchoverReport> {
    let pauses = switchover_pauses(events);
    moves
        .into_iter()
        .enumerate()
        .map(|(i, m)| SwitchoverReport {
            from: m.from,
            to: m.to,
            command_ms: ms(m.command),
            write_pause_ms: pauses.get(i).copied().flatten().map(ms),
            error: m.error,
        })
        .collect()
}

impl From<RebuildTiming> for RebuildReport {
    fn from(r: RebuildTiming) -> RebuildReport {
        RebuildReport {
            node: r.node,
            command_ms: ms(r.command),
            rejoined_ms: ms(r.rejoined),
        }
    }
}

fn crash_report(c: &CrashTiming, events: &[Event]) -> (Option<CrashReport>, Promote) {
    let (detect, promote) = crash_times(events, c.at_unix_ms);
    let report = CrashReport {
        node: c.node.clone(),
        detect_ms: detect.map(ms),
        promote_ms: match promote {
            Promote::Took(d) => Some(ms(d)),
            Promote::Never | Promote::NotApplicable => None,
        },
    };
    (Some(report), promote)
}

/// How many errors of each kind.
fn tally(errors: &[String]) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for e in errors {
        *by.entry(e.clone()).or_insert(0) += 1;
    }
    by
}

/// The primary at the end, and the nodes left fenced.
fn standing(after: &[Node]) -> (Option<String>, Vec<String>) {
    let primary = after
        .iter()
        .find(|n| n.role() == "primary" && n.state() == "up")
        .map(|n| n.name().to_string());
    let fenced = after
        .iter()
        .filter(|n| n.state() == "fenced")
        .map(|n| n.name().to_string())
        .collect();
    (primary, fenced)
}

/// The longest gap between consecutive acknowledged writes (sorted
/// offsets) within `start..=end`: the gap that spans `start` counts from
/// the last write before it, and silence until `end` counts too (writes
/// that never resumed are one long pause).
pub(super) fn longest_gap(acks: &[Duration], start: Duration, end: Duration) -> Duration {
    let mut last = acks
        .iter()
        .rev()
        .find(|&&a| a <= start)
        .copied()
        .unwrap_or(start);
    let mut longest = Duration::ZERO;
    for &a in acks.iter().filter(|&&a| a > start && a <= end) {
        longest = longest.max(a - last);
        last = a;
    }
    longest.max(end.saturating_sub(last))
}

/// Milliseconds from `a` to `b` (event times), if both parsed.
fn between(a: Option<i64>, b: Option<i64>) -> Option<Duration> {
    Some(Duration::from_millis((b? - a?).max(0) as u64))
}

/// Each `switchover_started`'s write pause: until the next
/// `writes_resumed`, or `None` when the switchover failed (or was cut short
/// by the next one) first.
pub(super) fn switchover_pauses(events: &[Event]) -> Vec<Option<Duration>> {
    let mut out = Vec::new();
    let mut open: Option<Option<i64>> = None;
    for e in events {
        match e.kind() {
            "switchover_started" => {
                // One still open was cut short by this one.
                let unfinished = open.replace(e.at_unix_ms());
                out.extend(unfinished.map(|_| None));
            }
            "writes_resumed" => {
                if let Some(started) = open.take() {
                    out.push(between(started, e.at_unix_ms()));
                }
            }
            "switchover_failed" if open.take().is_some() => out.push(None),
            _ => {}
        }
    }
    if open.is_some() {
        out.push(None);
    }
    out
}

/// After a crash started at `crash_ms` (wall clock): the time to detect it
/// (the first `node_suspect`, `node_down` or `failover_started`) and to promote
/// (`failover_started` → the next `writes_resumed`).
pub(super) fn crash_times(events: &[Event], crash_ms: i64) -> (Option<Duration>, Promote) {
    let detect = events
        .iter()
        .find(|e| matches!(e.kind(), "node_suspect" | "node_down" | "failover_started"))
        .and_then(|e| between(Some(crash_ms), e.at_unix_ms()));
    let Some(i) = events.iter().position(|e| e.kind() == "failover_started") else {
        return (detect, Promote::Never);
    };
    let resumed = events[i + 1..]
        .iter()
        .find(|e| e.kind() == "writes_resumed");
    let promote = resumed
        .and_then(|r| between(events[i].at_unix_ms(), r.at_unix_ms()))
        .map_or(Promote::Never, Promote::Took);
    (detect, promote)
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "unknown".to_string(), |v| format!("{v} ms"))
}

impl Report {
    /// The text report's lines after the title: label, value.
    fn lines(&self) -> Vec<(&'static str, String)> {
        let verdict = match self.exit_code {
            0 => "PASSED",
            1 => "FAILED (a threshold is exceeded)",
            _ => "INCOMPLETE (the drill could not finish)",
        };
        let by: Vec<String> = self
            .errors_by_sqlstate
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let errors = match by.is_empty() {
            true => self.errors.to_string(),
            false => format!("{} ({})", self.errors, by.join(", ")),
        };
        let lost = self.lost.map_or("unknown".to_string(), |n| n.to_string());
        let pause = format!(
            "{} ms (longest gap between acknowledged writes)",
            self.write_pause_ms
        );
        let mut out = vec![
            ("verdict", verdict.to_string()),
            ("writes acked", self.acked.to_string()),
            ("client errors", errors),
            ("reconnects", self.reconnects.to_string()),
            ("lost commits", lost),
            ("write pause", pause),
        ];
        out.extend(self.moves_lines());
        let primary = self.primary_after.as_deref().unwrap_or("none");
        out.push(("primary after", primary.to_string()));
        if !self.fenced_after.is_empty() {
            let fenced = self.fenced_after.join(", ");
            out.push((
                "fenced after",
                format!("{fenced} (rebuild as a replica, then READMIT)"),
            ));
        }
        out.extend(
            self.exceeded
                .iter()
                .map(|e| ("exceeded", e.message().to_string())),
        );
        out.extend(
            self.incomplete
                .iter()
                .map(|why| ("incomplete", why.clone())),
        );
        out
    }

    /// The switchovers, rebuilds and crash, one line each.
    fn moves_lines(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for s in &self.switchovers {
            let outcome = match &s.error {
                Some(e) => format!("failed: {e}"),
                None => format!("write pause on the timeline {}", opt_ms(s.write_pause_ms)),
            };
            let line = format!(
                "{} -> {}: SWITCHOVER took {} ms, {outcome}",
                s.from, s.to, s.command_ms
            );
            out.push(("switchover", line));
        }
        for r in &self.rebuilds {
            let line = format!(
                "{}: command {} ms, a replica again after {} ms",
                r.node, r.command_ms, r.rejoined_ms
            );
            out.push(("rebuild", line));
        }
        if let Some(c) = &self.crash {
            let (detect, promote) = (opt_ms(c.detect_ms), opt_ms(c.promote_ms));
            out.push((
                "crash",
                format!("{}: detected after {detect}, promoted in {promote}", c.node),
            ));
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mode, writers, table) = (self.mode, self.writers, &self.table);
        writeln!(
            f,
            "switchyard drill: {mode}, {writers} writers, table {table}"
        )?;
        for (label, value) in self.lines() {
            writeln!(f, "  {label:<15} {value}")?;
        }
        writeln!(f, "events:")?;
        for e in &self.events {
            writeln!(f, "  {}", e.line())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_longest_gap_spans_the_window() {
        let acks: Vec<Duration> = [0, 5, 10, 15, 90, 95, 100].map(ms_).to_vec();
        let cases = [
            ("the move's gap", ms_(12), ms_(100), ms_(75)),
            (
                "the gap into the window counts from before it",
                ms_(80),
                ms_(100),
                ms_(75),
            ),
            ("only the window", ms_(0), ms_(15), ms_(5)),
            ("silence until the end", ms_(90), ms_(300), ms_(200)),
            ("no write in or before the window", ms_(0), ms_(0), ms_(0)),
        ];
        for (what, start, end, want) in cases {
            assert_eq!(longest_gap(&acks, start, end), want, "{what}");
        }
        assert_eq!(
            longest_gap(&[], ms_(10), ms_(40)),
            ms_(30),
            "no writes at all"
        );
    }

    #[test]
    fn each_switchover_is_paired_with_its_resumption() {
        let e = |seq, at, kind| Event::new(seq, at, kind, "db1");
        type Case = (&'static str, Vec<Event>, Vec<Option<Duration>>);
        let cases: Vec<Case> = vec![
            (
                "there and back",
                vec![
                    e(1, 1000, "switchover_started"),
                    e(2, 1010, "switchover_step"),
                    e(3, 1070, "writes_resumed"),
                    e(4, 2000, "node_readmitted"),
                    e(5, 3000, "switchover_started"),
                    e(6, 3055, "writes_resumed"),
                ],
                vec![Some(ms_(70)), Some(ms_(55))],
            ),
            (
                "a failed one, then a failover's resumption",
                vec![
                    e(1, 1000, "switchover_started"),
                    e(2, 1400, "failover_started"),
                    e(3, 1401, "switchover_failed"),
                    e(4, 2000, "writes_resumed"),
                ],
                vec![None],
            ),
            (
                "never finished",
                vec![e(1, 1000, "switchover_started")],
                vec![None],
            ),
            (
                "a resumption before any switchover",
                vec![e(1, 900, "writes_resumed")],
                vec![],
            ),
        ];
        for (what, events, want) in cases {
            assert_eq!(switchover_pauses(&events), want, "{what}");
        }
    }

    #[test]
    fn crash_times_come_from_the_crash_and_the_timeline() {
        let e = |seq, at, kind| Event::new(seq, at, kind, "db1");
        let cases: Vec<(&str, Vec<Event>, Option<Duration>, Promote)> = vec![
            (
                "detected, promoted",
                vec![
                    e(1, 10_400, "node_down"),
                    e(2, 10_401, "failover_started"),
                    e(3, 10_500, "promoting"),
                    e(4, 10_650, "writes_resumed"),
                ],
                Some(ms_(400)),
                Promote::Took(ms_(249)),
            ),
            (
                "the clocks disagree by a little",
                vec![
                    e(1, 9_990, "failover_started"),
                    e(2, 10_100, "writes_resumed"),
                ],
                Some(ms_(0)),
                Promote::Took(ms_(110)),
            ),
            (
                "detected, never promoted",
                vec![e(1, 10_400, "node_down"), e(2, 10_401, "failover_started")],
                Some(ms_(400)),
                Promote::Never,
            ),
            (
                "a hang: suspect first, down at the threshold",
                vec![
                    e(1, 11_000, "node_suspect"),
                    e(2, 12_500, "node_down"),
                    e(3, 12_501, "failover_started"),
                    e(4, 13_000, "writes_resumed"),
                ],
                Some(ms_(1000)),
                Promote::Took(ms_(499)),
            ),
            ("nothing seen", vec![], None, Promote::Never),
        ];
        for (what, events, detect, promote) in cases {
            assert_eq!(crash_times(&events, 10_000), (detect, promote), "{what}");
        }
    }
}

//! The drill's verdict: which thresholds the measurements exceed, and the
//! exit status. Pure.

use std::time::Duration;

use serde::Serialize;

use super::Stop;
use crate::config::duration::format as flag;

/// When the drill fails (each a command-line flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// `--max-pause`: the longest gap between acknowledged writes.
    pub max_pause: Duration,
    /// `--max-errors`: client errors; `None` is unbounded (a crash test's
    /// default: transactions in flight at a crash fail by design).
    pub max_errors: Option<u64>,
    /// `--max-lost`: acknowledged commits missing afterwards.
    pub max_lost: u64,
    /// `--max-promote`: a crash test's `failover_started` → `writes_resumed`.
    pub max_promote: Duration,
}

/// What the verdict is taken on.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Measures {
    pub(super) pause: Duration,
    pub(super) errors: u64,
    /// `None`: the table could not be read back.
    pub(super) lost: Option<u64>,
    pub(super) promote: Promote,
}

/// A crash test's promotion, as the timeline shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Promote {
    /// A switchover drill: nothing promoted by a failover.
    NotApplicable,
    /// `failover_started` → `writes_resumed`.
    Took(Duration),
    /// No such pair on the timeline.
    Never,
}

/// One threshold the drill exceeded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exceeded {
    /// The flag without its dashes (`max_pause`), or `switchover` (a move
    /// failed) or `timeout` (writes did not resume after a crash).
    threshold: &'static str,
    /// The limit: milliseconds for durations, else a count.
    limit: f64,
    /// The measurement, in the same unit; `None` when unknown.
    actual: Option<f64>,
    /// For people.
    message: String,
}

impl Exceeded {
    #[cfg(test)]
    fn threshold(&self) -> &'static str {
        self.threshold
    }

    pub(super) fn message(&self) -> &str {
        &self.message
    }
}

/// Milliseconds to a tenth.
pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The thresholds `m` exceeds, and the failure that ended the exercise
/// early if it was a finding about the cluster.
pub(super) fn exceeded(m: &Measures, t: &Thresholds, stop: Option<&Stop>) -> Vec<Exceeded> {
    let mut out = Vec::new();
    let mut add = |threshold, limit, actual, message| {
        out.push(Exceeded {
            threshold,
            limit,
            actual,
            message,
        })
    };
    match stop {
        Some(Stop::MoveFailed(why)) => add("switchover", 0.0, None, why.clone()),
        Some(Stop::NotResumed(limit)) => {
            let msg = format!("writes did not resume within --timeout {}", flag(*limit));
            add("timeout", ms(*limit), None, msg);
        }
        Some(Stop::Tooling(_)) | None => {}
    }
    if m.pause > t.max_pause {
        let msg = format!(
            "write pause {} ms > --max-pause {}",
            ms(m.pause),
            flag(t.max_pause)
        );
        add("max_pause", ms(t.max_pause), Some(ms(m.pause)), msg);
    }
    if let Some(max) = t.max_errors.filter(|&max| m.errors > max) {
        let msg = format!("{} client errors > --max-errors {max}", m.errors);
        add("max_errors", max as f64, Some(m.errors as f64), msg);
    }
    match m.lost {
        Some(lost) if lost > t.max_lost => {
            let msg = format!("{lost} lost commits > --max-lost {}", t.max_lost);
            add("max_lost", t.max_lost as f64, Some(lost as f64), msg);
        }
        Some(_) => {}
        None => {
            let msg = "lost commits unknown: the table could not be read back".to_string();
            add("max_lost", t.max_lost as f64, None, msg);
        }
    }
    let limit = ms(t.max_promote);
    match m.promote {
        Promote::Took(d) if d > t.max_promote => {
            let msg = format!(
                "promotion took {} ms > --max-promote {}",
                ms(d),
                flag(t.max_promote)
            );
            add("max_promote", limit, Some(ms(d)), msg);
        }
        Promote::Never => {
            let msg = "no promotion on the timeline (failover_started, then writes_resumed)";
            add("max_promote", limit, None, msg.to_string());
        }
        Promote::Took(_) | Promote::NotApplicable => {}
    }
    out
}

/// 0 within every threshold, 1 past one (or a failed move), 2 when the
/// drill's own tooling failed and the rehearsal is incomplete.
pub(super) fn exit_code(stop: Option<&Stop>, exceeded: &[Exceeded]) -> u8 {
    match stop {
        Some(Stop::Tooling(_)) => 2,
        _ if exceeded.is_empty() => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits() -> Thresholds {
        Thresholds {
            max_pause: ms_(5000),
            max_errors: Some(0),
            max_lost: 0,
            max_promote: ms_(30_000),
        }
    }

    fn fine() -> Measures {
        Measures {
            pause: ms_(70),
            errors: 0,
            lost: Some(0),
            promote: Promote::NotApplicable,
        }
    }

    #[test]
    fn each_threshold_is_judged_on_its_own() {
        let unbounded = Thresholds {
            max_errors: None,
            ..limits()
        };
        type Case = (
            &'static str,
            Measures,
            Thresholds,
            Option<Stop>,
            &'static [&'static str],
            u8,
        );
        let cases: Vec<Case> = vec![
            ("all fine", fine(), limits(), None, &[], 0),
            (
                "pause at the limit passes",
                Measures {
                    pause: ms_(5000),
                    ..fine()
                },
                limits(),
                None,
                &[],
                0,
            ),
            (
                "pause past it",
                Measures {
                    pause: ms_(5001),
                    ..fine()
                },
                limits(),
                None,
                &["max_pause"],
                1,
            ),
            (
                "errors",
                Measures {
                    errors: 2,
                    ..fine()
                },
                limits(),
                None,
                &["max_errors"],
                1,
            ),
            (
                "errors unbounded",
                Measures {
                    errors: 2,
                    ..fine()
                },
                unbounded.clone(),
                None,
                &[],
                0,
            ),
            (
                "lost",
                Measures {
                    lost: Some(1),
                    ..fine()
                },
                limits(),
                None,
                &["max_lost"],
                1,
            ),
            (
                "lost unknown",
                Measures {
                    lost: None,
                    ..fine()
                },
                limits(),
                None,
                &["max_lost"],
                1,
            ),
            (
                "promotion in time",
                Measures {
                    promote: Promote::Took(ms_(900)),
                    ..fine()
                },
                unbounded.clone(),
                None,
                &[],
                0,
            ),
            (
                "promotion slow",
                Measures {
                    promote: Promote::Took(ms_(30_001)),
                    ..fine()
                },
                limits(),
                None,
                &["max_promote"],
                1,
            ),
            (
                "never promoted, never resumed",
                Measures {
                    pause: ms_(60_000),
                    promote: Promote::Never,
                    ..fine()
                },
                unbounded,
                Some(Stop::NotResumed(ms_(60_000))),
                &["timeout", "max_pause", "max_promote"],
                1,
            ),
            (
                "a refused switchover",
                fine(),
                limits(),
                Some(Stop::MoveFailed("SWITCHOVER TO db2: no".into())),
                &["switchover"],
                1,
            ),
            (
                "the rebuild command failed",
                fine(),
                limits(),
                Some(Stop::Tooling("exit status 1".into())),
                &[],
                2,
            ),
            (
                "tooling wins over thresholds",
                Measures {
                    errors: 3,
                    ..fine()
                },
                limits(),
                Some(Stop::Tooling("exit status 1".into())),
                &["max_errors"],
                2,
            ),
        ];
        for (what, m, t, stop, want, code) in cases {
            let got = exceeded(&m, &t, stop.as_ref());
            let names: Vec<&str> = got.iter().map(Exceeded::threshold).collect();
            assert_eq!(names, want, "{what}");
            assert_eq!(exit_code(stop.as_ref(), &got), code, "{what}");
        }
    }

    #[test]
    fn messages_name_the_flag_and_the_numbers() {
        let m = Measures {
            pause: ms_(73),
            ..fine()
        };
        let t = Thresholds {
            max_pause: ms_(1),
            ..limits()
        };
        let got = exceeded(&m, &t, None);
        assert_eq!(got[0].message(), "write pause 73 ms > --max-pause 1ms");
        assert_eq!((got[0].limit, got[0].actual), (1.0, Some(73.0)));
    }
}

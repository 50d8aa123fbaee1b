//! Which hardware status is acted on, given a probe's last readings. One
//! reading is no evidence: an exporter that glitches, or one an attacker on
//! its network answers for, would otherwise fail a healthy primary over with
//! a single scrape. So a status worse than the one in force takes effect
//! only once `failing_after` readings in a row say at least that; until
//! then the one in force stands. A better reading (`ok`, or `unknown`: the
//! probe could not tell) takes effect at once, since acting on nothing
//! needs no evidence. Pure: the watcher keeps the readings.

use std::collections::VecDeque;

use super::rules::{HardwareStatus, Verdict};

/// Whether a reading argues for action (a finding), as opposed to `ok` or
/// `unknown`, which never move anything.
fn is_finding(s: HardwareStatus) -> bool {
    matches!(s, HardwareStatus::Degraded | HardwareStatus::Failing)
}

/// The status to act on after `readings` (oldest first), with `needed`
/// consecutive readings (at least 1) to confirm a finding. Before the first
/// reading, and for as long as no status is confirmed, that is `unknown`.
pub fn acted_on(readings: &[HardwareStatus], needed: usize) -> HardwareStatus {
    let needed = needed.max(1);
    let recent = readings
        .get(readings.len().saturating_sub(needed)..)
        .unwrap_or_default();
    let Some(&newest) = recent.last() else {
        return HardwareStatus::Unknown;
    };
    if !is_finding(newest) {
        return newest;
    }
    // The reading before an unconfirmed streak of findings still stands.
    if let Some(&before) = recent.iter().rev().find(|s| !is_finding(**s)) {
        return before;
    }
    if recent.len() < needed {
        return HardwareStatus::Unknown;
    }
    // Every one of the last `needed` readings is a finding: what all of them
    // say at least (degraded, failing, failing: degraded).
    recent
        .iter()
        .copied()
        .min()
        .unwrap_or(HardwareStatus::Unknown)
}

/// How many readings in a row, up to the newest, say at least what the
/// newest says.
pub fn streak(readings: &[HardwareStatus]) -> usize {
    let Some(&newest) = readings.last() else {
        return 0;
    };
    readings.iter().rev().take_while(|s| **s >= newest).count()
}

/// A probe's last readings: as many as it takes to confirm a finding.
#[derive(Debug, Default)]
pub struct Readings {
    recent: VecDeque<HardwareStatus>,
}

impl Readings {
    /// Adds a reading, keeping the last `needed`; returns the status to act on.
    pub fn push(&mut self, reading: HardwareStatus, needed: usize) -> HardwareStatus {
        self.recent.push_back(reading);
        while self.recent.len() > needed.max(1) {
            self.recent.pop_front();
        }
        acted_on(self.recent.make_contiguous(), needed)
    }

    /// How many readings in a row say at least what the newest says.
    pub fn streak(&mut self) -> usize {
        streak(self.recent.make_contiguous())
    }

    /// The newest reading.
    pub fn newest(&self) -> Option<HardwareStatus> {
        self.recent.back().copied()
    }
}

/// The verdict to show and act on: `reading` itself when it is in force,
/// else the status `acted` in force, with why the reading is not (yet).
pub fn shown(acted: HardwareStatus, reading: Verdict, streak: usize, needed: usize) -> Verdict {
    if reading.status == acted {
        return reading;
    }
    let mut reasons = vec![format!(
        "not acted on yet: {} in {streak} of the {needed} readings in a row it takes",
        reading.status
    )];
    reasons.extend(reading.reasons);
    Verdict {
        status: acted,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HardwareStatus::{Degraded as D, Failing as F, Ok as O, Unknown as U};

    #[test]
    fn a_finding_needs_consecutive_readings() {
        let cases: &[(&[HardwareStatus], usize, HardwareStatus)] = &[
            (&[], 3, U),
            (&[O], 3, O),
            (&[U], 3, U),
            // Fewer readings than needed confirm nothing.
            (&[F], 3, U),
            (&[F, F], 3, U),
            (&[F, F, F], 3, F),
            // One failing reading between good ones: the good one stands.
            (&[O, F], 3, O),
            (&[O, O, F], 3, O),
            (&[O, F, O], 3, O),
            (&[F, F, O], 3, O),
            (&[O, F, F], 3, O),
            (&[U, F, F], 3, U),
            (&[O, F, F, F], 3, F),
            // Confirmed, then one reading says less: what all three say.
            (&[F, F, F, D], 3, D),
            (&[D, D, D, F], 3, D),
            (&[D, D, D, F, F], 3, D),
            (&[D, D, D, F, F, F], 3, F),
            (&[D, F, D], 3, D),
            // A better reading takes effect at once.
            (&[F, F, F, O], 3, O),
            (&[F, F, F, U], 3, U),
            (&[D, D, D, U], 3, U),
            // failing_after = 1: every reading at once (0 counts as 1).
            (&[O, F], 1, F),
            (&[O, D], 1, D),
            (&[F], 0, F),
            (&[O, F, F], 2, F),
            (&[F, O, F], 2, O),
        ];
        for (readings, needed, want) in cases {
            assert_eq!(acted_on(readings, *needed), *want, "{readings:?}, {needed}");
        }
    }

    #[test]
    fn streaks_count_readings_at_least_as_bad_as_the_newest() {
        let cases: &[(&[HardwareStatus], usize)] = &[
            (&[], 0),
            (&[O], 1),
            (&[O, F], 1),
            (&[F, F], 2),
            (&[F, D], 2),
            (&[D, F], 1),
            (&[F, O, F, F], 2),
        ];
        for (readings, want) in cases {
            assert_eq!(streak(readings), *want, "{readings:?}");
        }
    }

    #[test]
    fn an_unconfirmed_reading_is_shown_as_such() {
        let hot = Verdict {
            status: F,
            reasons: vec!["temp = 97 (> 90) -> failing".into()],
        };
        assert_eq!(shown(F, hot.clone(), 3, 3), hot);
        let v = shown(O, hot, 1, 3);
        assert_eq!(v.status, O);
        assert_eq!(
            v.reasons,
            [
                "not acted on yet: failing in 1 of the 3 readings in a row it takes",
                "temp = 97 (> 90) -> failing"
            ]
        );
    }

    #[test]
    fn readings_keep_what_confirmation_needs() {
        let mut r = Readings::default();
        assert_eq!(r.push(F, 3), U);
        assert_eq!(r.push(F, 3), U);
        assert_eq!(r.streak(), 2);
        assert_eq!(r.push(F, 3), F);
        assert_eq!(r.push(F, 3), F);
        assert_eq!(r.recent.len(), 3);
        // A reload lowering failing_after applies to the next reading.
        assert_eq!(r.push(O, 1), O);
        assert_eq!(r.recent.len(), 1);
        assert_eq!(r.push(D, 1), D);
    }
}

//! What the cluster shows of Patroni, whichever source reads it: the view
//! stored in the [`Cluster`] (marked not current while no source reads
//! it), a `patroni_leader_changed` event once per change of leader, when a
//! switchover request was first seen, and a nudge to the monitor at every
//! new view, so routing follows Patroni at once rather than at its next
//! tick.

use std::sync::Arc;
use std::time::Instant;

use super::{parse, Observed, PatroniView, ScheduledSwitchover};
use crate::cluster::Cluster;
use crate::events::EventKind;

/// What the cluster shows of Patroni, and the leader the timeline last
/// recorded.
pub(super) struct Shown {
    cluster: Arc<Cluster>,
    prefix: String,
    /// `None` until a view was read; then the leader it named.
    recorded: Option<Option<String>>,
    current: bool,
}

impl Shown {
    /// Shows "not read yet" at once, so `/status` says where it looks.
    pub(super) fn new(cluster: Arc<Cluster>, prefix: String) -> Shown {
        let shown = Shown {
            cluster,
            prefix,
            recorded: None,
            current: false,
        };
        shown.store(false, None, 0, PatroniView::default());
        shown
    }

    /// A view read from keys (etcd) as of `revision`.
    pub(super) fn show_keys(
        &mut self,
        keys: &std::collections::BTreeMap<String, Vec<u8>>,
        revision: i64,
    ) {
        self.show(parse::view(keys), revision);
    }

    /// A view just read: shown as current.
    pub(super) fn show(&mut self, view: PatroniView, revision: i64) {
        if let Some((node, message)) = leader_event(self.recorded.as_ref(), &view.leader) {
            self.cluster
                .events
                .record(EventKind::PatroniLeaderChanged, node.as_deref(), message);
        }
        self.recorded = Some(view.leader.clone());
        self.current = true;
        self.store(true, None, revision, view);
    }

    /// The session ended: the last view stays, not current. Returns whether
    /// the session had read it.
    pub(super) fn lost(&mut self, error: String) -> bool {
        let last = self.cluster.patroni();
        let (revision, view) = last.map_or((0, PatroniView::default()), |o| {
            (o.revision, o.view.clone())
        });
        self.store(false, Some(error), revision, view);
        std::mem::replace(&mut self.current, false)
    }

    fn store(&self, connected: bool, error: Option<String>, revision: i64, view: PatroniView) {
        let last = self.cluster.patroni();
        let before = last.as_ref().map(|o| (&o.view.failover, o.failover_seen));
        let failover_seen = failover_seen(before, &view.failover, Instant::now());
        self.cluster.set_patroni(Observed {
            prefix: self.prefix.clone(),
            connected,
            error,
            revision,
            view,
            failover_seen,
        });
        self.cluster.nudge();
    }
}

/// The timeline entry when Patroni's leader is no longer the one last
/// recorded (`None`: no view read before): the member concerned and what
/// happened. Once per change, not once per session.
pub(super) fn leader_event(
    recorded: Option<&Option<String>>,
    now: &Option<String>,
) -> Option<(Option<String>, String)> {
    let before = match recorded {
        Some(before) if before == now => return None,
        Some(before) => Some(before.as_deref()),
        None => None,
    };
    let message = match (before, now.as_deref()) {
        (None, Some(new)) => format!("Patroni's leader is {new}"),
        (None, None) => "Patroni has no leader".to_string(),
        (Some(Some(old)), Some(new)) => format!("Patroni's leader moved from {old} to {new}"),
        (Some(None), Some(new)) => format!("Patroni's leader is {new} (there was none)"),
        (Some(Some(old)), None) => format!("Patroni has no leader ({old} no longer holds the key)"),
        (Some(None), None) => return None,
    };
    let node = now.clone().or_else(|| before.flatten().map(str::to_string));
    Some((node, message))
}

/// When the switchover request `now` was first seen: kept while the same
/// request stands, `at` for a new one, none without one.
fn failover_seen(
    before: Option<(&Option<ScheduledSwitchover>, Option<Instant>)>,
    now: &Option<ScheduledSwitchover>,
    at: Instant,
) -> Option<Instant> {
    now.as_ref()?;
    match before {
        Some((was, Some(seen))) if was == now => Some(seen),
        _ => Some(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_event_once_per_change() {
        let s = |n: &str| Some(n.to_string());
        // (recorded, now) -> (node, message) or nothing
        type Case = (
            Option<Option<String>>,
            Option<String>,
            Option<(Option<String>, &'static str)>,
        );
        let cases: [Case; 7] = [
            (None, s("pg0"), Some((s("pg0"), "Patroni's leader is pg0"))),
            (None, None, Some((None, "Patroni has no leader"))),
            (Some(s("pg0")), s("pg0"), None),
            (Some(None), None, None),
            (
                Some(s("pg0")),
                s("pg1"),
                Some((s("pg1"), "Patroni's leader moved from pg0 to pg1")),
            ),
            (
                Some(s("pg0")),
                None,
                Some((
                    s("pg0"),
                    "Patroni has no leader (pg0 no longer holds the key)",
                )),
            ),
            (
                Some(None),
                s("pg1"),
                Some((s("pg1"), "Patroni's leader is pg1 (there was none)")),
            ),
        ];
        for (recorded, now, want) in cases {
            let got = leader_event(recorded.as_ref(), &now);
            let want = want.map(|(n, m)| (n, m.to_string()));
            assert_eq!(got, want, "{recorded:?} -> {now:?}");
        }
    }

    #[test]
    fn a_switchover_request_is_timed_from_when_it_was_first_seen() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(3);
        let ask = |to: &str| {
            Some(ScheduledSwitchover {
                leader: Some("pg0".into()),
                candidate: Some(to.into()),
                scheduled_at: None,
            })
        };
        let (a, b) = (ask("pg1"), ask("pg2"));
        // (before, now) -> first seen
        let cases = [
            (None, a.clone(), Some(t1)),
            (Some((a.clone(), Some(t0))), a.clone(), Some(t0)),
            (Some((a.clone(), Some(t0))), b.clone(), Some(t1)),
            (Some((a.clone(), Some(t0))), None, None),
            (Some((None, None)), a.clone(), Some(t1)),
        ];
        for (before, now, want) in cases {
            let before = before.as_ref().map(|(f, s)| (f, *s));
            assert_eq!(failover_seen(before, &now, t1), want, "{now:?}");
        }
    }
}

//! Table tests of the failover state machine: each safety rule, no sockets.

use super::*;
use crate::cluster::view::{test_node as node, Health, Testimony};

fn cfg(mode: FailoverMode) -> FailoverSettings {
    FailoverSettings {
        mode,
        max_lag_bytes: 1 << 20,
        repoint_replicas: true,
        clear_sync_standby: true,
        fence_command: false,
        promote_timeout: Duration::from_secs(30),
        promotion_sent: None,
        appointed: None,
    }
}

fn down(mut n: NodeView) -> NodeView {
    n.health = Health::Down;
    n
}

/// A primary down on its replicas' silence alone.
fn silent_primary() -> NodeView {
    let mut p = down(node("p", Role::Primary, 1, 100));
    p.down_on_silence = true;
    p
}

fn has(actions: &[Action], want: &Action) -> bool {
    actions.contains(want)
}

#[test]
fn discovery_waits_for_a_checked_primary() {
    let now = Instant::now();
    let mut p = node("p", Role::Primary, 1, 10);
    p.health = Health::Unknown;
    let (s, _) = step(
        &Primary::Discovering,
        &[p.clone(), node("r", Role::Replica, 1, 10)],
        now,
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(
        s,
        Primary::Discovering,
        "no traffic before the first successful check"
    );
    p.health = Health::Up;
    let (s, _) = step(
        &Primary::Discovering,
        &[p, node("r", Role::Replica, 1, 10)],
        now,
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(s, Primary::Serving(0));
}

#[test]
fn a_dead_primary_is_replaced_by_the_best_replica() {
    let now = Instant::now();
    let nodes = [
        down(node("p", Role::Primary, 1, 100)),
        node("a", Role::Replica, 1, 90),
        node("b", Role::Replica, 1, 99),
    ];
    let (s, actions) = step(
        &Primary::Serving(0),
        &nodes,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(
        s,
        Primary::Promoting {
            old: 0,
            candidate: 2,
            since: now
        }
    );
    assert!(
        has(&actions, &Action::CloseConns(0)),
        "connections to the dead primary are closed at once"
    );
    assert!(has(&actions, &Action::Promote(2)));

    // The candidate reports primary on the next timeline: writes resume there.
    let nodes = [
        down(node("p", Role::Primary, 1, 100)),
        node("a", Role::Replica, 1, 90),
        node("b", Role::Primary, 2, 99),
    ];
    let (s, actions) = step(
        &Primary::Promoting {
            old: 0,
            candidate: 2,
            since: now,
        },
        &nodes,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(s, Primary::Serving(2));
    assert!(
        has(&actions, &Action::Fence(0)),
        "the old primary is fenced"
    );
    assert!(has(
        &actions,
        &Action::Repoint {
            replica: 1,
            primary: 2
        }
    ));
}

#[test]
fn no_promotion_while_a_replica_witnesses_the_primary() {
    let now = Instant::now();
    let mut r = node("r", Role::Replica, 1, 100);
    r.witness = Testimony::Alive;
    let nodes = [down(node("p", Role::Primary, 1, 100)), r];
    let (s, actions) = step(
        &Primary::Serving(0),
        &nodes,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert!(matches!(
        s,
        Primary::Lost {
            old: 0,
            blocked: Some(Blocked::WitnessSeesPrimary(_)),
            ..
        }
    ));
    assert!(!actions.iter().any(|a| matches!(a, Action::Promote(_))));
    // The blocked reason is reported once, not every tick.
    let (_, again) = step(&s, &nodes, now, &cfg(FailoverMode::Promote));
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_primary_down_on_silence_alone_keeps_its_connections_until_a_promotion() {
    let t0 = Instant::now();
    let settings = cfg(FailoverMode::Promote);
    let closes = |actions: &[Action]| has(actions, &Action::CloseConns(0));
    // (the replica's testimony, the primary) -> closed now?, promoted now?
    let mut listening = node("r", Role::Replica, 1, 100);
    listening.witness = Testimony::Listening {
        window: Some(Duration::from_secs(30)),
    };
    let quiet = node("r", Role::Replica, 1, 100);
    // Held by the witness: its transactions in flight may still finish.
    let (held, actions) = step(
        &Primary::Serving(0),
        &[silent_primary(), listening.clone()],
        t0,
        &settings,
    );
    assert!(matches!(held, Primary::Lost { old: 0, .. }), "{held:?}");
    assert!(!closes(&actions), "kept while it may only have stalled");
    // It answers again: it serves again, nothing was cut.
    let (back, actions) = step(
        &held,
        &[node("p", Role::Primary, 1, 100), listening],
        t0,
        &settings,
    );
    assert_eq!(back, Primary::Serving(0));
    assert!(!closes(&actions));
    // Or the replica stops hearing it: closed before the promotion is sent.
    let (next, actions) = step(&held, &[silent_primary(), quiet.clone()], t0, &settings);
    assert!(matches!(next, Primary::Promoting { candidate: 1, .. }));
    let close = actions.iter().position(|a| *a == Action::CloseConns(0));
    let promote = actions.iter().position(|a| *a == Action::Promote(1));
    assert!(close.is_some() && close < promote, "{actions:?}");
    // A promotion the leader sent cuts it off too.
    let mut sent = cfg(FailoverMode::Promote);
    sent.promotion_sent = Some(SentPromotion {
        old: 0,
        candidate: 1,
    });
    let (_, actions) = step(&held, &[silent_primary(), quiet.clone()], t0, &sent);
    assert!(closes(&actions), "{actions:?}");
    // Down by the threshold, or fenced: closed at once, as ever.
    let mut fenced = silent_primary();
    fenced.fenced = true;
    for p in [down(node("p", Role::Primary, 1, 100)), fenced] {
        let (_, actions) = step(&Primary::Serving(0), &[p, quiet.clone()], t0, &settings);
        assert!(closes(&actions), "{actions:?}");
    }
}

/// A primary down on its replicas' silence alone may be a live one that
/// stalled under load: no failover is said to start (and nothing pages)
/// until it is down by the threshold or a promotion replaces it.
#[test]
fn a_suspect_primary_starts_no_failover_until_it_is_down_or_replaced() {
    use EventKind::{CandidateChosen, FailoverBlocked, FailoverStarted};
    let t0 = Instant::now();
    let settings = cfg(FailoverMode::Promote);
    let mut listening = node("r", Role::Replica, 1, 100);
    listening.witness = Testimony::Listening {
        window: Some(Duration::from_secs(30)),
    };
    let quiet = node("r", Role::Replica, 1, 100);
    let said = |actions: &[Action]| -> Vec<EventKind> {
        let kind = |a: &Action| match a {
            Action::Event(k, ..) => Some(*k),
            _ => None,
        };
        actions.iter().filter_map(kind).collect()
    };
    // Held back by the witness rule: nothing said, tick after tick.
    let (held, actions) = step(
        &Primary::Serving(0),
        &[silent_primary(), listening.clone()],
        t0,
        &settings,
    );
    assert_eq!(said(&actions), []);
    let (again, actions) = step(&held, &[silent_primary(), listening.clone()], t0, &settings);
    assert_eq!((&again, said(&actions)), (&held, vec![]));
    // It answers again: it serves on, and no failover ends either.
    let up = node("p", Role::Primary, 1, 100);
    let (back, actions) = step(&held, &[up, listening.clone()], t0, &settings);
    assert_eq!((back, said(&actions)), (Primary::Serving(0), vec![]));
    // Down by the threshold: the failover starts, and its block is said.
    let by_threshold = down(node("p", Role::Primary, 1, 100));
    let (next, actions) = step(&held, &[by_threshold, listening], t0, &settings);
    assert_eq!(said(&actions), [FailoverStarted, FailoverBlocked]);
    assert!(
        matches!(next, Primary::Lost { started: true, .. }),
        "{next:?}"
    );
    // Or its replica stops hearing it: it starts with the promotion.
    let (_, actions) = step(&held, &[silent_primary(), quiet], t0, &settings);
    assert_eq!(said(&actions), [FailoverStarted, CandidateChosen]);
}

#[test]
fn a_primary_its_replica_may_yet_hear_is_not_replaced_until_it_cannot() {
    let t0 = Instant::now();
    let settings = cfg(FailoverMode::Promote);
    let window = Some(Duration::from_millis(2500));
    let listening = Testimony::Listening { window };
    // Step by step, what the replica says of the down primary -> promoted?
    let steps = [
        (listening, false, "its keepalive is due: held"),
        (listening, false, "held, said once"),
        (
            Testimony::Nothing,
            true,
            "a whole period of silence, or its stream broke",
        ),
    ];
    let mut state = Primary::Serving(0);
    let mut blocked_events = 0;
    for (i, (witness, promotes_now, what)) in steps.into_iter().enumerate() {
        let mut r = node("r", Role::Replica, 1, 100);
        r.witness = witness;
        let nodes = [down(node("p", Role::Primary, 1, 100)), r];
        let now = t0 + Duration::from_millis(200 * i as u64);
        let (next, actions) = step(&state, &nodes, now, &settings);
        assert_eq!(promotes(&actions) == vec![1], promotes_now, "{what}");
        blocked_events += actions
            .iter()
            .filter(|a| matches!(a, Action::Event(EventKind::FailoverBlocked, ..)))
            .count();
        state = next;
    }
    assert_eq!(blocked_events, 1, "the wait is said once");
    assert!(matches!(state, Primary::Promoting { candidate: 1, .. }));
}

#[test]
fn follow_and_off_never_promote() {
    let now = Instant::now();
    let nodes = [
        down(node("p", Role::Primary, 1, 100)),
        node("r", Role::Replica, 1, 100),
    ];
    for mode in [FailoverMode::Follow, FailoverMode::Off] {
        let (s, actions) = step(&Primary::Serving(0), &nodes, now, &cfg(mode));
        assert!(matches!(s, Primary::Lost { old: 0, .. }), "{mode:?}");
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Promote(_))),
            "{mode:?}"
        );
    }
    // follow: someone else promoted r.
    let nodes = [
        down(node("p", Role::Primary, 1, 100)),
        node("r", Role::Primary, 2, 100),
    ];
    let (s, _) = step(
        &Primary::Lost {
            old: 0,
            blocked: None,
            promoted: None,
            started: true,
        },
        &nodes,
        now,
        &cfg(FailoverMode::Follow),
    );
    assert_eq!(s, Primary::Serving(1));
}

#[test]
fn an_external_promotion_moves_writes_even_while_the_old_primary_answers() {
    let now = Instant::now();
    let nodes = [
        node("p", Role::Primary, 1, 100),
        node("r", Role::Primary, 2, 100),
    ];
    let (s, actions) = step(
        &Primary::Serving(0),
        &nodes,
        now,
        &cfg(FailoverMode::Follow),
    );
    assert_eq!(s, Primary::Serving(1));
    assert!(
        has(&actions, &Action::Fence(0)),
        "at most one node takes writes"
    );
    assert!(has(&actions, &Action::CloseConns(0)));
}

#[test]
fn the_old_primary_coming_back_is_fenced_and_never_serves() {
    let now = Instant::now();
    let mut old = node("old", Role::Primary, 1, 100);
    old.fenced = false;
    let nodes = [old, node("new", Role::Primary, 2, 50)];
    let (s, actions) = step(
        &Primary::Serving(1),
        &nodes,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(s, Primary::Serving(1));
    assert!(has(&actions, &Action::Fence(0)));
    let mut fenced = nodes.clone();
    fenced[0].fenced = true;
    fenced[1] = down(fenced[1].clone());
    let (s, _) = step(
        &Primary::Serving(1),
        &fenced,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert!(
        !matches!(s, Primary::Serving(0)),
        "a fenced node never takes writes: {s:?}"
    );
}

#[test]
fn a_stuck_promotion_is_retried() {
    let t0 = Instant::now();
    let nodes = [
        down(node("p", Role::Primary, 1, 100)),
        node("r", Role::Replica, 1, 100),
    ];
    let state = Primary::Promoting {
        old: 0,
        candidate: 1,
        since: t0,
    };
    let (s, _) = step(
        &state,
        &nodes,
        t0 + Duration::from_secs(5),
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(s, state);
    let (s, _) = step(
        &state,
        &nodes,
        t0 + Duration::from_secs(31),
        &cfg(FailoverMode::Promote),
    );
    assert!(matches!(s, Primary::Lost { .. }));
}

#[test]
fn sync_standby_is_cleared_only_when_configured() {
    let now = Instant::now();
    let mut newp = node("b", Role::Primary, 2, 99);
    newp.probe.as_mut().unwrap().sync_standby_names = true;
    let nodes = [down(node("p", Role::Primary, 1, 100)), newp];
    let state = Primary::Promoting {
        old: 0,
        candidate: 1,
        since: now,
    };
    let (_, actions) = step(&state, &nodes, now, &cfg(FailoverMode::Promote));
    assert!(has(&actions, &Action::ClearSyncStandby(1)));
    let mut durability = cfg(FailoverMode::Promote);
    durability.clear_sync_standby = false;
    let (_, actions) = step(&state, &nodes, now, &durability);
    assert!(!has(&actions, &Action::ClearSyncStandby(1)));
}

fn failing(mut n: NodeView) -> NodeView {
    n.hardware_failing = true;
    n
}

/// The nodes of the actions `pick` names one for.
fn nodes_of(actions: &[Action], pick: fn(&Action) -> Option<usize>) -> Vec<usize> {
    actions.iter().filter_map(pick).collect()
}

fn promotes(actions: &[Action]) -> Vec<usize> {
    nodes_of(actions, |a| match a {
        Action::Promote(c) => Some(*c),
        _ => None,
    })
}

#[test]
fn failing_hardware_on_the_primary_fails_over_at_once_whether_it_answers_or_not() {
    let now = Instant::now();
    let live = failing(node("p", Role::Primary, 1, 100));
    let mut hung = live.clone();
    hung.health = Health::Suspect(1);
    for (primary, what) in [(live, "still answering"), (hung, "one check missed")] {
        let nodes = [primary, node("r", Role::Replica, 1, 100)];
        let (s, actions) = step(
            &Primary::Serving(0),
            &nodes,
            now,
            &cfg(FailoverMode::Promote),
        );
        assert_eq!(
            s,
            Primary::Promoting {
                old: 0,
                candidate: 1,
                since: now
            },
            "{what}"
        );
        assert!(has(&actions, &Action::CloseConns(0)), "{what}");
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::Event(EventKind::FailoverStarted, Some(0), m) if m.contains("hardware failing")
        )));
    }
}

#[test]
fn a_replica_that_still_hears_a_failing_primary_blocks_its_promotion() {
    let now = Instant::now();
    let mut r = node("r", Role::Replica, 1, 100);
    r.witness = Testimony::Alive;
    let nodes = [failing(node("p", Role::Primary, 1, 100)), r];
    let (s, actions) = step(
        &Primary::Serving(0),
        &nodes,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert!(matches!(
        s,
        Primary::Lost {
            blocked: Some(Blocked::WitnessSeesPrimary(_)),
            ..
        }
    ));
    assert!(promotes(&actions).is_empty());
}

#[test]
fn hardware_flapping_between_ok_and_failing_promotes_once() {
    let t0 = Instant::now();
    let settings = cfg(FailoverMode::Promote);
    let mut state = Primary::Serving(0);
    let mut promoted = vec![];
    // The probe flaps every step; r1 finishes its promotion at step 4.
    for i in 0..10u32 {
        let mut p = node("p", Role::Primary, 1, 100);
        p.hardware_failing = i % 2 == 0;
        p.fenced = matches!(state, Primary::Serving(1)) || i > 4;
        let r1 = if i >= 4 {
            node("r1", Role::Primary, 2, 100)
        } else {
            node("r1", Role::Replica, 1, 100)
        };
        let nodes = [p, r1, node("r2", Role::Replica, 1, 100)];
        let now = t0 + Duration::from_millis(200 * u64::from(i));
        let (next, actions) = step(&state, &nodes, now, &settings);
        promoted.extend(promotes(&actions));
        state = next;
    }
    assert_eq!(promoted, vec![1], "one promotion, of the best replica");
    assert_eq!(state, Primary::Serving(1));
}

#[test]
fn a_primary_whose_hardware_recovers_before_any_promotion_keeps_serving() {
    let now = Instant::now();
    let mut r = node("r", Role::Replica, 1, 100);
    r.witness = Testimony::Alive;
    let lost = Primary::Lost {
        old: 0,
        blocked: Some(Blocked::WitnessSeesPrimary("r".into())),
        promoted: None,
        started: true,
    };
    let nodes = [node("p", Role::Primary, 1, 100), r];
    let (s, actions) = step(&lost, &nodes, now, &cfg(FailoverMode::Promote));
    assert_eq!(s, Primary::Serving(0));
    assert!(promotes(&actions).is_empty());
}

#[test]
fn failing_hardware_on_a_replica_only_takes_it_out_of_reads_and_promotion() {
    let now = Instant::now();
    let nodes = [
        node("p", Role::Primary, 1, 100),
        failing(node("r1", Role::Replica, 1, 100)),
        node("r2", Role::Replica, 1, 90),
    ];
    let (s, actions) = step(
        &Primary::Serving(0),
        &nodes,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(s, Primary::Serving(0));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(
        crate::cluster::decide::fit_replicas(&nodes, Some(0), 1 << 20),
        vec![2]
    );
    let mut down = nodes.clone();
    down[0].health = Health::Down;
    let (_, actions) = step(
        &Primary::Serving(0),
        &down,
        now,
        &cfg(FailoverMode::Promote),
    );
    assert_eq!(
        promotes(&actions),
        vec![2],
        "the failing replica is never promoted"
    );
}

#[test]
fn a_promotion_waits_for_the_candidate_to_catch_up_unless_the_old_primary_is_down() {
    let now = Instant::now();
    let live = failing(node("p", Role::Primary, 1, 100));
    let mut suspect = live.clone();
    suspect.health = Health::Suspect(1);
    let dead = down(node("p", Role::Primary, 1, 100));
    let catch_up = Action::CatchUp {
        candidate: 1,
        old: 0,
    };
    for (primary, waits) in [(live, true), (suspect, true), (dead, false)] {
        let what = format!("{:?}", primary.health);
        let nodes = [primary, node("r", Role::Replica, 1, 100)];
        let (_, actions) = step(
            &Primary::Serving(0),
            &nodes,
            now,
            &cfg(FailoverMode::Promote),
        );
        let at = |want: &Action| actions.iter().position(|a| a == want);
        assert_eq!(at(&catch_up).is_some(), waits, "{what}: {actions:?}");
        if waits {
            // Clients are cut off first, the catch-up comes before the promotion.
            assert!(at(&Action::CloseConns(0)) < at(&catch_up), "{actions:?}");
            assert!(at(&catch_up) < at(&Action::Promote(1)), "{actions:?}");
        }
    }
}

fn events_of(actions: &[Action], kind: EventKind) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Event(k, ..) if *k == kind))
        .count()
}

#[test]
fn two_primaries_on_one_timeline_stop_writes_to_both() {
    let now = Instant::now();
    let settings = cfg(FailoverMode::Promote);
    let split = [
        node("a", Role::Primary, 2, 100),
        node("b", Role::Primary, 2, 100),
        node("r", Role::Replica, 2, 100),
    ];
    let starts = [
        Primary::Discovering,
        Primary::Serving(0),
        Primary::Serving(1),
        Primary::Promoting {
            old: 2,
            candidate: 0,
            since: now,
        },
    ];
    for state in starts {
        let (s, actions) = step(&state, &split, now, &settings);
        assert_eq!(s, Primary::Split(vec![0, 1]), "{state:?}: {actions:?}");
        assert!(has(&actions, &Action::CloseConns(0)), "{state:?}");
        assert!(has(&actions, &Action::CloseConns(1)), "{state:?}");
        assert!(promotes(&actions).is_empty(), "{state:?}");
        assert_eq!(events_of(&actions, EventKind::SplitBrain), 1, "{state:?}");
        // Said once; nothing is promoted while it lasts.
        let (again, actions) = step(&s, &split, now, &settings);
        assert_eq!(again, s);
        assert!(actions.is_empty(), "{actions:?}");
    }
    // An operator stops one of them: the other takes writes again.
    let mut resolved = split.clone();
    resolved[1].health = Health::Down;
    let (s, actions) = step(&Primary::Split(vec![0, 1]), &resolved, now, &settings);
    assert_eq!(s, Primary::Serving(0));
    assert_eq!(events_of(&actions, EventKind::WritesResumed), 1);
}

#[test]
fn once_a_promotion_was_sent_the_old_primary_never_serves_again() {
    let t0 = Instant::now();
    let settings = cfg(FailoverMode::Promote);
    // The old primary had only hung and answers again; the candidate is
    // slow to leave recovery.
    let back = [
        node("p", Role::Primary, 1, 100),
        node("r1", Role::Replica, 1, 100),
        node("r2", Role::Replica, 1, 90),
    ];
    let mut state = Primary::Promoting {
        old: 0,
        candidate: 1,
        since: t0,
    };
    for i in 1..=4u32 {
        let now = t0 + settings.promote_timeout * i + Duration::from_secs(1);
        let (next, actions) = step(&state, &back, now, &settings);
        assert_ne!(next.serving(), Some(0), "step {i}: {next:?} {actions:?}");
        state = next;
    }
    // The promotion completes: the candidate takes writes, the old is fenced.
    let mut done = back.clone();
    done[1] = node("r1", Role::Primary, 2, 120);
    let (s, actions) = step(&state, &done, t0, &settings);
    assert_eq!(s, Primary::Serving(1), "{actions:?}");
    assert!(has(&actions, &Action::Fence(0)), "{actions:?}");
}

#[test]
fn a_readmitted_primary_on_an_older_timeline_never_takes_writes() {
    let now = Instant::now();
    let settings = cfg(FailoverMode::Promote);
    // The real primary (timeline 2) is down; an operator re-admitted a node
    // whose data directory holds an older cluster (timeline 1, primary).
    let nodes = [
        down(node("new", Role::Primary, 2, 500)),
        node("stale", Role::Primary, 1, 900),
        node("r", Role::Replica, 2, 480),
    ];
    let lost = Primary::Lost {
        old: 0,
        blocked: None,
        promoted: None,
        started: true,
    };
    for state in [Primary::Serving(0), lost, Primary::Discovering] {
        let (s, actions) = step(&state, &nodes, now, &settings);
        assert_ne!(s.serving(), Some(1), "{state:?}: {actions:?}");
        assert!(has(&actions, &Action::Fence(1)), "{state:?}: {actions:?}");
        assert!(!promotes(&actions).contains(&1), "{state:?}: {actions:?}");
    }
}

#[test]
fn once_a_promotion_was_sent_no_other_node_is_promoted() {
    let now = Instant::now();
    // "a" got pg_promote() (from this proxy, or from a leader that died
    // since); "b" is further ahead but must not become a second primary.
    let nodes = [
        down(node("p", Role::Primary, 1, 100)),
        node("a", Role::Replica, 1, 90),
        node("b", Role::Replica, 1, 99),
    ];
    let sent = FailoverSettings {
        promotion_sent: Some(SentPromotion {
            old: 0,
            candidate: 1,
        }),
        ..cfg(FailoverMode::Promote)
    };
    let lost = |promoted| Primary::Lost {
        old: 0,
        blocked: None,
        promoted,
        started: true,
    };
    let cases = [
        (
            Primary::Serving(0),
            &sent,
            "a new leader, told by the record",
        ),
        (lost(None), &sent, "a new leader, the primary already lost"),
    ];
    for (state, settings, what) in cases {
        let (s, actions) = step(&state, &nodes, now, settings);
        assert!(has(&actions, &Action::Promote(1)), "{what}: {actions:?}");
        assert!(!has(&actions, &Action::Promote(2)), "{what}: {actions:?}");
        assert!(
            matches!(s, Primary::Promoting { candidate: 1, .. }),
            "{what}: {s:?}"
        );
    }
    let (_, actions) = step(&lost(Some(1)), &nodes, now, &cfg(FailoverMode::Promote));
    assert!(
        has(&actions, &Action::Promote(1)),
        "this proxy's own: {actions:?}"
    );
    // The node it was sent to is gone: writes stay held, nothing promoted.
    let gone = [nodes[0].clone(), down(nodes[1].clone()), nodes[2].clone()];
    let (s, actions) = step(&lost(Some(1)), &gone, now, &cfg(FailoverMode::Promote));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Promote(_))),
        "{actions:?}"
    );
    assert!(
        matches!(
            s,
            Primary::Lost {
                promoted: Some(1),
                ..
            }
        ),
        "{s:?}"
    );
    // Without a promotion sent, the best replica is chosen as before.
    let (_, actions) = step(&lost(None), &nodes, now, &cfg(FailoverMode::Promote));
    assert!(has(&actions, &Action::Promote(2)), "{actions:?}");
}

#[test]
fn a_proxy_told_of_a_sent_promotion_writes_no_more_to_the_primary_it_replaces() {
    let now = Instant::now();
    // The leader sent pg_promote() to "a" in place of "p"; this proxy
    // still reaches "p" (it never saw it down, or it just started) and "a"
    // has not left recovery yet.
    let nodes = [
        node("p", Role::Primary, 1, 100),
        node("a", Role::Replica, 1, 100),
        node("b", Role::Replica, 1, 100),
    ];
    let sent = |mode| FailoverSettings {
        promotion_sent: Some(SentPromotion {
            old: 0,
            candidate: 1,
        }),
        ..cfg(mode)
    };
    for mode in [FailoverMode::Follow, FailoverMode::Promote] {
        for state in [Primary::Serving(0), Primary::Discovering] {
            let what = format!("{mode:?} {state:?}");
            let (s, actions) = step(&state, &nodes, now, &sent(mode));
            assert_eq!(s.serving(), None, "{what}: {actions:?}");
            assert!(
                matches!(
                    s,
                    Primary::Lost {
                        old: 0,
                        promoted: Some(1),
                        ..
                    }
                ),
                "{what}: {s:?}"
            );
            assert!(promotes(&actions).is_empty(), "{what}: {actions:?}");
            assert_eq!(events_of(&actions, EventKind::FailoverBlocked), 1, "{what}");
            if state == Primary::Serving(0) {
                assert!(has(&actions, &Action::CloseConns(0)), "{what}: {actions:?}");
            }
        }
    }
    // The promotion completes: its node takes writes, the old is fenced.
    let mut done = nodes.clone();
    done[1] = node("a", Role::Primary, 2, 120);
    let (s, actions) = step(
        &Primary::Serving(0),
        &done,
        now,
        &sent(FailoverMode::Follow),
    );
    assert_eq!(s, Primary::Serving(1), "{actions:?}");
    assert!(has(&actions, &Action::Fence(0)), "{actions:?}");
    // A mark about another primary changes nothing for this one.
    let other = FailoverSettings {
        promotion_sent: Some(SentPromotion {
            old: 2,
            candidate: 1,
        }),
        ..cfg(FailoverMode::Follow)
    };
    let (s, actions) = step(&Primary::Serving(0), &nodes, now, &other);
    assert_eq!(s, Primary::Serving(0), "{actions:?}");
}

fn appointed(node: Option<usize>, draining: bool) -> FailoverSettings {
    FailoverSettings {
        repoint_replicas: false,
        clear_sync_standby: false,
        appointed: Some(Appointed {
            node,
            min_timeline: 2,
            draining,
        }),
        ..cfg(FailoverMode::Follow)
    }
}

fn closes(actions: &[Action]) -> Vec<usize> {
    nodes_of(actions, |a| match a {
        Action::CloseConns(i) => Some(*i),
        _ => None,
    })
}

fn fences(actions: &[Action]) -> Vec<usize> {
    nodes_of(actions, |a| match a {
        Action::Fence(i) => Some(*i),
        _ => None,
    })
}

#[test]
fn an_appointed_primary_takes_writes_only_once_it_reports_primary() {
    let now = Instant::now();
    let old = node("old", Role::Primary, 2, 100);
    let new_replica = node("new", Role::Replica, 2, 100);
    let new_primary = node("new", Role::Primary, 3, 100);
    let mut low = node("new", Role::Primary, 1, 100);
    low.health = Health::Up;
    let serving = Primary::Serving(0);
    let lost = Primary::Lost {
        old: 0,
        blocked: None,
        promoted: None,
        started: true,
    };
    // (state, nodes, appointed node, draining) -> next state, closed, fenced
    type Case = (
        Primary,
        [NodeView; 2],
        Option<usize>,
        bool,
        Primary,
        Vec<usize>,
    );
    let cases: Vec<Case> = vec![
        // Discovering: only the leader, and only as primary.
        (
            Primary::Discovering,
            [old.clone(), new_replica.clone()],
            Some(0),
            false,
            serving.clone(),
            vec![],
        ),
        (
            Primary::Discovering,
            [old.clone(), new_replica.clone()],
            Some(1),
            false,
            Primary::Discovering,
            vec![],
        ),
        (
            Primary::Discovering,
            [old.clone(), new_replica.clone()],
            None,
            false,
            Primary::Discovering,
            vec![],
        ),
        // Below the timeline Patroni published: not yet.
        (
            Primary::Discovering,
            [low.clone(), new_replica.clone()],
            Some(0),
            false,
            Primary::Discovering,
            vec![],
        ),
        // A drain: writes held, running transactions keep their server.
        (
            serving.clone(),
            [old.clone(), new_replica.clone()],
            Some(0),
            true,
            lost.clone(),
            vec![],
        ),
        (
            lost.clone(),
            [old.clone(), new_replica.clone()],
            Some(0),
            true,
            lost.clone(),
            vec![],
        ),
        // The drain ended and nothing moved: the leader serves again.
        (
            lost.clone(),
            [old.clone(), new_replica.clone()],
            Some(0),
            false,
            serving.clone(),
            vec![],
        ),
        // The leader moved to a node still in recovery: held, the old one closed.
        (
            serving.clone(),
            [old.clone(), new_replica.clone()],
            Some(1),
            false,
            lost.clone(),
            vec![0],
        ),
        // Patroni has no leader: held, closed.
        (
            serving.clone(),
            [old.clone(), new_replica.clone()],
            None,
            false,
            lost.clone(),
            vec![0],
        ),
        // The new leader reports primary: it serves; the old is closed, not fenced.
        (
            lost.clone(),
            [down(old.clone()), new_primary.clone()],
            Some(1),
            false,
            Primary::Serving(1),
            vec![0],
        ),
        (
            lost.clone(),
            [old.clone(), new_primary.clone()],
            Some(1),
            false,
            Primary::Serving(1),
            vec![0],
        ),
        // Another node on a higher timeline that Patroni does not name: never.
        (
            serving.clone(),
            [old.clone(), new_primary.clone()],
            Some(0),
            false,
            lost.clone(),
            vec![0],
        ),
    ];
    for (state, nodes, leader, draining, want, closed) in cases {
        let (next, actions) = step(&state, &nodes, now, &appointed(leader, draining));
        assert_eq!(
            next, want,
            "{state:?} leader {leader:?} draining {draining}"
        );
        assert_eq!(
            closes(&actions),
            closed,
            "{state:?} leader {leader:?}: {actions:?}"
        );
        assert_eq!(fences(&actions), Vec::<usize>::new(), "{actions:?}");
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::Promote(_) | Action::Repoint { .. })));
    }
}

#[test]
fn an_appointed_primary_never_promotes_or_fences_on_its_own() {
    let now = Instant::now();
    // The leader is dead and Patroni has not moved the key (paused, or its
    // TTL runs): nothing is promoted, the old primary back on a lower
    // timeline is not fenced, only kept from writes.
    let nodes = [
        down(node("p", Role::Primary, 2, 100)),
        node("r", Role::Replica, 2, 99),
    ];
    let lost = Primary::Lost {
        old: 0,
        blocked: None,
        promoted: None,
        started: true,
    };
    let (next, actions) = step(&lost, &nodes, now, &appointed(Some(0), false));
    assert_eq!((next, actions), (lost.clone(), vec![]));
    let back = [
        node("p", Role::Primary, 2, 100),
        node("r", Role::Primary, 3, 120),
    ];
    let (next, actions) = step(&Primary::Serving(1), &back, now, &appointed(Some(1), false));
    assert_eq!(next, Primary::Serving(1));
    assert!(fences(&actions).is_empty(), "{actions:?}");
}

#[test]
fn a_drain_is_a_switchover_and_a_moved_leader_a_failover_on_the_timeline() {
    let now = Instant::now();
    let nodes = [
        node("old", Role::Primary, 2, 100),
        node("new", Role::Replica, 2, 100),
    ];
    let kinds = |actions: &[Action]| -> Vec<EventKind> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(k, _, _) => Some(*k),
                _ => None,
            })
            .collect()
    };
    let (_, drained) = step(&Primary::Serving(0), &nodes, now, &appointed(Some(0), true));
    assert_eq!(kinds(&drained), [EventKind::SwitchoverStarted]);
    let (_, moved) = step(
        &Primary::Serving(0),
        &nodes,
        now,
        &appointed(Some(1), false),
    );
    assert_eq!(kinds(&moved), [EventKind::FailoverStarted]);
}

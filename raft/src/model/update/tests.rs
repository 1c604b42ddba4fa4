//! Table and property tests of the update state machine.

use super::*;
use Event as E;
use UpdatePhase as P;

fn auto() -> UpdatePolicy {
    UpdatePolicy::default()
}

fn manual() -> UpdatePolicy {
    UpdatePolicy {
        auto_rollback: false,
        ..UpdatePolicy::default()
    }
}

#[test]
fn transition_table() {
    let why = || "why".to_string();
    let cases: Vec<(P, E, UpdatePolicy, P, Vec<Effect>)> = vec![
        (
            P::Pending,
            E::Begin,
            auto(),
            P::Pulling,
            vec![Effect::PullNew],
        ),
        (
            P::Pulling,
            E::Pulled,
            auto(),
            P::StoppingOld,
            vec![Effect::StopOld],
        ),
        (P::Pulling, E::PullFailed(why()), auto(), P::Aborted, vec![]),
        (P::Pulling, E::Abort, auto(), P::Aborted, vec![]),
        (P::Pending, E::Abort, auto(), P::Aborted, vec![]),
        (
            P::StoppingOld,
            E::OldStopped,
            auto(),
            P::StartingNew,
            vec![Effect::RunNew],
        ),
        (
            P::StoppingOld,
            E::StopFailed(why()),
            auto(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (P::StartingNew, E::Started, auto(), P::Verifying, vec![]),
        (
            P::StartingNew,
            E::StartFailed(why()),
            auto(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (
            P::StartingNew,
            E::StartFailed(why()),
            manual(),
            P::Failed,
            vec![],
        ),
        (
            P::StartingNew,
            E::Deadline,
            auto(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (
            P::Verifying,
            E::Healthy,
            auto(),
            P::Succeeded,
            vec![Effect::MarkStable],
        ),
        (
            P::Verifying,
            E::Unhealthy(why()),
            auto(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (
            P::Verifying,
            E::Unhealthy(why()),
            manual(),
            P::Failed,
            vec![],
        ),
        (
            P::Verifying,
            E::Deadline,
            auto(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (
            P::Verifying,
            E::Abort,
            manual(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (
            P::StoppingOld,
            E::Abort,
            auto(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (P::RollingBack, E::RolledBack, auto(), P::RolledBack, vec![]),
        (
            P::RollingBack,
            E::RollbackFailed(why()),
            auto(),
            P::Failed,
            vec![],
        ),
        (P::RollingBack, E::Abort, auto(), P::RollingBack, vec![]),
        (P::Pulling, E::Healthy, auto(), P::Pulling, vec![]),
        // Every phase has a deadline.
        (P::Pending, E::Deadline, auto(), P::Aborted, vec![]),
        (P::Pulling, E::Deadline, auto(), P::Aborted, vec![]),
        (
            P::StoppingOld,
            E::Deadline,
            manual(),
            P::RollingBack,
            vec![Effect::RunOld],
        ),
        (P::RollingBack, E::Deadline, auto(), P::Failed, vec![]),
        // A delete ends any operation.
        (P::Verifying, E::Deleted, auto(), P::Aborted, vec![]),
        (P::RollingBack, E::Deleted, auto(), P::Aborted, vec![]),
        (P::Succeeded, E::Abort, auto(), P::Succeeded, vec![]),
    ];
    for (from, event, policy, to, effects) in cases {
        assert_eq!(
            transition(from, &event, &policy),
            (to, effects),
            "{from:?} + {event:?}"
        );
    }
}

fn all_events() -> Vec<Event> {
    let why = || "why".to_string();
    vec![
        E::Begin,
        E::Pulled,
        E::PullFailed(why()),
        E::OldStopped,
        E::StopFailed(why()),
        E::Started,
        E::StartFailed(why()),
        E::Healthy,
        E::Unhealthy(why()),
        E::Deadline,
        E::RolledBack,
        E::RollbackFailed(why()),
        E::Abort,
        E::Deleted,
    ]
}

#[test]
fn terminal_phases_absorb_every_event() {
    for phase in P::ALL.into_iter().filter(|p| p.is_terminal()) {
        for event in all_events() {
            for policy in [auto(), manual()] {
                assert_eq!(
                    transition(phase, &event, &policy),
                    (phase, vec![]),
                    "{phase:?} {event:?}"
                );
            }
        }
    }
}

/// A small deterministic PRNG, so the property test needs no dependency and
/// every run sees the same sequences.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Property: over thousands of random event sequences, (a) a failure event
/// never leads to Succeeded, (b) once a failure happened after the old
/// revision was stopped, the operation can only end RolledBack or Failed,
/// (c) Aborted is reached only before the old container was stopped, and
/// (d) a terminal phase never changes.
#[test]
fn every_failure_path_ends_in_rolled_back_or_failed() {
    let events = all_events();
    let mut rng = SplitMix(0x5eed);
    for _ in 0..20_000 {
        let policy = if rng.next().is_multiple_of(2) {
            auto()
        } else {
            manual()
        };
        let mut phase = P::Pending;
        let mut old_stopped = false;
        let mut failed_after_stop = false;
        // A delete ends any operation (Aborted), whatever happened before.
        let mut deleted = false;
        let mut terminal: Option<P> = None;
        for _ in 0..12 {
            let event = &events[(rng.next() % events.len() as u64) as usize];
            let (next, effects) = transition(phase, event, &policy);
            if let Some(t) = terminal {
                assert_eq!(next, t, "terminal phase changed");
                assert!(effects.is_empty());
            }
            if effects.contains(&Effect::StopOld) {
                old_stopped = true;
            }
            let is_failure = matches!(
                event,
                E::StopFailed(_)
                    | E::StartFailed(_)
                    | E::Unhealthy(_)
                    | E::Deadline
                    | E::RollbackFailed(_)
                    | E::Abort
            );
            if old_stopped && is_failure && next != phase {
                failed_after_stop = true;
            }
            if *event == E::Deleted && next != phase {
                deleted = true;
            }
            if next == P::Aborted && phase != P::Aborted && !deleted {
                assert!(!old_stopped, "aborted after the old container was stopped");
            }
            if failed_after_stop && !deleted {
                assert!(
                    matches!(next, P::RollingBack | P::RolledBack | P::Failed),
                    "after a failure, {phase:?} + {event:?} went to {next:?}"
                );
            }
            phase = next;
            if phase.is_terminal() {
                terminal.get_or_insert(phase);
            }
        }
    }
}

#[test]
fn operator_commands_are_defined_in_every_phase() {
    use Admission as A;
    use OperatorCommand as C;
    let policy = auto();
    let active = P::ALL.into_iter().filter(|p| !p.is_terminal());
    for phase in active {
        for command in [C::Stop, C::Start, C::Update] {
            assert_eq!(
                on_operator(phase, command, &policy),
                A::Refuse,
                "{phase:?} {command:?}"
            );
        }
        assert_eq!(
            on_operator(phase, C::Delete, &policy),
            A::Abort(P::Aborted, vec![]),
            "{phase:?}"
        );
    }
    let rollback = |p| on_operator(p, C::Rollback, &policy);
    assert_eq!(rollback(P::Pending), A::Abort(P::Aborted, vec![]));
    assert_eq!(rollback(P::Pulling), A::Abort(P::Aborted, vec![]));
    for p in [P::StoppingOld, P::StartingNew, P::Verifying] {
        assert_eq!(rollback(p), A::Abort(P::RollingBack, vec![Effect::RunOld]));
    }
    assert_eq!(rollback(P::RollingBack), A::Refuse, "already going back");
    for phase in P::ALL.into_iter().filter(|p| p.is_terminal()) {
        for command in [C::Stop, C::Start, C::Update, C::Rollback, C::Delete] {
            assert_eq!(on_operator(phase, command, &policy), A::Proceed);
        }
    }
}

#[test]
fn every_phase_but_the_terminal_ones_has_a_deadline() {
    let policy = auto();
    for phase in P::ALL {
        assert_eq!(
            policy.deadline_ms(phase).is_none(),
            phase.is_terminal(),
            "{phase:?}"
        );
        if let Some(d) = policy.deadline_ms(phase) {
            assert!(!policy.overdue(phase, d));
            assert!(policy.overdue(phase, d + 1));
            // Overdue means the Deadline event moves the phase on.
            assert_ne!(
                transition(phase, &E::Deadline, &policy).0,
                phase,
                "{phase:?}"
            );
        }
    }
}

/// Property: whatever happens (any event, operator commands, or nothing at
/// all for a while, as when the node is lost), an operation whose actor
/// fires `Deadline` whenever its phase is overdue is terminal within the
/// sum of the phase deadlines.
#[test]
fn every_operation_ends_within_the_sum_of_its_deadlines() {
    let events = all_events();
    let mut rng = SplitMix(0xdead_beef);
    for _ in 0..20_000 {
        let policy = UpdatePolicy {
            health_timeout_ms: 1 + rng.next() % 2_000,
            min_healthy_ms: 0,
            auto_rollback: rng.next().is_multiple_of(2),
            pull_timeout_ms: 1 + rng.next() % 2_000,
            stop_timeout_ms: 1 + rng.next() % 2_000,
            rollback_timeout_ms: 1 + rng.next() % 2_000,
        };
        let budget = policy.total_budget_ms();
        let (mut phase, mut now, mut phase_started) = (P::Pending, 0u64, 0u64);
        // The actor ticks at most TICK ms apart, so a deadline is noticed
        // at most TICK ms late; at most six phases are passed through.
        const TICK: u64 = 50;
        while !phase.is_terminal() {
            let elapsed = now - phase_started;
            let event = if policy.overdue(phase, elapsed) {
                Some(E::Deadline)
            } else {
                match rng.next() % 4 {
                    // Nothing observed (a lost node, a slow engine).
                    0 | 1 => None,
                    // Mostly events that do not apply in this phase.
                    _ => Some(events[(rng.next() % events.len() as u64) as usize].clone()),
                }
            };
            if let Some(event) = event {
                let (next, _) = transition(phase, &event, &policy);
                if next != phase {
                    phase = next;
                    phase_started = now;
                }
            }
            now += rng.next() % TICK;
            assert!(
                now <= budget + 6 * TICK,
                "{phase:?} still active {now} ms in (budget {budget} ms, {policy:?})"
            );
        }
    }
}

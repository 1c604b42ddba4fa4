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
            if next == P::Aborted && phase != P::Aborted {
                assert!(!old_stopped, "aborted after the old container was stopped");
            }
            if failed_after_stop {
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

//! Observation → event table tests.

use super::*;
use berth_raft::model::update::UpdatePolicy;
use berth_raft::model::{OperationKind, Revision};
use berth_raft::{Desired, Phase, SandboxSpec};

fn spec(image: &str) -> SandboxSpec {
    SandboxSpec {
        image: image.into(),
        policy: None,
        env: Default::default(),
        secret_env: Default::default(),
    }
}

fn record() -> SandboxRecord {
    SandboxRecord {
        name: "s".into(),
        uid: "u".into(),
        spec: spec("img:1"),
        revision: 1,
        created_at_ms: 0,
        phase: Phase::Running,
        message: String::new(),
        desired: Desired::Running,
        node: Some("n".into()),
        container_id: "c".into(),
        volume: "v".into(),
        volume_uid: String::new(),
        volume_seeded: false,
        revisions: vec![
            Revision {
                number: 1,
                spec: spec("img:1"),
                created_at_ms: 0,
                stable: true,
            },
            Revision {
                number: 2,
                spec: spec("img:2"),
                created_at_ms: 0,
                stable: false,
            },
        ],
        stable_revision: 1,
        operation: None,
        trace: String::new(),
        events: Vec::new(),
    }
}

fn op(phase: UpdatePhase) -> Operation {
    Operation {
        id: "op".into(),
        kind: OperationKind::Update,
        from_revision: 1,
        to_revision: 2,
        phase,
        policy: UpdatePolicy {
            health_timeout_ms: 10_000,
            min_healthy_ms: 2_000,
            auto_rollback: true,
            ..UpdatePolicy::default()
        },
        attempts: 0,
        started_at_ms: 0,
        updated_at_ms: 0,
        phase_started_at_ms: 1_000,
        reason: String::new(),
        progress: String::new(),
        trace: String::new(),
    }
}

fn obs(state: ContainerState, revision: u64, exit_code: i64) -> Observed {
    Observed {
        name: "s".into(),
        uid: "u".into(),
        revision,
        container_id: "c".into(),
        state: state as i32,
        exit_code,
        started_at: String::new(),
        volume: "v".into(),
        volume_present: true,
        message: String::new(),
        seq: 0,
        pull_progress: String::new(),
    }
}

fn event(
    phase: UpdatePhase,
    observed: Option<&Observed>,
    progress: &Progress,
    probe: bool,
    now: i64,
) -> Option<Event> {
    let r = record();
    let o = op(phase);
    observe(&Observations {
        record: &r,
        op: &o,
        observed,
        node_known: true,
        progress,
        readiness_required: probe,
        now_ms: now,
    })
}

#[test]
fn observations_map_to_events() {
    let none = Progress::default();
    let running1 = obs(ContainerState::Running, 1, 0);
    let running2 = obs(ContainerState::Running, 2, 0);
    let exited2 = obs(ContainerState::Exited, 2, 7);
    let pulled = Progress {
        pull: Some(Ok(())),
        ..Progress::default()
    };
    let pull_failed = Progress {
        pull: Some(Err("no such image".into())),
        ..Progress::default()
    };
    let cmd_failed = Progress {
        command_error: Some("boom".into()),
        ..Progress::default()
    };
    let probe_ok = Progress {
        probe: Some(Ok(())),
        ..Progress::default()
    };
    let probe_bad = Progress {
        probe: Some(Err("exit 1".into())),
        ..Progress::default()
    };
    use UpdatePhase as P;
    type Case<'a> = (
        P,
        Option<&'a Observed>,
        &'a Progress,
        bool,
        i64,
        Option<Event>,
    );
    let cases: Vec<Case> = vec![
        (
            P::Pending,
            Some(&running1),
            &none,
            false,
            1_000,
            Some(Event::Begin),
        ),
        (P::Pulling, Some(&running1), &none, false, 1_000, None),
        (
            P::Pulling,
            Some(&running1),
            &pulled,
            false,
            1_000,
            Some(Event::Pulled),
        ),
        (
            P::Pulling,
            Some(&running1),
            &pull_failed,
            false,
            1_000,
            Some(Event::PullFailed("no such image".into())),
        ),
        (P::StoppingOld, Some(&running1), &none, false, 1_000, None),
        (
            P::StoppingOld,
            None,
            &none,
            false,
            1_000,
            Some(Event::OldStopped),
        ),
        (
            P::StoppingOld,
            Some(&running1),
            &cmd_failed,
            false,
            1_000,
            Some(Event::StopFailed("boom".into())),
        ),
        (
            P::StartingNew,
            Some(&running2),
            &none,
            false,
            1_000,
            Some(Event::Started),
        ),
        (
            P::StartingNew,
            None,
            &cmd_failed,
            false,
            1_000,
            Some(Event::StartFailed("boom".into())),
        ),
        (
            P::StartingNew,
            None,
            &none,
            false,
            20_000,
            Some(Event::Deadline),
        ),
        (P::Verifying, Some(&running2), &none, false, 2_000, None),
        (
            P::Verifying,
            Some(&running2),
            &none,
            false,
            3_500,
            Some(Event::Healthy),
        ),
        (P::Verifying, Some(&running2), &none, true, 3_500, None),
        (
            P::Verifying,
            Some(&running2),
            &probe_ok,
            true,
            3_500,
            Some(Event::Healthy),
        ),
        (
            P::Verifying,
            Some(&running2),
            &probe_bad,
            true,
            20_000,
            Some(Event::Unhealthy(
                "its readiness probe failed: exit 1".into(),
            )),
        ),
        (
            P::Verifying,
            Some(&running2),
            &none,
            true,
            20_000,
            Some(Event::Deadline),
        ),
        (
            P::Verifying,
            Some(&exited2),
            &none,
            false,
            3_500,
            Some(Event::Unhealthy("its container exited with code 7".into())),
        ),
        (P::RollingBack, Some(&running2), &none, false, 1_000, None),
        (
            P::RollingBack,
            Some(&running1),
            &none,
            false,
            1_000,
            Some(Event::RolledBack),
        ),
        (
            P::RollingBack,
            None,
            &cmd_failed,
            false,
            1_000,
            Some(Event::RollbackFailed("boom".into())),
        ),
        (P::Succeeded, None, &cmd_failed, false, 1_000, None),
    ];
    for (phase, observed, progress, probe, now, want) in cases {
        assert_eq!(
            event(phase, observed, progress, probe, now),
            want,
            "{phase:?} {observed:?} {progress:?}"
        );
    }
}

#[test]
fn commits_switch_revisions_and_explain_failures() {
    let r = record();
    let Some(Command::AdvanceOperation { to, switch_to, .. }) =
        commit(&r, &op(UpdatePhase::StoppingOld), &Event::OldStopped, 5)
    else {
        panic!("no commit")
    };
    assert_eq!((to, switch_to), (UpdatePhase::StartingNew, Some(2)));
    let Some(Command::AdvanceOperation {
        to,
        switch_to,
        reason,
        ..
    }) = commit(
        &r,
        &op(UpdatePhase::Verifying),
        &Event::Unhealthy("its container exited with code 1".into()),
        5,
    )
    else {
        panic!("no commit")
    };
    assert_eq!((to, switch_to), (UpdatePhase::RollingBack, Some(1)));
    assert!(
        reason.contains("revision 2 was unhealthy")
            && reason.contains("rolling back to revision 1"),
        "{reason}"
    );
    let Some(Command::AdvanceOperation {
        to, mark_stable, ..
    }) = commit(&r, &op(UpdatePhase::Verifying), &Event::Healthy, 5)
    else {
        panic!("no commit")
    };
    assert_eq!((to, mark_stable), (UpdatePhase::Succeeded, Some(2)));
    assert!(commit(&r, &op(UpdatePhase::Pulling), &Event::Healthy, 5).is_none());
}

/// A lost node reports nothing: every phase still ends, by its deadline
/// (defaults: Pulling 11 min, StoppingOld 60 s, StartingNew and Verifying
/// the health timeout, RollingBack 60 s).
#[test]
fn a_lost_node_cannot_hold_an_operation() {
    use UpdatePhase as P;
    let r = record();
    let lost = |phase: P, now: i64| {
        observe(&Observations {
            record: &r,
            op: &op(phase),
            observed: None,
            node_known: false,
            progress: &Progress::default(),
            readiness_required: false,
            // The phase began at 1 000.
            now_ms: 1_000 + now,
        })
    };
    for (phase, deadline) in [
        (P::Pulling, 660_000),
        (P::StoppingOld, 60_000),
        (P::StartingNew, 10_000),
        (P::Verifying, 10_000),
        (P::RollingBack, 60_000),
    ] {
        assert_eq!(lost(phase, deadline - 1), None, "{phase:?}");
        assert_eq!(
            lost(phase, deadline + 1),
            Some(Event::Deadline),
            "{phase:?}"
        );
        let c = commit(&r, &op(phase), &Event::Deadline, 1_000 + deadline + 1);
        let Some(Command::AdvanceOperation { to, reason, .. }) = c else {
            panic!("{phase:?}: no commit")
        };
        assert_ne!(to, phase);
        assert!(reason.contains("within"), "{phase:?}: {reason}");
    }
}

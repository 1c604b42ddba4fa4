use super::*;
use crate::model::{RejectionKind, SandboxSpec};

fn create(name: &str) -> Command {
    Command::CreateSandbox {
        name: name.into(),
        uid: format!("uid-{name}"),
        spec: SandboxSpec {
            image: "busybox:1".into(),
            policy: None,
            env: Default::default(),
        },
        created_at_ms: 42,
    }
}

fn register(name: &str) -> Command {
    Command::RegisterNode {
        name: name.into(),
        driver: "container".into(),
        data_addr: "127.0.0.1:1".into(),
        cpus: 2,
        memory_bytes: 1,
        at_ms: 7,
    }
}

fn schedule(name: &str, node: &str) -> Command {
    Command::ScheduleSandbox {
        name: name.into(),
        uid: format!("uid-{name}"),
        node: node.into(),
    }
}

fn rejected(resp: &CommandResponse) -> Option<RejectionKind> {
    match resp {
        CommandResponse::Rejected { rejection } => Some(rejection.kind),
        _ => None,
    }
}

#[test]
fn create_is_pending_with_a_fixed_volume() {
    let mut state = State::default();
    let (resp, changes) = state.apply(&create("a"));
    let CommandResponse::Sandbox { record } = resp else {
        panic!("unexpected {resp:?}")
    };
    assert_eq!(record.phase, Phase::Pending);
    assert_eq!(record.revision, 1);
    assert_eq!(record.created_at_ms, 42);
    assert_eq!(record.volume, volume_name("a", "uid-a"));
    assert_eq!(record.desired, Desired::Running);
    assert_eq!(changes, vec![Change::PutSandbox(record)]);
}

#[test]
fn duplicate_create_is_rejected_and_changes_nothing() {
    let mut state = State::default();
    state.apply(&create("a"));
    let before = state.clone();
    let (resp, changes) = state.apply(&create("a"));
    assert_eq!(rejected(&resp), Some(RejectionKind::AlreadyExists));
    assert!(changes.is_empty());
    assert_eq!(state, before);
}

#[test]
fn delete_of_an_unplaced_sandbox_removes_it_and_of_a_placed_one_marks_deleting() {
    let mut state = State::default();
    let (resp, _) = state.apply(&Command::DeleteSandbox {
        name: "x".into(),
        keep_volume: false,
    });
    assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
    state.apply(&create("x"));
    state.apply(&Command::DeleteSandbox {
        name: "x".into(),
        keep_volume: false,
    });
    assert!(state.is_empty());

    state.apply(&register("n1"));
    state.apply(&create("y"));
    state.apply(&schedule("y", "n1"));
    let (resp, _) = state.apply(&Command::DeleteSandbox {
        name: "y".into(),
        keep_volume: true,
    });
    let CommandResponse::Sandbox { record } = resp else {
        panic!("unexpected {resp:?}")
    };
    assert_eq!(record.phase, Phase::Deleting);
    assert_eq!(record.desired, Desired::Deleted { keep_volume: true });
    let (resp, _) = state.apply(&Command::SetDesired {
        name: "y".into(),
        desired: Desired::Running,
    });
    assert_eq!(rejected(&resp), Some(RejectionKind::FailedPrecondition));
    state.apply(&Command::RemoveSandbox {
        name: "y".into(),
        uid: "uid-y".into(),
    });
    assert!(state.get("y").is_none());
}

#[test]
fn a_scheduled_sandbox_never_moves_and_its_volume_never_changes() {
    let mut state = State::default();
    state.apply(&register("n1"));
    state.apply(&register("n2"));
    state.apply(&create("a"));
    let volume = state.get("a").map(|r| r.volume.clone());
    let (resp, _) = state.apply(&schedule("a", "n1"));
    assert!(rejected(&resp).is_none());
    let (resp, changes) = state.apply(&schedule("a", "n2"));
    assert_eq!(rejected(&resp), Some(RejectionKind::FailedPrecondition));
    assert!(changes.is_empty());
    assert_eq!(
        state.get("a").and_then(|r| r.node.clone()),
        Some("n1".into())
    );
    assert_eq!(state.get("a").map(|r| r.volume.clone()), volume);
    let (resp, _) = state.apply(&schedule("a", "unknown"));
    assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
}

#[test]
fn commands_with_a_stale_uid_are_rejected() {
    let mut state = State::default();
    state.apply(&register("n1"));
    state.apply(&create("a"));
    let stale = Command::SetSandboxStatus {
        name: "a".into(),
        uid: "another".into(),
        phase: Phase::Running,
        message: String::new(),
        container_id: "c".into(),
    };
    let (resp, changes) = state.apply(&stale);
    assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
    assert!(changes.is_empty());
    let (resp, _) = state.apply(&Command::RemoveSandbox {
        name: "a".into(),
        uid: "another".into(),
    });
    assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
    assert!(state.get("a").is_some());
}

#[test]
fn node_registration_keeps_first_registration_time_and_liveness_is_recorded() {
    let mut state = State::default();
    state.apply(&register("n1"));
    state.apply(&Command::SetNodeReady {
        name: "n1".into(),
        ready: false,
        message: "no heartbeat".into(),
        at_ms: 9,
    });
    assert_eq!(state.node("n1").map(|n| n.ready), Some(false));
    let mut again = register("n1");
    if let Command::RegisterNode { at_ms, .. } = &mut again {
        *at_ms = 100;
    }
    state.apply(&again);
    let node = state.node("n1").cloned().expect("node");
    assert!(node.ready);
    assert_eq!(node.registered_at_ms, 7);
    assert_eq!(node.changed_at_ms, 100);
}

#[test]
fn apply_is_deterministic() {
    let cmds = [
        register("n1"),
        create("a"),
        create("b"),
        create("a"),
        schedule("a", "n1"),
        Command::DeleteSandbox {
            name: "a".into(),
            keep_volume: false,
        },
        Command::DeleteSandbox {
            name: "b".into(),
            keep_volume: false,
        },
    ];
    let mut s1 = State::default();
    let mut s2 = State::default();
    for c in &cmds {
        assert_eq!(s1.apply(c), s2.apply(c));
    }
    assert_eq!(s1, s2);
}

mod operations {
    use super::*;
    use crate::model::update::{UpdatePhase, UpdatePolicy};
    use crate::model::OperationKind;

    fn placed_running(state: &mut State, name: &str) {
        state.apply(&register("n1"));
        state.apply(&create(name));
        state.apply(&schedule(name, "n1"));
        state.apply(&Command::SetSandboxStatus {
            name: name.into(),
            uid: format!("uid-{name}"),
            phase: Phase::Running,
            message: "running".into(),
            container_id: "c".into(),
        });
    }

    fn update(name: &str, image: &str, expected: Option<u64>) -> Command {
        Command::UpdateSandbox {
            name: name.into(),
            operation_id: format!("op-{image}"),
            spec: SandboxSpec {
                image: image.into(),
                policy: None,
                env: Default::default(),
            },
            expected_revision: expected,
            policy: UpdatePolicy::default(),
            at_ms: 50,
        }
    }

    fn advance(
        name: &str,
        op: &str,
        from: UpdatePhase,
        to: UpdatePhase,
        switch_to: Option<u64>,
        stable: Option<u64>,
    ) -> Command {
        Command::AdvanceOperation {
            name: name.into(),
            uid: format!("uid-{name}"),
            operation_id: op.into(),
            from,
            to,
            reason: String::new(),
            switch_to,
            mark_stable: stable,
            at_ms: 60,
        }
    }

    fn rollback(name: &str, to: Option<u64>) -> Command {
        Command::RollbackSandbox {
            name: name.into(),
            operation_id: "rb".into(),
            to_revision: to,
            policy: UpdatePolicy::default(),
            at_ms: 70,
        }
    }

    #[test]
    fn running_outside_an_operation_marks_the_revision_stable() {
        let mut state = State::default();
        placed_running(&mut state, "a");
        let r = state.get("a").unwrap();
        assert_eq!(r.stable_revision, 1);
        assert!(r.revisions[0].stable);
    }

    #[test]
    fn update_creates_a_revision_and_an_operation_and_refuses_bad_requests() {
        let mut state = State::default();
        placed_running(&mut state, "a");
        let before = state.clone();
        for bad in [
            update("a", "busybox:1", None),
            update("a", "busybox:2", Some(7)),
        ] {
            let (resp, changes) = state.apply(&bad);
            assert_eq!(
                rejected(&resp),
                Some(RejectionKind::FailedPrecondition),
                "{bad:?}"
            );
            assert!(changes.is_empty());
        }
        assert_eq!(state, before);
        let (resp, _) = state.apply(&update("a", "busybox:2", Some(1)));
        assert!(rejected(&resp).is_none(), "{resp:?}");
        let r = state.get("a").unwrap().clone();
        assert_eq!(r.revisions.len(), 2);
        assert_eq!(
            r.revision, 1,
            "the current revision changes only when the new one starts"
        );
        let op = r.operation.clone().unwrap();
        assert_eq!(
            (op.kind, op.from_revision, op.to_revision, op.phase),
            (OperationKind::Update, 1, 2, UpdatePhase::Pending)
        );
        let (resp, _) = state.apply(&update("a", "busybox:3", None));
        let CommandResponse::Rejected { rejection } = resp else {
            panic!()
        };
        assert!(
            rejection.message.contains("op-busybox:2"),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn phase_changes_are_compare_and_set_and_switch_revisions() {
        let mut state = State::default();
        placed_running(&mut state, "a");
        state.apply(&update("a", "busybox:2", None));
        let op = "op-busybox:2";
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::Pending,
            UpdatePhase::Pulling,
            None,
            None,
        ));
        let (resp, _) = state.apply(&advance(
            "a",
            op,
            UpdatePhase::Pending,
            UpdatePhase::Pulling,
            None,
            None,
        ));
        assert_eq!(
            rejected(&resp),
            Some(RejectionKind::FailedPrecondition),
            "stale from-phase must be refused"
        );
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::Pulling,
            UpdatePhase::StoppingOld,
            None,
            None,
        ));
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::StoppingOld,
            UpdatePhase::StartingNew,
            Some(2),
            None,
        ));
        let r = state.get("a").unwrap();
        assert_eq!((r.revision, r.spec.image.as_str()), (2, "busybox:2"));
        let volume = r.volume.clone();
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::StartingNew,
            UpdatePhase::Verifying,
            None,
            None,
        ));
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::Verifying,
            UpdatePhase::Succeeded,
            None,
            Some(2),
        ));
        let r = state.get("a").unwrap();
        assert_eq!((r.stable_revision, r.volume.clone()), (2, volume));
        assert!(r.active_operation().is_none());
    }

    #[test]
    fn rollback_aborts_an_update_or_goes_back_to_the_last_stable_revision() {
        let mut state = State::default();
        placed_running(&mut state, "a");
        state.apply(&update("a", "busybox:2", None));
        let op = "op-busybox:2";
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::Pending,
            UpdatePhase::Pulling,
            None,
            None,
        ));
        // Before the old container is stopped: aborted, nothing switched.
        state.apply(&rollback("a", None));
        let r = state.get("a").unwrap().clone();
        assert_eq!(
            r.operation.as_ref().map(|o| o.phase),
            Some(UpdatePhase::Aborted)
        );
        assert_eq!(r.revision, 1);

        state.apply(&update("a", "busybox:3", None));
        let op = "op-busybox:3";
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::Pending,
            UpdatePhase::Pulling,
            None,
            None,
        ));
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::Pulling,
            UpdatePhase::StoppingOld,
            None,
            None,
        ));
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::StoppingOld,
            UpdatePhase::StartingNew,
            Some(3),
            None,
        ));
        let (resp, _) = state.apply(&rollback("a", Some(2)));
        assert_eq!(
            rejected(&resp),
            Some(RejectionKind::FailedPrecondition),
            "only back to the update's origin"
        );
        state.apply(&rollback("a", None));
        let r = state.get("a").unwrap().clone();
        assert_eq!(
            r.operation.as_ref().map(|o| o.phase),
            Some(UpdatePhase::RollingBack)
        );
        assert_eq!(
            r.revision, 1,
            "rolling back switches to the previous revision"
        );

        // No operation: back to the last stable revision other than the current.
        let (resp, _) = state.apply(&rollback("a", None));
        assert_eq!(
            rejected(&resp),
            Some(RejectionKind::FailedPrecondition),
            "{resp:?}"
        );
        state.apply(&advance(
            "a",
            op,
            UpdatePhase::RollingBack,
            UpdatePhase::RolledBack,
            None,
            None,
        ));
        let (resp, _) = state.apply(&rollback("a", None));
        assert_eq!(
            rejected(&resp),
            Some(RejectionKind::FailedPrecondition),
            "revision 1 is the only stable one"
        );
        let (resp, _) = state.apply(&rollback("a", Some(9)));
        assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
        let (resp, _) = state.apply(&rollback("a", Some(3)));
        assert!(rejected(&resp).is_none(), "{resp:?}");
        let op = state.get("a").unwrap().operation.clone().unwrap();
        assert_eq!(
            (op.kind, op.from_revision, op.to_revision),
            (OperationKind::Rollback, 1, 3)
        );
    }
}

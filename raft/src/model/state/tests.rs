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
            secret_env: Default::default(),
        },
        created_at_ms: 42,
        adopt_volume: None,
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
        instance_id: "i-1".into(),
    }
}

fn schedule(name: &str, node: &str) -> Command {
    Command::ScheduleSandbox {
        name: name.into(),
        uid: format!("uid-{name}"),
        node: node.into(),
        at_ms: 0,
    }
}

/// Registers node n1 and runs sandbox `name` on it.
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
        at_ms: 0,
    });
}

fn rejected(resp: &CommandResponse) -> Option<RejectionKind> {
    match resp {
        CommandResponse::Rejected { rejection } => Some(rejection.kind),
        _ => None,
    }
}

/// The per-node count follows placement, replacement and removal exactly
/// as a scan of every record would.
#[test]
fn sandboxes_per_node_follow_placement_and_removal() {
    let mut state = State::default();
    let scan = |state: &State, node: &str| {
        state
            .iter()
            .filter(|r| r.node.as_deref() == Some(node))
            .count()
    };
    placed_running(&mut state, "a");
    placed_running(&mut state, "b");
    state.apply(&create("c"));
    state.apply(&register("n2"));
    state.apply(&schedule("c", "n2"));
    for (node, n) in [("n1", 2), ("n2", 1), ("n3", 0)] {
        assert_eq!(state.sandboxes_on(node), n, "{node}");
        assert_eq!(scan(&state, node), n, "{node}");
    }
    state.apply(&Command::DeleteSandbox {
        name: "a".into(),
        keep_volume: false,
    });
    state.apply(&Command::RemoveSandbox {
        name: "a".into(),
        uid: "uid-a".into(),
        at_ms: 0,
    });
    assert!(state.get("a").is_none());
    assert_eq!(state.sandboxes_on("n1"), 1);
    assert_eq!(state.sandboxes_on("n2"), 1);
    // A record rebuilt from storage counts the same.
    let mut loaded = State::default();
    for r in state.iter() {
        loaded.insert(r.clone());
    }
    assert_eq!(loaded.sandboxes_on("n1"), 1);
    assert_eq!(loaded.sandboxes_on("n2"), 1);
}

/// The per-phase counts follow creates, status changes and removal
/// exactly as a scan of every record would, and a state rebuilt from its
/// records counts the same.
#[test]
fn sandboxes_per_phase_follow_status_and_removal() {
    let scan = |state: &State| {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for r in state.iter() {
            *counts.entry(r.phase.as_str()).or_default() += 1;
        }
        counts
    };
    let mut state = State::default();
    placed_running(&mut state, "a");
    placed_running(&mut state, "b");
    state.apply(&create("c"));
    assert_eq!(state.phase_counts(), &scan(&state));
    assert_eq!(state.phase_counts().get("Running"), Some(&2));
    assert_eq!(state.phase_counts().get("Pending"), Some(&1));
    state.apply(&Command::DeleteSandbox {
        name: "a".into(),
        keep_volume: false,
    });
    assert_eq!(state.phase_counts(), &scan(&state));
    state.apply(&Command::RemoveSandbox {
        name: "a".into(),
        uid: "uid-a".into(),
        at_ms: 0,
    });
    assert_eq!(state.phase_counts(), &scan(&state));
    assert_eq!(state.phase_counts().get("Running"), Some(&1));
    let mut loaded = State::default();
    for r in state.iter() {
        loaded.insert(r.clone());
    }
    assert_eq!(loaded.phase_counts(), state.phase_counts());
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
    // A status the leader observed before the delete applied (the simulator,
    // seed 105): the sandbox stays Deleting.
    state.apply(&Command::SetSandboxStatus {
        name: "y".into(),
        uid: "uid-y".into(),
        phase: Phase::Running,
        message: "running".into(),
        container_id: "c1".into(),
        at_ms: 0,
    });
    let record = state.get("y").unwrap();
    assert_eq!(record.phase, Phase::Deleting);
    assert_eq!(record.message, "deleting on node n1");
    assert_eq!(record.container_id, "c1");
    state.apply(&Command::RemoveSandbox {
        name: "y".into(),
        uid: "uid-y".into(),
        at_ms: 0,
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
        at_ms: 0,
    };
    let (resp, changes) = state.apply(&stale);
    assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
    assert!(changes.is_empty());
    let (resp, _) = state.apply(&Command::RemoveSandbox {
        name: "a".into(),
        uid: "another".into(),
        at_ms: 0,
    });
    assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
    assert!(state.get("a").is_some());
}

/// A sandbox created while no node is Ready says so in its first record
/// (no second write from its actor); otherwise it waits to be scheduled.
#[test]
fn a_create_says_no_node_is_available_when_none_is_ready() {
    let mut state = State::default();
    state.apply(&create("a"));
    assert_eq!(state.get("a").unwrap().message, NO_NODE_MESSAGE);
    state.apply(&register("n1"));
    let ready = |ready| Command::SetNodeReady {
        name: "n1".into(),
        ready,
        message: String::new(),
        at_ms: 9,
    };
    state.apply(&ready(true));
    state.apply(&create("b"));
    assert_eq!(state.get("b").unwrap().message, UNSCHEDULED_MESSAGE);
    state.apply(&ready(false));
    state.apply(&create("c"));
    assert_eq!(state.get("c").unwrap().message, NO_NODE_MESSAGE);
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

    fn update(name: &str, image: &str, expected: Option<u64>) -> Command {
        Command::UpdateSandbox {
            name: name.into(),
            operation_id: format!("op-{image}"),
            spec: SandboxSpec {
                image: image.into(),
                policy: None,
                env: Default::default(),
                secret_env: Default::default(),
            },
            expected_revision: expected,
            policy: UpdatePolicy::default(),
            at_ms: 50,
            keep_revisions: 0,
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

    /// Stop and start during an operation are refused naming it (a stop
    /// during Verifying used to leave the operation RollingBack forever);
    /// a delete ends it (Aborted) and deletes.
    #[test]
    fn stop_and_start_wait_for_an_operation_and_delete_ends_it() {
        let mut state = State::default();
        placed_running(&mut state, "a");
        state.apply(&update("a", "busybox:2", None));
        let op = "op-busybox:2";
        for (from, to) in [
            (UpdatePhase::Pending, UpdatePhase::Pulling),
            (UpdatePhase::Pulling, UpdatePhase::StoppingOld),
            (UpdatePhase::StoppingOld, UpdatePhase::StartingNew),
            (UpdatePhase::StartingNew, UpdatePhase::Verifying),
        ] {
            state.apply(&advance("a", op, from, to, None, None));
        }
        let before = state.clone();
        let (resp, changes) = state.apply(&Command::SetDesired {
            name: "a".into(),
            desired: Desired::Stopped,
        });
        let CommandResponse::Rejected { rejection } = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(rejection.kind, RejectionKind::FailedPrecondition);
        assert!(
            rejection.message.contains(op) && rejection.message.contains("Verifying"),
            "{}",
            rejection.message
        );
        assert!(changes.is_empty());
        assert_eq!(state, before);
        // Start of a sandbox that is meant to run already changes nothing.
        let (resp, _) = state.apply(&Command::SetDesired {
            name: "a".into(),
            desired: Desired::Running,
        });
        assert!(rejected(&resp).is_none(), "{resp:?}");

        let (resp, _) = state.apply(&Command::DeleteSandbox {
            name: "a".into(),
            keep_volume: false,
        });
        let CommandResponse::Sandbox { record } = resp else {
            panic!("{resp:?}")
        };
        let op = record.operation.unwrap();
        assert_eq!(op.phase, UpdatePhase::Aborted);
        assert!(
            op.reason.contains("deleted during Verifying"),
            "{}",
            op.reason
        );
        assert_eq!(record.phase, Phase::Deleting);
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
    fn revisions_are_bounded_and_stable_ones_are_kept() {
        let mut state = State::default();
        placed_running(&mut state, "a");
        for i in 2..=30 {
            let image = format!("busybox:{i}");
            let mut cmd = update("a", &image, None);
            if let Command::UpdateSandbox { keep_revisions, .. } = &mut cmd {
                *keep_revisions = 5;
            }
            let (resp, _) = state.apply(&cmd);
            assert!(rejected(&resp).is_none(), "{resp:?}");
            let op = format!("op-{image}");
            state.apply(&advance(
                "a",
                &op,
                UpdatePhase::Pending,
                UpdatePhase::Aborted,
                None,
                None,
            ));
        }
        let r = state.get("a").unwrap();
        let numbers: Vec<u64> = r.revisions.iter().map(|r| r.number).collect();
        assert_eq!(
            numbers,
            vec![1, 26, 27, 28, 29, 30],
            "stable 1 and the last five"
        );
        assert_eq!(r.revision, 1);
        assert!(r.revisions[0].stable);
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

    /// A stopped sandbox cannot start a rollback (it would wait out the
    /// health timeout for a container nobody starts): the simulator's seed
    /// 28 found the rollback hanging for a minute after a stop.
    #[test]
    fn a_stopped_sandbox_is_not_rolled_back() {
        let mut state = State::default();
        placed_running(&mut state, "a");
        state.apply(&update("a", "busybox:2", None));
        let op = "op-busybox:2";
        for (from, to, switch, stable) in [
            (UpdatePhase::Pending, UpdatePhase::Pulling, None, None),
            (UpdatePhase::Pulling, UpdatePhase::StoppingOld, None, None),
            (
                UpdatePhase::StoppingOld,
                UpdatePhase::StartingNew,
                Some(2),
                None,
            ),
            (UpdatePhase::StartingNew, UpdatePhase::Verifying, None, None),
            (
                UpdatePhase::Verifying,
                UpdatePhase::Succeeded,
                None,
                Some(2),
            ),
        ] {
            state.apply(&advance("a", op, from, to, switch, stable));
        }
        let uid = state.get("a").unwrap().uid.clone();
        state.apply(&Command::SetDesired {
            name: "a".into(),
            desired: Desired::Stopped,
        });
        let before = state.get("a").unwrap().clone();
        let (resp, changes) = state.apply(&rollback("a", Some(1)));
        assert_eq!(rejected(&resp), Some(RejectionKind::FailedPrecondition));
        assert!(changes.is_empty());
        assert_eq!(state.get("a").unwrap(), &before, "nothing changed");
        state.apply(&Command::SetDesired {
            name: "a".into(),
            desired: Desired::Running,
        });
        let (resp, _) = state.apply(&rollback("a", Some(1)));
        assert!(rejected(&resp).is_none(), "{resp:?}");
        assert_eq!(state.get("a").unwrap().uid, uid);
    }
}

mod proposals {
    use super::*;
    use crate::model::{Proposal, REQUEST_WINDOW};

    /// A deposed leader's actor proposes with its old term: whatever entry
    /// carries it (its own, or the new leader's after forwarding), a term
    /// that is not the entry's is refused and changes nothing.
    #[test]
    fn a_command_proposed_for_another_term_is_refused() {
        let mut state = State::default();
        state.apply(&create("a"));
        let before = state.clone();
        let status = Command::SetSandboxStatus {
            name: "a".into(),
            uid: "uid-a".into(),
            phase: Phase::Failed,
            message: "stale".into(),
            container_id: String::new(),
            at_ms: 0,
        };
        let (resp, changes) = state.apply_proposal(5, 10, &Proposal::in_term(status.clone(), 4));
        assert_eq!(rejected(&resp), Some(RejectionKind::StaleTerm));
        assert!(changes.is_empty());
        assert_eq!(state, before);
        let (resp, _) = state.apply_proposal(5, 11, &Proposal::in_term(status, 5));
        assert!(rejected(&resp).is_none(), "{resp:?}");
    }

    /// A retried request is answered with its first response, even after
    /// the state moved on; reusing an id for another request is refused.
    #[test]
    fn a_retried_request_gets_its_first_response_and_applies_nothing() {
        let mut state = State::default();
        let p = Proposal::with_request_id(create("a"), "req-1".into());
        let (first, changes) = state.apply_proposal(1, 1, &p);
        assert!(matches!(first, CommandResponse::Sandbox { .. }));
        assert!(changes.iter().any(|c| matches!(c, Change::PutRequest(_))));
        let after_first = state.clone();
        let (again, changes) = state.apply_proposal(1, 2, &p);
        assert_eq!(again, first, "not AlreadyExists");
        assert!(changes.is_empty());
        assert_eq!(state, after_first);
        // Without the id the same command is a second request.
        let (dup, _) = state.apply_proposal(1, 3, &Proposal::new(create("a")));
        assert_eq!(rejected(&dup), Some(RejectionKind::AlreadyExists));
        // The same id for another sandbox is a client bug.
        let other = Proposal::with_request_id(create("b"), "req-1".into());
        let (resp, changes) = state.apply_proposal(1, 4, &other);
        assert_eq!(rejected(&resp), Some(RejectionKind::InvalidArgument));
        assert!(changes.is_empty());
        assert!(state.get("b").is_none());
    }

    #[test]
    fn request_ids_are_remembered_for_a_bounded_window() {
        let mut state = State::default();
        let mut evicted = 0;
        for i in 0..(REQUEST_WINDOW as u64 + 3) {
            let p = Proposal::with_request_id(
                Command::DeleteSandbox {
                    name: "nobody".into(),
                    keep_volume: false,
                },
                format!("r{i}"),
            );
            let (_, changes) = state.apply_proposal(1, i + 1, &p);
            evicted += changes
                .iter()
                .filter(|c| matches!(c, Change::DeleteRequest(_)))
                .count();
        }
        assert_eq!(evicted, 3);
        assert_eq!(state.requests().count(), REQUEST_WINDOW);
        assert_eq!(state.requests().next().map(|r| r.id.as_str()), Some("r3"));
    }

    /// A batch (group commit) applies each proposal exactly as it would
    /// apply alone, in order, and answers each: a later proposal sees an
    /// earlier one's effect, a repeated request id in the same entry is
    /// answered not applied, and each proposal keeps its own log position.
    #[test]
    fn a_batch_applies_each_proposal_as_if_alone_in_order() {
        let batch = |proposals: Vec<Proposal>| Proposal::new(Command::Batch { proposals });
        let alone = {
            let mut state = State::default();
            let mut responses = vec![];
            for (i, p) in batch_items().into_iter().enumerate() {
                responses.push(state.apply_proposal(3, 10 + i as u64, &p).0);
            }
            (state, responses)
        };
        let mut state = State::default();
        let (response, changes) = state.apply_proposal(3, 10, &batch(batch_items()));
        let CommandResponse::Batch { responses } = response else {
            panic!("{response:?}");
        };
        assert_eq!(responses, alone.1, "each proposal answered as if alone");
        assert_eq!(state.get("a"), alone.0.get("a"));
        assert_eq!(rejected(&responses[1]), Some(RejectionKind::AlreadyExists));
        assert_eq!(
            responses[2], responses[0],
            "a repeated id gets the first answer"
        );
        assert_eq!(rejected(&responses[3]), Some(RejectionKind::StaleTerm));
        // Remembered at distinct positions in the one entry.
        let slots: Vec<(u64, u32)> = state.requests().map(|r| (r.index, r.slot)).collect();
        assert_eq!(slots, [(10, 0)]);
        let audit: Vec<(u64, u32)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::PutAudit(e) => Some((e.index, e.slot)),
                _ => None,
            })
            .collect();
        assert_eq!(audit, [(10, 0), (10, 1), (10, 2), (10, 3)]);
        assert_eq!(state.audit().count(), 4, "no audit event overwrote another");
        // A batch inside a batch is refused and changes nothing.
        let before = state.clone();
        let (response, changes) =
            state.apply_proposal(3, 11, &batch(vec![batch(vec![Proposal::new(create("z"))])]));
        let CommandResponse::Batch { responses } = response else {
            panic!("{response:?}");
        };
        assert_eq!(
            rejected(&responses[0]),
            Some(RejectionKind::InvalidArgument)
        );
        assert!(changes.is_empty());
        assert_eq!(state, before);
    }

    fn batch_items() -> Vec<Proposal> {
        let stamp = |p: Proposal| Proposal {
            audit: Some(crate::model::AuditStamp {
                principal: "insecure".into(),
                tenant: String::new(),
                at_ms: 1,
            }),
            ..p
        };
        vec![
            stamp(Proposal::with_request_id(create("a"), "req-a".into())),
            stamp(Proposal::new(create("a"))),
            stamp(Proposal::with_request_id(create("a"), "req-a".into())),
            stamp(Proposal::in_term(create("b"), 2)),
        ]
    }
}

mod identity {
    use super::*;
    use crate::model::KeptVolume;

    fn register_as(node: &str, instance: &str) -> Command {
        let mut c = register(node);
        if let Command::RegisterNode { instance_id, .. } = &mut c {
            *instance_id = instance.into();
        }
        c
    }

    #[test]
    fn a_second_agent_instance_needs_an_operator_to_take_a_node_name() {
        let mut state = State::default();
        state.apply(&register_as("n1", "i-1"));
        let (resp, changes) = state.apply(&register_as("n1", "i-2"));
        let CommandResponse::Rejected { rejection } = resp else {
            panic!("{resp:?}")
        };
        assert!(
            rejection.message.contains("berth node replace n1"),
            "{}",
            rejection.message
        );
        assert!(changes.is_empty());
        // The known instance comes back at will.
        let (resp, _) = state.apply(&register_as("n1", "i-1"));
        assert!(rejected(&resp).is_none());
        // Replacing a Ready node is refused; a NotReady one is allowed.
        let (resp, _) = state.apply(&Command::ReplaceNode { name: "n1".into() });
        assert_eq!(rejected(&resp), Some(RejectionKind::FailedPrecondition));
        state.apply(&Command::SetNodeReady {
            name: "n1".into(),
            ready: false,
            message: "silent".into(),
            at_ms: 9,
        });
        let (resp, _) = state.apply(&Command::ReplaceNode { name: "n1".into() });
        assert!(rejected(&resp).is_none(), "{resp:?}");
        let (resp, _) = state.apply(&register_as("n1", "i-2"));
        assert!(rejected(&resp).is_none(), "{resp:?}");
        let node = state.node("n1").unwrap();
        assert_eq!(
            (node.instance_id.as_str(), node.replace_allowed),
            ("i-2", false)
        );
        // ... and the old instance is now the stranger.
        let (resp, _) = state.apply(&register_as("n1", "i-1"));
        assert_eq!(rejected(&resp), Some(RejectionKind::FailedPrecondition));
    }

    #[test]
    fn a_kept_volume_is_listed_adopted_once_and_deletable() {
        let mut state = State::default();
        state.apply(&register("n1"));
        placed_running(&mut state, "a");
        assert!(state.get("a").unwrap().volume_seeded, "ran once");
        state.apply(&Command::DeleteSandbox {
            name: "a".into(),
            keep_volume: true,
        });
        state.apply(&Command::RemoveSandbox {
            name: "a".into(),
            uid: "uid-a".into(),
            at_ms: 77,
        });
        let kept = state.volumes().cloned().collect::<Vec<_>>();
        let volume = volume_name("a", "uid-a");
        assert_eq!(
            kept,
            vec![KeptVolume {
                volume: volume.clone(),
                node: "n1".into(),
                sandbox: "a".into(),
                uid: "uid-a".into(),
                kept_at_ms: 77,
                deleting: false,
            }]
        );
        // A new sandbox of the same name (a new uid) gets its own volume.
        let mut recreate = create("a");
        if let Command::CreateSandbox { uid, .. } = &mut recreate {
            *uid = "uid-a2".into();
        }
        state.apply(&recreate);
        assert_ne!(state.get("a").unwrap().volume, volume);
        // Adopting: placed on the volume's node, owner uid kept, seeded.
        let mut adopt = create("b");
        if let Command::CreateSandbox { adopt_volume, .. } = &mut adopt {
            *adopt_volume = Some(volume.clone());
        }
        let (resp, changes) = state.apply(&adopt);
        assert!(rejected(&resp).is_none(), "{resp:?}");
        assert!(changes.contains(&Change::DeleteVolume(volume.clone())));
        let b = state.get("b").unwrap();
        assert_eq!(b.node.as_deref(), Some("n1"));
        assert_eq!(
            (b.volume.as_str(), b.volume_owner()),
            (volume.as_str(), "uid-a")
        );
        assert!(b.volume_seeded);
        assert_eq!(state.volumes().count(), 0);
        // Only once.
        let mut again = create("c");
        if let Command::CreateSandbox { adopt_volume, .. } = &mut again {
            *adopt_volume = Some(volume.clone());
        }
        let (resp, _) = state.apply(&again);
        assert_eq!(rejected(&resp), Some(RejectionKind::NotFound));
        // Deleting: marked, then forgotten once the node removed it.
        state.apply(&Command::DeleteSandbox {
            name: "b".into(),
            keep_volume: true,
        });
        state.apply(&Command::RemoveSandbox {
            name: "b".into(),
            uid: "uid-b".into(),
            at_ms: 80,
        });
        let kept = state.volume(&volume).unwrap();
        assert_eq!((kept.sandbox.as_str(), kept.uid.as_str()), ("b", "uid-a"));
        let (resp, _) = state.apply(&Command::DeleteVolume {
            volume: volume.clone(),
        });
        assert!(matches!(resp, CommandResponse::Volume { ref volume } if volume.deleting));
        let mut adopt_deleting = create("d");
        if let Command::CreateSandbox { adopt_volume, .. } = &mut adopt_deleting {
            *adopt_volume = Some(volume.clone());
        }
        let (resp, _) = state.apply(&adopt_deleting);
        assert_eq!(rejected(&resp), Some(RejectionKind::FailedPrecondition));
        state.apply(&Command::ForgetVolume {
            volume: volume.clone(),
        });
        assert_eq!(state.volumes().count(), 0);
    }
}

mod access {
    use super::*;
    use crate::model::auth::{sandbox_key, Usage};
    use crate::model::{Quota, Role, TokenRecord};

    fn with_policy(name: &str, policy: &str) -> Command {
        let Command::CreateSandbox {
            name,
            uid,
            mut spec,
            created_at_ms,
            adopt_volume,
        } = create(name)
        else {
            unreachable!()
        };
        spec.policy = Some(policy.into());
        Command::CreateSandbox {
            name,
            uid,
            spec,
            created_at_ms,
            adopt_volume,
        }
    }

    fn token(id: &str, bootstrap: bool) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_sha256: "00".repeat(32),
            tenant: "team".into(),
            role: Role::Member,
            description: String::new(),
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
            bootstrap,
        }
    }

    #[test]
    fn names_are_unique_per_tenant_not_across_tenants() {
        let mut state = State::default();
        let a = sandbox_key("a", "web");
        let b = sandbox_key("b", "web");
        assert_eq!(rejected(&state.apply(&create(&a)).0), None);
        assert_eq!(rejected(&state.apply(&create(&b)).0), None);
        assert_eq!(
            rejected(&state.apply(&create(&a)).0),
            Some(RejectionKind::AlreadyExists)
        );
        assert_eq!(state.usage("a").sandboxes, 1);
        assert_eq!(state.usage("default").sandboxes, 0);
    }

    #[test]
    fn one_bootstrap_token_ever_and_revocation_sticks() {
        let mut state = State::default();
        let made = |r: &TokenRecord| Command::CreateToken { record: r.clone() };
        assert_eq!(rejected(&state.apply(&made(&token("t1", true))).0), None);
        assert_eq!(
            rejected(&state.apply(&made(&token("t2", true))).0),
            Some(RejectionKind::AlreadyExists)
        );
        assert_eq!(
            rejected(&state.apply(&made(&token("t1", false))).0),
            Some(RejectionKind::AlreadyExists)
        );
        let revoke = |at| Command::RevokeToken {
            id: "t1".into(),
            at_ms: at,
        };
        state.apply(&revoke(10));
        state.apply(&revoke(20));
        let t1 = state.token("t1").unwrap();
        assert_eq!(t1.revoked_at_ms, Some(10));
        assert!(!t1.is_valid_at(0));
        assert_eq!(
            rejected(
                &state
                    .apply(&Command::RevokeToken {
                        id: "nope".into(),
                        at_ms: 1
                    })
                    .0
            ),
            Some(RejectionKind::NotFound)
        );
    }

    #[test]
    fn quotas_admit_exactly_up_to_the_limit() {
        let mut state = State::default();
        state.apply(&Command::SetQuota {
            tenant: "t".into(),
            quota: Quota {
                max_sandboxes: Some(2),
                max_cpu_millis: Some(1500),
                max_memory_bytes: None,
            },
        });
        let key = |n: &str| sandbox_key("t", n);
        let cpu = |c: &str| format!("resources:\n  cpus: {c}\n");
        // A CPU quota needs every sandbox to declare its CPUs.
        assert_eq!(
            rejected(&state.apply(&create(&key("bare"))).0),
            Some(RejectionKind::ResourceExhausted)
        );
        assert_eq!(
            rejected(&state.apply(&with_policy(&key("a"), &cpu("1"))).0),
            None
        );
        assert_eq!(
            rejected(&state.apply(&with_policy(&key("b"), &cpu("0.6"))).0),
            Some(RejectionKind::ResourceExhausted)
        );
        assert_eq!(
            rejected(&state.apply(&with_policy(&key("b"), &cpu("0.5"))).0),
            None
        );
        assert_eq!(
            rejected(&state.apply(&with_policy(&key("c"), &cpu("0.001"))).0),
            Some(RejectionKind::ResourceExhausted)
        );
        let usage = state.usage("t");
        assert_eq!((usage.sandboxes, usage.cpu_millis), (2, 1500));
        // Other tenants are not limited by it.
        assert_eq!(rejected(&state.apply(&create("free")).0), None);
    }

    /// `tenant`'s usage counted the slow way, over every sandbox.
    fn recount(state: &State, tenant: &str) -> Usage {
        let mut usage = Usage::default();
        for record in state.sandboxes.values() {
            if crate::model::auth::split_key(&record.name).0 == tenant {
                let (cpu, memory) = super::super::auth::resources(&record.spec);
                usage.sandboxes += 1;
                usage.cpu_millis += cpu.unwrap_or(0);
                usage.memory_bytes += memory.unwrap_or(0);
            }
        }
        usage
    }

    #[test]
    fn usage_stays_in_step_with_creates_status_changes_updates_and_deletes() {
        let mut state = State::default();
        let key = |n: &str| sandbox_key("t", n);
        let policy = |cpus: &str| format!("resources:\n  cpus: {cpus}\n  memory: 512Mi\n");
        let check = |state: &State, sandboxes: u64| {
            for tenant in ["t", "default"] {
                assert_eq!(state.usage(tenant), recount(state, tenant), "{tenant}");
            }
            assert_eq!(state.usage("t").sandboxes, sandboxes);
        };
        state.apply(&with_policy(&key("a"), &policy("1")));
        state.apply(&with_policy(&key("b"), &policy("0.5")));
        state.apply(&create("other"));
        check(&state, 2);
        assert_eq!(state.usage("t").cpu_millis, 1500);

        // Placed and running: status puts leave the usage as it was.
        placed_running(&mut state, &key("c"));
        check(&state, 3);
        // A record whose spec asks for more CPU counts the new spec.
        let mut grown = state.get(&key("c")).cloned().unwrap();
        grown.spec.policy = Some(policy("2"));
        state.insert(grown);
        check(&state, 3);
        assert_eq!(state.usage("t").cpu_millis, 3500);
        // An unplaced sandbox is removed at once.
        state.apply(&Command::DeleteSandbox {
            name: key("b"),
            keep_volume: false,
        });
        check(&state, 2);

        // Loading the records (a restart or a snapshot) counts the same.
        let mut loaded = State::default();
        for record in state.sandboxes.values() {
            loaded.insert(record.clone());
        }
        assert_eq!(loaded.usage, state.usage);
    }
}

#[test]
fn a_request_trace_stays_on_the_sandbox_and_the_operation_it_began() {
    let mut state = State::default();
    let traced = |command: Command, trace: &str| Proposal {
        trace: trace.into(),
        ..Proposal::new(command)
    };
    state.apply_proposal(1, 1, &traced(register("n1"), "t-ignored"));
    state.apply_proposal(1, 2, &traced(create("a"), "t-create"));
    assert_eq!(state.sandbox("a").unwrap().trace, "t-create");
    placed_running(&mut state, "b");
    assert_eq!(state.sandbox("b").unwrap().trace, "", "no trace, none kept");
    let update = Command::UpdateSandbox {
        name: "a".into(),
        operation_id: "op-1".into(),
        spec: SandboxSpec {
            image: "busybox:2".into(),
            policy: None,
            env: Default::default(),
            secret_env: Default::default(),
        },
        expected_revision: None,
        policy: crate::model::update::UpdatePolicy::default(),
        at_ms: 50,
        keep_revisions: 0,
    };
    state.apply(&schedule("a", "n1"));
    state.apply(&Command::SetSandboxStatus {
        name: "a".into(),
        uid: "uid-a".into(),
        phase: Phase::Running,
        message: "running".into(),
        container_id: "c".into(),
        at_ms: 0,
    });
    state.apply_proposal(1, 9, &traced(update, "t-update"));
    let record = state.sandbox("a").unwrap();
    assert_eq!(record.operation.as_ref().unwrap().trace, "t-update");
    assert_eq!(record.trace, "t-create", "the create's trace is unchanged");
}

#[test]
fn lifecycle_events_follow_the_record_and_are_bounded() {
    let mut state = State::default();
    placed_running(&mut state, "a");
    let kinds: Vec<String> = state
        .sandbox("a")
        .unwrap()
        .events
        .iter()
        .map(|e| format!("{} {}", e.kind, e.message))
        .collect();
    assert_eq!(
        kinds,
        [
            "Created image busybox:1",
            "Scheduled placed on node n1",
            "Starting scheduled on node n1",
            "Started container c",
            "Running running",
        ]
    );
    let first = &state.sandbox("a").unwrap().events[0];
    assert_eq!((first.seq, first.at_ms, first.revision), (1, 42, 1));
    // A rejected request changes nothing: no event either.
    let before = state.sandbox("a").unwrap().events.len();
    let (_, changes) = state.apply(&create("a"));
    assert!(changes.is_empty());
    assert_eq!(state.sandbox("a").unwrap().events.len(), before);
    // Bounded: the oldest go first; seq keeps counting.
    for i in 0..150 {
        state.apply(&Command::SetSandboxStatus {
            name: "a".into(),
            uid: "uid-a".into(),
            phase: if i % 2 == 0 {
                Phase::Failed
            } else {
                Phase::Running
            },
            message: format!("m{i}"),
            container_id: "c".into(),
            at_ms: 1000 + i,
        });
    }
    let events = &state.sandbox("a").unwrap().events;
    assert_eq!(events.len(), crate::model::events::MAX_EVENTS);
    assert_eq!(events.last().unwrap().seq, 5 + 150);
    assert_eq!(events.last().unwrap().at_ms, 1149);
}

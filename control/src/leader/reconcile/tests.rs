//! Table tests of `decide`.

use super::*;
use berth_raft::SandboxSpec;

fn record(node: Option<&str>, desired: Desired) -> SandboxRecord {
    SandboxRecord {
        name: "s".into(),
        uid: "u1".into(),
        spec: SandboxSpec {
            image: "img".into(),
            policy: None,
            env: Default::default(),
            secret_env: Default::default(),
        },
        revision: 1,
        created_at_ms: 0,
        phase: Phase::Pending,
        message: String::new(),
        desired,
        node: node.map(String::from),
        container_id: String::new(),
        volume: "berth-s-u1".into(),
        volume_uid: String::new(),
        volume_seeded: false,
        revisions: vec![],
        stable_revision: 0,
        operation: None,
        trace: String::new(),
        events: Vec::new(),
    }
}

fn observed(state: ContainerState, volume: bool) -> Observed {
    Observed {
        name: "s".into(),
        uid: "u1".into(),
        revision: 1,
        container_id: "c1".into(),
        state: state as i32,
        exit_code: 3,
        started_at: "t".into(),
        volume: "berth-s-u1".into(),
        volume_present: volume,
        message: String::new(),
        seq: 0,
        pull_progress: String::new(),
    }
}

fn inputs<'a>(
    r: &'a SandboxRecord,
    link: NodeLink<'a>,
    ready: &'a [(String, usize)],
) -> Inputs<'a> {
    Inputs {
        record: r,
        link,
        ready_nodes: ready,
        inflight: false,
        may_act: true,
        last_error: None,
        removed: false,
    }
}

/// `i` after the node answered a Remove.
fn removed(i: Inputs<'_>) -> Inputs<'_> {
    Inputs { removed: true, ..i }
}

#[test]
fn unplaced_sandboxes_go_to_the_least_loaded_node_or_wait() {
    let r = record(None, Desired::Running);
    let ready = vec![
        ("b".to_string(), 1),
        ("a".to_string(), 1),
        ("c".to_string(), 5),
    ];
    assert_eq!(
        decide(inputs(&r, NodeLink::Disconnected { ready: true }, &ready)).action,
        Action::Schedule("a".into())
    );
    let p = decide(inputs(&r, NodeLink::Disconnected { ready: true }, &[]));
    assert_eq!(p.action, Action::None);
    assert_eq!(
        p.status.map(|s| s.message),
        Some(NO_NODE_MESSAGE.to_string())
    );
    let deleted = record(None, Desired::Deleted { keep_volume: false });
    assert_eq!(
        decide(inputs(
            &deleted,
            NodeLink::Disconnected { ready: true },
            &ready
        ))
        .action,
        Action::Forget
    );
}

#[test]
fn a_disconnected_node_means_no_action_and_not_ready() {
    for desired in [
        Desired::Running,
        Desired::Stopped,
        Desired::Deleted { keep_volume: false },
    ] {
        let r = record(Some("n1"), desired);
        let ready = vec![("n2".to_string(), 0)];
        let p = decide(inputs(&r, NodeLink::Disconnected { ready: false }, &ready));
        assert_eq!(p.action, Action::None, "{desired:?}");
        assert!(p.status.is_some_and(|s| s.message.contains("NotReady")));
        // Still Ready in the state machine: a new leader waits, reports nothing.
        let p = decide(inputs(&r, NodeLink::Disconnected { ready: true }, &ready));
        assert_eq!((p.action, p.status), (Action::None, None), "{desired:?}");
    }
}

#[test]
fn running_table() {
    let r = record(Some("n1"), Desired::Running);
    let run = observed(ContainerState::Running, true);
    let exited = observed(ContainerState::Exited, true);
    let absent_vol = observed(ContainerState::Absent, true);
    // (observed, inflight, may_act, last_error) -> (phase, action)
    type Case<'a> = (
        Option<&'a Observed>,
        bool,
        bool,
        Option<&'a str>,
        Phase,
        Action,
    );
    let cases: Vec<Case> = vec![
        (Some(&run), false, true, None, Phase::Running, Action::None),
        (
            None,
            false,
            true,
            None,
            Phase::Starting,
            Action::Send(AgentOp::Ensure),
        ),
        (
            Some(&absent_vol),
            false,
            true,
            None,
            Phase::Starting,
            Action::Send(AgentOp::Ensure),
        ),
        (
            Some(&exited),
            false,
            true,
            None,
            Phase::Starting,
            Action::Send(AgentOp::Ensure),
        ),
        (
            Some(&exited),
            false,
            false,
            None,
            Phase::Starting,
            Action::None,
        ),
        (None, true, true, None, Phase::Starting, Action::None),
        (
            None,
            false,
            true,
            Some("image x not found"),
            Phase::Failed,
            Action::Send(AgentOp::Ensure),
        ),
        (
            None,
            false,
            false,
            Some("image x not found"),
            Phase::Failed,
            Action::None,
        ),
    ];
    for (obs, inflight, may_act, err, phase, action) in cases {
        let mut i = inputs(&r, NodeLink::Connected(obs), &[]);
        i.inflight = inflight;
        i.may_act = may_act;
        i.last_error = err;
        let p = decide(i);
        assert_eq!(p.action, action, "{obs:?} {inflight} {may_act} {err:?}");
        assert_eq!(p.status.map(|s| s.phase), Some(phase));
    }
}

#[test]
fn another_uid_on_the_node_is_not_this_sandbox() {
    let r = record(Some("n1"), Desired::Running);
    let mut other = observed(ContainerState::Running, true);
    other.uid = "old".into();
    assert_eq!(
        decide(inputs(&r, NodeLink::Connected(Some(&other)), &[])).action,
        Action::Send(AgentOp::Ensure)
    );
}

#[test]
fn stop_and_delete_table() {
    let stopped = record(Some("n1"), Desired::Stopped);
    let run = observed(ContainerState::Running, true);
    let exited = observed(ContainerState::Exited, true);
    assert_eq!(
        decide(inputs(&stopped, NodeLink::Connected(Some(&run)), &[])).action,
        Action::Send(AgentOp::Stop)
    );
    let p = decide(inputs(&stopped, NodeLink::Connected(Some(&exited)), &[]));
    assert_eq!(
        (p.action, p.status.map(|s| s.phase)),
        (Action::None, Some(Phase::Stopped))
    );

    let delete = record(Some("n1"), Desired::Deleted { keep_volume: false });
    let keep = record(Some("n1"), Desired::Deleted { keep_volume: true });
    let vol_only = observed(ContainerState::Absent, true);
    let nothing = observed(ContainerState::Absent, false);
    let remove = |k| Action::Send(AgentOp::Remove { keep_volume: k });
    assert_eq!(
        decide(inputs(&delete, NodeLink::Connected(Some(&run)), &[])).action,
        remove(false)
    );
    assert_eq!(
        decide(inputs(&delete, NodeLink::Connected(Some(&vol_only)), &[])).action,
        remove(false)
    );
    // Nothing seen on the node is not proof: an Ensure may still be in
    // flight there (found by the chaos suite: a volume outlived its
    // sandbox). The node must answer a Remove first, then it is forgotten.
    for seen in [Some(&nothing), None] {
        assert_eq!(
            decide(inputs(&delete, NodeLink::Connected(seen), &[])).action,
            remove(false)
        );
        assert_eq!(
            decide(removed(inputs(&delete, NodeLink::Connected(seen), &[]))).action,
            Action::Forget
        );
    }
    assert_eq!(
        decide(removed(inputs(
            &delete,
            NodeLink::Connected(Some(&vol_only)),
            &[]
        )))
        .action,
        remove(false),
        "the volume is still there"
    );
    assert_eq!(
        decide(inputs(&keep, NodeLink::Connected(Some(&run)), &[])).action,
        remove(true)
    );
    assert_eq!(
        decide(inputs(&keep, NodeLink::Connected(Some(&vol_only)), &[])).action,
        remove(true)
    );
    assert_eq!(
        decide(removed(inputs(
            &keep,
            NodeLink::Connected(Some(&vol_only)),
            &[]
        )))
        .action,
        Action::Forget
    );
}

//! The control plane's hooks for the chaos suite. Failpoints (see
//! `berth_proto::chaos::failpoint`) sit where they act; this module adds
//! `after-commit-PHASE`, the worst moment to die: an update's move into
//! PHASE is committed and none of its effects are carried out yet.

/// This node's test-only faults for the chaos suite (switched on by
/// `BERTH_CHAOS_BREAK`, see `berth_proto::chaos`):
///
/// - `forget-early`: a deleted sandbox is forgotten as soon as its node
///   reports nothing of it, without waiting for the node to answer a Remove
///   (the bug the chaos suite found: volumes outlive their sandboxes);
/// - `stale-stamp`: commands to agents carry the term before this leader's
///   (a deposed leader's commands; agents must refuse them);
/// - `apply-twice`: the state machine forgets request ids, so a client's
///   retry of a write whose answer was lost is applied again (in
///   `berth_raft`'s `State::apply_proposal`).
pub use berth_proto::chaos::broken;

/// Called after an operation's phase change to `phase` was committed.
pub fn after_phase_committed(phase: &str) {
    berth_proto::chaos::failpoint(&format!("after-commit-{phase}"));
}

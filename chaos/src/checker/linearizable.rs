//! A linearizability checker (the Wing-Gong search with memoization, as in
//! Porcupine) for one sandbox name, modelled as a register holding what the
//! name refers to: nothing, or a sandbox (uid, highest revision number,
//! being deleted). Every client operation is a read or a write of it:
//!
//! - create: absent → present(uid, revision 1); AlreadyExists: present;
//! - delete: present → being deleted (or gone at once, if never placed);
//!   NotFound: absent; a sandbox being deleted may vanish at any moment;
//! - update: present(rev r-1) → present(rev r), where r is the revision the
//!   call returned (a write applied twice or lost shows up here);
//! - rollback, stop, start, exec ok: present and not being deleted;
//! - get: exactly what it returned.
//!
//! An operation whose outcome is unknown may take effect at any moment
//! after it was invoked, or never.

use std::collections::HashSet;

use crate::history::{Op, OpKind, Outcome, Value};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum State {
    Absent,
    Present {
        /// None: created by a call whose answer was lost.
        uid: Option<String>,
        revision: u64,
        deleting: bool,
    },
}

/// The check's verdict for one name.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains what clients saw.
    Violation,
    /// The search hit its budget; nothing is concluded.
    Inconclusive,
}

const BUDGET: usize = 2_000_000;

/// Which operations are linearized, one bit each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Done(Vec<u64>);

impl Done {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
}

/// The possible states after applying `op` (with its outcome) to `s`.
fn step(s: &State, op: &Op) -> Vec<State> {
    use State::{Absent, Present};
    let present = |s: &State| matches!(s, Present { .. });
    let live = |s: &State| {
        matches!(
            s,
            Present {
                deleting: false,
                ..
            }
        )
    };
    let same = |ok: bool| if ok { vec![s.clone()] } else { vec![] };
    let code = op.code().unwrap_or("");
    match (&op.kind, &op.outcome) {
        (OpKind::Create, Outcome::Ok(Value::Uid(uid))) => match s {
            Absent => vec![Present {
                uid: Some(uid.clone()),
                revision: 1,
                deleting: false,
            }],
            _ => vec![],
        },
        (OpKind::Create, Outcome::Unknown(_)) => match s {
            Absent => vec![Present {
                uid: None,
                revision: 1,
                deleting: false,
            }],
            _ => vec![s.clone()],
        },
        (OpKind::Create, Outcome::Failed { .. }) if code == "AlreadyExists" => same(present(s)),
        (OpKind::Delete, Outcome::Ok(_) | Outcome::Unknown(_)) => match s {
            Present { uid, revision, .. } => vec![
                Present {
                    uid: uid.clone(),
                    revision: *revision,
                    deleting: true,
                },
                Absent,
            ],
            Absent => same(matches!(op.outcome, Outcome::Unknown(_))),
        },
        (OpKind::Update { .. }, Outcome::Ok(Value::Revision(r))) => match s {
            Present {
                uid,
                revision,
                deleting: false,
            } if revision + 1 == *r => vec![Present {
                uid: uid.clone(),
                revision: *r,
                deleting: false,
            }],
            _ => vec![],
        },
        (OpKind::Update { .. }, Outcome::Unknown(_)) => match s {
            Present {
                uid,
                revision,
                deleting: false,
            } => vec![
                s.clone(),
                Present {
                    uid: uid.clone(),
                    revision: revision + 1,
                    deleting: false,
                },
            ],
            _ => vec![s.clone()],
        },
        (OpKind::Get, Outcome::Ok(Value::Sandbox { uid, deleting })) => match s {
            Present {
                uid: known,
                revision,
                deleting: d,
            } if d == deleting && known.as_ref().is_none_or(|k| k == uid) => vec![Present {
                uid: Some(uid.clone()),
                revision: *revision,
                deleting: *d,
            }],
            _ => vec![],
        },
        (
            OpKind::Rollback | OpKind::Stop | OpKind::Start | OpKind::Marker { .. },
            Outcome::Ok(_),
        ) => same(live(s)),
        // NotFound from the control plane: nothing under the name. (An
        // exec's NotFound may come from the agent, so it says nothing.)
        (kind, Outcome::Failed { .. })
            if code == "NotFound" && !matches!(kind, OpKind::Marker { .. }) =>
        {
            same(*s == Absent)
        }
        (
            OpKind::Update { .. } | OpKind::Rollback | OpKind::Stop | OpKind::Start,
            Outcome::Failed { .. },
        ) if code == "FailedPrecondition" => same(present(s)),
        // Anything else (refused input, unknown reads) says nothing.
        _ => vec![s.clone()],
    }
}

/// A sandbox being deleted may vanish at any moment.
fn with_vanishing(states: Vec<State>) -> Vec<State> {
    let mut out = states.clone();
    if states
        .iter()
        .any(|s| matches!(s, State::Present { deleting: true, .. }))
    {
        out.push(State::Absent);
    }
    out
}

/// Whether the operations on one name are linearizable. `ops` must all be
/// about that name; ones that cannot change the state and whose outcome is
/// unknown are dropped first.
pub fn check(ops: &[Op]) -> Verdict {
    let mut ops: Vec<&Op> = ops
        .iter()
        .filter(|op| {
            let unknown = matches!(op.outcome, Outcome::Unknown(_));
            let writes = matches!(
                op.kind,
                OpKind::Create | OpKind::Delete | OpKind::Update { .. }
            );
            !unknown || writes
        })
        .filter(|op| !matches!(op.outcome, Outcome::Failed { ref code, .. } if code == "NotSent"))
        .collect();
    ops.sort_by_key(|op| op.invoke_ms);
    let ret = |op: &Op| op.complete_ms.unwrap_or(u64::MAX);
    let n = ops.len();
    // A search node: which operations are linearized (a bitset), the
    // first one that is not, and the register's state. Scans start at
    // `first` and stop at the first invocation past the horizon, so a
    // step costs the width of the window of concurrent operations, not
    // the length of the history.
    let mut seen: HashSet<(Done, State)> = HashSet::new();
    let mut stack: Vec<(Done, usize, State)> = vec![(Done::new(n), 0, State::Absent)];
    let mut explored = 0usize;
    while let Some((done, first, state)) = stack.pop() {
        explored += 1;
        if explored > BUDGET {
            return Verdict::Inconclusive;
        }
        // Finished when every completed operation is linearized (the
        // unknown ones left over never took effect). The earliest return
        // among those left is the horizon: nothing invoked after it may be
        // linearized before it.
        let mut horizon: Option<u64> = None;
        for (i, op) in ops.iter().enumerate().skip(first) {
            if horizon.is_some_and(|h| op.invoke_ms > h) {
                break; // returns are never before invocations
            }
            if !done.get(i) && op.complete_ms.is_some() {
                horizon = Some(horizon.map_or(ret(op), |h| h.min(ret(op))));
            }
        }
        let Some(horizon) = horizon else {
            return Verdict::Linearizable;
        };
        for i in (first..n).filter(|&i| !done.get(i)) {
            if ops[i].invoke_ms > horizon {
                break; // sorted by invocation: nothing later may go first
            }
            for next in with_vanishing(step(&state, ops[i])) {
                let mut done = done.clone();
                done.set(i);
                if seen.insert((done.clone(), next.clone())) {
                    let first = (first..n).find(|&j| !done.get(j)).unwrap_or(n);
                    stack.push((done, first, next));
                }
            }
        }
    }
    Verdict::Violation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, invoke: u64, complete: Option<u64>, outcome: Outcome) -> Op {
        Op {
            id: invoke,
            client: 0,
            sandbox: "s".into(),
            kind,
            invoke_ms: invoke,
            complete_ms: complete,
            outcome,
        }
    }

    fn ok(v: Value) -> Outcome {
        Outcome::Ok(v)
    }

    fn failed(code: &str) -> Outcome {
        Outcome::Failed {
            code: code.into(),
            message: String::new(),
        }
    }

    fn get(uid: &str, deleting: bool) -> Outcome {
        ok(Value::Sandbox {
            uid: uid.into(),
            deleting,
        })
    }

    #[test]
    fn sequential_histories() {
        let good = vec![
            op(OpKind::Create, 0, Some(10), ok(Value::Uid("a".into()))),
            op(OpKind::Get, 11, Some(12), get("a", false)),
            op(
                OpKind::Update { image: "v2".into() },
                13,
                Some(20),
                ok(Value::Revision(2)),
            ),
            op(
                OpKind::Update { image: "v1".into() },
                21,
                Some(30),
                ok(Value::Revision(3)),
            ),
            op(OpKind::Delete, 31, Some(32), ok(Value::None)),
            op(OpKind::Get, 33, Some(34), get("a", true)),
            op(OpKind::Get, 35, Some(36), failed("NotFound")),
            op(OpKind::Create, 37, Some(40), ok(Value::Uid("b".into()))),
        ];
        assert_eq!(check(&good), Verdict::Linearizable);
        // An update applied twice skips a revision number.
        let mut twice = good.clone();
        twice[3].outcome = ok(Value::Revision(4));
        assert_eq!(check(&twice), Verdict::Violation);
        // An acknowledged create that a later read does not see.
        let lost = vec![
            op(OpKind::Create, 0, Some(10), ok(Value::Uid("a".into()))),
            op(OpKind::Get, 11, Some(12), failed("NotFound")),
        ];
        assert_eq!(check(&lost), Verdict::Violation);
        // A deleted sandbox that comes back (not being deleted any more).
        let undeleted = vec![
            op(OpKind::Create, 0, Some(10), ok(Value::Uid("a".into()))),
            op(OpKind::Delete, 11, Some(12), ok(Value::None)),
            op(OpKind::Get, 13, Some(14), get("a", false)),
        ];
        assert_eq!(check(&undeleted), Verdict::Violation);
    }

    #[test]
    fn concurrent_and_unknown_operations() {
        // A create whose answer was lost may have happened...
        let maybe = vec![
            op(OpKind::Create, 0, None, Outcome::Unknown("timeout".into())),
            op(OpKind::Get, 50, Some(51), get("x", false)),
        ];
        assert_eq!(check(&maybe), Verdict::Linearizable);
        // ... or not.
        let maybe_not = vec![
            op(OpKind::Create, 0, None, Outcome::Unknown("timeout".into())),
            op(OpKind::Get, 50, Some(51), failed("NotFound")),
        ];
        assert_eq!(check(&maybe_not), Verdict::Linearizable);
        // Overlapping create and read: either order.
        let overlap = vec![
            op(OpKind::Create, 0, Some(10), ok(Value::Uid("a".into()))),
            op(OpKind::Get, 5, Some(6), failed("NotFound")),
        ];
        assert_eq!(check(&overlap), Verdict::Linearizable);
        // Two creates that both succeeded on one name: impossible.
        let double = vec![
            op(OpKind::Create, 0, Some(10), ok(Value::Uid("a".into()))),
            op(OpKind::Create, 1, Some(11), ok(Value::Uid("b".into()))),
        ];
        assert_eq!(check(&double), Verdict::Violation);
    }

    /// A long history (as a long run records: thousands of operations per
    /// name, some concurrent, some unknown) is decided, not left
    /// inconclusive by the search budget; and a lost write at its end is
    /// still found.
    #[test]
    fn long_histories_are_decided() {
        let mut ops = Vec::new();
        let mut t = 0;
        for round in 0..1500u64 {
            let uid = format!("u{round}");
            ops.push(op(
                OpKind::Create,
                t,
                Some(t + 10),
                ok(Value::Uid(uid.clone())),
            ));
            ops.push(op(OpKind::Get, t + 5, Some(t + 15), get(&uid, false)));
            ops.push(op(
                OpKind::Get,
                t + 20,
                None,
                Outcome::Unknown("timeout".into()),
            ));
            ops.push(op(OpKind::Delete, t + 30, Some(t + 40), ok(Value::None)));
            ops.push(op(OpKind::Get, t + 50, Some(t + 51), failed("NotFound")));
            t += 100;
        }
        assert_eq!(check(&ops), Verdict::Linearizable);
        // The last delete was acknowledged, yet the sandbox is still there.
        ops.push(op(OpKind::Get, t + 1, Some(t + 2), get("u1499", false)));
        assert_eq!(check(&ops), Verdict::Violation);
    }
}

//! An agent's inventory keyed by sandbox uid, the way both ends of a
//! session read it: the agent to compute a heartbeat's delta, the leader
//! to apply a full one. Keeping the one rule here keeps the two copies
//! equal (a delta is exact only if both sides collapse a listing alike).

use std::collections::{BTreeMap, BTreeSet};

use crate::agent_v1::{ContainerState, Observed};

/// One observation per uid. Observations without a uid (nothing berth
/// made) are left out; of a container and a left-over volume of one uid,
/// the container is the sandbox (it names the volume itself). Sorts
/// rather than inserting one by one: a listing of 100,000 arrives every
/// second.
pub fn by_uid(mut inventory: Vec<Observed>) -> BTreeMap<String, Observed> {
    inventory.retain(|o| !o.uid.is_empty());
    // Stable: observations of one uid stay in listing order.
    inventory.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut out: Vec<(String, Observed)> = Vec::with_capacity(inventory.len());
    for o in inventory {
        match out.last_mut() {
            // A later observation of the uid replaces an earlier one,
            // unless that one is a container.
            Some((uid, kept)) if *uid == o.uid => {
                if kept.state() == ContainerState::Absent {
                    *kept = o;
                }
            }
            _ => out.push((o.uid.clone(), o)),
        }
    }
    out.into_iter().collect()
}

/// The same observation, whenever it was made (every field but `seq`;
/// compared in place: an inventory of thousands is compared every second).
pub fn same(a: &Observed, b: &Observed) -> bool {
    let Observed {
        name,
        uid,
        revision,
        container_id,
        state,
        exit_code,
        started_at,
        volume,
        volume_present,
        message,
        seq: _,
        pull_progress,
    } = a;
    *name == b.name
        && *uid == b.uid
        && *revision == b.revision
        && *container_id == b.container_id
        && *state == b.state
        && *exit_code == b.exit_code
        && *started_at == b.started_at
        && *volume == b.volume
        && *volume_present == b.volume_present
        && *message == b.message
        && *pull_progress == b.pull_progress
}

/// What differs from `reported` in `current`: the observations that are
/// new or changed (or whose uid a command `touched`), and the uids no
/// longer observed (touched ones included: the leader may have one from a
/// command result that no listing shows). One walk over the three sorted
/// collections.
pub fn delta(
    reported: &BTreeMap<String, Observed>,
    current: &BTreeMap<String, Observed>,
    touched: &BTreeSet<String>,
) -> (Vec<Observed>, Vec<String>) {
    let mut changed = Vec::new();
    let mut gone = Vec::new();
    let mut before = reported.iter().peekable();
    let mut touches = touched.iter().peekable();
    for (uid, o) in current {
        while let Some((old, _)) = before.next_if(|(old, _)| *old < uid) {
            gone.push(old.clone());
        }
        while let Some(t) = touches.next_if(|t| *t < uid) {
            if !reported.contains_key(t) {
                gone.push(t.clone());
            }
        }
        let was = before.next_if(|(old, _)| *old == uid).map(|(_, r)| r);
        let touched = touches.next_if(|t| *t == uid).is_some();
        if touched || was.is_none_or(|r| !same(r, o)) {
            changed.push(o.clone());
        }
    }
    gone.extend(before.map(|(old, _)| old.clone()));
    gone.extend(touches.filter(|t| !reported.contains_key(*t)).cloned());
    gone.sort_unstable();
    gone.dedup();
    (changed, gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(uid: &str, state: ContainerState, seq: u64) -> Observed {
        Observed {
            name: format!("name-{uid}"),
            uid: uid.into(),
            state: state as i32,
            seq,
            ..Observed::default()
        }
    }

    #[test]
    fn the_container_wins_over_a_left_over_volume_of_its_uid() {
        for order in [
            [ContainerState::Absent, ContainerState::Running],
            [ContainerState::Running, ContainerState::Absent],
        ] {
            let listing = vec![
                obs("u", order[0], 1),
                obs("u", order[1], 1),
                obs("", order[0], 1),
            ];
            let map = by_uid(listing);
            assert_eq!(map.len(), 1, "{order:?}");
            assert_eq!(map["u"].state(), ContainerState::Running, "{order:?}");
        }
    }

    #[test]
    fn observations_are_the_same_whatever_their_seq_and_differ_in_any_other_field() {
        let a = obs("a", ContainerState::Running, 1);
        assert!(same(&a, &obs("a", ContainerState::Running, 9)));
        assert!(!same(&a, &obs("a", ContainerState::Exited, 1)));
        let changed = [
            Observed {
                started_at: "t2".into(),
                ..a.clone()
            },
            Observed {
                exit_code: 1,
                ..a.clone()
            },
            Observed {
                volume_present: true,
                ..a.clone()
            },
            Observed {
                pull_progress: "1/2".into(),
                ..a.clone()
            },
            Observed {
                revision: 2,
                ..a.clone()
            },
        ];
        for b in changed {
            assert!(!same(&a, &b), "{b:?}");
        }
    }

    fn map(list: &[Observed]) -> BTreeMap<String, Observed> {
        by_uid(list.to_vec())
    }

    fn uids(list: &[Observed]) -> Vec<&str> {
        list.iter().map(|o| o.uid.as_str()).collect()
    }

    #[test]
    fn a_delta_carries_only_what_changed_or_was_touched() {
        use ContainerState::{Exited, Running};
        let reported = map(&[
            obs("a", Running, 1),
            obs("b", Running, 1),
            obs("c", Running, 1),
            obs("d", Running, 1),
        ]);
        // b changed, c vanished, e is new, a is the same (a newer seq only).
        let current = map(&[
            obs("a", Running, 2),
            obs("b", Exited, 2),
            obs("d", Running, 2),
            obs("e", Running, 2),
        ]);
        let (changed, gone) = delta(&reported, &current, &BTreeSet::new());
        assert_eq!(uids(&changed), ["b", "e"]);
        assert_eq!(gone, ["c"]);

        // A touched sandbox is said again even if unchanged, and a touched
        // one no listing shows is gone.
        let touched: BTreeSet<String> = ["d", "x"].map(String::from).into();
        let (changed, gone) = delta(&reported, &current, &touched);
        assert_eq!(uids(&changed), ["b", "d", "e"]);
        assert_eq!(gone, ["c", "x"]);

        // Nothing changed, nothing touched: an empty delta.
        let (changed, gone) = delta(&current, &current, &BTreeSet::new());
        assert!(changed.is_empty() && gone.is_empty());
    }

    #[test]
    fn of_left_over_volumes_alone_the_last_listed_wins() {
        let mut first = obs("u", ContainerState::Absent, 1);
        first.volume = "v1".into();
        let mut second = obs("u", ContainerState::Absent, 1);
        second.volume = "v2".into();
        assert_eq!(by_uid(vec![first, second.clone()])["u"], second);
    }

    /// The one-walk delta says what a lookup per uid says, over random
    /// maps (some uids reported, current, touched, in any combination).
    #[test]
    fn the_walk_agrees_with_lookups() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let states = [ContainerState::Running, ContainerState::Exited];
        for _ in 0..2_000 {
            let mut pick = |chance: u64| -> Vec<Observed> {
                let mut out = Vec::new();
                for i in 0..12 {
                    if random(100) < chance {
                        let state = states[random(2) as usize];
                        out.push(obs(&format!("u{i:02}"), state, 1));
                    }
                }
                out
            };
            let reported = map(&pick(60));
            let current = map(&pick(60));
            let touched: BTreeSet<String> = pick(20).into_iter().map(|o| o.uid).collect();
            let expected_changed: Vec<Observed> = current
                .iter()
                .filter(|(uid, o)| {
                    touched.contains(*uid) || reported.get(*uid).is_none_or(|r| !same(r, o))
                })
                .map(|(_, o)| o.clone())
                .collect();
            let expected_gone: Vec<String> = reported
                .keys()
                .chain(&touched)
                .filter(|uid| !current.contains_key(*uid))
                .cloned()
                .collect::<BTreeSet<String>>()
                .into_iter()
                .collect();
            let (changed, gone) = delta(&reported, &current, &touched);
            assert_eq!(changed, expected_changed);
            assert_eq!(gone, expected_gone);
        }
    }
}

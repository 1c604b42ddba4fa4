//! The leader's live view of connected agents: which agents have a session
//! with this leader, their node actor, and the inventory each last
//! reported. Lives only in memory and only on the leader; everything a new
//! leader needs is in the state machine (invariant 2) and is rebuilt here
//! from the agents' own reports when they reconnect.
//!
//! Inventories are keyed by sandbox uid, never by name: a volume kept from
//! a deleted sandbox and the container of a new sandbox of the same name
//! are two different things, and one never hides the other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::time::Instant;

use berth_proto::agent_v1::{ContainerState, Observed};
use ractor::ActorRef;

use super::node_actor::NodeMsg;

struct LiveNode {
    session: u64,
    actor: ActorRef<NodeMsg>,
    /// By sandbox uid; None until the first inventory arrives.
    inventory: Option<BTreeMap<String, Observed>>,
    last_seen: Instant,
}

/// What the leader knows of one sandbox on one node, owned.
#[derive(Debug, Clone)]
pub enum Link {
    Disconnected,
    Connected(Option<Observed>),
}

/// The same observation, whenever it was made (every field but `seq`;
/// compared in place: an inventory of thousands arrives every second).
fn same(a: &Observed, b: &Observed) -> bool {
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

#[derive(Clone, Default)]
pub struct Directory {
    nodes: Arc<RwLock<BTreeMap<String, LiveNode>>>,
    /// Bumped whenever an agent becomes reachable (its first inventory) or
    /// goes away: what sandboxes can be placed on, or are cut off from.
    topology: Arc<AtomicU64>,
}

impl Directory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, LiveNode>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, LiveNode>> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes whenever the set of reachable agents changes.
    pub fn topology(&self) -> u64 {
        self.topology.load(Ordering::Relaxed)
    }

    fn topology_changed(&self) {
        self.topology.fetch_add(1, Ordering::Relaxed);
    }

    /// A new session for `node` replaces any older one.
    pub fn connect(
        &self,
        node: &str,
        session: u64,
        actor: ActorRef<NodeMsg>,
    ) -> Option<ActorRef<NodeMsg>> {
        let old = self.write().insert(
            node.to_string(),
            LiveNode {
                session,
                actor,
                inventory: None,
                last_seen: Instant::now(),
            },
        );
        if old.as_ref().is_some_and(|o| o.inventory.is_some()) {
            self.topology_changed(); // unreachable until it reports again
        }
        old.filter(|o| o.session != session).map(|o| o.actor)
    }

    /// Ends `session` of `node` (a newer session is left alone).
    pub fn disconnect(&self, node: &str, session: u64) {
        let mut nodes = self.write();
        if nodes.get(node).is_some_and(|n| n.session == session) {
            nodes.remove(node);
            self.topology_changed();
        }
    }

    /// Replaces the inventory with a listing that began at `seq`, keeping
    /// any observation newer than the listing (a command that finished
    /// while it ran); returns the names of the sandboxes whose observation
    /// changed (so their actors can be nudged). Observations without a uid
    /// (nothing berth made) are ignored.
    pub fn set_inventory(
        &self,
        node: &str,
        session: u64,
        inventory: Vec<Observed>,
        seq: u64,
    ) -> Vec<String> {
        let mut nodes = self.write();
        let Some(live) = nodes.get_mut(node).filter(|n| n.session == session) else {
            return vec![];
        };
        let mut new: BTreeMap<String, Observed> = BTreeMap::new();
        for o in inventory.into_iter().filter(|o| !o.uid.is_empty()) {
            // A container and a left-over volume of one uid: the container
            // is the sandbox (it names the volume itself).
            let keep_old = new
                .get(&o.uid)
                .is_some_and(|k| k.state() != ContainerState::Absent);
            if !keep_old {
                new.insert(o.uid.clone(), o);
            }
        }
        if let Some(old) = &live.inventory {
            for (uid, o) in old.iter().filter(|(_, o)| o.seq > seq) {
                new.insert(uid.clone(), o.clone());
            }
        }
        let changed = match &live.inventory {
            None => new.values().map(|o| o.name.clone()).collect(),
            Some(old) => {
                let mut changed: Vec<String> = new
                    .iter()
                    .filter(|(k, v)| old.get(*k).is_none_or(|o| !same(o, v)))
                    .map(|(_, v)| v.name.clone())
                    .collect();
                changed.extend(
                    old.iter()
                        .filter(|(k, _)| !new.contains_key(*k))
                        .map(|(_, o)| o.name.clone()),
                );
                changed
            }
        };
        if live.inventory.is_none() {
            self.topology_changed();
        }
        live.inventory = Some(new);
        live.last_seen = Instant::now();
        changed
    }

    /// Records that `node`'s session `session` reported its inventory
    /// unchanged; false (nothing recorded) if it has no inventory yet, or
    /// the session is not the live one.
    pub fn heard(&self, node: &str, session: u64) -> bool {
        let mut nodes = self.write();
        match nodes
            .get_mut(node)
            .filter(|n| n.session == session && n.inventory.is_some())
        {
            Some(live) => {
                live.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Records the observation a command result carried for sandbox `uid`,
    /// unless a newer one is already known. An observation of another uid
    /// (what a command found under the sandbox's name) is not about it.
    pub fn update_observed(&self, node: &str, uid: &str, observed: Observed) {
        if uid.is_empty() {
            return;
        }
        if let Some(inv) = self
            .write()
            .get_mut(node)
            .and_then(|n| n.inventory.as_mut())
        {
            if inv.get(uid).is_none_or(|old| old.seq <= observed.seq) {
                if observed.uid == uid {
                    inv.insert(uid.to_string(), observed);
                } else if let Some(old) = inv.get_mut(uid) {
                    // Nothing of this uid left under its name.
                    old.state = ContainerState::Absent as i32;
                    old.container_id.clear();
                    old.seq = observed.seq;
                }
            }
        }
    }

    /// How the sandbox with `uid` looks on `node`. A node without an
    /// inventory yet counts as disconnected: nothing is decided from
    /// unknown state.
    pub fn link(&self, node: &str, uid: &str) -> Link {
        match self.read().get(node).and_then(|n| n.inventory.as_ref()) {
            None => Link::Disconnected,
            Some(inv) => Link::Connected(inv.get(uid).cloned()),
        }
    }

    pub fn actor(&self, node: &str) -> Option<ActorRef<NodeMsg>> {
        self.read().get(node).map(|n| n.actor.clone())
    }

    /// Nodes with a live session and an inventory.
    pub fn connected(&self) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, n)| n.inventory.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Seconds since `node` last reported, if connected.
    pub fn silent_for(&self, node: &str) -> Option<std::time::Duration> {
        self.read().get(node).map(|n| n.last_seen.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, state: ContainerState, seq: u64) -> Observed {
        Observed {
            name: name.into(),
            uid: format!("uid-{name}"),
            state: state as i32,
            seq,
            ..Observed::default()
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

    struct Noop;

    impl ractor::Actor for Noop {
        type Msg = NodeMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(
            &self,
            _: ActorRef<NodeMsg>,
            _: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    /// A directory with node "n" connected (session 1) to a do-nothing actor.
    async fn connected() -> (ActorRef<NodeMsg>, Directory) {
        let (actor, _handle) = ractor::Actor::spawn(None, Noop, ()).await.unwrap();
        let dir = Directory::default();
        dir.connect("n", 1, actor.clone());
        (actor, dir)
    }

    #[tokio::test]
    async fn an_older_listing_never_overwrites_a_newer_command_result() {
        let (actor, dir) = connected().await;
        dir.set_inventory("n", 1, vec![obs("a", ContainerState::Running, 5)], 5);
        // A command result observed at seq 9: the new container runs.
        dir.update_observed("n", "uid-b", obs("b", ContainerState::Running, 9));
        dir.update_observed("n", "uid-a", obs("a", ContainerState::Exited, 9));
        // A heartbeat whose listing began at seq 7 (before the command ended).
        let changed = dir.set_inventory("n", 1, vec![obs("a", ContainerState::Running, 7)], 7);
        assert!(changed.is_empty(), "{changed:?}");
        let Link::Connected(Some(a)) = dir.link("n", "uid-a") else {
            panic!()
        };
        assert_eq!((a.state(), a.seq), (ContainerState::Exited, 9));
        assert!(matches!(dir.link("n", "uid-b"), Link::Connected(Some(_))));
        // An older command result does not replace a newer listing either.
        dir.set_inventory("n", 1, vec![obs("a", ContainerState::Running, 12)], 12);
        dir.update_observed("n", "uid-a", obs("a", ContainerState::Exited, 11));
        let Link::Connected(Some(a)) = dir.link("n", "uid-a") else {
            panic!()
        };
        assert_eq!(a.seq, 12);
        actor.stop(None);
    }

    /// An "unchanged" heartbeat keeps the inventory and the node live, but
    /// only for the live session and only once an inventory exists.
    #[tokio::test]
    async fn an_unchanged_heartbeat_keeps_the_inventory_of_the_live_session_only() {
        let (actor, dir) = connected().await;
        assert!(!dir.heard("n", 1), "no inventory yet: nothing to keep");
        dir.set_inventory("n", 1, vec![obs("a", ContainerState::Running, 5)], 5);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before = dir.silent_for("n").unwrap();
        assert!(dir.heard("n", 1));
        assert!(dir.silent_for("n").unwrap() < before);
        assert!(matches!(dir.link("n", "uid-a"), Link::Connected(Some(_))));
        assert!(!dir.heard("n", 2), "a stale session");
        assert!(!dir.heard("other", 1));
        actor.stop(None);
    }

    /// A volume kept from a deleted sandbox "a" and the running container
    /// of a new sandbox "a": two uids, two entries, in either order.
    #[tokio::test]
    async fn a_kept_volume_never_hides_a_new_sandbox_of_the_same_name() {
        let (actor, dir) = connected().await;
        let new = Observed {
            uid: "uid-new".into(),
            ..obs("a", ContainerState::Running, 3)
        };
        let kept = Observed {
            uid: "uid-old".into(),
            volume_present: true,
            ..obs("a", ContainerState::Absent, 3)
        };
        for listing in [
            vec![new.clone(), kept.clone()],
            vec![kept.clone(), new.clone()],
        ] {
            dir.set_inventory("n", 1, listing, 3);
            let Link::Connected(Some(a)) = dir.link("n", "uid-new") else {
                panic!()
            };
            assert_eq!(a.state(), ContainerState::Running);
            let Link::Connected(Some(old)) = dir.link("n", "uid-old") else {
                panic!()
            };
            assert_eq!(old.state(), ContainerState::Absent);
        }
        // A command for the old uid that finds the new container under the
        // name does not make the new one look like the old one's.
        dir.update_observed(
            "n",
            "uid-old",
            Observed {
                seq: 4,
                ..new.clone()
            },
        );
        let Link::Connected(Some(a)) = dir.link("n", "uid-new") else {
            panic!()
        };
        assert_eq!(a.state(), ContainerState::Running);
        actor.stop(None);
    }

    /// An agent's reports land under its own node only: a report about a
    /// sandbox placed on another node is never what that sandbox's actor
    /// sees (it reads its own node's inventory), so an agent can report
    /// only on its own node's sandboxes.
    #[tokio::test]
    async fn an_agent_cannot_report_on_another_nodes_sandbox() {
        let (actor, dir) = connected().await;
        dir.connect("home", 2, actor.clone());
        dir.set_inventory("home", 2, vec![obs("a", ContainerState::Running, 1)], 1);
        // "n" claims the sandbox of "home" has exited.
        dir.set_inventory("n", 1, vec![obs("a", ContainerState::Exited, 5)], 5);
        dir.update_observed("n", "uid-a", obs("a", ContainerState::Exited, 6));
        let Link::Connected(Some(a)) = dir.link("home", "uid-a") else {
            panic!()
        };
        assert_eq!((a.state(), a.seq), (ContainerState::Running, 1));
        actor.stop(None);
    }
}

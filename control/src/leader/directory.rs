//! The leader's live view of connected agents: which agents have a session
//! with this leader, their node actor, and the inventory each last
//! reported. Lives only in memory and only on the leader; everything a new
//! leader needs is in the state machine (invariant 2) and is rebuilt here
//! from the agents' own reports when they reconnect.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use berth_proto::agent_v1::Observed;
use ractor::ActorRef;

use super::node_actor::NodeMsg;

struct LiveNode {
    session: u64,
    actor: ActorRef<NodeMsg>,
    /// None until the first inventory arrives.
    inventory: Option<HashMap<String, Observed>>,
    last_seen: Instant,
}

/// What the leader knows of one sandbox on one node, owned.
#[derive(Debug, Clone)]
pub enum Link {
    Disconnected,
    Connected(Option<Observed>),
}

/// The same observation, whenever it was made.
fn same(a: &Observed, b: &Observed) -> bool {
    Observed {
        seq: 0,
        ..a.clone()
    } == Observed {
        seq: 0,
        ..b.clone()
    }
}

#[derive(Clone, Default)]
pub struct Directory(Arc<RwLock<HashMap<String, LiveNode>>>);

impl Directory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, LiveNode>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, LiveNode>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
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
        old.filter(|o| o.session != session).map(|o| o.actor)
    }

    /// Ends `session` of `node` (a newer session is left alone).
    pub fn disconnect(&self, node: &str, session: u64) {
        let mut nodes = self.write();
        if nodes.get(node).is_some_and(|n| n.session == session) {
            nodes.remove(node);
        }
    }

    /// Replaces the inventory with a listing that began at `seq`, keeping
    /// any observation newer than the listing (a command that finished
    /// while it ran); returns the sandboxes whose observation changed (so
    /// their actors can be nudged).
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
        let mut new: HashMap<String, Observed> =
            inventory.into_iter().map(|o| (o.name.clone(), o)).collect();
        if let Some(old) = &live.inventory {
            for (name, o) in old.iter().filter(|(_, o)| o.seq > seq) {
                new.insert(name.clone(), o.clone());
            }
        }
        let changed = match &live.inventory {
            None => new.keys().cloned().collect(),
            Some(old) => {
                let mut changed: Vec<String> = new
                    .iter()
                    .filter(|(k, v)| old.get(*k).is_none_or(|o| !same(o, v)))
                    .map(|(k, _)| k.clone())
                    .collect();
                changed.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
                changed
            }
        };
        live.inventory = Some(new);
        live.last_seen = Instant::now();
        changed
    }

    /// Records the observation a command result carried, unless a newer
    /// one is already known.
    pub fn update_observed(&self, node: &str, observed: Observed) {
        if let Some(inv) = self
            .write()
            .get_mut(node)
            .and_then(|n| n.inventory.as_mut())
        {
            if inv
                .get(&observed.name)
                .is_none_or(|old| old.seq <= observed.seq)
            {
                inv.insert(observed.name.clone(), observed);
            }
        }
    }

    /// How `sandbox` looks on `node`. A node without an inventory yet
    /// counts as disconnected: nothing is decided from unknown state.
    pub fn link(&self, node: &str, sandbox: &str) -> Link {
        match self.read().get(node).and_then(|n| n.inventory.as_ref()) {
            None => Link::Disconnected,
            Some(inv) => Link::Connected(inv.get(sandbox).cloned()),
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
    use berth_proto::agent_v1::ContainerState;

    fn obs(name: &str, state: ContainerState, seq: u64) -> Observed {
        Observed {
            name: name.into(),
            state: state as i32,
            seq,
            ..Observed::default()
        }
    }

    #[tokio::test]
    async fn an_older_listing_never_overwrites_a_newer_command_result() {
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
        let (actor, _handle) = ractor::Actor::spawn(None, Noop, ()).await.unwrap();
        let dir = Directory::default();
        dir.connect("n", 1, actor.clone());
        dir.set_inventory("n", 1, vec![obs("a", ContainerState::Running, 5)], 5);
        // A command result observed at seq 9: the new container runs.
        dir.update_observed("n", obs("b", ContainerState::Running, 9));
        dir.update_observed("n", obs("a", ContainerState::Exited, 9));
        // A heartbeat whose listing began at seq 7 (before the command ended).
        let changed = dir.set_inventory("n", 1, vec![obs("a", ContainerState::Running, 7)], 7);
        assert!(changed.is_empty(), "{changed:?}");
        let Link::Connected(Some(a)) = dir.link("n", "a") else {
            panic!()
        };
        assert_eq!((a.state(), a.seq), (ContainerState::Exited, 9));
        assert!(matches!(dir.link("n", "b"), Link::Connected(Some(_))));
        // An older command result does not replace a newer listing either.
        dir.set_inventory("n", 1, vec![obs("a", ContainerState::Running, 12)], 12);
        dir.update_observed("n", obs("a", ContainerState::Exited, 11));
        let Link::Connected(Some(a)) = dir.link("n", "a") else {
            panic!()
        };
        assert_eq!(a.seq, 12);
        actor.stop(None);
    }
}

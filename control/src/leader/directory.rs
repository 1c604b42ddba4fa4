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

    /// Replaces the inventory; returns the sandboxes whose observation
    /// changed (so their actors can be nudged).
    pub fn set_inventory(&self, node: &str, session: u64, inventory: Vec<Observed>) -> Vec<String> {
        let mut nodes = self.write();
        let Some(live) = nodes.get_mut(node).filter(|n| n.session == session) else {
            return vec![];
        };
        let new: HashMap<String, Observed> =
            inventory.into_iter().map(|o| (o.name.clone(), o)).collect();
        let changed = match &live.inventory {
            None => new.keys().cloned().collect(),
            Some(old) => {
                let mut changed: Vec<String> = new
                    .iter()
                    .filter(|(k, v)| old.get(*k) != Some(v))
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

    /// Records the observation a command result carried.
    pub fn update_observed(&self, node: &str, observed: Observed) {
        if let Some(inv) = self
            .write()
            .get_mut(node)
            .and_then(|n| n.inventory.as_mut())
        {
            inv.insert(observed.name.clone(), observed);
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

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
use berth_proto::inventory::{by_uid, same};
use ractor::ActorRef;

use super::node_actor::NodeMsg;

struct LiveNode {
    session: u64,
    actor: ActorRef<NodeMsg>,
    /// By sandbox uid; None until the first inventory arrives.
    inventory: Option<BTreeMap<String, Observed>>,
    /// Seq of the last listing applied: every observation in `inventory`
    /// was seen at least this recently (a delta leaves out the unchanged).
    listed_seq: u64,
    last_seen: Instant,
}

/// What the leader knows of one sandbox on one node, owned.
#[derive(Debug, Clone)]
pub enum Link {
    Disconnected,
    Connected(Option<Observed>),
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
                listed_seq: 0,
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
        let mut new = by_uid(inventory);
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
        live.listed_seq = seq;
        live.last_seen = Instant::now();
        changed
    }

    /// Applies a delta heartbeat: `changed` and `gone` are what differs
    /// from the session's previous listing, in a listing that began at
    /// `seq`; each entry follows the rule of [`Self::set_inventory`] (an
    /// observation newer than the listing is kept), and everything else
    /// stands as seen again at `seq`. Returns the names of the sandboxes
    /// whose observation changed, or None (nothing recorded) if the node
    /// has no inventory yet or the session is not the live one.
    pub fn apply_delta(
        &self,
        node: &str,
        session: u64,
        changed: Vec<Observed>,
        gone: Vec<String>,
        seq: u64,
    ) -> Option<Vec<String>> {
        let mut nodes = self.write();
        let live = nodes.get_mut(node).filter(|n| n.session == session)?;
        let inventory = live.inventory.as_mut()?;
        let mut names = Vec::new();
        for o in changed.into_iter().filter(|o| !o.uid.is_empty()) {
            match inventory.get(&o.uid) {
                Some(old) if old.seq > seq => continue,
                Some(old) if same(old, &o) => {}
                _ => names.push(o.name.clone()),
            }
            inventory.insert(o.uid.clone(), o);
        }
        for uid in gone {
            if inventory.get(&uid).is_some_and(|old| old.seq <= seq) {
                if let Some(old) = inventory.remove(&uid) {
                    names.push(old.name);
                }
            }
        }
        live.listed_seq = live.listed_seq.max(seq);
        live.last_seen = Instant::now();
        Some(names)
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
        let mut nodes = self.write();
        let Some(live) = nodes.get_mut(node) else {
            return;
        };
        let listed = live.listed_seq;
        if let Some(inv) = live.inventory.as_mut() {
            // The last listing (at `listed`) saw every sandbox it left
            // out of a delta as before, and none it did not list.
            let known = inv.get(uid).map_or(listed, |old| old.seq.max(listed));
            if known <= observed.seq {
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

    /// A delta changes what it names and nothing else, by the seq rule of a
    /// full listing; what it leaves out stands as seen again at its seq.
    #[tokio::test]
    async fn a_delta_changes_what_it_names_by_the_seq_rule() {
        use ContainerState::{Exited, Running};
        let (actor, dir) = connected().await;
        assert_eq!(
            dir.apply_delta("n", 1, vec![], vec![], 1),
            None,
            "no inventory yet"
        );
        let listing = vec![
            obs("a", Running, 5),
            obs("b", Running, 5),
            obs("c", Running, 5),
        ];
        dir.set_inventory("n", 1, listing, 5);
        assert_eq!(
            dir.apply_delta("n", 2, vec![], vec![], 6),
            None,
            "a stale session"
        );

        // b exited, c is gone, d is new; a is said again unchanged.
        let changed = vec![
            obs("a", Running, 7),
            obs("b", Exited, 7),
            obs("d", Running, 7),
        ];
        let names = dir.apply_delta("n", 1, changed, vec!["uid-c".into()], 7);
        assert_eq!(names, Some(vec!["b".into(), "d".into(), "c".into()]));
        let state = |uid: &str| match dir.link("n", uid) {
            Link::Connected(o) => o.map(|o| (o.state(), o.seq)),
            Link::Disconnected => panic!("disconnected"),
        };
        assert_eq!(state("uid-a"), Some((Running, 7)));
        assert_eq!(state("uid-b"), Some((Exited, 7)));
        assert_eq!(state("uid-c"), None);
        assert_eq!(state("uid-d"), Some((Running, 7)));

        // Command results observed at 10 (a exited, e created), then a
        // delta listed at 9 that still shows a running and no e: the
        // newer results stand.
        dir.update_observed("n", "uid-a", obs("a", Exited, 10));
        dir.update_observed("n", "uid-e", obs("e", Running, 10));
        let names = dir.apply_delta("n", 1, vec![obs("a", Running, 9)], vec!["uid-e".into()], 9);
        assert_eq!(names, Some(vec![]));
        assert_eq!(state("uid-a"), Some((Exited, 10)));
        assert_eq!(state("uid-e"), Some((Running, 10)));

        // d, left out of a delta listed at 12, was seen running at 12: a
        // command result observed at 11 is older and does not replace it.
        dir.apply_delta("n", 1, vec![], vec![], 12);
        dir.update_observed("n", "uid-d", obs("d", Exited, 11));
        assert_eq!(state("uid-d"), Some((Running, 7)));
        dir.update_observed("n", "uid-d", obs("d", Exited, 13));
        assert_eq!(state("uid-d"), Some((Exited, 13)));
        actor.stop(None);
    }

    /// The agent's side of [`deltas_leave_the_leader_where_full_listings_would`]:
    /// its sandboxes, commands in flight, and what it last reported.
    #[derive(Default)]
    struct Agent {
        seq: u64,
        /// Uid -> state (present sandboxes only).
        truth: BTreeMap<String, ContainerState>,
        /// Uid -> seq of the last command start or finish; uids running.
        touched: BTreeMap<String, u64>,
        running: BTreeMap<String, u64>,
        /// Results made but not yet delivered: (uid, observation).
        results: Vec<(String, Observed)>,
        reported: BTreeMap<String, Observed>,
        base: u64,
    }

    impl Agent {
        fn next(&mut self) -> u64 {
            self.seq += 1;
            self.seq
        }

        fn observe(&self, uid: &str, seq: u64) -> Observed {
            Observed {
                name: format!("name-{uid}"),
                uid: uid.into(),
                state: self
                    .truth
                    .get(uid)
                    .copied()
                    .unwrap_or(ContainerState::Absent) as i32,
                seq,
                ..Observed::default()
            }
        }

        fn listing(&mut self) -> (u64, Vec<Observed>, std::collections::BTreeSet<String>) {
            let seq = self.next();
            let base = self.base;
            self.touched.retain(|_, at| *at > base);
            let mut touched: std::collections::BTreeSet<String> =
                self.touched.keys().cloned().collect();
            touched.extend(self.running.keys().cloned());
            let listing = self.truth.keys().map(|u| self.observe(u, seq)).collect();
            (seq, listing, touched)
        }
    }

    /// Drives one directory with full listings and another with the deltas
    /// an agent computes from the same listings, through random external
    /// changes, commands (a result is made when one finishes and delivered
    /// late, even after later heartbeats): after every step both say the
    /// same about every sandbox.
    #[tokio::test]
    async fn deltas_leave_the_leader_where_full_listings_would() {
        let (actor, full) = connected().await;
        let delta_dir = Directory::default();
        delta_dir.connect("n", 1, actor.clone());
        let uids: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let states = [ContainerState::Running, ContainerState::Exited];
        let mut agent = Agent::default();
        let (seq, listing, _) = agent.listing();
        full.set_inventory("n", 1, listing.clone(), seq);
        delta_dir.set_inventory("n", 1, listing.clone(), seq);
        (agent.reported, agent.base) = (by_uid(listing), seq);
        let mut log: Vec<String> = Vec::new();
        for step in 0..20_000 {
            let uid = uids[random(uids.len())].clone();
            log.push(format!("step {step} seq {} {uid}", agent.seq));
            match random(6) {
                0 => {
                    // Something outside berth changes the sandbox.
                    match random(3) {
                        0 => agent.truth.remove(&uid),
                        _ => agent.truth.insert(uid, states[random(2)]),
                    };
                }
                1 if !agent.running.contains_key(&uid) => {
                    let at = agent.next();
                    agent.touched.insert(uid.clone(), at);
                    agent.running.insert(uid, at);
                }
                2 if agent.running.contains_key(&uid) => {
                    // It finishes: maybe changes the sandbox, reports it.
                    match random(3) {
                        0 => agent.truth.remove(&uid),
                        1 => agent.truth.insert(uid.clone(), states[random(2)]),
                        _ => None,
                    };
                    let at = agent.next();
                    let result = agent.observe(&uid, at);
                    agent.results.push((uid.clone(), result));
                    agent.running.remove(&uid);
                    let at = agent.next();
                    agent.touched.insert(uid, at);
                }
                3 if !agent.results.is_empty() => {
                    let (uid, result) = agent.results.remove(random(agent.results.len()));
                    log.push(format!("deliver {uid} {result:?}"));
                    full.update_observed("n", &uid, result.clone());
                    delta_dir.update_observed("n", &uid, result);
                }
                _ => {
                    let (seq, listing, touched) = agent.listing();
                    let current = by_uid(listing.clone());
                    let (changed, gone) =
                        berth_proto::inventory::delta(&agent.reported, &current, &touched);
                    log.push(format!("listing {seq} {listing:?} delta {changed:?} gone {gone:?} touched {touched:?}"));
                    full.set_inventory("n", 1, listing, seq);
                    delta_dir.apply_delta("n", 1, changed, gone, seq);
                    (agent.reported, agent.base) = (current, seq);
                }
            }
            for uid in &uids {
                let (Link::Connected(a), Link::Connected(b)) =
                    (full.link("n", uid), delta_dir.link("n", uid))
                else {
                    panic!("disconnected");
                };
                let agree = match (&a, &b) {
                    (Some(a), Some(b)) => same(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                assert!(
                    agree,
                    "step {step}, {uid}: full {a:?}, delta {b:?}\n{}",
                    log[log.len().saturating_sub(40)..].join("\n")
                );
            }
        }
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

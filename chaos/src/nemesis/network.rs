//! The nemesis's network faults, as rules for the chaos network
//! ([`crate::net`]): isolating the leader, splitting the control nodes into
//! a minority and a majority, a leader whose messages are lost one way, an
//! agent cut off from the control plane, slow links, and dropped
//! connections. Which nodes and agents are hit comes from the fault's
//! `pick`, so a seed replays the same faults against the same roles.

use berth_testkit::Peer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

use super::FaultKind;
use crate::net::{between, one_way, Rule, Rules};

/// The cluster as a network fault sees it.
pub struct Roles {
    pub leader: Option<u64>,
    pub nodes: Vec<u64>,
    pub agents: Vec<String>,
}

/// The rules of a network fault and a line for the log; `None` when the
/// fault does not apply (no leader to isolate).
pub fn rules(kind: FaultKind, pick: u64, roles: &Roles) -> Option<(Rules, String)> {
    let mut rng = StdRng::seed_from_u64(pick);
    let nodes: Vec<Peer> = roles.nodes.iter().map(|id| Peer::Node(*id)).collect();
    let agents: Vec<Peer> = roles.agents.iter().cloned().map(Peer::Agent).collect();
    let everyone: Vec<Peer> = nodes.iter().chain(&agents).cloned().collect();
    let mut rules = Rules::new();
    let line = match kind {
        FaultKind::IsolateLeader => {
            let leader = Peer::Node(roles.leader?);
            between(&mut rules, &[leader], &everyone, Rule::Stall);
            format!("IsolateLeader node {}", roles.leader?)
        }
        FaultKind::OneWayLeader => {
            let leader = Peer::Node(roles.leader?);
            one_way(&mut rules, &leader, &everyone, Rule::Stall);
            format!("OneWayLeader: nothing from node {} arrives", roles.leader?)
        }
        FaultKind::SplitNodes => {
            let mut shuffled = nodes.clone();
            shuffled.shuffle(&mut rng);
            let minority = shuffled.len().saturating_sub(1) / 2;
            let (small, big) = shuffled.split_at(minority.max(1));
            let mut small = small.to_vec();
            let mut big = big.to_vec();
            for agent in &agents {
                if rng.gen_bool(0.5) {
                    small.push(agent.clone());
                } else {
                    big.push(agent.clone());
                }
            }
            between(&mut rules, &small, &big, Rule::Stall);
            format!("SplitNodes {} | {}", names(&small), names(&big))
        }
        FaultKind::IsolateAgent => {
            let agent = agents.choose(&mut rng)?.clone();
            between(
                &mut rules,
                std::slice::from_ref(&agent),
                &nodes,
                Rule::Stall,
            );
            format!("IsolateAgent {}", names(std::slice::from_ref(&agent)))
        }
        FaultKind::SlowNetwork => {
            let delay = Duration::from_millis(rng.gen_range(20..=300));
            between(&mut rules, &everyone, &everyone, Rule::Delay(delay));
            format!("SlowNetwork {} ms on every link", delay.as_millis())
        }
        FaultKind::DropLinks => {
            let mut cut = Vec::new();
            for (i, a) in everyone.iter().enumerate() {
                for b in &everyone[i + 1..] {
                    let node_link = matches!(a, Peer::Node(_)) || matches!(b, Peer::Node(_));
                    if node_link && rng.gen_bool(0.4) {
                        between(
                            &mut rules,
                            std::slice::from_ref(a),
                            std::slice::from_ref(b),
                            Rule::Drop,
                        );
                        cut.push(format!(
                            "{}-{}",
                            names(std::slice::from_ref(a)),
                            names(std::slice::from_ref(b))
                        ));
                    }
                }
            }
            format!("DropLinks {}", cut.join(" "))
        }
        _ => return None,
    };
    Some((rules, line))
}

fn names(peers: &[Peer]) -> String {
    peers
        .iter()
        .map(|p| match p {
            Peer::Node(id) => format!("n{id}"),
            Peer::Agent(name) => name.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles {
            leader: Some(2),
            nodes: vec![1, 2, 3, 4, 5],
            agents: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn an_isolated_leader_is_cut_from_everyone_both_ways() {
        let (rules, _) = rules(FaultKind::IsolateLeader, 7, &roles()).unwrap();
        let l = Peer::Node(2);
        for p in [Peer::Node(1), Peer::Node(5), Peer::Agent("a".into())] {
            assert_eq!(rules.get(&(l.clone(), p.clone())), Some(&Rule::Stall));
            assert_eq!(rules.get(&(p.clone(), l.clone())), Some(&Rule::Stall));
        }
        assert_eq!(rules.get(&(Peer::Node(1), Peer::Node(3))), None);
    }

    #[test]
    fn a_split_leaves_a_majority_and_one_way_is_one_way() {
        for pick in 0..20 {
            let (rules, _) = rules(FaultKind::SplitNodes, pick, &roles()).unwrap();
            let cut_from_1 = (2..=5)
                .filter(|n| rules.contains_key(&(Peer::Node(1), Peer::Node(*n))))
                .count();
            // Node 1 is either in the minority of 2 (cut from 3) or in the
            // majority of 3 (cut from 2).
            assert!(cut_from_1 == 2 || cut_from_1 == 3, "{cut_from_1}");
        }
        let (rules, _) = rules(FaultKind::OneWayLeader, 1, &roles()).unwrap();
        assert!(rules.contains_key(&(Peer::Node(2), Peer::Node(1))));
        assert!(!rules.contains_key(&(Peer::Node(1), Peer::Node(2))));
        let none = Roles {
            leader: None,
            ..roles()
        };
        assert!(super::rules(FaultKind::IsolateLeader, 1, &none).is_none());
    }
}

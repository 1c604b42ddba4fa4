//! The checks that read the processes' logs: the agents' "executing" audit
//! lines (no command executed under a term older than the agent's fence),
//! panics in any process, and which failpoints fired.

use std::collections::BTreeMap;

use berth_testkit::TestCluster;

use super::{violation, Checked, Violation};

/// What a process prints when a failpoint aborts it (`berth_proto::chaos`).
const FAILPOINT_LINE: &str = "chaos: aborting at failpoint ";

/// Every "executing" audit line of every agent: term >= fence.
pub fn check_audit(cluster: &TestCluster, checked: &mut Checked, out: &mut Vec<Violation>) {
    let field = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(&format!(" {key}="))? + key.len() + 2;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for log in cluster.agent_logs() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("executing")) {
            let (Some(term), Some(fence)) = (field(line, "term"), field(line, "fence")) else {
                continue;
            };
            checked.audit_lines += 1;
            if term < fence {
                out.push(violation(
                    "stale_term_executed",
                    format!("{}: {line}", log.display()),
                ));
            }
        }
    }
}

/// No thread of any control node or agent panicked.
pub fn check_panics(cluster: &TestCluster, out: &mut Vec<Violation>) {
    for log in cluster.node_logs().into_iter().chain(cluster.agent_logs()) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked at")) {
            out.push(violation("panic", format!("{}: {line}", log.display())));
        }
    }
}

/// How often each failpoint aborted a process.
pub fn failpoints_hit(cluster: &TestCluster) -> BTreeMap<String, u64> {
    let mut hit = BTreeMap::new();
    for log in cluster.node_logs().into_iter().chain(cluster.agent_logs()) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines() {
            if let Some(at) = line.find(FAILPOINT_LINE) {
                let name = line[at + FAILPOINT_LINE.len()..].trim().to_string();
                *hit.entry(name).or_default() += 1;
            }
        }
    }
    hit
}

//! The run's summary: a table on stdout and JSON (`--json FILE`): faults
//! injected by kind, operations by outcome, violations by kind (must be
//! none), failover times, and on failure the history and fault log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::checker::{Checked, Violation};
use crate::history::{Op, Outcome};
use crate::nemesis::NemesisReport;
use crate::profile::Profile;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub profile: String,
    pub runs: u32,
    pub duration_s: u64,
    pub faults_injected: BTreeMap<String, u64>,
    /// Operation kind -> outcome -> count.
    pub operations: BTreeMap<String, BTreeMap<String, u64>>,
    pub violations: BTreeMap<String, u64>,
    pub violation_details: Vec<Violation>,
    pub kills_mid_operation: u64,
    pub failovers: usize,
    pub failover_ms_p50: Option<u64>,
    pub failover_ms_p99: Option<u64>,
    pub checked: Checked,
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

impl Summary {
    pub fn new(
        seed: u64,
        profile: &Profile,
        report: &NemesisReport,
        ops: &[Op],
        violations: &[Violation],
        checked: Checked,
        took: Duration,
    ) -> Self {
        let mut operations: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for op in ops.iter().filter(|o| o.client != usize::MAX) {
            let outcome = match &op.outcome {
                Outcome::Ok(_) => "ok".to_string(),
                Outcome::Failed { code, .. } => format!("failed:{code}"),
                Outcome::Unknown(_) => "unknown".to_string(),
            };
            *operations
                .entry(op.kind.name().to_string())
                .or_default()
                .entry(outcome)
                .or_default() += 1;
        }
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for v in violations {
            *by_kind.entry(v.kind.clone()).or_default() += 1;
        }
        let mut failover = report.failover_ms.clone();
        failover.sort_unstable();
        Self {
            seed,
            profile: format!("{:?}", profile.name).to_lowercase(),
            runs: 1,
            duration_s: took.as_secs(),
            faults_injected: report.injected.clone(),
            operations,
            violations: by_kind,
            violation_details: violations.to_vec(),
            kills_mid_operation: report.kills_mid_operation,
            failovers: failover.len(),
            failover_ms_p50: percentile(&failover, 0.5),
            failover_ms_p99: percentile(&failover, 0.99),
            checked,
        }
    }

    pub fn print(&self) {
        println!(
            "berth-chaos  seed {}  profile {}  {} s",
            self.seed, self.profile, self.duration_s
        );
        println!("\nFAULT            INJECTED");
        for (kind, n) in &self.faults_injected {
            println!("{kind:<16} {n}");
        }
        if !self.checked.failpoints_hit.is_empty() {
            println!("\nFAILPOINT                 ABORTS");
            for (name, n) in &self.checked.failpoints_hit {
                println!("{name:<25} {n}");
            }
        }
        println!("\nOPERATION  OUTCOMES");
        for (kind, outcomes) in &self.operations {
            let line: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o}={n}")).collect();
            println!("{kind:<10} {}", line.join(" "));
        }
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        println!(
            "\nfailover p50 {}  p99 {}  ({} failovers; {} leader kills mid-operation)",
            ms(self.failover_ms_p50),
            ms(self.failover_ms_p99),
            self.failovers,
            self.kills_mid_operation
        );
        let c = &self.checked;
        println!(
            "checked: {} histories ({} inconclusive), {} markers, {} unverifiable workspaces, {} audit lines, {} engine samples",
            c.histories, c.inconclusive, c.markers_verified, c.workspaces_unverifiable, c.audit_lines, c.samples
        );
        if self.violations.is_empty() {
            println!("violations: none");
        } else {
            println!("\nVIOLATION                 COUNT");
            for (kind, n) in &self.violations {
                println!("{kind:<25} {n}");
            }
            let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
            for v in &self.violation_details {
                let n = shown.entry(v.kind.as_str()).or_default();
                *n += 1;
                if *n <= 10 {
                    println!("  {}: {}", v.kind, v.detail);
                } else if *n == 11 {
                    println!("  {}: ... (see the JSON report)", v.kind);
                }
            }
        }
    }

    pub fn write_json(
        &self,
        path: &Path,
        failure: Option<(&Vec<Op>, &NemesisReport)>,
    ) -> anyhow::Result<()> {
        let mut value = serde_json::to_value(self)?;
        if let (Some((ops, report)), Some(map)) = (failure, value.as_object_mut()) {
            map.insert("history".into(), serde_json::to_value(ops)?);
            map.insert("fault_log".into(), serde_json::to_value(&report.log)?);
        }
        std::fs::write(path, serde_json::to_vec_pretty(&value)?)?;
        Ok(())
    }
}

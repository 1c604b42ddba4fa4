//! `berth-chaos`: runs a real berth cluster (control nodes and agents on
//! loopback, sandboxes as Podman containers) under a recorded workload of
//! concurrent clients while a nemesis kills, pauses and restarts its
//! processes, then heals everything and checks every invariant. Seeded and
//! time-bounded; exits non-zero on any violation. See `docs/chaos.md`.

mod checker;
mod history;
mod nemesis;
mod profile;
mod sampler;
mod summary;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_testkit::api::wait_agent_ready;
use berth_testkit::{podman, TestCluster};
use clap::Parser;
use tokio::sync::watch;

use crate::history::History;
use crate::profile::{Profile, ProfileName};
use crate::workload::Workload;

/// Chaos suite for berth: faults against real processes, then every invariant checked.
#[derive(Debug, Parser)]
#[command(name = "berth-chaos", version)]
struct Args {
    /// How big and how long a run is.
    #[arg(long, value_enum, default_value = "ci")]
    profile: ProfileName,
    /// Seed of the workload and the fault schedule (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Run the schedule of this seed again (same as --seed).
    #[arg(long, conflicts_with = "seed")]
    replay: Option<u64>,
    /// Override the profile's duration of faults and workload, in minutes.
    #[arg(long)]
    minutes: Option<u64>,
    /// Also write the summary (and, on failure, the history) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the fault schedule of the seed and exit.
    #[arg(long)]
    dry_run: bool,
    /// Run deliberately broken processes (test-only faults, to show the
    /// checker catches them): second-container, skip-fencing (agents),
    /// forget-early, stale-stamp (control nodes). Comma separated.
    #[arg(long = "break", value_name = "FAULT")]
    break_: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.replay.or(args.seed).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let profile = Profile::new(args.profile, args.minutes);
    let faults = nemesis::schedule(seed, &profile);
    let (crash_node, crash_phase) = nemesis::crash_point(seed, profile.control_nodes);
    eprintln!(
        "berth-chaos: seed {seed}, profile {:?}, {} faults over {}s; node {crash_node} crashes after committing {crash_phase} (replay: berth-chaos --profile {:?} --replay {seed})",
        profile.name,
        faults.len(),
        profile.duration.as_secs(),
        profile.name
    );
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&faults)?);
        return Ok(true);
    }

    podman::ensure_test_image().context("build the test images")?;
    let broken: Vec<(&str, &str)> = args
        .break_
        .as_deref()
        .map(|b| vec![("BERTH_CHAOS_BREAK", b)])
        .unwrap_or_default();
    if let Some(b) = &args.break_ {
        eprintln!("berth-chaos: DELIBERATELY BROKEN processes: {b}");
    }
    let mut cluster = TestCluster::start_with_env(profile.control_nodes, &[], &broken).await?;
    cluster.set_agent_env(&broken);
    let control = cluster.control_addrs();
    for i in 1..=profile.agents {
        let name = format!("chaos-node-{i}");
        cluster.start_agent_with(&name, &control, "container")?;
        wait_agent_ready(&cluster, &name, Duration::from_secs(60)).await?;
    }
    // The crash point: one node aborts right after committing a phase.
    cluster.kill9(crash_node);
    cluster.set_node_env(
        crash_node,
        &[("BERTH_CHAOS_CRASH_AFTER_PHASE", crash_phase)],
    );
    cluster.restart(crash_node)?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;

    let prefix = format!("chaos{}-", seed % 100_000);
    let names: Vec<String> = (0..profile.sandboxes)
        .map(|i| cluster.track(&format!("{prefix}{i}")))
        .collect();
    let started = Instant::now();
    let history = Arc::new(History::default());
    let workload = Arc::new(Workload {
        addrs: control.split(',').map(String::from).collect(),
        sandboxes: names.clone(),
        history: history.clone(),
        started,
        seed,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients: Vec<_> = (0..profile.clients)
        .map(|i| tokio::spawn(workload.clone().client(i, stop_rx.clone())))
        .collect();
    let sampler = tokio::spawn(sampler::sample(
        prefix.clone(),
        Duration::from_millis(500),
        started,
        stop_rx.clone(),
    ));

    let report = nemesis::run(&mut cluster, &faults, &profile, started).await;
    // Heal: no more crash points; everything runs again.
    cluster.kill9(crash_node);
    cluster.set_node_env(crash_node, &[]);
    nemesis::revive(
        &mut cluster,
        &mut nemesis::NemesisReport::default(),
        started,
        false,
    );
    let _ = stop_tx.send(true);
    for client in clients {
        let _ = client.await;
    }
    let samples = sampler.await.unwrap_or_default();
    cluster.wait_for_leader(Duration::from_secs(60)).await?;

    let ops = history.ops();
    let (violations, checked, ops) = checker::check(
        &mut cluster,
        &prefix,
        &names,
        ops,
        &samples,
        profile.settle,
        started,
    )
    .await;
    let summary = summary::Summary::new(
        seed,
        &profile,
        &report,
        &ops,
        &violations,
        checked,
        started.elapsed(),
    );
    summary.print();
    if let Some(path) = &args.json {
        let with_history = !violations.is_empty();
        summary.write_json(path, with_history.then_some((&ops, &report)))?;
    }
    if !violations.is_empty() {
        eprintln!("berth-chaos: {} violation(s); reproduce the schedule with: berth-chaos --profile {:?} --replay {seed}", violations.len(), profile.name);
        for (at, fault) in &report.log {
            eprintln!("  fault at {at} ms: {fault}");
        }
        for v in violations.iter().filter(|v| v.kind == "not_linearizable") {
            let name = v.detail.split(':').next().unwrap_or_default();
            eprintln!("  history of {name}:");
            for op in ops.iter().filter(|o| o.sandbox == name) {
                let done = op.complete_ms.map_or("?".to_string(), |c| c.to_string());
                eprintln!(
                    "    [{} .. {done}] client {} {:?} -> {:?}",
                    op.invoke_ms, op.client, op.kind, op.outcome
                );
            }
        }
        eprintln!("{}", cluster.logs());
    }
    Ok(violations.is_empty())
}

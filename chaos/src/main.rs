//! `berth-chaos`: runs a real berth cluster (control nodes and agents on
//! loopback, sandboxes as Podman containers) under a recorded workload of
//! concurrent clients while a nemesis kills, pauses and restarts its
//! processes, then heals everything and checks every invariant. Seeded and
//! time-bounded; exits non-zero on any violation. `berth-chaos sim` runs
//! the deterministic simulation instead ([`sim`]). See `docs/chaos.md`.

mod checker;
mod clock;
mod history;
mod nemesis;
mod net;
mod pki;
mod profile;
mod sampler;
mod sim;
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
#[command(name = "berth-chaos", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// forget-early, stale-stamp, apply-twice (control nodes). Comma
    /// separated.
    #[arg(long = "break", value_name = "FAULT")]
    break_: Option<String>,
    /// Run the cluster without TLS or authentication (by default every
    /// link is mutual TLS and every call carries a credential).
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Deterministic simulation: many seeds of a whole cluster in one
    /// process each, on a simulated network and clock.
    Sim(sim::SimArgs),
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::Sim(sim_args)) = args.command.take() {
        return sim::main(sim_args);
    }
    // The profile's simulation seeds first: seconds, and a failure there
    // replays exactly.
    if !args.dry_run && args.break_.is_none() {
        let profile = Profile::new(args.profile, args.minutes);
        if profile.sim_seeds > 0 && !sim::run_profile_seeds(profile.sim_seeds) {
            return ExitCode::from(1);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
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
    let points = nemesis::failpoints(seed, profile.control_nodes, profile.agents);
    eprintln!(
        "berth-chaos: seed {seed}, profile {:?}, {} faults over {}s; node {} crashes after committing {} and at FAILPOINTS={}; agent {} at FAILPOINTS={} (replay: berth-chaos --profile {:?} --replay {seed})",
        profile.name,
        faults.len(),
        profile.duration.as_secs(),
        points.node,
        points.phase,
        points.node_points,
        points.agent + 1,
        points.agent_points,
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
    let net = net::ChaosNet::default();
    let pki_dir = tempfile::tempdir()?;
    let pki = if args.insecure {
        None
    } else {
        Some(pki::Pki::new(pki_dir.path())?)
    };
    // Frequent snapshots, so that building, sending and installing them
    // happen under faults too.
    let mut node_args: Vec<String> = ["--snapshot-every", "150", "--logs-to-keep", "50"]
        .map(String::from)
        .to_vec();
    node_args.extend(pki.as_ref().map(pki::Pki::node_args).unwrap_or_default());
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let fronting: Option<Box<dyn berth_testkit::Fronting>> = Some(Box::new(net.clone()));
    let mut cluster = match &pki {
        Some(pki) => {
            TestCluster::start_fronted_tls(
                profile.control_nodes,
                &node_args,
                &broken,
                fronting,
                pki.client(),
            )
            .await?
        }
        None => {
            TestCluster::start_fronted(profile.control_nodes, &node_args, &broken, fronting).await?
        }
    };
    cluster.set_agent_env(&broken);
    let control = cluster.control_addrs();
    let agent_names: Vec<String> = (1..=profile.agents)
        .map(|i| format!("chaos-node-{i}"))
        .collect();
    for name in &agent_names {
        if let Some(pki) = &pki {
            cluster.set_agent_args_of(name, &pki.agent_args(name)?);
        }
        cluster.start_agent_with(name, &control, "container")?;
        wait_agent_ready(&cluster, name, Duration::from_secs(60)).await?;
    }
    // Every node restarts on its own wall clock (clock jumps), and one node
    // and one agent with failpoints where they abort.
    let clocks_dir = tempfile::tempdir()?;
    let clocks = clock::Clocks::find(clocks_dir.path());
    if clocks.is_none() {
        eprintln!("berth-chaos: libfaketime is not installed: no clock jumps");
    }
    let crash_node = points.node;
    let node_env = |id: u64, with_failpoints: bool| -> anyhow::Result<Vec<(String, String)>> {
        let mut env = match &clocks {
            Some(c) => c.env(id)?,
            None => Vec::new(),
        };
        if with_failpoints && id == crash_node {
            env.push(("FAILPOINTS".into(), points.node_points.clone()));
        }
        Ok(env)
    };
    for id in cluster.node_ids() {
        cluster.kill9(id);
        let env = node_env(id, true)?;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cluster.set_node_env(id, &env);
        cluster.restart(id)?;
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
    }
    let crash_agent = agent_names[points.agent].clone();
    cluster.kill9_agent(&crash_agent);
    cluster.set_agent_env_of(&crash_agent, &[("FAILPOINTS", &points.agent_points)]);
    cluster.start_agent(&crash_agent)?;
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
        tls: cluster.client_tls().cloned(),
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

    let report = nemesis::run(
        &mut cluster,
        &net,
        clocks.as_ref(),
        &faults,
        &profile,
        started,
    )
    .await;
    net.heal();
    // Heal: no more failpoints; everything runs again.
    cluster.kill9(crash_node);
    let env = node_env(crash_node, false)?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cluster.set_node_env(crash_node, &env);
    cluster.kill9_agent(&crash_agent);
    cluster.set_agent_env_of(&crash_agent, &[]);
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

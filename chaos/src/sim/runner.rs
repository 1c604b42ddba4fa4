//! Running seeds: one seed ([`run_seed`]), many in this process, or many
//! across worker processes (`--jobs`), with the summary a CI job reads:
//! seeds per second, violations by kind, the failing seeds and how to
//! replay them.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_agent::driver::MemoryDriver;
use berth_raft::store::disk::MemDisk;
use openraft::BasicNode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::check::{self, Instances, Phases, Seen};
use super::client::{self, Plan, Report};
use super::cluster::{self, Agent, Control, Registry};
use super::faults::{self, Driver};
use super::world;
use crate::history::History;

/// Options of `berth-chaos sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many seeds to run (from --first-seed on).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Run this one seed (same as --first-seed N --seeds 1).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    pub seed: Option<u64>,
    /// Print the seed's whole event trace (with --seed).
    #[arg(long, requires = "seed")]
    pub trace: bool,
    /// Run each seed twice in this process and fail if the two event
    /// traces differ (the determinism check).
    #[arg(long)]
    pub twice: bool,
    /// Worker processes (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Simulated seconds of workload (and faults) per seed.
    #[arg(long, default_value_t = 8)]
    pub work_secs: u64,
    /// Simulated milliseconds per step (coarser is faster; timers fire at
    /// step boundaries).
    #[arg(long, default_value_t = 5, hide = true)]
    pub tick_ms: u64,
    /// (internal) Run as a worker: one JSON line per seed on stdout.
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// What one seed gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    pub hash: String,
    pub events: usize,
    pub ops: usize,
    pub faults: usize,
    pub violations: Vec<(String, String)>,
    /// The last lines of the trace, when the seed failed.
    pub tail: Vec<String>,
    pub sim_ms: u64,
}

const NAMES: usize = 4;
const CONTROLS: [&str; 3] = ["n1", "n2", "n3"];
const AGENTS: [&str; 2] = ["a1", "a2"];
const MAX_LATENCY: Duration = Duration::from_millis(15);
const SETTLE: Duration = Duration::from_secs(60);

/// Runs one seed to the end and checks it. The trace is returned too.
pub fn run_seed(seed: u64, work: Duration, tick: Duration) -> (SeedResult, Vec<String>) {
    world::reset(seed);
    let data = tempfile::tempdir().ok();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(tick)
        .simulation_duration(work + SETTLE + Duration::from_secs(30))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(MAX_LATENCY)
        .tcp_capacity(4096)
        .build();
    let controls: Vec<String> = CONTROLS.iter().map(|s| s.to_string()).collect();
    let agents: Vec<String> = AGENTS.iter().map(|s| s.to_string()).collect();
    let members: BTreeMap<u64, BasicNode> = controls
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u64 + 1, BasicNode::new(cluster::control_addr(n))))
        .collect();
    let registry: Registry = Arc::default();
    let mut disks = BTreeMap::new();
    for (i, name) in controls.iter().enumerate() {
        let c = Control {
            id: i as u64 + 1,
            name: name.clone(),
            skew_ms: rng.gen_range(-1500..=1500),
            disk: Arc::new(MemDisk::default()),
        };
        disks.insert(name.clone(), c.disk.clone());
        cluster::add_control(&mut sim, &c, &members, &registry);
    }
    let mut engines: Vec<(String, Arc<MemoryDriver>)> = Vec::new();
    for name in &agents {
        let a = Agent {
            name: name.clone(),
            skew_ms: rng.gen_range(-1500..=1500),
            engine: Arc::new(MemoryDriver::new()),
            data_dir: data
                .as_ref()
                .map_or_else(|| PathBuf::from("/tmp/berth-sim"), |d| d.path().join(name)),
        };
        engines.push((name.clone(), a.engine.clone()));
        cluster::add_agent(&mut sim, &a, &controls);
    }
    let plan = Plan {
        seed,
        controls: controls.clone(),
        names: (0..NAMES).map(|i| format!("sim-{i}")).collect(),
        clients: 3,
        work,
        settle: SETTLE,
    };
    let history = Arc::new(History::default());
    let report: client::Shared = Arc::new(Mutex::new(Report::default()));
    let heal = Arc::new(AtomicBool::new(false));
    sim.client(
        "w",
        client::run(plan.clone(), history.clone(), report.clone(), heal.clone()),
    );
    let schedule = faults::schedule(
        &mut rng,
        &controls,
        &agents,
        u64::try_from(work.as_millis()).unwrap_or(u64::MAX),
    );
    let fault_count = schedule.len();
    for s in &schedule {
        world::note(format!(
            "SCHEDULE at {} ms for {} ms: {:?}",
            s.at_ms, s.for_ms, s.fault
        ));
    }
    let mut driver = Driver::new(schedule, controls, agents, disks, registry, MAX_LATENCY);
    let mut instances = Instances::default();
    let mut phases = Phases::default();
    let mut sim_error = None;
    loop {
        let now = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        world::with(|st| st.driver_ms = now);
        driver.step(
            &mut sim,
            now,
            heal.load(std::sync::atomic::Ordering::SeqCst),
        );
        instances.sample(&engines, now);
        phases.sample(&driver.registry, now);
        // A host that panics ends the seed (the panic hook records it);
        // catching it keeps the worker alive for the next seed.
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.step()));
        match stepped {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                sim_error = Some(e.to_string());
                break;
            }
            Err(_) => {
                sim_error = Some("a host panicked (see the panic violation)".to_string());
                break;
            }
        }
    }
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    // Tearing down hosts whose state a panic left inconsistent may panic
    // again; then the simulation is leaked rather than the worker lost.
    let mut sim = Some(sim);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(sim.take())));
    if dropped.is_err() {
        std::mem::forget(sim);
    }
    let (trace, executed, panics) = world::with(|st| {
        (
            std::mem::take(&mut st.trace),
            std::mem::take(&mut st.executed),
            std::mem::take(&mut st.panics),
        )
    });
    let report = std::mem::take(&mut *report.lock().unwrap_or_else(|p| p.into_inner()));
    let ops = history.ops();
    let op_count = ops.len();
    let (mut violations, _ops) = check::check(Seen {
        names: &plan.names,
        phases: &phases,
        ops,
        report: &report,
        instances: &instances,
        executed: &executed,
        panics: &panics,
        engines: &engines,
    });
    if let Some(e) = sim_error {
        violations.push(crate::checker::Violation {
            kind: "host_failed".to_string(),
            detail: e,
        });
    }
    let hash = world::trace_hash(&trace);
    let tail = if violations.is_empty() {
        Vec::new()
    } else {
        trace[trace.len().saturating_sub(60)..].to_vec()
    };
    let result = SeedResult {
        seed,
        hash: format!("{hash:016x}"),
        events: trace.len(),
        ops: op_count,
        faults: fault_count,
        violations: violations.into_iter().map(|v| (v.kind, v.detail)).collect(),
        tail,
        sim_ms,
    };
    (result, trace)
}

/// The summary of a run of many seeds.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub seeds: u64,
    pub first_seed: u64,
    pub seconds: f64,
    pub seeds_per_second: f64,
    pub jobs: usize,
    pub violations: BTreeMap<String, u64>,
    pub failing_seeds: Vec<u64>,
    pub nondeterministic_seeds: Vec<u64>,
    pub ops: u64,
    pub faults: u64,
    pub simulated_seconds: f64,
    pub failures: Vec<SeedResult>,
}

impl Summary {
    fn add(&mut self, r: SeedResult) {
        self.seeds += 1;
        self.ops += r.ops as u64;
        self.faults += r.faults as u64;
        self.simulated_seconds += r.sim_ms as f64 / 1000.0;
        if !r.violations.is_empty() {
            for (kind, _) in &r.violations {
                *self.violations.entry(kind.clone()).or_default() += 1;
            }
            self.failing_seeds.push(r.seed);
            if self.failures.len() < 20 {
                self.failures.push(r);
            }
        }
    }
}

/// `berth-chaos sim`.
pub fn main(args: SimArgs) -> ExitCode {
    let (first, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.first_seed, args.seeds),
    };
    if !world::deterministic() {
        eprintln!("berth-chaos sim: WARNING: built without --cfg tokio_unstable (RUSTFLAGS overrides .cargo/config.toml): seeds will not replay exactly");
    }
    let work = Duration::from_secs(args.work_secs.max(3));
    let tick = Duration::from_millis(args.tick_ms.clamp(1, 50));
    if args.worker {
        return worker(first, count, work, tick, args.twice);
    }
    if let Some(seed) = args.seed {
        let (result, trace) = run_seed(seed, work, tick);
        if args.trace {
            for line in &trace {
                println!("{line}");
            }
        }
        let mut ok = result.violations.is_empty();
        if args.twice {
            let (again, trace) = run_seed(seed, work, tick);
            if args.trace {
                println!("===== the same seed again");
                for line in &trace {
                    println!("{line}");
                }
            }
            if again.hash != result.hash {
                eprintln!(
                    "seed {seed} is not deterministic: trace {} then {}",
                    result.hash, again.hash
                );
                ok = false;
            }
        }
        print_seed(&result);
        let mut summary = Summary {
            first_seed: seed,
            jobs: 1,
            ..Summary::default()
        };
        summary.add(result);
        write_json(args.json.as_ref(), &summary);
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let started = Instant::now();
    let mut summary = match run_workers(first, count, work, tick, jobs, args.twice) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-chaos sim: {e:#}");
            return ExitCode::from(2);
        }
    };
    summary.first_seed = first;
    summary.jobs = jobs;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.seeds_per_second = summary.seeds as f64 / summary.seconds.max(1e-9);
    eprintln!(
        "berth-chaos sim: {} seeds ({}..{}) in {:.1} s, {:.1} seeds/s over {jobs} workers; {} ops, {} faults, {:.0} simulated s",
        summary.seeds,
        first,
        first + count,
        summary.seconds,
        summary.seeds_per_second,
        summary.ops,
        summary.faults,
        summary.simulated_seconds
    );
    for r in &summary.failures {
        print_seed(r);
    }
    if !summary.nondeterministic_seeds.is_empty() {
        eprintln!(
            "NOT DETERMINISTIC: seeds {:?} gave two different traces",
            summary.nondeterministic_seeds
        );
    }
    let ok = summary.failing_seeds.is_empty() && summary.nondeterministic_seeds.is_empty();
    if ok {
        eprintln!("berth-chaos sim: no violations");
    } else {
        eprintln!(
            "berth-chaos sim: violations {:?} in seeds {:?}",
            summary.violations, summary.failing_seeds
        );
    }
    write_json(args.json.as_ref(), &summary);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The chaos profile's share of simulation: seeds `1..=seeds` over every
/// CPU; true when they all passed.
pub fn run_profile_seeds(seeds: u64) -> bool {
    let args = SimArgs {
        seeds,
        first_seed: 1,
        seed: None,
        trace: false,
        twice: false,
        jobs: None,
        json: None,
        work_secs: 8,
        tick_ms: 5,
        worker: false,
    };
    eprintln!("berth-chaos: {seeds} seeds of the deterministic simulation first (berth-chaos sim)");
    main(args) == ExitCode::SUCCESS
}

fn print_seed(r: &SeedResult) {
    if r.violations.is_empty() {
        eprintln!(
            "seed {}: ok ({} ops, {} faults, {} events, trace {})",
            r.seed, r.ops, r.faults, r.events, r.hash
        );
        return;
    }
    eprintln!("seed {}: {} violation(s)", r.seed, r.violations.len());
    for (kind, detail) in &r.violations {
        eprintln!("  {kind}: {detail}");
    }
    eprintln!("  last events before the end:");
    for line in &r.tail {
        eprintln!("    {line}");
    }
    eprintln!(
        "  replay: berth-chaos sim --seed {} --trace   (trace {})",
        r.seed, r.hash
    );
}

fn write_json(path: Option<&PathBuf>, summary: &Summary) {
    if let Some(path) = path {
        match serde_json::to_string_pretty(summary) {
            Ok(text) => {
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("berth-chaos sim: cannot write {}: {e}", path.display());
                }
            }
            Err(e) => eprintln!("berth-chaos sim: cannot encode the summary: {e}"),
        }
    }
}

/// A worker: runs its seeds in order, one JSON line each on stdout.
fn worker(first: u64, count: u64, work: Duration, tick: Duration, twice: bool) -> ExitCode {
    let stdout = std::io::stdout();
    for seed in first..first + count {
        let (mut result, _) = run_seed(seed, work, tick);
        if twice {
            let (again, _) = run_seed(seed, work, tick);
            if again.hash != result.hash {
                result.hash = format!("{}!={}", result.hash, again.hash);
            }
        }
        let mut out = stdout.lock();
        let line = serde_json::to_string(&result).unwrap_or_default();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// Splits the seeds over `jobs` worker processes (a contiguous range
/// each) and gathers their results as they come. A worker that dies (a
/// seed whose broken cluster aborts the process) costs that one seed,
/// recorded as `process_aborted`; a new worker takes the rest of its range.
fn run_workers(
    first: u64,
    count: u64,
    work: Duration,
    tick: Duration,
    jobs: usize,
    twice: bool,
) -> anyhow::Result<Summary> {
    let exe = std::env::current_exe()?;
    let chunk = count.div_ceil(jobs as u64).max(1);
    let (tx, rx) = std::sync::mpsc::channel::<SeedResult>();
    let mut workers = Vec::new();
    let mut from = first;
    while from < first + count {
        let to = (from + chunk).min(first + count);
        let (tx, exe) = (tx.clone(), exe.clone());
        workers.push(std::thread::spawn(move || {
            range(&exe, from, to, work, tick, twice, &tx)
        }));
        from = to;
    }
    drop(tx);
    let mut summary = Summary::default();
    let mut done = 0u64;
    let started = Instant::now();
    for r in rx {
        done += 1;
        if r.hash.contains("!=") {
            summary.nondeterministic_seeds.push(r.seed);
        }
        if !r.violations.is_empty() {
            print_seed(&r);
        }
        summary.add(r);
        if done.is_multiple_of(100) {
            eprintln!(
                "berth-chaos sim: {done}/{count} seeds, {:.1} seeds/s",
                done as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
        }
    }
    for w in workers {
        match w.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    if summary.seeds != count {
        anyhow::bail!("only {} of {count} seeds reported", summary.seeds);
    }
    summary.failing_seeds.sort_unstable();
    summary.nondeterministic_seeds.sort_unstable();
    Ok(summary)
}

/// Runs seeds `from..to` in worker processes, one after another, until
/// every seed has a result.
fn range(
    exe: &std::path::Path,
    mut next: u64,
    to: u64,
    work: Duration,
    tick: Duration,
    twice: bool,
    tx: &std::sync::mpsc::Sender<SeedResult>,
) -> anyhow::Result<()> {
    while next < to {
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["sim", "--worker", "--first-seed"])
            .arg(next.to_string())
            .arg("--seeds")
            .arg((to - next).to_string())
            .arg("--work-secs")
            .arg(work.as_secs().to_string())
            .arg("--tick-ms")
            .arg(tick.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if twice {
            cmd.arg("--twice");
        }
        let mut child = cmd.spawn()?;
        if let Some(stdout) = child.stdout.take() {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(r) = serde_json::from_str::<SeedResult>(&line) {
                    next = r.seed + 1;
                    let _ = tx.send(r);
                }
            }
        }
        let status = child.wait()?;
        if next < to {
            let _ = tx.send(SeedResult {
                seed: next,
                hash: String::new(),
                events: 0,
                ops: 0,
                faults: 0,
                violations: vec![(
                    "process_aborted".to_string(),
                    format!("the simulation process died ({status}); replay with --seed {next}"),
                )],
                tail: Vec::new(),
                sim_ms: 0,
            });
            next += 1;
        }
    }
    Ok(())
}

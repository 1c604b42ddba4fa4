//! `berth-bench`: benchmark programs that print figures (never assertions).
//!
//! ```text
//! berth-bench sandboxes [N=100]    create N sandboxes on one Podman agent; time until all Running
//! berth-bench failover [N=1000] [KILLS=10]
//!                                  N sandboxes on an in-memory agent; kill -9 the leader KILLS
//!                                  times; p50/p99 until the new leader runs every actor again
//! berth-bench update [ROUNDS=5]    berth update v1<->v2 next to the same replacement by hand with Podman
//! berth-bench scale [N=10000]      N sandboxes on one leader (in-memory driver): idle leader
//!                                  CPU, RSS per sandbox, write rate full vs empty
//! berth-bench agent [N=1000] [memory|podman]
//!                                  N idle sandboxes on one agent: the agent's CPU (and with
//!                                  Podman the engine's), inspecting what changed vs everything
//! berth-bench writes [--against-etcd] [--secs 10] [--levels 1,16,64,256]
//!                                  CreateSandbox throughput and latency per concurrency
//!                                  level, next to etcd's Put in the same run
//! ```
//!
//! Every figure comes from real processes on loopback (3 berthd, 1 agent).
//! Build first: `cargo build --workspace --bins`; run from the target dir
//! so the harness finds `berthd` and `berth-agent` next to this binary.

mod agent;
mod etcd;
mod failover;
mod load;
mod proc;
mod sandboxes;
mod scale;
mod update;
mod util;
mod writes;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = |default: usize| args.get(1).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("sandboxes") => sandboxes::run(n(100)).await,
        Some("failover") => {
            let kills = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
            failover::run(n(1000), kills).await
        }
        Some("update") => update::run(n(5)).await,
        Some("scale") => scale::run(n(10_000)).await,
        Some("agent") => {
            let driver = args.get(2).map_or("memory", String::as_str);
            agent::run(n(1000), driver).await
        }
        Some("writes") => writes::run(writes_options(&args[1..])?).await,
        _ => {
            eprintln!(
                "usage: berth-bench sandboxes [N] | failover [N] [KILLS] | update [ROUNDS] | scale [N] \
                 | agent [N] [memory|podman] \
                 | writes [--against-etcd] [--secs S] [--levels 1,16,64,256]"
            );
            std::process::exit(2);
        }
    }
}

fn writes_options(args: &[String]) -> anyhow::Result<writes::Options> {
    let mut options = writes::Options {
        levels: vec![1, 16, 64, 256],
        secs: 10.0,
        against_etcd: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--against-etcd" => options.against_etcd = true,
            "--secs" => options.secs = value()?.parse()?,
            "--levels" => {
                options.levels = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(options)
}

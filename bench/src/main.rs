//! `berth-bench`: benchmark programs that print figures (never assertions).
//!
//! ```text
//! berth-bench sandboxes [N=100]    create N sandboxes on one Podman agent; time until all Running
//! berth-bench failover [N=1000]    N sandboxes on an in-memory agent; kill -9 the leader; time
//!                                  until the new leader runs an actor for every sandbox again
//! berth-bench update [ROUNDS=5]    berth update v1<->v2 next to the same replacement by hand with Podman
//! ```
//!
//! Every figure comes from real processes on loopback (3 berthd, 1 agent).
//! Build first: `cargo build --workspace --bins`; run from the target dir
//! so the harness finds `berthd` and `berth-agent` next to this binary.

mod failover;
mod sandboxes;
mod update;
mod util;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = |default: usize| args.get(1).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("sandboxes") => sandboxes::run(n(100)).await,
        Some("failover") => failover::run(n(1000)).await,
        Some("update") => update::run(n(5)).await,
        _ => {
            eprintln!("usage: berth-bench sandboxes [N] | failover [N] | update [ROUNDS]");
            std::process::exit(2);
        }
    }
}

//! The deterministic simulation (`berth-chaos sim`), run as a user runs it:
//! a few hundred seeds pass every invariant, a seed replays to the same
//! event trace (in one process and across processes), and deliberately
//! broken builds (`BERTH_CHAOS_BREAK`) are caught.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn sim(args: &[&str], broken: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-chaos"));
    cmd.arg("sim").args(args);
    match broken {
        Some(b) => cmd.env("BERTH_CHAOS_BREAK", b),
        None => cmd.env_remove("BERTH_CHAOS_BREAK"),
    };
    cmd.output().expect("run berth-chaos sim")
}

fn summary(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON summary");
    serde_json::from_str(&text).expect("valid JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_few_hundred_seeds_keep_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sim.json");
    let out = sim(
        &[
            "--seeds",
            "200",
            "--work-secs",
            "6",
            "--json",
            json.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&json);
    assert_eq!(s["seeds"], 200, "{s}");
    assert_eq!(s["violations"], serde_json::json!({}), "{s}");
    assert!(
        s["ops"].as_u64().unwrap() > 200 * 20,
        "a real workload ran: {s}"
    );
    assert!(
        s["faults"].as_u64().unwrap() >= 200 * 2,
        "faults were injected: {s}"
    );
    assert!(s["seeds_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    // Twice in one process (tokio's task ids, the seams' state and the
    // actor registry must not leak from one seed into the next)...
    let out = sim(&["--seed", "7", "--twice"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    // ...and in two processes.
    let dir = tempfile::tempdir().unwrap();
    let hashes: Vec<String> = (0..2)
        .map(|i| {
            let json = dir.path().join(format!("{i}.json"));
            let out = sim(&["--seed", "7", "--json", json.to_str().unwrap()], None);
            assert!(out.status.success(), "{}", stderr(&out));
            let text = stderr(&out);
            let hash = text
                .split("trace ")
                .nth(1)
                .and_then(|t| t.get(..16))
                .expect("the trace hash is printed")
                .to_string();
            hash
        })
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    // A different seed is a different run.
    let other = sim(&["--seed", "8"], None);
    assert!(!stderr(&other).contains(&hashes[0]));
}

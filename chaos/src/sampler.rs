//! Samples the container engine throughout a run: how many containers of
//! each sandbox run at once (invariant 5: never more than one).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use tokio::sync::watch;

/// The most containers seen running at once for one sandbox name, and how
/// many samples were taken.
#[derive(Debug, Default)]
pub struct Samples {
    pub taken: u64,
    /// Sandbox name -> (most running at once, when, ms since the start).
    pub most_running: BTreeMap<String, (usize, u64)>,
}

/// Running berth containers by sandbox name (their uids).
fn running() -> Option<BTreeMap<String, Vec<String>>> {
    let out = Command::new("podman")
        .args([
            "ps",
            "--filter",
            "label=berth.sandbox",
            "--format",
            "{{ index .Labels \"berth.sandbox\" }} {{ index .Labels \"berth.uid\" }}",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.split_whitespace();
        if let (Some(name), uid) = (parts.next(), parts.next()) {
            by_name
                .entry(name.to_string())
                .or_default()
                .push(uid.unwrap_or_default().to_string());
        }
    }
    Some(by_name)
}

/// Samples every `every` until `stop`, for the sandboxes whose names start
/// with `prefix`.
pub async fn sample(
    prefix: String,
    every: Duration,
    started: std::time::Instant,
    mut stop: watch::Receiver<bool>,
) -> Samples {
    let mut samples = Samples::default();
    while !*stop.borrow() {
        if let Ok(Some(now)) = tokio::task::spawn_blocking(running).await {
            samples.taken += 1;
            let at = started.elapsed().as_millis() as u64;
            for (name, uids) in now.into_iter().filter(|(n, _)| n.starts_with(&prefix)) {
                let entry = samples.most_running.entry(name).or_default();
                if uids.len() > entry.0 {
                    *entry = (uids.len(), at);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
    samples
}

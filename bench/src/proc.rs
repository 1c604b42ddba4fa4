//! What a process costs, read from `/proc`: CPU seconds, RSS, and CPU
//! share over a window.

use std::time::Duration;

/// CPU seconds (user + system) and RSS bytes of process `pid`.
pub fn usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the name).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    Ok((cpu, status_bytes(pid, "VmRSS:")?))
}

/// The most memory process `pid` has held at once (its peak RSS), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// A `/proc/PID/status` field given in KiB, in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(kib * 1024)
}

/// The leader's CPU use over `window`, as a share of one core.
pub async fn idle_cpu(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let (before, _) = usage(pid)?;
    tokio::time::sleep(window).await;
    let (after, _) = usage(pid)?;
    Ok((after - before) / window.as_secs_f64())
}

//! A closed-loop load driver: `concurrency` workers, each issuing one
//! request after another for a fixed time, with every latency recorded.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one level of load achieved.
#[derive(Debug, Clone, Copy)]
pub struct Level {
    pub concurrency: usize,
    pub ops: u64,
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// The `q` quantile (0..=1) of `sorted` latencies; zero when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Runs `op(seq)` from `concurrency` workers for `secs` and reports the
/// throughput and latency. A failed request fails the level: a benchmark
/// that counts errors as work would flatter the system.
pub async fn drive<F, Fut>(concurrency: usize, secs: f64, op: F) -> anyhow::Result<Level>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (op, seq) = (op.clone(), seq.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let at = Instant::now();
                op(seq.fetch_add(1, Ordering::Relaxed)).await?;
                latencies.push(at.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pick = |q: f64| percentile(&all, q);
    Ok(Level {
        concurrency,
        ops: all.len() as u64,
        per_sec: all.len() as f64 / elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    })
}

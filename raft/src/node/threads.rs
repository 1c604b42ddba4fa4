//! Where a node's Raft tasks run: on a tokio runtime of their own, or on
//! the caller's.
//!
//! Invariant kept here: a leader's heartbeats do not queue behind the
//! control plane's work. A new leader starts one actor per sandbox at
//! once; on a shared runtime its Raft core, replication and timer tasks
//! waited behind ten thousand of them, missed the leader lease and lost
//! leadership again. On their own threads they are scheduled by the
//! operating system next to the actors, not behind them.
//!
//! The deterministic simulator keeps everything on its one runtime
//! (`own_runtime: false`): a second runtime would run on real threads and
//! real time.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};

use crate::NodeError;

/// Worker threads of a node's own Raft runtime. Two, so that replication
/// to followers goes on while the core waits for a synced log write
/// (storage calls block their thread).
const WORKERS: usize = 2;

/// The runtime a node's Raft tasks run on, if it has its own.
pub(crate) struct RaftThreads(Option<Runtime>);

impl RaftThreads {
    /// A runtime of its own for node `id`, or none (run on the caller's).
    pub(crate) fn start(own: bool, id: u64) -> Result<Self, NodeError> {
        if !own {
            return Ok(Self(None));
        }
        let runtime = Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name(format!("raft-{id}"))
            .enable_all()
            .build()
            .map_err(|e| NodeError::Internal(format!("start raft threads: {e}")))?;
        Ok(Self(Some(runtime)))
    }

    /// Runs `work` to completion on these threads, so that every task it
    /// spawns (openraft's core, replication, storage workers) lives here.
    pub(crate) async fn run<F>(&self, work: F) -> Result<F::Output, NodeError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            None => Ok(work.await),
            Some(runtime) => runtime
                .spawn(work)
                .await
                .map_err(|e| NodeError::Internal(format!("raft threads: {e}"))),
        }
    }
}

impl Drop for RaftThreads {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which tokio
        // forbids inside another runtime; the node's tasks are stopped by
        // `RaftNode::shutdown` (or abandoned with the process) instead.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_own_threads_and_spawns_there() -> Result<(), NodeError> {
        let own = RaftThreads::start(true, 7)?;
        let (here, spawned) = own
            .run(async {
                let spawned =
                    tokio::spawn(async { std::thread::current().name().map(str::to_string) });
                let here = std::thread::current().name().map(str::to_string);
                (here, spawned.await.ok().flatten())
            })
            .await?;
        assert_eq!(here.as_deref(), Some("raft-7"));
        assert_eq!(spawned.as_deref(), Some("raft-7"));

        let shared = RaftThreads::start(false, 7)?;
        let caller = std::thread::current().name().map(str::to_string);
        let ran_on = shared
            .run(async { std::thread::current().name().map(str::to_string) })
            .await?;
        assert_eq!(ran_on, caller);
        Ok(())
    }
}

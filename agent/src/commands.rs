//! Carrying out the leader's commands.
//!
//! Keeps invariant 3: a command whose term is lower than the highest term
//! seen is refused (`refused: true`, nothing done); a higher term is made
//! durable before the command runs. The check is repeated right before the
//! driver acts, so a command queued behind a newer leader's never runs.
//! An `Ensure` fetches its image first and checks the fence again before
//! it touches any container, so a long pull never carries a command across
//! a term change. Commands for one sandbox run one after another in
//! arrival order (one lane per sandbox name); different sandboxes proceed concurrently. Lanes
//! outlive a control session, so a reconnect never runs two commands for
//! one sandbox at once.
//!
//! `Pull` (the first step of an update) goes through the same fence and the
//! same lane as the sandbox's other commands; it only makes the image local
//! and replies with the sandbox as it is (just the name if nothing exists).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use berth_proto::agent_v1::{
    agent_message, command::Op, AgentMessage, Command, CommandResult, ContainerState, Observed,
};
use tokio::sync::mpsc;

use crate::driver::{Driver, DriverError};
use crate::fence::Fence;

/// A command plus where to send its result (the session's outbound stream).
struct Job {
    command: Command,
    reply: mpsc::Sender<AgentMessage>,
}

/// Sandbox uid -> image, for every Pull running now.
type Pulls = Arc<Mutex<HashMap<String, String>>>;

/// Runs commands on the driver, fenced and serialized per sandbox.
pub struct CommandRunner {
    driver: Arc<dyn Driver>,
    fence: Arc<Fence>,
    lanes: Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
    pulls: Pulls,
    touched: Arc<Mutex<Touched>>,
}

/// Which sandboxes (by uid) commands touched, and when: a delta heartbeat
/// must carry every sandbox whose command result may have told the leader
/// something newer than the previous listing (see `heartbeat`).
#[derive(Debug, Default)]
struct Touched {
    /// Uid -> seq of the last command start or finish.
    at: HashMap<String, u64>,
    /// Uid -> commands running now.
    running: HashMap<String, u32>,
}

impl Touched {
    /// A command for `uid` starts (`+1`) or finishes (`-1`). The seq is
    /// taken under the caller's lock, so a listing that begins after it
    /// always sees it (see [`CommandRunner::begin_listing`]).
    fn touch(&mut self, uid: &str, delta: i32) {
        if uid.is_empty() {
            return;
        }
        self.at.insert(uid.to_string(), next_seq());
        let count = self.running.entry(uid.to_string()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.running.remove(uid);
        }
    }
}

/// The fencing decision for a command with `term`: `None` to go ahead (the
/// term, if newer, is now durably the highest), or the refusal to send.
pub fn admit(fence: &Fence, command_id: u64, term: u64) -> Option<CommandResult> {
    fence.admit(term).err().map(|e| CommandResult {
        command_id,
        ok: false,
        refused: true,
        error: e.to_string(),
        observed: None,
    })
}

/// Wrap a result for the outbound stream.
pub fn result_message(result: CommandResult) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Result(result)),
    }
}

impl CommandRunner {
    pub fn new(driver: Arc<dyn Driver>, fence: Arc<Fence>) -> Self {
        Self {
            driver,
            fence,
            lanes: Mutex::new(HashMap::new()),
            pulls: Pulls::default(),
            touched: Arc::default(),
        }
    }

    /// Begins an inventory listing: returns the seq to stamp it with, and
    /// the uids commands touched since the listing that began at `since`
    /// (started or finished after it, or running now). Forgets touches up
    /// to `since`: listings of one agent begin at growing seqs.
    pub fn begin_listing(&self, since: u64) -> (u64, BTreeSet<String>) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let seq = next_seq();
        touched.at.retain(|_, at| *at > since);
        let mut uids: BTreeSet<String> = touched.at.keys().cloned().collect();
        uids.extend(touched.running.keys().cloned());
        (seq, uids)
    }

    /// Marks every sandbox whose image pull runs now with its progress, so
    /// heartbeats carry it to the leader (and `update --wait` shows it).
    pub fn annotate(&self, inventory: &mut [Observed]) {
        let pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        if pulls.is_empty() {
            return;
        }
        for o in inventory.iter_mut() {
            if let Some(image) = pulls.get(&o.uid) {
                let progress = self
                    .driver
                    .pull_progress(image)
                    .unwrap_or_else(|| "checking".to_string());
                o.pull_progress = format!("pulling {image}: {progress}");
            }
        }
    }

    /// Accept a command: refuse it now if fenced, else queue it on its
    /// sandbox's lane. The result is sent to `reply` when done.
    pub async fn submit(&self, command: Command, reply: mpsc::Sender<AgentMessage>) {
        let id = command.command_id;
        let refusal = admit(&self.fence, id, command.term).or_else(|| match &command.op {
            None => Some(failed(id, "command without an operation".into())),
            Some(_) => None,
        });
        if let Some(result) = refusal {
            tracing::warn!(command_id = id, term = command.term, error = %result.error, "command not run");
            count(kind_of(&command), &result);
            let _ = reply.send(result_message(result)).await;
            return;
        }
        let name = sandbox_of(&command).to_string();
        let mut job = Job { command, reply };
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        // A lane whose worker is gone is replaced (at most once).
        for _ in 0..2 {
            let lane = lanes.entry(name.clone()).or_insert_with(|| {
                spawn_lane(
                    self.driver.clone(),
                    self.fence.clone(),
                    self.pulls.clone(),
                    self.touched.clone(),
                )
            });
            match lane.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    lanes.remove(&name);
                }
            }
        }
        tracing::error!(command_id = id, sandbox = %name, "no worker for sandbox; command dropped");
    }
}

fn spawn_lane(
    driver: Arc<dyn Driver>,
    fence: Arc<Fence>,
    pulls: Pulls,
    touched: Arc<Mutex<Touched>>,
) -> mpsc::UnboundedSender<Job> {
    let touch = move |uid: &str, delta: i32| {
        touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .touch(uid, delta)
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let pulling = match &job.command.op {
                Some(Op::Pull(p)) if !p.uid.is_empty() => Some(p.uid.clone()),
                _ => None,
            };
            if let (Some(uid), Some(Op::Pull(p))) = (&pulling, &job.command.op) {
                let mut map = pulls.lock().unwrap_or_else(|p| p.into_inner());
                map.insert(uid.clone(), p.image.clone());
            }
            let uid = uid_of(&job.command).to_string();
            touch(&uid, 1);
            let result = execute(driver.as_ref(), &fence, job.command).await;
            touch(&uid, -1);
            if let Some(uid) = pulling {
                let mut map = pulls.lock().unwrap_or_else(|p| p.into_inner());
                map.remove(&uid);
            }
            // The session may be gone; the leader will repeat the command.
            let _ = job.reply.send(result_message(result)).await;
        }
    });
    tx
}

/// Run one admitted command (re-checking the fence first), in a span
/// that continues the leader's trace, counted by kind and result.
pub async fn execute(driver: &dyn Driver, fence: &Fence, command: Command) -> CommandResult {
    use tracing::Instrument;
    let kind = kind_of(&command);
    let span = tracing::info_span!(
        "agent.command",
        otel.name = %format!("agent {kind}"),
        sandbox = %sandbox_of(&command),
        command.id = command.command_id,
        berth.term = command.term,
    );
    berth_telemetry::propagate::continue_from(&span, &command.traceparent);
    let result = execute_fenced(driver, fence, command)
        .instrument(span)
        .await;
    count(kind, &result);
    result
}

/// The kind of a command, as metrics and spans name it.
fn kind_of(command: &Command) -> &'static str {
    match &command.op {
        Some(Op::Ensure(_)) => "ensure",
        Some(Op::Stop(_)) => "stop",
        Some(Op::Remove(_)) => "remove",
        Some(Op::Pull(_)) => "pull",
        None => "none",
    }
}

/// Count a finished (or refused) command by kind and result.
fn count(kind: &'static str, result: &CommandResult) {
    let m = berth_telemetry::metrics::get();
    let outcome = if result.refused {
        m.agent_fence_refusals.inc();
        "refused"
    } else if result.ok {
        "ok"
    } else {
        "failed"
    };
    m.agent_commands
        .get_or_create(&berth_telemetry::metrics::KindResult {
            kind: kind.to_string(),
            result: outcome.to_string(),
        })
        .inc();
}

/// Time one driver call, in its own span (`engine <call>`).
async fn engine_call<T>(call: &'static str, fut: impl std::future::Future<Output = T>) -> T {
    use tracing::Instrument;
    let span = tracing::info_span!("engine", otel.name = %format!("engine {call}"), call);
    let start = std::time::Instant::now();
    let out = fut.instrument(span).await;
    berth_telemetry::metrics::get()
        .agent_engine_duration
        .get_or_create(&berth_telemetry::metrics::Call {
            call: call.to_string(),
        })
        .observe(start.elapsed().as_secs_f64());
    out
}

async fn execute_fenced(driver: &dyn Driver, fence: &Fence, command: Command) -> CommandResult {
    let id = command.command_id;
    let sandbox = sandbox_of(&command);
    let refused = |e: crate::fence::FenceError| CommandResult {
        command_id: id,
        refused: true,
        error: e.to_string(),
        ..Default::default()
    };
    let mut highest = match fence.check(command.term) {
        Ok(highest) => highest,
        Err(e) => return refused(e),
    };
    if let Some(Op::Ensure(e)) = &command.op {
        // The slow step (fetching the image) first, then the fence again:
        // a command admitted before a newer leader appeared never acts
        // after it, however long the pull took.
        if let Err(err) = engine_call("pull", driver.pull(&e.image)).await {
            tracing::warn!(command_id = id, %sandbox, op = "ensure", error = %err, "command failed");
            return failed(id, err.to_string());
        }
        highest = match fence.check(command.term) {
            Ok(highest) => highest,
            Err(e) => return refused(e),
        };
    }
    berth_proto::chaos::failpoint("agent-before-execute");
    // The audit line the chaos checker reads: the term a command acts under
    // and the highest term it was checked against (never higher).
    tracing::info!(command_id = id, term = command.term, fence = highest, %sandbox, "executing");
    let (what, outcome) = match &command.op {
        Some(Op::Ensure(e)) => ("ensure", engine_call("ensure", driver.ensure(e)).await),
        Some(Op::Stop(s)) => (
            "stop",
            engine_call("stop", driver.stop(&s.name, &s.uid)).await,
        ),
        Some(Op::Remove(r)) => ("remove", engine_call("remove", driver.remove(r)).await),
        Some(Op::Pull(p)) => (
            "pull",
            engine_call("pull", pull(driver, &p.name, &p.uid, &p.image)).await,
        ),
        None => return failed(id, "command without an operation".into()),
    };
    berth_proto::chaos::failpoint("agent-before-reply");
    match outcome {
        Ok(mut observed) => {
            observed.seq = next_seq();
            tracing::info!(command_id = id, term = command.term, %sandbox, op = what, "command done");
            CommandResult {
                command_id: id,
                ok: true,
                observed: Some(observed),
                ..Default::default()
            }
        }
        Err(e) => {
            tracing::warn!(command_id = id, %sandbox, op = what, error = %e, "command failed");
            failed(id, e.to_string())
        }
    }
}

/// Make the image local, then report the sandbox (`uid`, when given)
/// untouched: its container if it has one, else its volume, else just its
/// name.
async fn pull(
    driver: &dyn Driver,
    name: &str,
    uid: &str,
    image: &str,
) -> Result<Observed, DriverError> {
    driver.pull(image).await?;
    // The pull succeeded; failing to list afterwards must not fail it (the
    // next heartbeat reports the sandbox anyway).
    let inventory = match driver.inventory().await {
        Ok(inventory) => inventory,
        Err(e) => {
            tracing::warn!(sandbox = name, error = %e, "inventory after pull failed");
            vec![]
        }
    };
    let mut mine: Vec<Observed> = inventory
        .into_iter()
        .filter(|o| o.name == name && (uid.is_empty() || o.uid == uid))
        .collect();
    mine.sort_by_key(|o| o.state == ContainerState::Absent as i32);
    Ok(mine.into_iter().next().unwrap_or_else(|| Observed {
        name: name.to_string(),
        ..Default::default()
    }))
}

fn failed(command_id: u64, error: String) -> CommandResult {
    CommandResult {
        command_id,
        error,
        ..Default::default()
    }
}

fn sandbox_of(command: &Command) -> &str {
    match &command.op {
        Some(Op::Ensure(e)) => &e.name,
        Some(Op::Stop(s)) => &s.name,
        Some(Op::Remove(r)) => &r.name,
        Some(Op::Pull(p)) => &p.name,
        None => "",
    }
}

/// The uid of the sandbox a command is for (empty if it names none).
fn uid_of(command: &Command) -> &str {
    match &command.op {
        Some(Op::Ensure(e)) => &e.uid,
        Some(Op::Stop(s)) => &s.uid,
        Some(Op::Remove(r)) => &r.uid,
        Some(Op::Pull(p)) => &p.uid,
        None => "",
    }
}

/// Orders observations on this agent (see `Observed.seq`): taken when an
/// observation is made, so a later observation always has a higher seq.
pub fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Stamps a whole inventory listing with the seq taken before it began.
pub fn stamp(inventory: &mut [berth_proto::agent_v1::Observed], seq: u64) {
    for o in inventory {
        o.seq = seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::MemoryDriver;
    use berth_proto::agent_v1::{Ensure, Pull, Stop};

    fn ensure_cmd(id: u64, term: u64, name: &str) -> Command {
        Command {
            traceparent: String::new(),
            command_id: id,
            term,
            op: Some(Op::Ensure(Ensure {
                name: name.into(),
                uid: "u".into(),
                revision: 1,
                image: "img".into(),
                volume: format!("vol-{name}"),
                ..Default::default()
            })),
        }
    }

    async fn next_result(rx: &mut mpsc::Receiver<AgentMessage>) -> CommandResult {
        match rx.recv().await.unwrap().msg {
            Some(agent_message::Msg::Result(r)) => unseq(r),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    /// Results compared by content, not by when they were observed.
    fn unseq(mut r: CommandResult) -> CommandResult {
        if let Some(o) = r.observed.as_mut() {
            assert!(o.seq > 0, "results carry a seq");
            o.seq = 0;
        }
        r
    }

    #[test]
    fn heartbeats_carry_the_progress_of_a_running_pull() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Arc::new(Fence::load(dir.path()).unwrap());
        let runner = CommandRunner::new(Arc::new(MemoryDriver::new()), fence);
        let mut inventory = vec![
            Observed {
                name: "a".into(),
                uid: "u1".into(),
                ..Default::default()
            },
            Observed {
                name: "b".into(),
                uid: "u2".into(),
                ..Default::default()
            },
        ];
        runner
            .pulls
            .lock()
            .unwrap()
            .insert("u1".into(), "img:v2".into());
        runner.annotate(&mut inventory);
        assert_eq!(inventory[0].pull_progress, "pulling img:v2: checking");
        assert_eq!(inventory[1].pull_progress, "");
    }

    #[test]
    fn fencing_decision() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Fence::load(dir.path()).unwrap();
        fence.observe(5).unwrap();
        let refused = admit(&fence, 7, 4).unwrap();
        assert!(refused.refused && !refused.ok);
        assert_eq!(refused.command_id, 7);
        assert_eq!(refused.error, "stale term 4 < highest 5");
        assert!(
            admit(&fence, 8, 5).is_none(),
            "same term is the current leader"
        );
        assert!(admit(&fence, 9, 6).is_none(), "a newer leader is accepted");
        assert_eq!(
            Fence::load(dir.path()).unwrap().highest(),
            6,
            "and persisted"
        );
        assert!(
            admit(&fence, 10, 5).is_some(),
            "the old leader is now fenced"
        );
    }

    #[tokio::test]
    async fn stale_commands_do_nothing_and_fresh_ones_run_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Arc::new(Fence::load(dir.path()).unwrap());
        fence.observe(3).unwrap();
        let driver = Arc::new(MemoryDriver::new());
        let runner = CommandRunner::new(driver.clone(), fence.clone());
        let (tx, mut rx) = mpsc::channel(8);

        runner.submit(ensure_cmd(1, 2, "a"), tx.clone()).await;
        let r = next_result(&mut rx).await;
        assert!(r.refused && !r.ok && r.command_id == 1);
        assert!(
            driver.inventory().await.unwrap().is_empty(),
            "nothing was done"
        );

        runner.submit(ensure_cmd(2, 3, "a"), tx.clone()).await;
        let stop = Command {
            traceparent: String::new(),
            command_id: 3,
            term: 3,
            op: Some(Op::Stop(Stop {
                name: "a".into(),
                uid: "u".into(),
            })),
        };
        runner.submit(stop, tx.clone()).await;
        let r = next_result(&mut rx).await;
        assert!(r.ok && r.command_id == 2, "{r:?}");
        let r = next_result(&mut rx).await;
        assert!(r.ok && r.command_id == 3, "{r:?}");
        let state = r.observed.unwrap().state;
        assert_eq!(state, ContainerState::Exited as i32);
    }

    #[tokio::test]
    async fn queued_command_is_refused_if_a_newer_term_arrived_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Fence::load(dir.path()).unwrap();
        fence.observe(3).unwrap();
        let driver = MemoryDriver::new();
        // Admitted under term 3, then a term-4 leader appears before it runs.
        fence.observe(4).unwrap();
        let r = execute(&driver, &fence, ensure_cmd(1, 3, "a")).await;
        assert!(r.refused && !r.ok);
        assert!(driver.inventory().await.unwrap().is_empty());
    }

    /// A driver whose image pull takes long enough for a newer leader to
    /// appear meanwhile (it raises the fence while "pulling").
    struct NewLeaderDuringPull {
        inner: MemoryDriver,
        fence: Arc<Fence>,
        new_term: u64,
    }

    #[tonic::async_trait]
    impl Driver for NewLeaderDuringPull {
        fn kind(&self) -> &'static str {
            "test"
        }
        async fn inventory(&self) -> Result<Vec<Observed>, DriverError> {
            self.inner.inventory().await
        }
        async fn pull(&self, image: &str) -> Result<(), DriverError> {
            self.fence.observe(self.new_term).unwrap();
            self.inner.pull(image).await
        }
        async fn ensure(&self, e: &berth_proto::agent_v1::Ensure) -> Result<Observed, DriverError> {
            self.inner.ensure(e).await
        }
        async fn stop(&self, name: &str, uid: &str) -> Result<Observed, DriverError> {
            self.inner.stop(name, uid).await
        }
        async fn remove(&self, r: &berth_proto::agent_v1::Remove) -> Result<Observed, DriverError> {
            self.inner.remove(r).await
        }
        async fn exec(
            &self,
            name: &str,
            uid: &str,
            command: Vec<String>,
        ) -> Result<crate::driver::ExecStream, DriverError> {
            self.inner.exec(name, uid, command).await
        }
        async fn logs(
            &self,
            name: &str,
            uid: &str,
            follow: bool,
        ) -> Result<crate::driver::LogStream, DriverError> {
            self.inner.logs(name, uid, follow).await
        }
        async fn volume_size(&self, volume: &str) -> Result<u64, DriverError> {
            self.inner.volume_size(volume).await
        }
    }

    /// An Ensure admitted under term 3 whose image pull outlasts term 3: it
    /// is refused before it touches anything.
    #[tokio::test]
    async fn a_command_never_acts_across_a_term_change_during_its_pull() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Arc::new(Fence::load(dir.path()).unwrap());
        fence.observe(3).unwrap();
        let driver = NewLeaderDuringPull {
            inner: MemoryDriver::new(),
            fence: fence.clone(),
            new_term: 4,
        };
        let r = execute(&driver, &fence, ensure_cmd(1, 3, "a")).await;
        assert!(r.refused && !r.ok, "{r:?}");
        assert_eq!(r.error, "stale term 3 < highest 4");
        assert!(
            driver.inventory().await.unwrap().is_empty(),
            "nothing created"
        );
        // Under the new term the same Ensure runs.
        let r = execute(&driver, &fence, ensure_cmd(2, 4, "a")).await;
        assert!(r.ok, "{r:?}");
    }

    fn pull_cmd(id: u64, term: u64, name: &str, image: &str) -> Command {
        Command {
            traceparent: String::new(),
            command_id: id,
            term,
            op: Some(Op::Pull(Pull {
                name: name.into(),
                image: image.into(),
                uid: String::new(),
            })),
        }
    }

    #[tokio::test]
    async fn pull_is_fenced_serialized_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Arc::new(Fence::load(dir.path()).unwrap());
        fence.observe(3).unwrap();
        let driver = Arc::new(MemoryDriver::new());
        let runner = CommandRunner::new(driver.clone(), fence.clone());
        let (tx, mut rx) = mpsc::channel(8);

        // Stale: refused before anything runs (even for a missing image).
        for (id, image) in [(1, "img:v2"), (2, "does-not-exist:v2")] {
            runner.submit(pull_cmd(id, 2, "a", image), tx.clone()).await;
            let r = next_result(&mut rx).await;
            assert!(r.refused && !r.ok && r.command_id == id, "{r:?}");
            assert_eq!(r.error, "stale term 2 < highest 3");
        }

        // Nothing there yet: ok, with just the name.
        runner
            .submit(pull_cmd(3, 3, "a", "img:v2"), tx.clone())
            .await;
        let r = next_result(&mut rx).await;
        assert!(r.ok && !r.refused, "{r:?}");
        let just_name = Observed {
            name: "a".into(),
            ..Default::default()
        };
        assert_eq!(r.observed, Some(just_name));

        // Same lane as Ensure: the pull reports the container it follows,
        // untouched.
        runner.submit(ensure_cmd(4, 3, "a"), tx.clone()).await;
        runner
            .submit(pull_cmd(5, 3, "a", "img:v2"), tx.clone())
            .await;
        let ensured = next_result(&mut rx).await.observed.unwrap();
        let r = next_result(&mut rx).await;
        assert!(r.ok && r.command_id == 5, "{r:?}");
        assert_eq!(r.observed.as_ref(), Some(&ensured));
        assert_eq!(ensured.state, ContainerState::Running as i32);

        // A missing image: not ok, the reason given, nothing changed.
        runner
            .submit(pull_cmd(6, 3, "a", "does-not-exist:v2"), tx.clone())
            .await;
        let r = next_result(&mut rx).await;
        assert!(!r.ok && !r.refused, "{r:?}");
        assert!(r.error.contains("not found locally"), "{}", r.error);
        assert_eq!(driver.inventory().await.unwrap(), vec![ensured]);

        // Admitted, then a newer leader appears before it runs: refused.
        fence.observe(4).unwrap();
        let r = execute(driver.as_ref(), &fence, pull_cmd(7, 3, "a", "img:v2")).await;
        assert!(r.refused && !r.ok, "{r:?}");
    }
}

//! The simulated world every seed runs in: installs the process's seams
//! once (`berth_proto::net` over turmoil's TCP, `berth_proto::clock` over
//! simulated time with a skew per host, `berth_proto::entropy` from the
//! seed, a failpoint observer and a tracing layer), and resets their state
//! before each seed. Everything here is process-global: one seed runs at a
//! time per process (parallel seeds run in separate worker processes).
//!
//! Keeps the determinism of a seed: ids, timeouts, timestamps and the event
//! trace depend only on the seed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use berth_proto::net::{BoxFuture, Conn, Incoming, Io, Net};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Per-seed state of the world.
#[derive(Default)]
pub struct SeedState {
    rng: Option<StdRng>,
    /// tokio runtime id of each running host -> (host name, clock skew ms).
    hosts: BTreeMap<String, (String, i64)>,
    /// The event trace: one readable line per event.
    pub trace: Vec<String>,
    /// Failpoints reached: (host, point), drained by the fault driver.
    pub reached: Vec<(String, String)>,
    /// Agents' "executing" audit events: (host, term, fence).
    pub executed: Vec<(String, u64, u64)>,
    /// Panics seen (message).
    pub panics: Vec<String>,
    /// Simulated time as the fault driver last saw it (outside hosts).
    pub driver_ms: u64,
}

fn state() -> MutexGuard<'static, SeedState> {
    static STATE: OnceLock<Mutex<SeedState>> = OnceLock::new();
    STATE
        .get_or_init(|| Mutex::new(SeedState::default()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the world's per-seed state.
pub fn with<R>(f: impl FnOnce(&mut SeedState) -> R) -> R {
    f(&mut state())
}

/// Installs the seams (first call only) and resets the per-seed state.
pub fn reset(seed: u64) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(install);
    let mut st = state();
    *st = SeedState::default();
    st.rng = Some(StdRng::seed_from_u64(seed ^ 0x6265_7274_6873_696d));
    drop(st);
    align_task_ids();
}

fn install() {
    let ok = berth_proto::net::set(Arc::new(TurmoilNet)).is_ok()
        && berth_proto::clock::set(Arc::new(sim_clock)).is_ok()
        && berth_proto::entropy::set(Arc::new(fill)).is_ok()
        && berth_proto::chaos::observe_failpoints(Arc::new(reached)).is_ok();
    if !ok {
        eprintln!("berth-chaos sim: a seam was already installed in this process");
    }
    // BERTH_SIM_LOG=debug shows more of berth in a replayed seed's trace;
    // it changes the trace, never what happens.
    let level = match std::env::var("BERTH_SIM_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let subscriber = tracing_subscriber::registry().with(Capture.with_filter(
        tracing_subscriber::filter::Targets::new().with_targets([
            ("berth_control", level),
            ("berth_agent", level),
            ("berth_raft", level),
            ("openraft", tracing::Level::WARN),
        ]),
    ));
    let _ = tracing::subscriber::set_global_default(subscriber);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let line = format!("PANIC on {}: {info}", current_host());
        with(|st| {
            st.panics.push(line.clone());
            st.trace.push(line);
        });
        if std::env::var_os("BERTH_SIM_PANIC_TRACE").is_some() {
            previous(info);
        }
    }));
}

/// Every simulated host has its own tokio runtime: its id tells which
/// host's code is running. (`Handle::id` needs `--cfg tokio_unstable`, set
/// in `.cargo/config.toml`; without it every host is "sim", unskewed, and
/// [`deterministic`] is false.)
#[cfg(tokio_unstable)]
fn runtime_id() -> Option<String> {
    Some(tokio::runtime::Handle::try_current().ok()?.id().to_string())
}

#[cfg(not(tokio_unstable))]
fn runtime_id() -> Option<String> {
    None
}

/// Whether this build can replay seeds exactly: turmoil seeds each host's
/// tokio RNG (which picks `select!` branches) only under
/// `--cfg tokio_unstable` (a `RUSTFLAGS` variable overrides the one in
/// `.cargo/config.toml`).
pub fn deterministic() -> bool {
    cfg!(tokio_unstable)
}

/// Called first in every host: names the host's runtime and sets its skew.
pub fn enter_host(name: &str, skew_ms: i64) {
    if let Some(id) = runtime_id() {
        with(|st| {
            st.hosts.insert(id, (name.to_string(), skew_ms));
        });
    }
}

fn current() -> Option<(String, i64)> {
    let id = runtime_id()?;
    with(|st| st.hosts.get(&id).cloned())
}

/// The host whose code is running now ("sim" outside any host).
pub fn current_host() -> String {
    current().map_or_else(|| "sim".to_string(), |(name, _)| name)
}

/// Milliseconds of simulated time.
pub fn sim_ms() -> u64 {
    match turmoil::sim_elapsed() {
        Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        None => with(|st| st.driver_ms),
    }
}

fn sim_clock() -> i64 {
    let since = turmoil::since_epoch().map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    since + current().map_or(0, |(_, skew)| skew)
}

fn fill(buf: &mut [u8]) {
    with(|st| match st.rng.as_mut() {
        Some(rng) => rng.fill_bytes(buf),
        None => buf.fill(0),
    });
}

fn reached(point: &str) {
    let host = current_host();
    with(|st| st.reached.push((host, point.to_string())));
}

/// Appends a line to the trace (stamped with simulated time).
pub fn note(line: impl std::fmt::Display) {
    let line = format!("{:>7} {line}", sim_ms());
    with(|st| st.trace.push(line));
}

/// FNV-1a over the trace: the seed's fingerprint.
pub fn trace_hash(lines: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for b in line.bytes().chain([b'\n']) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// tokio's current-thread runtime shards its task list by the
/// process-global task id, and a crashed host drops its tasks shard by
/// shard: the order sockets close would depend on how many tasks earlier
/// seeds spawned. Bring the counter to the same residue before each seed.
fn align_task_ids() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        for _ in 0..1024 {
            let Ok(id) = tokio::spawn(async { tokio::task::id() }).await else {
                return;
            };
            if id.to_string().parse::<u64>().is_ok_and(|n| n % 64 == 63) {
                return;
            }
        }
    });
}

/// turmoil's simulated TCP behind `berth_proto::net`.
struct TurmoilNet;

impl Net for TurmoilNet {
    fn dial(&self, host: String, port: u16) -> BoxFuture<io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    fn listen(&self, addr: String) -> BoxFuture<io::Result<Incoming>> {
        Box::pin(async move {
            let port = addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .ok_or_else(|| io::Error::other(format!("bad listen address {addr}")))?;
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener
                    .accept()
                    .await
                    .map(|(stream, _)| Conn(Box::new(stream)));
                Some((accepted, listener))
            });
            Ok(Box::pin(incoming) as Incoming)
        })
    }
}

/// Captures tracing events into the trace, and the agents' "executing"
/// audit events for the stale-term check.
struct Capture;

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
    term: Option<u64>,
    fence: Option<u64>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "term" => self.term = Some(value),
            "fence" => self.fence = Some(value),
            _ => {}
        }
        let _ = write!(self.rest, " {}={value}", field.name());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let host = current_host();
        let meta = event.metadata();
        let line = format!(
            "{:>7} {host} {} {}: {}{}",
            sim_ms(),
            meta.level(),
            meta.target(),
            fields.message,
            fields.rest
        );
        with(|st| {
            if fields.message == "executing" {
                if let (Some(term), Some(fence)) = (fields.term, fields.fence) {
                    st.executed.push((host.clone(), term, fence));
                }
            }
            st.trace.push(line);
        });
    }
}

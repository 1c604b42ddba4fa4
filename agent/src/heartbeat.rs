//! Heartbeats: every second, the agent lists its inventory and tells the
//! leader what changed since the session's previous heartbeat (or, to a
//! leader that predates deltas, everything).
//!
//! Keeps the leader's copy of the inventory exact (invariant 2 rebuilds it
//! from these reports): the session stream is ordered and begins with a
//! full inventory (Register), and each delta carries every observation
//! that differs from the previous listing plus every sandbox a command
//! touched since that listing began, so applying the delta by the seq rule
//! gives the leader what a full listing would have. A full heartbeat every
//! [`FULL_EVERY`] seconds resyncs anyway. A driver that can tell nothing
//! changed (its generation) is not listed at all while no command runs, so
//! an idle agent of 100,000 sandboxes does next to nothing each second.
//! If the engine cannot be listed, nothing new is said (an empty inventory
//! would read as "everything vanished").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent_v1::{agent_message, AgentMessage, Heartbeat, Observed};
use berth_proto::inventory::{by_uid, delta};
use tokio::sync::mpsc;

use crate::commands::{stamp, CommandRunner};
use crate::driver::Driver;

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// To a leader that takes deltas, every this many heartbeats is full.
const FULL_EVERY: u32 = 60;

/// Sends a heartbeat every second until the session closes. `registered`
/// is the inventory the session's Register carried, listed at `seq`.
pub(crate) async fn heartbeats(
    driver: Arc<dyn Driver>,
    runner: Arc<CommandRunner>,
    tx: mpsc::Sender<AgentMessage>,
    accepts_delta: bool,
    registered: Vec<Observed>,
    seq: u64,
) {
    let start = tokio::time::Instant::now() + HEARTBEAT_INTERVAL;
    let mut tick = tokio::time::interval_at(start, HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the leader has from this session, and the seq it was listed at.
    let mut reported = by_uid(registered);
    let mut base = seq;
    let mut since_full = 0;
    // The driver's generation read before the last listing began.
    let mut listed_generation = None;
    loop {
        tick.tick().await;
        since_full += 1;
        let (seq, touched) = runner.begin_listing(base);
        let generation = driver.generation();
        let delta_due = accepts_delta && since_full < FULL_EVERY;
        if delta_due
            && touched.is_empty()
            && generation.is_some()
            && generation == listed_generation
        {
            // Nothing changed and no command ran: a listing now would be
            // the last one, so say so without making it.
            base = seq;
            if send(&tx, empty_delta(seq)).await.is_err() {
                return;
            }
            continue;
        }
        let hb = match driver.inventory().await {
            Ok(mut listing) => {
                stamp(&mut listing, seq);
                runner.annotate(&mut listing);
                let current = by_uid(listing);
                let hb = if delta_due {
                    let (changed, gone) = delta(&reported, &current, &touched);
                    Heartbeat {
                        inventory: changed,
                        seq,
                        delta: true,
                        gone,
                        ..Heartbeat::default()
                    }
                } else {
                    since_full = 0;
                    full(&current, seq)
                };
                (reported, base, listed_generation) = (current, seq, generation);
                hb
            }
            Err(e) => {
                tracing::warn!(error = %e, "inventory failed; saying nothing new");
                listed_generation = None;
                match accepts_delta {
                    true => empty_delta(base),
                    false => full(&reported, base),
                }
            }
        };
        if send(&tx, hb).await.is_err() {
            return;
        }
    }
}

async fn send(
    tx: &mpsc::Sender<AgentMessage>,
    hb: Heartbeat,
) -> Result<(), mpsc::error::SendError<AgentMessage>> {
    let message = AgentMessage {
        msg: Some(agent_message::Msg::Heartbeat(hb)),
    };
    tx.send(message).await
}

/// Nothing new since the listing at `seq`.
fn empty_delta(seq: u64) -> Heartbeat {
    Heartbeat {
        seq,
        delta: true,
        ..Heartbeat::default()
    }
}

fn full(inventory: &BTreeMap<String, Observed>, seq: u64) -> Heartbeat {
    Heartbeat {
        inventory: inventory.values().cloned().collect(),
        seq,
        ..Heartbeat::default()
    }
}

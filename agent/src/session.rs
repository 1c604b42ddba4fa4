//! The control session: one bidirectional stream to the control leader.
//!
//! ```text
//!  pick address (redirect target first, else round-robin over --control)
//!    └ connect ─ send Register{inventory, highest_term}
//!        ├ Redirect{leader_addr} ─▶ prefer leader_addr, reconnect at once
//!        └ Registered{term} ─▶ fence.observe(term)
//!             ├ every 1 s: Heartbeat{what changed since the last one}
//!             │  (see `heartbeat`; all of it to a leader without deltas)
//!             └ Command ─▶ CommandRunner (fenced, serialized per sandbox)
//!  stream error/end ─▶ back off (200 ms doubling to 2 s) ─▶ reconnect
//! ```
//!
//! HTTP/2 keepalives (1 s interval, 2 s timeout) detect a dead or paused
//! leader within seconds. Keeps invariant 3 (via the fence) and never
//! deletes anything on disconnect: sandboxes keep running without a leader.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent_v1::{
    agent_control_client::AgentControlClient, agent_message, control_message, AgentMessage,
    Redirect, Register,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::commands::CommandRunner;
use crate::driver::Driver;
use crate::fence::Fence;

const FIRST_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Redirects followed without a pause before backing off (breaks loops).
const FREE_REDIRECTS: u32 = 3;

/// What this agent tells the control plane about itself.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Control node addresses (`host:port` or `http://host:port`).
    pub control: Vec<String>,
    pub node_name: String,
    /// This agent instance's persisted random id.
    pub instance_id: String,
    /// `host:port` of this agent's AgentData service.
    pub data_addr: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Who the control nodes must be: with TLS on, only a certificate
    /// naming this identity is accepted (`server.<cluster>.berth`).
    pub control_identity: berth_tls::Identity,
}

/// Why one session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid control address {addr:?}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("inventory for registration failed: {0}")]
    Inventory(#[from] crate::driver::DriverError),
    #[error("session stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("no reply to Register within {FIRST_REPLY_TIMEOUT:?}")]
    NoReply,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("control node at term {term} is behind our highest term {highest}; not a leader")]
    StaleLeader { term: u64, highest: u64 },
    #[error("the leader refused this agent: {0}")]
    Refused(String),
    #[error(transparent)]
    Fence(#[from] crate::fence::FenceError),
}

/// How a session that did not fail ended.
enum Outcome {
    Redirected(Redirect),
    /// Registered, then the stream ended (leader gone or stepped down).
    Ended,
}

/// Everything a session needs; lives for the whole process.
pub struct Session {
    cfg: SessionConfig,
    driver: Arc<dyn Driver>,
    fence: Arc<Fence>,
    runner: Arc<CommandRunner>,
}

impl Session {
    pub fn new(cfg: SessionConfig, driver: Arc<dyn Driver>, fence: Arc<Fence>) -> Self {
        let runner = Arc::new(CommandRunner::new(driver.clone(), fence.clone()));
        Self {
            cfg,
            driver,
            fence,
            runner,
        }
    }

    /// Stay connected to the leader forever.
    pub async fn run(&self) {
        let mut next = 0usize;
        let mut preferred: Option<String> = None;
        let mut backoff = BACKOFF_MIN;
        let mut redirects = 0u32;
        loop {
            let addr = match preferred.take() {
                Some(addr) => addr,
                None if self.cfg.control.is_empty() => {
                    tracing::error!("no control addresses configured");
                    return;
                }
                None => {
                    let addr = self.cfg.control[next % self.cfg.control.len()].clone();
                    next = next.wrapping_add(1);
                    addr
                }
            };
            let mut registered = false;
            let outcome = self.once(&addr, &mut registered).await;
            if registered {
                (backoff, redirects) = (BACKOFF_MIN, 0);
            }
            let pause = match outcome {
                Ok(Outcome::Redirected(r)) => {
                    tracing::info!(from = %addr, leader_id = r.leader_id, leader_addr = %r.leader_addr, "redirected");
                    redirects = redirects.saturating_add(1);
                    if !r.leader_addr.is_empty() && r.leader_id != 0 {
                        preferred = Some(r.leader_addr);
                    }
                    redirects > FREE_REDIRECTS || preferred.is_none()
                }
                Ok(Outcome::Ended) => {
                    tracing::warn!(%addr, "control session ended");
                    true
                }
                Err(e @ SessionError::Refused(_)) => {
                    tracing::error!(%addr, error = %e, "not accepted by the control plane; retrying");
                    backoff = BACKOFF_MAX;
                    true
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %chain(&e), "control session failed");
                    true
                }
            };
            if pause {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// One session with `addr`; sets `registered` once the leader accepts.
    async fn once(&self, addr: &str, registered: &mut bool) -> Result<Outcome, SessionError> {
        let endpoint = berth_proto::dial::endpoint_for(addr, &self.cfg.control_identity)
            .map_err(|source| SessionError::Address {
                addr: addr.to_string(),
                source,
            })?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        let channel = berth_proto::dial::connect(endpoint)
            .await
            .map_err(|source| SessionError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let inventory_seq = crate::commands::next_seq();
        let mut inventory = self.driver.inventory().await?;
        crate::commands::stamp(&mut inventory, inventory_seq);
        let (tx, rx) = mpsc::channel(256);
        let register = Register {
            node_name: self.cfg.node_name.clone(),
            driver: self.driver.kind().to_string(),
            cpus: self.cfg.cpus,
            memory_bytes: self.cfg.memory_bytes,
            data_addr: self.cfg.data_addr.clone(),
            inventory: inventory.clone(),
            highest_term: self.fence.highest(),
            inventory_seq,
            instance_id: self.cfg.instance_id.clone(),
        };
        let _ = tx
            .send(message(agent_message::Msg::Register(register)))
            .await;
        let mut inbound = AgentControlClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(FIRST_REPLY_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionError::NoReply)??;
        let accepted = match first.and_then(|m| m.msg) {
            Some(control_message::Msg::Redirect(r)) => return Ok(Outcome::Redirected(r)),
            Some(control_message::Msg::Registered(r)) => r,
            Some(control_message::Msg::Refused(r)) => return Err(SessionError::Refused(r.reason)),
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected Registered or Redirect first, got {other:?}"
                )))
            }
        };
        let highest = self.fence.highest();
        if accepted.term < highest {
            return Err(SessionError::StaleLeader {
                term: accepted.term,
                highest,
            });
        }
        self.fence.observe(accepted.term)?;
        *registered = true;
        tracing::info!(%addr, leader_id = accepted.leader_id, term = accepted.term, node = %self.cfg.node_name, "registered with leader");

        let heartbeat = tokio::spawn(crate::heartbeat::heartbeats(
            self.driver.clone(),
            self.runner.clone(),
            tx.clone(),
            accepted.accepts_delta,
            inventory,
            inventory_seq,
        ));
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        let metrics = berth_telemetry::metrics::get();
        metrics.agent_sessions.inc();
        metrics.agent_connected.set(1);
        let _disconnected = ConnectedGauge;
        while let Some(msg) = inbound.message().await? {
            match msg.msg {
                Some(control_message::Msg::Command(c)) => self.runner.submit(c, tx.clone()).await,
                Some(control_message::Msg::Redirect(r)) => return Ok(Outcome::Redirected(r)),
                Some(control_message::Msg::Registered(r)) => self.fence.observe(r.term)?,
                Some(control_message::Msg::Refused(r)) => {
                    return Err(SessionError::Refused(r.reason))
                }
                None => {}
            }
        }
        Ok(Outcome::Ended)
    }
}

/// Sets the connected gauge back to 0 when a session ends, however.
struct ConnectedGauge;

impl Drop for ConnectedGauge {
    fn drop(&mut self) {
        berth_telemetry::metrics::get().agent_connected.set(0);
    }
}

/// An error with its sources ("connect failed: transport error: refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

fn message(msg: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(msg) }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

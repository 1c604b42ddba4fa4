//! The simulated workload: clients on their own host calling the real
//! `berth.v1` API over the simulated network (create, update to good,
//! crashing and missing images, rollback, stop, start, delete, get), each
//! call recorded in the history with simulated times. A call whose answer
//! is lost is retried through another node with the same request id. After
//! the workload, the settle phase waits (bounded) until every operation is
//! terminal and every delete finished, and reads the final state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1::sandbox_service_client::SandboxServiceClient;
use berth_proto::v1::{
    CreateSandboxRequest, DeleteSandboxRequest, GetSandboxRequest, ListSandboxesRequest, Phase,
    RollbackSandboxRequest, SandboxSpec, StartSandboxRequest, StopSandboxRequest,
    UpdateSandboxRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::cluster::control_addr;
use super::world;
use crate::history::{History, Op, OpKind, Outcome, Value};

pub const IMAGE_V1: &str = "localhost/sim-app:v1";
pub const IMAGE_V2: &str = "localhost/sim-app:v2";
/// The memory driver starts this and it exits at once.
pub const IMAGE_CRASH: &str = "localhost/sim-app:crashes-on-start";
/// The memory driver cannot pull this.
pub const IMAGE_MISSING: &str = "localhost/sim-app:does-not-exist";

const CALL_TIMEOUT: Duration = Duration::from_secs(6);
const RETRIES: usize = 2;

/// How the workload runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub controls: Vec<String>,
    pub names: Vec<String>,
    pub clients: usize,
    /// How long clients issue operations.
    pub work: Duration,
    /// Bound on the settle phase after the faults heal.
    pub settle: Duration,
}

/// A sandbox as the final read found it.
#[derive(Debug, Clone)]
pub struct Final {
    pub uid: String,
    pub phase: i32,
    pub operation_terminal: bool,
}

/// What the workload host reports back.
#[derive(Debug, Default)]
pub struct Report {
    /// The final state by name, once settled (None: never read).
    pub finals: Option<BTreeMap<String, Final>>,
    /// Names still not settled when the bound ran out.
    pub unsettled: Vec<String>,
    /// When the faults healed and when everything settled (ms).
    pub healed_ms: u64,
    pub settled_ms: Option<u64>,
}

pub type Shared = Arc<Mutex<Report>>;

enum Call {
    Done(Result<Value, Status>),
    NotSent(String),
}

async fn connect(addr: &str) -> Option<SandboxServiceClient<Channel>> {
    let endpoint = berth_proto::dial::endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(CALL_TIMEOUT);
    let channel =
        tokio::time::timeout(Duration::from_secs(2), berth_proto::dial::connect(endpoint))
            .await
            .ok()?
            .ok()?;
    Some(SandboxServiceClient::new(channel))
}

/// The whole workload: clients, then settle and final reads. `heal` is
/// raised when the clients are done, so the fault driver heals everything.
pub async fn run(
    plan: Plan,
    history: Arc<History>,
    report: Shared,
    heal: Arc<std::sync::atomic::AtomicBool>,
) -> turmoil::Result {
    world::enter_host("w", 0);
    let mut clients = Vec::new();
    for index in 0..plan.clients {
        clients.push(tokio::spawn(client(plan.clone(), index, history.clone())));
    }
    for c in clients {
        let _ = c.await;
    }
    heal.store(true, std::sync::atomic::Ordering::SeqCst);
    let healed_ms = world::sim_ms();
    world::note("w workload done; faults heal");
    let (finals, unsettled, settled_ms) = settle(&plan).await;
    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
    r.finals = finals;
    r.unsettled = unsettled;
    r.healed_ms = healed_ms;
    r.settled_ms = settled_ms;
    Ok(())
}

async fn client(plan: Plan, index: usize, history: Arc<History>) {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9));
    let mut seq = 0u64;
    while world::sim_ms() < plan.work.as_millis() as u64 {
        seq += 1;
        let sandbox = plan.names[rng.gen_range(0..plan.names.len())].clone();
        let kind = pick(&mut rng);
        let id = (index as u64) << 32 | seq;
        run_op(&plan, &mut rng, &history, index, id, sandbox, kind).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
    }
}

fn pick(rng: &mut StdRng) -> OpKind {
    match rng.gen_range(0..100) {
        0..=17 => OpKind::Create,
        18..=27 => OpKind::Delete,
        28..=43 => OpKind::Update {
            image: if rng.gen_bool(0.5) {
                IMAGE_V1
            } else {
                IMAGE_V2
            }
            .to_string(),
        },
        44..=49 => OpKind::Update {
            image: IMAGE_CRASH.to_string(),
        },
        50..=55 => OpKind::Update {
            image: IMAGE_MISSING.to_string(),
        },
        56..=65 => OpKind::Rollback,
        66..=73 => OpKind::Stop,
        74..=83 => OpKind::Start,
        _ => OpKind::Get,
    }
}

fn ambiguous(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

async fn run_op(
    plan: &Plan,
    rng: &mut StdRng,
    history: &History,
    client: usize,
    id: u64,
    sandbox: String,
    kind: OpKind,
) {
    let invoke_ms = world::sim_ms();
    let request_id = format!("sim-{}-{id}", plan.seed);
    let mut outcome = Outcome::Unknown("not attempted".to_string());
    let mut complete_ms = None;
    let first = rng.gen_range(0..plan.controls.len());
    for attempt in 0..=RETRIES {
        let addr = control_addr(&plan.controls[(first + attempt) % plan.controls.len()]);
        match call(&addr, &sandbox, &kind, &request_id).await {
            Call::NotSent(why) if attempt == 0 => {
                outcome = Outcome::Failed {
                    code: "NotSent".to_string(),
                    message: why,
                };
                complete_ms = Some(world::sim_ms());
                break;
            }
            Call::NotSent(why) => outcome = Outcome::Unknown(why),
            Call::Done(Ok(value)) => {
                outcome = Outcome::Ok(value);
                complete_ms = Some(world::sim_ms());
                break;
            }
            Call::Done(Err(status)) if ambiguous(&status) => {
                outcome = Outcome::Unknown(status.message().to_string());
                if kind == OpKind::Get {
                    break;
                }
            }
            Call::Done(Err(status)) => {
                outcome = Outcome::Failed {
                    code: format!("{:?}", status.code()),
                    message: status.message().to_string(),
                };
                complete_ms = Some(world::sim_ms());
                break;
            }
        }
    }
    world::note(format!(
        "w client {client} {} {sandbox} -> {outcome:?}",
        kind.name()
    ));
    history.record(Op {
        id,
        client,
        sandbox,
        kind,
        invoke_ms,
        complete_ms,
        outcome,
    });
}

async fn call(addr: &str, sandbox: &str, kind: &OpKind, request_id: &str) -> Call {
    let Some(mut client) = connect(addr).await else {
        return Call::NotSent(format!("{addr} unreachable"));
    };
    let name = sandbox.to_string();
    let request_id = request_id.to_string();
    let result = match kind {
        OpKind::Create => client
            .create_sandbox(CreateSandboxRequest {
                name,
                spec: Some(SandboxSpec {
                    image: IMAGE_V1.to_string(),
                    ..Default::default()
                }),
                request_id,
                ..Default::default()
            })
            .await
            .map(|r| Value::Uid(r.into_inner().uid)),
        OpKind::Delete => client
            .delete_sandbox(DeleteSandboxRequest {
                name,
                keep_volume: false,
                request_id,
            })
            .await
            .map(|_| Value::None),
        OpKind::Update { image } => client
            .update_sandbox(UpdateSandboxRequest {
                name,
                image: Some(image.clone()),
                min_healthy_ms: Some(500),
                health_timeout_ms: Some(4_000),
                request_id,
                ..Default::default()
            })
            .await
            .map(|r| Value::Revision(r.into_inner().to_revision)),
        OpKind::Rollback => client
            .rollback_sandbox(RollbackSandboxRequest {
                name,
                to_revision: None,
                request_id,
            })
            .await
            .map(|_| Value::None),
        OpKind::Stop => client
            .stop_sandbox(StopSandboxRequest { name, request_id })
            .await
            .map(|_| Value::None),
        OpKind::Start => client
            .start_sandbox(StartSandboxRequest { name, request_id })
            .await
            .map(|_| Value::None),
        OpKind::Get | OpKind::Marker { .. } => client
            .get_sandbox(GetSandboxRequest {
                name,
                consistency: 0,
            })
            .await
            .map(|r| {
                let s = r.into_inner();
                Value::Sandbox {
                    deleting: s.phase == Phase::Deleting as i32,
                    uid: s.uid,
                }
            }),
    };
    Call::Done(result)
}

type Settled = (Option<BTreeMap<String, Final>>, Vec<String>, Option<u64>);

/// Polls the cluster until no operation is in flight and no sandbox is
/// being deleted, bounded by the plan's settle time.
async fn settle(plan: &Plan) -> Settled {
    let deadline = world::sim_ms() + plan.settle.as_millis() as u64;
    let mut last: Option<BTreeMap<String, Final>> = None;
    let mut turn = 0usize;
    while world::sim_ms() < deadline {
        turn += 1;
        let addr = control_addr(&plan.controls[turn % plan.controls.len()]);
        if let Some(mut client) = connect(&addr).await {
            // A linearizable read (consistency 0 is the default: linearizable).
            if let Ok(list) = client.list_sandboxes(ListSandboxesRequest::default()).await {
                let finals: BTreeMap<String, Final> = list
                    .into_inner()
                    .sandboxes
                    .into_iter()
                    .map(|s| {
                        let terminal = s.operation.as_ref().is_none_or(|o| o.terminal);
                        (
                            s.name,
                            Final {
                                uid: s.uid,
                                phase: s.phase,
                                operation_terminal: terminal,
                            },
                        )
                    })
                    .collect();
                let busy: Vec<String> = finals
                    .iter()
                    .filter(|(_, f)| !f.operation_terminal || f.phase == Phase::Deleting as i32)
                    .map(|(n, _)| n.clone())
                    .collect();
                if busy.is_empty() {
                    return (Some(finals), Vec::new(), Some(world::sim_ms()));
                }
                last = Some(finals);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let unsettled = last
        .as_ref()
        .map(|f| {
            f.iter()
                .filter(|(_, f)| !f.operation_terminal || f.phase == Phase::Deleting as i32)
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_else(|| vec!["(no answer from any control node)".to_string()]);
    (last, unsettled, None)
}

//! The workload: concurrent clients doing create, update (good, crashing
//! and missing images), rollback, stop/start, delete, reads, and writes of
//! checksummed marker files into `/sandbox`, each recorded in the history.
//!
//! A call whose answer is lost is retried (at most twice, through another
//! control node) with the same request id, as a careful client would: the
//! control plane must answer the retry, not apply it again. An outcome that
//! stays unknown is recorded as unknown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::v1::sandbox_service_client::SandboxServiceClient;
use berth_proto::v1::{
    exec_sandbox_output, CreateSandboxRequest, DeleteSandboxRequest, ExecSandboxRequest,
    GetSandboxRequest, Phase, RollbackSandboxRequest, SandboxSpec, StartSandboxRequest,
    StopSandboxRequest, UpdateSandboxRequest,
};
use berth_testkit::podman::{TEST_IMAGE_CRASH, TEST_IMAGE_V1, TEST_IMAGE_V2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::history::{millis, History, Op, OpKind, Outcome, Value};

/// An image no registry has.
pub const MISSING_IMAGE: &str = "localhost/berth-e2e:missing";
const CALL_TIMEOUT: Duration = Duration::from_secs(12);
const RETRIES: usize = 2;

/// The content of marker `n`: self-checking, so a torn or foreign file is
/// told apart from the one written.
pub fn marker_content(n: u64) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in n.to_le_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("marker-{n}-{hash:016x}")
}

/// What every client shares.
pub struct Workload {
    pub addrs: Vec<String>,
    pub sandboxes: Vec<String>,
    pub history: Arc<History>,
    pub started: Instant,
    pub seed: u64,
    /// TLS (with the workload's client certificate) when the cluster
    /// serves it.
    pub tls: Option<ClientTlsConfig>,
}

enum Call {
    Done(Result<Value, Status>),
    /// Nothing was sent (no node could be connected to).
    NotSent(String),
}

impl Workload {
    fn now_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }

    async fn connect(&self, first: usize) -> Option<SandboxServiceClient<Channel>> {
        for i in 0..self.addrs.len() {
            let addr = &self.addrs[(first + i) % self.addrs.len()];
            let endpoint = match &self.tls {
                Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                    .ok()?
                    .tls_config(tls.clone())
                    .ok()?,
                None => Endpoint::from_shared(format!("http://{addr}")).ok()?,
            }
            .connect_timeout(Duration::from_millis(500))
            .timeout(CALL_TIMEOUT);
            // Bounded as a whole: a paused node never ends a TLS handshake.
            let connected = tokio::time::timeout(Duration::from_secs(2), endpoint.connect()).await;
            if let Ok(Ok(channel)) = connected {
                return Some(SandboxServiceClient::new(channel));
            }
        }
        None
    }

    /// One client until `stop` turns true.
    pub async fn client(self: Arc<Self>, index: usize, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9));
        let mut seq = 0u64;
        while !*stop.borrow() {
            seq += 1;
            let sandbox = self.sandboxes[rng.gen_range(0..self.sandboxes.len())].clone();
            let kind = pick(&mut rng, index as u64 * 1_000_000 + seq);
            let op_id = (index as u64) << 32 | seq;
            self.run(&mut rng, index, op_id, sandbox, kind).await;
            let pause = Duration::from_millis(rng.gen_range(100..700));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn run(&self, rng: &mut StdRng, client: usize, id: u64, sandbox: String, kind: OpKind) {
        let invoke_ms = self.now_ms();
        let request_id = format!("chaos-{}-{id}", self.seed);
        let mut outcome = Outcome::Unknown("not attempted".to_string());
        let mut complete_ms = None;
        for attempt in 0..=RETRIES {
            let first = rng.gen_range(0..self.addrs.len()) + attempt;
            match self.call(first, &sandbox, &kind, &request_id).await {
                Call::NotSent(why) if matches!(outcome, Outcome::Unknown(_)) && attempt == 0 => {
                    outcome = Outcome::Failed {
                        code: "NotSent".to_string(),
                        message: why,
                    };
                    complete_ms = Some(self.now_ms());
                    break;
                }
                Call::NotSent(why) => outcome = Outcome::Unknown(why),
                Call::Done(Ok(value)) => {
                    outcome = Outcome::Ok(value);
                    complete_ms = Some(self.now_ms());
                    break;
                }
                Call::Done(Err(status)) if ambiguous(&status) => {
                    outcome = Outcome::Unknown(status.message().to_string());
                    // Only writes carrying a request id are retried.
                    if matches!(kind, OpKind::Marker { .. } | OpKind::Get) {
                        break;
                    }
                }
                Call::Done(Err(status)) => {
                    outcome = Outcome::Failed {
                        code: format!("{:?}", status.code()),
                        message: status.message().to_string(),
                    };
                    complete_ms = Some(self.now_ms());
                    break;
                }
            }
        }
        self.history.record(Op {
            id,
            client,
            sandbox,
            kind,
            invoke_ms,
            complete_ms,
            outcome,
        });
    }

    async fn call(&self, first: usize, sandbox: &str, kind: &OpKind, request_id: &str) -> Call {
        let Some(mut client) = self.connect(first).await else {
            return Call::NotSent("no control node reachable".to_string());
        };
        let name = sandbox.to_string();
        let request_id = request_id.to_string();
        let result = match kind {
            OpKind::Create => client
                .create_sandbox(CreateSandboxRequest {
                    name,
                    spec: Some(SandboxSpec {
                        image: TEST_IMAGE_V1.to_string(),
                        policy: None,
                        env: HashMap::new(),
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
                    min_healthy_ms: Some(1_000),
                    health_timeout_ms: Some(15_000),
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
            OpKind::Get => client
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
            OpKind::Marker { n } => write_marker(&mut client, name, *n).await,
        };
        Call::Done(result)
    }
}

/// Writes marker `n` (and the workspace's identity file, the first time);
/// returns the workspace's identity.
async fn write_marker(
    client: &mut SandboxServiceClient<Channel>,
    name: String,
    n: u64,
) -> Result<Value, Status> {
    // The identity file is created with O_EXCL (noclobber), so of two
    // concurrent first writers one names the workspace and both read it.
    let script = format!(
        "mkdir -p /sandbox/chaos && {{ ( set -C; echo ws-{n} > /sandbox/chaos/id ) 2>/dev/null; true; }} && echo {} > /sandbox/chaos/m-{n} && sync && i=0 && while [ ! -s /sandbox/chaos/id ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; cat /sandbox/chaos/id",
        marker_content(n)
    );
    let (code, out) = exec(client, name, &script).await?;
    let workspace = out.trim().to_string();
    if code != 0 || workspace.is_empty() {
        return Err(Status::internal(format!(
            "marker write exited {code} (workspace {workspace:?})"
        )));
    }
    Ok(Value::Workspace(workspace))
}

/// Runs `sh -c script` in the sandbox: (exit code, stdout).
pub async fn exec(
    client: &mut SandboxServiceClient<Channel>,
    name: String,
    script: &str,
) -> Result<(i32, String), Status> {
    let request = ExecSandboxRequest {
        name,
        command: vec!["sh".into(), "-c".into(), script.to_string()],
    };
    let mut stream = client.exec_sandbox(request).await?.into_inner();
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(msg) = stream.message().await? {
        match msg.out {
            Some(exec_sandbox_output::Out::Stdout(b)) => out.extend(b),
            Some(exec_sandbox_output::Out::ExitCode(c)) => code = Some(c),
            Some(exec_sandbox_output::Out::Stderr(_)) | None => {}
        }
    }
    let code = code.ok_or_else(|| Status::unavailable("exec ended without an exit code"))?;
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

/// The outcome of a call that failed this way is not known.
fn ambiguous(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// A random operation (weights favour the interesting ones).
fn pick(rng: &mut StdRng, marker: u64) -> OpKind {
    match rng.gen_range(0..100) {
        0..=11 => OpKind::Create,
        12..=17 => OpKind::Delete,
        18..=29 => OpKind::Update {
            image: if rng.gen_bool(0.5) {
                TEST_IMAGE_V1
            } else {
                TEST_IMAGE_V2
            }
            .to_string(),
        },
        30..=33 => OpKind::Update {
            image: TEST_IMAGE_CRASH.to_string(),
        },
        34..=37 => OpKind::Update {
            image: MISSING_IMAGE.to_string(),
        },
        38..=45 => OpKind::Rollback,
        46..=51 => OpKind::Stop,
        52..=59 => OpKind::Start,
        60..=79 => OpKind::Marker { n: marker },
        _ => OpKind::Get,
    }
}

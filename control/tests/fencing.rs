//! Invariant 3 with real processes and Podman: a deposed leader can never
//! make an agent act. The leader is paused (SIGSTOP) while a sandbox runs;
//! the survivors elect a new leader at a higher term and the agent follows
//! it. Then the agent is pointed at a "deposed leader" that still speaks
//! for the old term: its commands are refused and nothing is created.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::agent_v1::agent_control_server::{AgentControl, AgentControlServer};
use berth_proto::agent_v1::{
    agent_message, command, control_message, AgentMessage, Command, ControlMessage, Ensure,
    Registered,
};
use berth_proto::v1::{
    CreateSandboxRequest, GetSandboxRequest, ListAgentsRequest, Phase, SandboxSpec,
};
use berth_testkit::podman::{self, TEST_IMAGE_V1};
use berth_testkit::TestCluster;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const NODE: &str = "n1";

fn fence_term(cluster: &TestCluster) -> u64 {
    std::fs::read_to_string(cluster.agent_dir(NODE).join("fence-term"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_running(cluster: &TestCluster, via: u64, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut client = cluster.sandboxes(via).await?;
        let s = client
            .get_sandbox(GetSandboxRequest {
                name: name.to_string(),
                consistency: 0,
            })
            .await?
            .into_inner();
        if s.phase == Phase::Running as i32 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} not Running: {s:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(cluster: &TestCluster, via: u64, name: &str) -> anyhow::Result<()> {
    let mut client = cluster.sandboxes(via).await?;
    client
        .create_sandbox(CreateSandboxRequest {
            name: name.to_string(),
            spec: Some(SandboxSpec {
                image: TEST_IMAGE_V1.to_string(),
                policy: None,
                env: HashMap::new(),
                secret_env: Default::default(),
            }),
            request_id: String::new(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// A control node that believes it still leads at `claimed_term` and sends
/// one command stamped with `stale_term`.
struct DeposedLeader {
    claimed_term: u64,
    stale_term: u64,
    sandbox: String,
    results: mpsc::Sender<AgentMessage>,
}

#[tonic::async_trait]
impl AgentControl for DeposedLeader {
    type SessionStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let send = |msg| Ok(ControlMessage { msg: Some(msg) });
        let _ = tx
            .send(send(control_message::Msg::Registered(Registered {
                leader_id: 1,
                term: self.claimed_term,
                accepts_unchanged: false,
                accepts_delta: false,
            })))
            .await;
        let ensure = Ensure {
            name: self.sandbox.clone(),
            uid: "deposed".into(),
            revision: 1,
            image: TEST_IMAGE_V1.into(),
            env: Default::default(),
            policy: None,
            volume: format!("berth-{}-deposed", self.sandbox),
            ..Default::default()
        };
        let _ = tx
            .send(send(control_message::Msg::Command(Command {
                traceparent: String::new(),
                command_id: 77,
                term: self.stale_term,
                op: Some(command::Op::Ensure(ensure)),
            })))
            .await;
        let results = self.results.clone();
        tokio::spawn(async move {
            // Keep `tx` alive while the agent answers.
            let _tx = tx;
            while let Ok(Some(msg)) = inbound.message().await {
                if results.send(msg).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_make_an_agent_act() -> anyhow::Result<()> {
    podman::ensure_test_image()?;
    let mut cluster = TestCluster::start(3).await?;
    cluster.start_agent(NODE)?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let first = cluster.track(&format!("fence-a-{}", std::process::id()));
    create(&cluster, leader, &first).await?;
    wait_running(&cluster, leader, &first).await?;
    let old_term = fence_term(&cluster);
    assert!(old_term > 0, "agent never recorded a term");
    let before = podman::container(&first)?.expect("container");

    // Depose the leader: pause it until the others elect a new one.
    cluster.process(leader).expect("leader").pause()?;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = cluster
        .wait_for_leader_among(&others, Duration::from_secs(20))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while fence_term(&cluster) <= old_term {
        assert!(
            Instant::now() < deadline,
            "agent never followed the new leader\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_term = fence_term(&cluster);
    let second = cluster.track(&format!("fence-b-{}", std::process::id()));
    create(&cluster, new_leader, &second).await?;
    wait_running(&cluster, new_leader, &second).await?;

    // The old leader wakes up; it must not disturb anything.
    cluster.process(leader).expect("leader").resume()?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    assert_eq!(
        podman::container(&first)?,
        Some(before.clone()),
        "first sandbox touched"
    );
    let mut admin = cluster.cluster_client(new_leader).await?;
    let agents = admin
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert!(
        agents.iter().any(|a| a.name == NODE && a.ready),
        "{agents:?}"
    );

    // A leader still speaking for the old term is refused by the agent.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let fake_addr = listener.local_addr()?.to_string();
    let (results_tx, mut results) = mpsc::channel(64);
    let fenced = cluster.track(&format!("fence-c-{}", std::process::id()));
    let fake = DeposedLeader {
        claimed_term: new_term,
        stale_term: old_term,
        sandbox: fenced.clone(),
        results: results_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentControlServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    cluster.kill9_agent(NODE);
    cluster.start_agent_with_control(NODE, &fake_addr)?;
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = results.recv().await {
            if let Some(agent_message::Msg::Result(r)) = msg.msg {
                return Some(r);
            }
        }
        None
    })
    .await?
    .expect("the agent answered the command");
    assert_eq!(result.command_id, 77);
    assert!(
        result.refused && !result.ok,
        "stale command was not refused: {result:?}"
    );
    assert!(result.error.contains("stale term"), "{result:?}");
    assert!(
        podman::containers_of(&fenced)?.is_empty(),
        "a refused command created a container"
    );
    assert!(
        podman::volumes_of(&fenced)?.is_empty(),
        "a refused command created a volume"
    );
    assert_eq!(
        podman::container(&first)?,
        Some(before),
        "first sandbox touched"
    );
    Ok(())
}

/// Invariant 3 mid-update: the leader is paused (SIGSTOP) while an update
/// is in Verifying, a new leader finishes it, then the old one resumes with
/// its actor tree's state from before. Nothing it does reaches the agent or
/// the log: its actors are killed as soon as it learns of the new term,
/// anything they still propose carries the old term (refused by the state
/// machine), and agents refuse its commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_mid_update_changes_nothing_when_it_resumes() -> anyhow::Result<()> {
    use berth_proto::v1::{OperationPhase, UpdateSandboxRequest};
    use berth_testkit::api::{get, wait_until};
    podman::ensure_test_image()?;
    let mut cluster = TestCluster::start(3).await?;
    cluster.start_agent(NODE)?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let name = cluster.track(&format!("fence-up-{}", std::process::id()));
    create(&cluster, leader, &name).await?;
    wait_running(&cluster, leader, &name).await?;
    let mut client = cluster.sandboxes(leader).await?;
    client
        .update_sandbox(UpdateSandboxRequest {
            name: name.clone(),
            image: Some(podman::TEST_IMAGE_V2.to_string()),
            min_healthy_ms: Some(4_000),
            health_timeout_ms: Some(60_000),
            ..Default::default()
        })
        .await?;
    wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.operation
            .as_ref()
            .is_some_and(|o| o.phase == OperationPhase::Verifying as i32)
    })
    .await?;

    // Paused mid-Verifying; the others elect a leader that finishes it.
    cluster.process(leader).expect("leader").pause()?;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = cluster
        .wait_for_leader_among(&others, Duration::from_secs(20))
        .await?;
    let done = wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.operation.as_ref().is_some_and(|o| o.terminal)
    })
    .await?;
    let op = done.operation.clone().unwrap();
    assert_eq!(op.phase, OperationPhase::Succeeded as i32, "{op:?}");
    let container = podman::container(&name)?.expect("container");

    // The old leader resumes: nothing changes, on the node or in the log.
    cluster.process(leader).expect("leader").resume()?;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let now = get(&mut cluster, &name).await?.expect("sandbox");
        assert_eq!(now.operation, done.operation, "the operation changed");
        assert_eq!(
            (now.revision, now.phase, now.container_id.as_str()),
            (done.revision, done.phase, done.container_id.as_str()),
            "the record changed"
        );
        assert_eq!(podman::container(&name)?.as_ref(), Some(&container));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(podman::containers_of(&name)?.len(), 1);
    let status = cluster.status(new_leader).await?;
    assert_ne!(status.leader_id, 0);
    Ok(())
}

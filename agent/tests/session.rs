//! The control session against fake control nodes over real loopback gRPC:
//! a follower redirects to the leader, the leader registers the agent at
//! its term, stale commands (Ensure and Pull) are refused, fresh ones run,
//! heartbeats flow (full to a leader without deltas; to one with them,
//! only what changed or a command touched),
//! and a dropped stream makes the agent reconnect with its raised term.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use berth_agent::driver::{Driver, MemoryDriver};
use berth_agent::fence::Fence;
use berth_agent::session::{Session, SessionConfig};
use berth_proto::agent_v1::agent_control_server::{AgentControl, AgentControlServer};
use berth_proto::agent_v1::{
    agent_message::Msg as Up, command::Op, control_message::Msg as Down, AgentMessage, Command,
    CommandResult, ContainerState, ControlMessage, Ensure, Heartbeat, Pull, Redirect, Registered,
    Remove,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// One accepted session: the agent's messages, and a sender to answer.
type Accepted = (
    Streaming<AgentMessage>,
    mpsc::Sender<Result<ControlMessage, Status>>,
);
type Sessions = mpsc::Receiver<Accepted>;

/// A fake control node: hands each new session to the test.
struct FakeControl {
    sessions: mpsc::Sender<Accepted>,
}

#[tonic::async_trait]
impl AgentControl for FakeControl {
    type SessionStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.sessions.send((req.into_inner(), tx)).await.unwrap();
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn fake_control() -> (String, Sessions) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentControlServer::new(FakeControl { sessions: tx }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

/// An agent `node-{tag}` dialing `control`.
fn config(control: Vec<String>, tag: &str) -> SessionConfig {
    SessionConfig {
        control,
        node_name: format!("node-{tag}"),
        instance_id: format!("instance-{tag}"),
        data_addr: "127.0.0.1:7101".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        control_identity: berth_tls::Identity::Server {
            cluster: "berth".into(),
        },
    }
}

fn down(msg: Down) -> Result<ControlMessage, Status> {
    Ok(ControlMessage { msg: Some(msg) })
}

fn ensure(id: u64, term: u64) -> Down {
    Down::Command(Command {
        traceparent: String::new(),
        command_id: id,
        term,
        op: Some(Op::Ensure(Ensure {
            name: "s1".into(),
            uid: "u1".into(),
            revision: 1,
            image: "img".into(),
            volume: "vol-s1".into(),
            ..Default::default()
        })),
    })
}

fn pull(id: u64, term: u64) -> Down {
    Down::Command(Command {
        traceparent: String::new(),
        command_id: id,
        term,
        op: Some(Op::Pull(Pull {
            name: "s1".into(),
            image: "img:v2".into(),
            uid: "u1".into(),
        })),
    })
}

/// Next command result, skipping heartbeats (and counting them).
async fn next_result(up: &mut Streaming<AgentMessage>, heartbeats: &mut usize) -> CommandResult {
    loop {
        match up.message().await.unwrap().unwrap().msg {
            Some(Up::Result(mut r)) => {
                // Compared by content, not by when it was observed.
                if let Some(o) = r.observed.as_mut() {
                    o.seq = 0;
                }
                return r;
            }
            Some(Up::Heartbeat(_)) => *heartbeats += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn redirect_register_fence_and_reconnect() {
    tokio::time::timeout(Duration::from_secs(30), scenario())
        .await
        .expect("session scenario timed out");
}

async fn scenario() {
    let (follower, mut follower_sessions) = fake_control().await;
    let (leader, mut leader_sessions) = fake_control().await;
    let data = tempfile::tempdir().unwrap();
    let fence = Arc::new(Fence::load(data.path()).unwrap());
    fence.observe(3).unwrap();
    let driver = Arc::new(MemoryDriver::new());
    let cfg = config(vec![follower.clone(), leader.clone()], "a");
    let session = Arc::new(Session::new(cfg, driver.clone(), fence.clone()));
    let running = tokio::spawn({
        let session = session.clone();
        async move { session.run().await }
    });

    // The follower redirects to the leader.
    let (mut up, tx) = follower_sessions.recv().await.unwrap();
    let Some(Up::Register(reg)) = up.message().await.unwrap().unwrap().msg else {
        panic!("Register must come first");
    };
    assert_eq!(
        (reg.node_name.as_str(), reg.driver.as_str()),
        ("node-a", "memory")
    );
    assert_eq!(reg.highest_term, 3);
    let redirect = Redirect {
        leader_id: 2,
        leader_addr: leader.clone(),
    };
    tx.send(down(Down::Redirect(redirect))).await.unwrap();

    // The leader registers it at term 5 and sends commands.
    let (mut up, tx) = leader_sessions.recv().await.unwrap();
    assert!(matches!(
        up.message().await.unwrap().unwrap().msg,
        Some(Up::Register(_))
    ));
    // A leader that predates `Heartbeat.delta`: every heartbeat is full.
    let registered = Registered {
        leader_id: 2,
        term: 5,
        accepts_unchanged: false,
        accepts_delta: false,
    };
    tx.send(down(Down::Registered(registered))).await.unwrap();
    let mut heartbeats = 0;
    tx.send(down(ensure(1, 4))).await.unwrap();
    let r = next_result(&mut up, &mut heartbeats).await;
    assert!(r.refused && !r.ok && r.command_id == 1, "{r:?}");
    assert_eq!(r.error, "stale term 4 < highest 5");
    assert!(
        driver.inventory().await.unwrap().is_empty(),
        "stale command did nothing"
    );

    tx.send(down(ensure(2, 5))).await.unwrap();
    let r = next_result(&mut up, &mut heartbeats).await;
    assert!(r.ok && !r.refused && r.command_id == 2, "{r:?}");
    assert_eq!(r.observed.unwrap().name, "s1");

    tx.send(down(ensure(3, 6))).await.unwrap();
    let r = next_result(&mut up, &mut heartbeats).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(fence.highest(), 6);
    assert_eq!(Fence::load(data.path()).unwrap().highest(), 6, "persisted");
    let running_now = r.observed.unwrap();

    // Pull is fenced like the others, and a fresh one touches nothing.
    tx.send(down(pull(4, 5))).await.unwrap();
    let r = next_result(&mut up, &mut heartbeats).await;
    assert!(r.refused && !r.ok && r.command_id == 4, "{r:?}");
    assert_eq!(r.error, "stale term 5 < highest 6");
    tx.send(down(pull(5, 6))).await.unwrap();
    let r = next_result(&mut up, &mut heartbeats).await;
    assert!(r.ok && !r.refused && r.command_id == 5, "{r:?}");
    assert_eq!(r.observed.as_ref(), Some(&running_now));

    // Heartbeats carry the inventory.
    let hb = loop {
        if let Some(Up::Heartbeat(hb)) = up.message().await.unwrap().unwrap().msg {
            break hb;
        }
    };
    assert_eq!(hb.inventory.len(), 1);
    assert!(!hb.unchanged && !hb.delta);

    // The leader goes away: the agent reconnects (round-robin) and
    // registers with the raised term; nothing was deleted.
    drop(tx);
    drop(up);
    let (mut up, _tx) = tokio::select! {
        s = follower_sessions.recv() => s.unwrap(),
        s = leader_sessions.recv() => s.unwrap(),
    };
    let Some(Up::Register(reg)) = up.message().await.unwrap().unwrap().msg else {
        panic!("Register must come first");
    };
    assert_eq!(reg.highest_term, 6);
    assert_eq!(reg.inventory.len(), 1);
    running.abort();
}

/// The next `n` heartbeats, failing on anything else.
async fn next_heartbeats(up: &mut Streaming<AgentMessage>, n: usize) -> Vec<Heartbeat> {
    let mut beats = Vec::new();
    while beats.len() < n {
        match up.message().await.unwrap().unwrap().msg {
            Some(Up::Heartbeat(hb)) => beats.push(hb),
            other => panic!("unexpected {other:?}"),
        }
    }
    beats
}

/// The first heartbeat among the next two that says anything (one may
/// have been on its way before the change).
async fn next_news(up: &mut Streaming<AgentMessage>) -> Heartbeat {
    next_heartbeats(up, 2)
        .await
        .into_iter()
        .find(|hb| !hb.inventory.is_empty() || !hb.gone.is_empty())
        .expect("news within two heartbeats")
}

fn remove(id: u64, term: u64) -> Down {
    Down::Command(Command {
        traceparent: String::new(),
        command_id: id,
        term,
        op: Some(Op::Remove(Remove {
            name: "s1".into(),
            uid: "u1".into(),
            volume: "vol-s1".into(),
            ..Default::default()
        })),
    })
}

#[tokio::test]
async fn heartbeats_carry_only_what_changed_or_a_command_touched() {
    tokio::time::timeout(Duration::from_secs(30), delta_scenario())
        .await
        .expect("delta scenario timed out");
}

async fn delta_scenario() {
    let (leader, mut sessions) = fake_control().await;
    let data = tempfile::tempdir().unwrap();
    let fence = Arc::new(Fence::load(data.path()).unwrap());
    let driver = Arc::new(MemoryDriver::new());
    let mut cfg = config(vec![leader], "b");
    cfg.data_addr = "127.0.0.1:7102".into();
    let session = Arc::new(Session::new(cfg, driver.clone(), fence));
    let running = tokio::spawn(async move { session.run().await });
    let (mut up, tx) = sessions.recv().await.unwrap();
    assert!(matches!(
        up.message().await.unwrap().unwrap().msg,
        Some(Up::Register(_))
    ));
    let registered = Registered {
        leader_id: 1,
        term: 1,
        accepts_unchanged: true,
        accepts_delta: true,
    };
    tx.send(down(Down::Registered(registered))).await.unwrap();
    tx.send(down(ensure(1, 1))).await.unwrap();
    let r = next_result(&mut up, &mut 0).await;
    assert!(r.ok, "{r:?}");

    // After the command, a delta with the new sandbox; then, nothing
    // changing, empty deltas.
    let news = next_news(&mut up).await;
    assert!(news.delta && news.gone.is_empty(), "{news:?}");
    assert_eq!(news.inventory.len(), 1);
    assert_eq!(news.inventory[0].state, ContainerState::Running as i32);
    let beats = next_heartbeats(&mut up, 3).await;
    assert!(
        beats
            .iter()
            .all(|hb| hb.delta && hb.inventory.is_empty() && hb.gone.is_empty()),
        "{beats:?}"
    );

    // A change no command made: said once.
    driver.stop("s1", "u1").await.unwrap();
    let news = next_news(&mut up).await;
    assert_eq!(news.inventory[0].state, ContainerState::Exited as i32);
    assert!(next_heartbeats(&mut up, 1).await[0].inventory.is_empty());

    // A command that changes nothing still puts its sandbox in the next
    // delta: its result may have told the leader something newer.
    tx.send(down(pull(2, 1))).await.unwrap();
    assert!(next_result(&mut up, &mut 0).await.ok);
    let again = next_news(&mut up).await;
    assert_eq!(again.inventory.len(), 1);
    assert_eq!(again.inventory[0].state, ContainerState::Exited as i32);

    // A removed sandbox is gone.
    tx.send(down(remove(3, 1))).await.unwrap();
    assert!(next_result(&mut up, &mut 0).await.ok);
    let gone = next_news(&mut up).await;
    assert!(gone.inventory.is_empty(), "{gone:?}");
    assert_eq!(gone.gone, ["u1"]);
    running.abort();
}

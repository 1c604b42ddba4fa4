//! An agent's whole inventory travels in one message (its register and its
//! full heartbeats): a node with about 60,000 sandboxes sends more than
//! tonic's default 4 MiB, and the leader must still accept it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth_proto::agent_v1::agent_control_client::AgentControlClient;
use berth_proto::agent_v1::{
    agent_message, control_message, AgentMessage, ContainerState, Observed, Register,
};
use berth_testkit::TestCluster;
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_larger_than_4_mib_is_accepted() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    // Containers berth no longer knows of: the leader only has them removed.
    let inventory: Vec<Observed> = (0..60_000)
        .map(|i| Observed {
            name: format!("gone-{i:06}"),
            uid: format!("00000000-0000-4000-8000-{i:012}"),
            revision: 1,
            container_id: format!("{i:064x}"),
            state: ContainerState::Exited as i32,
            volume: format!("berth-gone-{i:06}-00000000"),
            volume_present: true,
            ..Default::default()
        })
        .collect();
    let register = Register {
        node_name: "big-node".into(),
        driver: "container".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        data_addr: "127.0.0.1:9".into(),
        inventory,
        ..Default::default()
    };
    assert!(
        register.encoded_len() > 4 << 20,
        "{}",
        register.encoded_len()
    );
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Register(register)),
    };
    // As an agent does: a leader still catching up says "retry".
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(hello.clone()).await?;
        let session = AgentControlClient::new(cluster.channel(leader).await?)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let first = match session {
            Ok(inbound) => {
                let mut inbound = inbound.into_inner();
                tokio::time::timeout(Duration::from_secs(30), inbound.message())
                    .await?
                    .map(|m| m.and_then(|m| m.msg))
            }
            Err(status) => Err(status),
        };
        match first {
            Ok(Some(control_message::Msg::Registered(_))) => return Ok(()),
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Ok(Some(control_message::Msg::Redirect(_))) => {}
            other => panic!("the leader refused a large register: {other:?}"),
        }
        assert!(Instant::now() < deadline, "no leader took the register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! `berth.agent.v1.AgentControl`: where node agents connect. A follower
//! redirects the agent to the leader; the leader hands the session to its
//! supervisor, which starts a `NodeActor` for it.

use berth_proto::agent_v1::agent_control_server::AgentControl;
use berth_proto::agent_v1::{
    agent_message, control_message, AgentMessage, ControlMessage, Redirect,
};
use berth_raft::RaftNode;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use berth_tls::Identity;

use crate::error::ApiError;
use crate::leader::supervisor::{AgentSession, SupervisorMsg};
use crate::leader::Leadership;
use crate::validate::validate_name;

pub struct AgentSessions {
    node: Arc<RaftNode>,
    leadership: Leadership,
}

impl AgentSessions {
    pub fn new(node: Arc<RaftNode>, leadership: Leadership) -> Self {
        Self { node, leadership }
    }

    fn redirect(&self) -> ControlMessage {
        let metrics = self.node.metrics();
        let leader_id = metrics
            .current_leader
            .filter(|l| *l != self.node.id())
            .unwrap_or(0);
        let leader_addr = metrics
            .membership_config
            .membership()
            .get_node(&leader_id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        ControlMessage {
            msg: Some(control_message::Msg::Redirect(Redirect {
                leader_id,
                leader_addr,
            })),
        }
    }
}

type SessionStream = ReceiverStream<Result<ControlMessage, Status>>;

/// With TLS on, an agent registers only as the node its certificate names
/// (`agent.<node>.berth`): a certificate cannot speak for another node, and
/// a server's or a client's certificate for none.
fn may_register(presented: &[Identity], node_name: &str) -> Result<(), Status> {
    if berth_proto::dial::tls().is_none() {
        return Ok(());
    }
    let wanted = Identity::Agent {
        node: node_name.to_string(),
    };
    if presented.contains(&wanted) {
        return Ok(());
    }
    let err = match presented.first() {
        None => ApiError::Unauthenticated(format!(
            "an agent session needs a certificate naming {wanted}"
        )),
        Some(other) => ApiError::PermissionDenied(format!(
            "a certificate naming {other} may not register as node {node_name:?}"
        )),
    };
    Err(err.into())
}

#[tonic::async_trait]
impl AgentControl for AgentSessions {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let presented = berth_tls::peer_identities(&request);
        let (tx, rx) = mpsc::channel(256);
        let Some(supervisor) = self.leadership.supervisor() else {
            if self.node.metrics().current_leader == Some(self.node.id()) {
                return Err(Status::unavailable(
                    "this node is the new leader and still catching up; retry",
                ));
            }
            tx.send(Ok(self.redirect()))
                .await
                .map_err(|_| Status::internal("session channel closed"))?;
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before Register"))?;
        let Some(agent_message::Msg::Register(register)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a session must be Register",
            ));
        };
        validate_name(&register.node_name)
            .map_err(|e| Status::invalid_argument(format!("invalid node name: {e}")))?;
        may_register(&presented, &register.node_name)?;
        supervisor
            .send_message(SupervisorMsg::AgentConnected(Box::new(AgentSession {
                register,
                outbound: tx,
                inbound,
            })))
            .map_err(|_| Status::unavailable("leadership is changing; retry"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

//! `berth.v1.ClusterService`: status and membership of the control plane,
//! the node agents it knows, and handing a node name to a new agent.

use std::sync::Arc;

use berth_proto::v1::cluster_service_server::ClusterService;
use berth_proto::v1::{
    AddNodeRequest, Agent, ClusterStatus, GetStatusRequest, ListAgentsRequest, ListAgentsResponse,
    Member, MemberRole, RemoveNodeRequest, ReplaceNodeRequest,
};
use berth_raft::{Command, CommandResponse, NodeError, NodeRecord, RaftNode};
use tonic::{Request, Response, Status};

use crate::auth::audit;
use crate::auth::scope::Scope;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::leader::Leadership;

pub struct ClusterApi {
    node: Arc<RaftNode>,
    leadership: Leadership,
}

impl ClusterApi {
    pub fn new(node: Arc<RaftNode>, leadership: Leadership) -> Self {
        Self { node, leadership }
    }

    fn status(&self) -> ClusterStatus {
        let metrics = self.node.metrics();
        let leader = metrics.current_leader;
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let role = if leader == Some(*id) {
                    MemberRole::Leader
                } else if voters.contains(id) {
                    MemberRole::Follower
                } else {
                    MemberRole::Learner
                };
                Member {
                    id: *id,
                    addr: node.addr.clone(),
                    role: role as i32,
                }
            })
            .collect();
        ClusterStatus {
            leader_id: leader.unwrap_or(0),
            term: metrics.current_term,
            members,
            node_id: self.node.id(),
            last_applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
            purged_index: metrics.purged.map(|id| id.index).unwrap_or(0),
            sandbox_actors: u32::try_from(self.leadership.sandbox_actors()).unwrap_or(u32::MAX),
        }
    }
}

fn validate_node(id: u64, addr: Option<&str>) -> Result<(), ApiError> {
    if id == 0 {
        return Err(ApiError::Invalid(
            "node id must be a positive integer".to_string(),
        ));
    }
    if let Some(addr) = addr {
        crate::bootstrap::parse_addr(addr).map_err(ApiError::Invalid)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(self.status()))
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id, addr = %request.get_ref().addr))]
    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let AddNodeRequest { id, addr } = request.into_inner();
        validate_node(id, Some(&addr))?;
        let result = self.node.add_node(id, addr.clone()).await;
        audit::membership(caller.as_ref(), &format!("add-node {id} {addr}"), &result);
        result.map_err(ApiError::from)?;
        tracing::info!("node added as voter");
        Ok(Response::new(self.status()))
    }

    #[tracing::instrument(skip_all, fields(id = request.get_ref().id))]
    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let id = request.into_inner().id;
        validate_node(id, None)?;
        let result = self.node.remove_node(id).await;
        audit::membership(caller.as_ref(), &format!("remove-node {id}"), &result);
        result.map_err(ApiError::from)?;
        tracing::info!("node removed");
        Ok(Response::new(self.status()))
    }

    async fn list_agents(
        &self,
        _request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        self.node.read_barrier().await.map_err(ApiError::from)?;
        let state = self.node.state().read();
        let agents = state
            .table
            .nodes()
            .map(|n| agent_to_proto(n, state.table.sandboxes_on(&n.name)))
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn replace_node(
        &self,
        request: Request<ReplaceNodeRequest>,
    ) -> Result<Response<Agent>, Status> {
        let scope = Scope::of(&request)?;
        let name = request.into_inner().name;
        crate::validate::validate_node_name(&name)?;
        let command = Command::ReplaceNode { name };
        let proposal = crate::validate::client_proposal(command, String::new(), &scope)?;
        match audit::propose(&self.node, proposal)
            .await
            .map_err(ApiError::from)?
        {
            CommandResponse::Node { record } => {
                tracing::info!("node may be replaced by a new agent instance");
                let count = self.node.state().read().table.sandboxes_on(&record.name);
                Ok(Response::new(agent_to_proto(&record, count)))
            }
            other => Err(ApiError::from(NodeError::Internal(format!(
                "unexpected command response {other:?}"
            )))
            .into()),
        }
    }
}

fn agent_to_proto(n: &NodeRecord, sandboxes: usize) -> Agent {
    Agent {
        name: n.name.clone(),
        driver: n.driver.clone(),
        ready: n.ready,
        message: n.message.clone(),
        sandboxes: u32::try_from(sandboxes).unwrap_or(u32::MAX),
        data_addr: n.data_addr.clone(),
        instance_id: n.instance_id.clone(),
    }
}

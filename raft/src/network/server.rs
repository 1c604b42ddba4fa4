//! The `berth.raft.v1.RaftService` server: hands Raft messages to openraft
//! and runs forwarded leader operations locally (never forwarding again).

use std::sync::Arc;

use berth_proto::raft_v1::raft_service_server::RaftService;
use berth_proto::raft_v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::node::{LeaderOp, LeaderReply, RaftNode};
use crate::{codec, NodeError};

/// gRPC service for peers.
pub struct RaftServer {
    node: Arc<RaftNode>,
}

impl RaftServer {
    pub fn new(node: Arc<RaftNode>) -> Self {
        Self { node }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    codec::decode(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data =
        codec::encode(value).map_err(|e| Status::internal(format!("encode raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        reply(&self.node.raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        reply(&self.node.raft().install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let op: LeaderOp = decode(request)?;
        let result: Result<LeaderReply, NodeError> = self.node.execute_local(op).await;
        reply(&result)
    }
}

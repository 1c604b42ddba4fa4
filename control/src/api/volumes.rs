//! Kept workspace volumes: listing them (with their size, asked of their
//! node's agent) and deleting them. Adoption is part of `CreateSandbox`.
//!
//! Invariant kept here: a volume is deleted only through the replicated
//! state (its node's agent removes it when the leader tells it to), never
//! by this handler directly (2, 4).

use std::time::Duration;

use berth_proto::agent_v1::VolumeSizeRequest;
use berth_proto::v1::{DeleteVolumeRequest, KeptVolume, ListVolumesResponse};
use berth_raft::model::KeptVolume as KeptRecord;
use berth_raft::{Command, CommandResponse, NodeError, RaftNode};

use crate::auth::audit;
use crate::auth::scope::Scope;
use crate::error::ApiError;
use crate::validate::{client_proposal, validate_volume_name};

/// How long a listing waits for one node's answer about a volume's size.
const SIZE_TIMEOUT: Duration = Duration::from_secs(2);

fn to_proto(v: &KeptRecord, size_bytes: Option<u64>) -> KeptVolume {
    KeptVolume {
        volume: v.volume.clone(),
        node: v.node.clone(),
        sandbox: v.sandbox.clone(),
        uid: v.uid.clone(),
        kept_at_unix_ms: v.kept_at_ms,
        size_bytes,
        deleting: v.deleting,
    }
}

/// The volume's size as its node reports it; None if it cannot be asked.
async fn size_of(node: &str, addr: Option<String>, volume: &str) -> Option<u64> {
    let ask = async {
        let mut client = crate::agent_client::connect(node, &addr?).await.ok()?;
        let request = VolumeSizeRequest {
            volume: volume.to_string(),
        };
        client
            .volume_size(request)
            .await
            .ok()
            .map(|r| r.into_inner().bytes)
    };
    tokio::time::timeout(SIZE_TIMEOUT, ask).await.ok().flatten()
}

/// Kept volumes of the scope's tenant (every tenant's for a platform
/// admin who named none).
pub async fn list(node: &RaftNode, scope: &Scope) -> Result<ListVolumesResponse, ApiError> {
    node.read_barrier().await?;
    let kept: Vec<(KeptRecord, Option<String>)> = {
        let state = node.state().read();
        state
            .table
            .volumes()
            .filter(|v| scope.sees(&v.sandbox))
            .map(|v| {
                let addr = state.table.node(&v.node).map(|n| n.data_addr.clone());
                (v.clone(), addr)
            })
            .collect()
    };
    let sizes = futures::future::join_all(
        kept.iter()
            .map(|(v, addr)| size_of(&v.node, addr.clone(), &v.volume)),
    )
    .await;
    Ok(ListVolumesResponse {
        volumes: kept
            .iter()
            .zip(sizes)
            .map(|((v, _), size)| to_proto(v, size))
            .collect(),
    })
}

/// Another tenant's volume is not found.
pub async fn delete(
    node: &RaftNode,
    scope: &Scope,
    request: DeleteVolumeRequest,
) -> Result<KeptVolume, ApiError> {
    validate_volume_name(&request.volume)?;
    let theirs = node
        .state()
        .read()
        .table
        .volume(&request.volume)
        .is_some_and(|v| !scope.sees(&v.sandbox));
    if theirs {
        return Err(ApiError::NotFound(format!(
            "no kept volume {:?} (see `berth volume list`)",
            request.volume
        )));
    }
    let command = Command::DeleteVolume {
        volume: request.volume,
    };
    match audit::propose(node, client_proposal(command, request.request_id, scope)?).await? {
        CommandResponse::Volume { volume } => Ok(to_proto(&volume, None)),
        other => Err(NodeError::Internal(format!("unexpected command response {other:?}")).into()),
    }
}

//! A sandbox's lifecycle events for clients: the kept list (with the audit
//! trail, `SandboxEvents`) and a stream of new ones (`WatchEvents`). Both
//! read the replicated record after a read barrier, so a new leader, or
//! any follower, answers with the same events (they survive failover).

use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::LifecycleEvent;
use berth_raft::RaftNode;
use futures::StreamExt;

use super::data_plane::BoxStream;
use crate::error::ApiError;

/// How often a watch looks for new events.
const POLL: Duration = Duration::from_millis(150);

fn to_proto(e: &berth_raft::model::events::LifecycleEvent) -> LifecycleEvent {
    LifecycleEvent {
        seq: e.seq,
        at_unix_ms: e.at_ms,
        kind: e.kind.clone(),
        message: e.message.clone(),
        revision: e.revision,
    }
}

/// The kept events of sandbox `key` after `after_seq` (None: no sandbox;
/// its uid too, so a watch stops when the name is reused).
fn kept(node: &RaftNode, key: &str, after_seq: u64) -> Option<(String, Vec<LifecycleEvent>)> {
    let state = node.state().read();
    let record = state.table.get(key)?;
    let events = record
        .events
        .iter()
        .filter(|e| e.seq > after_seq)
        .map(to_proto)
        .collect();
    Some((record.uid.clone(), events))
}

/// Every kept event of sandbox `key` (empty when it does not exist).
pub fn list(node: &RaftNode, key: &str) -> Vec<LifecycleEvent> {
    kept(node, key, 0).map(|(_, e)| e).unwrap_or_default()
}

/// The events after `after_seq`, then each new one, until the sandbox is
/// gone (or replaced by another of the name).
pub async fn watch(
    node: Arc<RaftNode>,
    key: String,
    after_seq: u64,
) -> Result<BoxStream<LifecycleEvent>, ApiError> {
    node.read_barrier().await?;
    let (uid, first) = kept(&node, &key, after_seq)
        .ok_or_else(|| ApiError::NotFound(format!("sandbox {key:?} not found")))?;
    let last = first.last().map_or(after_seq, |e| e.seq);
    let backlog = futures::stream::iter(first.into_iter().map(Ok));
    let follow = futures::stream::unfold(last, move |last| {
        let (node, key, uid) = (node.clone(), key.clone(), uid.clone());
        async move {
            loop {
                tokio::time::sleep(POLL).await;
                match kept(&node, &key, last) {
                    Some((now_uid, events)) if now_uid == uid => {
                        if let Some(seq) = events.last().map(|e| e.seq) {
                            let batch = futures::stream::iter(events.into_iter().map(Ok));
                            return Some((batch, seq));
                        }
                    }
                    _ => return None,
                }
            }
        }
    })
    .flatten();
    Ok(Box::pin(backlog.chain(follow)))
}

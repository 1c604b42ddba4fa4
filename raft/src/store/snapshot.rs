//! The snapshot file format: a stream of framed records, built from the
//! state machine and installed on lagging or new nodes.
//!
//! Layout: magic `BSNP`, one format-version byte, then frames of
//! `u32 big-endian length + codec value`. The first frame is the header
//! (snapshot meta and item count), each further frame one item: a sandbox
//! or a node record. Tagged items let a later release add record kinds.

use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, FORMAT_V1};
use crate::model::{
    AuditEvent, KeptVolume, NodeRecord, RequestRecord, SandboxRecord, TenantRecord, TokenRecord,
};
use crate::NodeId;

const MAGIC: &[u8; 4] = b"BSNP";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a berth snapshot (bad magic)")]
    BadMagic,
    #[error("unknown snapshot format version {0}")]
    UnknownVersion(u8),
    #[error("snapshot truncated")]
    Truncated,
    #[error("snapshot frame too large")]
    FrameTooLarge,
    #[error("snapshot holds {found} records, header says {expected}")]
    CountMismatch { expected: u64, found: u64 },
    #[error("snapshot frame: {0}")]
    Codec(#[from] CodecError),
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: SnapshotMeta<NodeId, BasicNode>,
    record_count: u64,
}

#[derive(Serialize, Deserialize)]
enum Item {
    Sandbox(SandboxRecord),
    Node(NodeRecord),
    Request(RequestRecord),
    Volume(KeptVolume),
    Token(TokenRecord),
    Tenant(TenantRecord),
    Audit(AuditEvent),
}

/// A decoded snapshot: its meta and every record.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub records: Vec<SandboxRecord>,
    pub nodes: Vec<NodeRecord>,
    /// Remembered client request ids (see `Proposal::request_id`).
    pub requests: Vec<RequestRecord>,
    /// Kept workspace volumes.
    pub volumes: Vec<KeptVolume>,
    /// API tokens (hashes only).
    pub tokens: Vec<TokenRecord>,
    /// Tenants with a quota.
    pub tenants: Vec<TenantRecord>,
    /// The audit trail.
    pub audit: Vec<AuditEvent>,
}

impl SnapshotFile {
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::with_capacity(64 + self.records.len() * 256);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_V1);
        let header = Header {
            meta: self.meta.clone(),
            record_count: (self.records.len()
                + self.nodes.len()
                + self.requests.len()
                + self.volumes.len()
                + self.tokens.len()
                + self.tenants.len()
                + self.audit.len()) as u64,
        };
        push_frame(&mut out, &codec::encode(&header)?)?;
        for record in &self.records {
            push_frame(&mut out, &codec::encode(&Item::Sandbox(record.clone()))?)?;
        }
        for node in &self.nodes {
            push_frame(&mut out, &codec::encode(&Item::Node(node.clone()))?)?;
        }
        for request in &self.requests {
            push_frame(&mut out, &codec::encode(&Item::Request(request.clone()))?)?;
        }
        for volume in &self.volumes {
            push_frame(&mut out, &codec::encode(&Item::Volume(volume.clone()))?)?;
        }
        for token in &self.tokens {
            push_frame(&mut out, &codec::encode(&Item::Token(token.clone()))?)?;
        }
        for tenant in &self.tenants {
            push_frame(&mut out, &codec::encode(&Item::Tenant(tenant.clone()))?)?;
        }
        for event in &self.audit {
            push_frame(&mut out, &codec::encode(&Item::Audit(event.clone()))?)?;
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut reader = FrameReader::new(bytes)?;
        let header: Header = codec::decode(reader.next_frame()?.ok_or(SnapshotError::Truncated)?)?;
        let mut records = Vec::new();
        let mut nodes = Vec::new();
        let mut requests = Vec::new();
        let mut volumes = Vec::new();
        let mut tokens = Vec::new();
        let mut tenants = Vec::new();
        let mut audit = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            match codec::decode(frame)? {
                Item::Sandbox(r) => records.push(r),
                Item::Node(n) => nodes.push(n),
                Item::Request(r) => requests.push(r),
                Item::Volume(v) => volumes.push(v),
                Item::Token(t) => tokens.push(t),
                Item::Tenant(t) => tenants.push(t),
                Item::Audit(e) => audit.push(e),
            }
        }
        let found = (records.len()
            + nodes.len()
            + requests.len()
            + volumes.len()
            + tokens.len()
            + tenants.len()
            + audit.len()) as u64;
        if found != header.record_count {
            return Err(SnapshotError::CountMismatch {
                expected: header.record_count,
                found,
            });
        }
        Ok(Self {
            meta: header.meta,
            records,
            nodes,
            requests,
            volumes,
            tokens,
            tenants,
            audit,
        })
    }

    /// Reads only the meta of an encoded snapshot.
    pub fn decode_meta(bytes: &[u8]) -> Result<SnapshotMeta<NodeId, BasicNode>, SnapshotError> {
        let mut reader = FrameReader::new(bytes)?;
        let header: Header = codec::decode(reader.next_frame()?.ok_or(SnapshotError::Truncated)?)?;
        Ok(header.meta)
    }
}

fn push_frame(out: &mut Vec<u8>, frame: &[u8]) -> Result<(), SnapshotError> {
    let len = u32::try_from(frame.len()).map_err(|_| SnapshotError::FrameTooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    Ok(())
}

struct FrameReader<'a> {
    rest: &'a [u8],
}

impl<'a> FrameReader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, SnapshotError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(SnapshotError::BadMagic)?;
        let (version, rest) = rest.split_first().ok_or(SnapshotError::Truncated)?;
        if *version != FORMAT_V1 {
            return Err(SnapshotError::UnknownVersion(*version));
        }
        Ok(Self { rest })
    }

    fn next_frame(&mut self) -> Result<Option<&'a [u8]>, SnapshotError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        if self.rest.len() < 4 {
            return Err(SnapshotError::Truncated);
        }
        let (len, rest) = self.rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len {
            return Err(SnapshotError::Truncated);
        }
        let (frame, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Desired, Phase, SandboxSpec};
    use openraft::{LogId, StoredMembership};

    fn file(n: usize) -> SnapshotFile {
        let records = (0..n)
            .map(|i| SandboxRecord {
                name: format!("s{i}"),
                uid: format!("u{i}"),
                spec: SandboxSpec {
                    image: "busybox".into(),
                    policy: None,
                    env: Default::default(),
                    secret_env: Default::default(),
                },
                revision: 1,
                created_at_ms: 5,
                phase: Phase::Pending,
                message: String::new(),
                desired: Desired::Running,
                node: Some("n1".into()),
                container_id: String::new(),
                volume: format!("berth-s{i}-u{i}"),
                volume_uid: format!("u{i}"),
                volume_seeded: false,
                revisions: vec![],
                stable_revision: 0,
                operation: None,
                trace: String::new(),
                events: Vec::new(),
            })
            .collect();
        let nodes = vec![NodeRecord {
            name: "n1".into(),
            driver: "container".into(),
            data_addr: "127.0.0.1:1".into(),
            cpus: 2,
            memory_bytes: 3,
            ready: true,
            message: String::new(),
            registered_at_ms: 1,
            changed_at_ms: 2,
            instance_id: "i-1".into(),
            replace_allowed: false,
        }];
        SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 9)),
                last_membership: StoredMembership::default(),
                snapshot_id: "2-9-1".into(),
            },
            records,
            nodes,
            requests: vec![RequestRecord {
                id: "req-1".into(),
                index: 4,
                slot: 0,
                subject: "create s0".into(),
                response: crate::CommandResponse::Deleted { name: "s0".into() },
            }],
            volumes: vec![KeptVolume {
                volume: "berth-old-1234".into(),
                node: "n1".into(),
                sandbox: "old".into(),
                uid: "u-old".into(),
                kept_at_ms: 3,
                deleting: false,
            }],
            tokens: vec![TokenRecord {
                id: "tok1".into(),
                secret_sha256: "ab".repeat(32),
                tenant: "team".into(),
                role: crate::model::Role::Member,
                description: "ci".into(),
                created_at_ms: 5,
                expires_at_ms: Some(9),
                revoked_at_ms: None,
                bootstrap: false,
            }],
            tenants: vec![TenantRecord {
                name: "team".into(),
                quota: crate::model::Quota {
                    max_sandboxes: Some(3),
                    ..Default::default()
                },
            }],
            audit: vec![AuditEvent {
                index: 7,
                slot: 2,
                at_ms: 8,
                principal: "token:tok1".into(),
                tenant: "team".into(),
                sandbox: Some("team.s0".into()),
                action: "delete team.s0".into(),
                detail: String::new(),
                request_id: Some("r-1".into()),
                outcome: "ok".into(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = file(3).encode().unwrap();
        let back = SnapshotFile::decode(&bytes).unwrap();
        assert_eq!(back.records, file(3).records);
        assert_eq!(back.nodes, file(3).nodes);
        assert_eq!(back.requests, file(3).requests);
        assert_eq!(back.volumes, file(3).volumes);
        assert_eq!(back.tokens, file(3).tokens);
        assert_eq!(back.tenants, file(3).tenants);
        assert_eq!(back.audit, file(3).audit);
        assert_eq!(back.meta, file(3).meta);
        assert_eq!(SnapshotFile::decode_meta(&bytes).unwrap(), file(3).meta);
    }

    #[test]
    fn rejects_corrupt_input() {
        let bytes = file(2).encode().unwrap();
        assert!(matches!(
            SnapshotFile::decode(b"nope"),
            Err(SnapshotError::BadMagic)
        ));
        assert!(matches!(
            SnapshotFile::decode(&bytes[..bytes.len() - 3]),
            Err(SnapshotError::Truncated)
        ));
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 77;
        assert!(matches!(
            SnapshotFile::decode(&wrong_version),
            Err(SnapshotError::UnknownVersion(77))
        ));
    }
}

//! The one authorization table: the role every RPC of every service needs.
//! A method that is not here is denied; a test walks the compiled service
//! descriptors and fails if any method is missing.

use berth_raft::model::Role;

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// Anyone who completed the TLS handshake (health, reflection).
    Anyone,
    /// An API client with at least this role.
    Role(Role),
    /// An API client with at least this role, or a control node (a new
    /// node with this cluster's server certificate asks to join).
    RoleOrServer(Role),
    /// Another control node of this cluster.
    Server,
    /// A node agent.
    Agent,
}

use Required::{Agent, Anyone, Server};
const READER: Required = Required::Role(Role::Reader);
const MEMBER: Required = Required::Role(Role::Member);
const ADMIN: Required = Required::Role(Role::Admin);
const PLATFORM: Required = Required::Role(Role::PlatformAdmin);

/// `(service, method, required)`, for every method served.
pub const TABLE: &[(&str, &str, Required)] = &[
    ("berth.v1.SandboxService", "CreateSandbox", MEMBER),
    ("berth.v1.SandboxService", "GetSandbox", READER),
    ("berth.v1.SandboxService", "ListSandboxes", READER),
    ("berth.v1.SandboxService", "DeleteSandbox", MEMBER),
    ("berth.v1.SandboxService", "StopSandbox", MEMBER),
    ("berth.v1.SandboxService", "StartSandbox", MEMBER),
    ("berth.v1.SandboxService", "ExecSandbox", MEMBER),
    ("berth.v1.SandboxService", "SandboxLogs", READER),
    ("berth.v1.SandboxService", "WatchSandbox", READER),
    ("berth.v1.SandboxService", "UpdateSandbox", MEMBER),
    ("berth.v1.SandboxService", "RollbackSandbox", MEMBER),
    ("berth.v1.SandboxService", "GetOperation", READER),
    ("berth.v1.SandboxService", "ListVolumes", READER),
    ("berth.v1.SandboxService", "DeleteVolume", MEMBER),
    ("berth.v1.SandboxService", "ListRevisions", READER),
    ("berth.v1.SandboxService", "SandboxEvents", READER),
    ("berth.v1.SandboxService", "WatchEvents", READER),
    ("berth.v1.ClusterService", "GetStatus", READER),
    (
        "berth.v1.ClusterService",
        "AddNode",
        Required::RoleOrServer(Role::PlatformAdmin),
    ),
    ("berth.v1.ClusterService", "RemoveNode", PLATFORM),
    ("berth.v1.ClusterService", "ListAgents", PLATFORM),
    ("berth.v1.ClusterService", "ReplaceNode", PLATFORM),
    ("berth.v1.AccessService", "CreateToken", ADMIN),
    ("berth.v1.AccessService", "ListTokens", ADMIN),
    ("berth.v1.AccessService", "RevokeToken", ADMIN),
    ("berth.v1.AccessService", "WhoAmI", READER),
    ("berth.v1.AccessService", "SetQuota", PLATFORM),
    ("berth.v1.AccessService", "GetTenant", READER),
    ("berth.raft.v1.RaftService", "AppendEntries", Server),
    ("berth.raft.v1.RaftService", "Vote", Server),
    ("berth.raft.v1.RaftService", "InstallSnapshot", Server),
    ("berth.raft.v1.RaftService", "Forward", Server),
    ("berth.agent.v1.AgentControl", "Session", Agent),
    ("grpc.health.v1.Health", "Check", Anyone),
    ("grpc.health.v1.Health", "Watch", Anyone),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        Anyone,
    ),
];

/// What the method at gRPC path `/service/method` requires; None: it is
/// not in the table, and is denied.
pub fn required(path: &str) -> Option<Required> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    TABLE
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(_, _, r)| *r)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Services a control node serves (the agent's data plane is served by
    /// agents, which admit only control nodes).
    const SERVED: &[&str] = &[
        "berth.v1.SandboxService",
        "berth.v1.ClusterService",
        "berth.v1.AccessService",
        "berth.raft.v1.RaftService",
        "berth.agent.v1.AgentControl",
        "grpc.health.v1.Health",
    ];

    #[test]
    fn every_method_of_every_served_service_has_a_declared_role() {
        let mut files =
            prost_types::FileDescriptorSet::decode(berth_proto::FILE_DESCRIPTOR_SET).unwrap();
        files.file.extend(
            prost_types::FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .unwrap()
                .file,
        );
        let mut seen = Vec::new();
        for file in &files.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                if !SERVED.contains(&full.as_str()) {
                    continue;
                }
                for method in &service.method {
                    let path = format!("/{full}/{}", method.name());
                    assert!(required(&path).is_some(), "{path} is not in the table");
                    seen.push(path);
                }
            }
        }
        for service in SERVED {
            assert!(
                seen.iter().any(|p| p.starts_with(&format!("/{service}/"))),
                "{service} not found in the descriptors"
            );
        }
        // And nothing in the table is stale.
        for (service, method, _) in TABLE {
            let path = format!("/{service}/{method}");
            let reflection = service.starts_with("grpc.reflection");
            assert!(reflection || seen.contains(&path), "{path} is not served");
        }
    }

    #[test]
    fn unknown_methods_are_denied() {
        assert_eq!(required("/berth.v1.SandboxService/Nope"), None);
        assert_eq!(required("/nope"), None);
        assert_eq!(required(""), None);
        assert_eq!(
            required("/berth.v1.SandboxService/CreateSandbox"),
            Some(MEMBER)
        );
    }
}

//! Authorization, table-driven, against a real TLS cluster with a node
//! agent: every method of the public services × every role × the owner's
//! tenant and another tenant, plus no credential, a revoked token and an
//! expired one. Then a quota race: concurrent creates through every node
//! admit exactly the quota.
//!
//! Expected outcomes are stated here independently of the server's table:
//! too weak a role is PermissionDenied, a bad credential Unauthenticated,
//! another tenant's sandbox NotFound, and nothing another tenant does
//! changes the owner's sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_proto::raft_v1::raft_service_client::RaftServiceClient;
use berth_proto::raft_v1::RaftPayload;
use berth_proto::v1::access_service_client::AccessServiceClient;
use berth_proto::v1::cluster_service_client::ClusterServiceClient;
use berth_proto::v1::sandbox_service_client::SandboxServiceClient;
use berth_proto::v1::*;
use berth_testkit::{api, TestCluster};
use berth_tls::{CertDir, ClientGrant, Identity, Kind, Material};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const OWNER: &str = "owner";
const OTHER: &str = "other";

type Chan = InterceptedService<Channel, Meta>;

/// The metadata a caller sends: a token, and a tenant to act in.
#[derive(Clone, Default)]
struct Meta {
    token: Option<String>,
    tenant: Option<String>,
}

impl tonic::service::Interceptor for Meta {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.token {
            let value: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
            r.metadata_mut().insert("authorization", value);
        }
        if let Some(t) = &self.tenant {
            r.metadata_mut().insert("berth-tenant", t.parse().unwrap());
        }
        Ok(r)
    }
}

/// Who calls, and what they may do.
#[derive(Clone, Debug)]
struct Caller {
    label: &'static str,
    token: Option<String>,
    tenant_header: Option<&'static str>,
    /// None: the credential is bad (or absent).
    rank: Option<u8>,
    /// Acts in the owner's tenant.
    owner_side: bool,
}

const READER: u8 = 0;
const MEMBER: u8 = 1;
const ADMIN: u8 = 2;
const PLATFORM: u8 = 3;

/// `(method, rank needed, names the owner's sandbox)`.
const METHODS: &[(&str, u8, bool)] = &[
    ("CreateSandbox", MEMBER, false),
    ("GetSandbox", READER, true),
    ("ListSandboxes", READER, false),
    ("DeleteSandbox", MEMBER, true),
    ("StopSandbox", MEMBER, true),
    ("StartSandbox", MEMBER, true),
    ("ExecSandbox", MEMBER, true),
    ("SandboxLogs", READER, true),
    ("WatchSandbox", READER, true),
    ("UpdateSandbox", MEMBER, true),
    ("RollbackSandbox", MEMBER, true),
    ("GetOperation", READER, true),
    ("ListVolumes", READER, false),
    ("DeleteVolume", MEMBER, false),
    ("ListRevisions", READER, true),
    // Events of a name in the caller's own tenant (its own attempts on
    // "box" included); checked for leaks after the matrix.
    ("SandboxEvents", READER, false),
    ("GetStatus", READER, false),
    ("AddNode", PLATFORM, false),
    ("RemoveNode", PLATFORM, false),
    ("ListAgents", PLATFORM, false),
    ("ReplaceNode", PLATFORM, false),
    ("CreateToken", ADMIN, false),
    ("ListTokens", ADMIN, false),
    ("RevokeToken", ADMIN, false),
    ("WhoAmI", READER, false),
    ("SetQuota", PLATFORM, false),
    ("GetTenant", READER, false),
    ("Vote", u8::MAX, false),
];

/// Destructive calls by the owner's side go to a sandbox that does not
/// exist, so the owner's sandbox stays as it was for the final check.
const DESTRUCTIVE: &[&str] = &[
    "DeleteSandbox",
    "StopSandbox",
    "StartSandbox",
    "UpdateSandbox",
    "RollbackSandbox",
];

async fn first<T>(r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>) -> Code {
    match r {
        Err(s) => s.code(),
        Ok(stream) => {
            let mut stream = stream.into_inner();
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Ok(Err(s)) => s.code(),
                _ => Code::Ok,
            }
        }
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

async fn call(method: &str, chan: Chan, name: &str, label: &str) -> Code {
    let mut s = SandboxServiceClient::new(chan.clone());
    let mut c = ClusterServiceClient::new(chan.clone());
    let mut a = AccessServiceClient::new(chan.clone());
    let name = name.to_string();
    match method {
        "CreateSandbox" => code(
            s.create_sandbox(CreateSandboxRequest {
                name: format!("new-{label}"),
                spec: Some(SandboxSpec {
                    image: "berth-test:v1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        ),
        "GetSandbox" => code(
            s.get_sandbox(GetSandboxRequest {
                name,
                consistency: 0,
            })
            .await,
        ),
        "ListSandboxes" => code(s.list_sandboxes(ListSandboxesRequest::default()).await),
        "DeleteSandbox" => code(
            s.delete_sandbox(DeleteSandboxRequest {
                name,
                ..Default::default()
            })
            .await,
        ),
        "StopSandbox" => code(
            s.stop_sandbox(StopSandboxRequest {
                name,
                request_id: String::new(),
            })
            .await,
        ),
        "StartSandbox" => code(
            s.start_sandbox(StartSandboxRequest {
                name,
                request_id: String::new(),
            })
            .await,
        ),
        "ExecSandbox" => {
            first(
                s.exec_sandbox(ExecSandboxRequest {
                    name,
                    command: vec!["true".into()],
                })
                .await,
            )
            .await
        }
        "SandboxLogs" => {
            first(
                s.sandbox_logs(SandboxLogsRequest {
                    name,
                    follow: false,
                })
                .await,
            )
            .await
        }
        "WatchSandbox" => first(s.watch_sandbox(WatchSandboxRequest { name }).await).await,
        "UpdateSandbox" => code(
            s.update_sandbox(UpdateSandboxRequest {
                name,
                image: Some("berth-test:v2".into()),
                ..Default::default()
            })
            .await,
        ),
        "RollbackSandbox" => code(
            s.rollback_sandbox(RollbackSandboxRequest {
                name,
                ..Default::default()
            })
            .await,
        ),
        "GetOperation" => code(s.get_operation(GetOperationRequest { name }).await),
        "ListVolumes" => code(s.list_volumes(ListVolumesRequest {}).await),
        "DeleteVolume" => code(
            s.delete_volume(DeleteVolumeRequest {
                volume: "berth-none".into(),
                request_id: String::new(),
            })
            .await,
        ),
        "ListRevisions" => code(s.list_revisions(ListRevisionsRequest { name }).await),
        "SandboxEvents" => code(s.sandbox_events(SandboxEventsRequest { name }).await),
        "GetStatus" => code(c.get_status(GetStatusRequest {}).await),
        "AddNode" => code(
            c.add_node(AddNodeRequest {
                id: 0,
                addr: "127.0.0.1:1".into(),
            })
            .await,
        ),
        "RemoveNode" => code(c.remove_node(RemoveNodeRequest { id: 99 }).await),
        "ListAgents" => code(c.list_agents(ListAgentsRequest {}).await),
        "ReplaceNode" => code(
            c.replace_node(ReplaceNodeRequest {
                name: "nope".into(),
            })
            .await,
        ),
        "CreateToken" => code(
            a.create_token(CreateTokenRequest {
                role: "reader".into(),
                ..Default::default()
            })
            .await,
        ),
        "ListTokens" => code(a.list_tokens(ListTokensRequest {}).await),
        "RevokeToken" => code(
            a.revoke_token(RevokeTokenRequest {
                id: "nope".into(),
                request_id: String::new(),
            })
            .await,
        ),
        "WhoAmI" => code(a.who_am_i(WhoAmIRequest {}).await),
        "SetQuota" => code(
            a.set_quota(SetQuotaRequest {
                tenant: "scratch".into(),
                quota: None,
                request_id: String::new(),
            })
            .await,
        ),
        "GetTenant" => code(a.get_tenant(GetTenantRequest::default()).await),
        "Vote" => code(
            RaftServiceClient::new(chan)
                .vote(RaftPayload { data: vec![1] })
                .await,
        ),
        other => panic!("no call for {other}"),
    }
}

fn granted(ca: &CertDir, name: &str, tenant: &str, role: &str) -> Material {
    let grant = ClientGrant {
        tenant: tenant.into(),
        role: role.into(),
    };
    let issued = ca.issue_client(name, &grant, &[], 1).unwrap();
    Material::load(&ca.ca_cert(), &issued.cert, &issued.key).unwrap()
}

fn tls_args(ca: &CertDir, issued: &berth_tls::Issued) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        ca.ca_cert().display().to_string(),
        "--tls-cert".into(),
        issued.cert.display().to_string(),
        "--tls-key".into(),
        issued.key.display().to_string(),
    ]
}

struct Setup {
    _pki: tempfile::TempDir,
    cluster: TestCluster,
    ca: CertDir,
    server: Identity,
    /// A client certificate that grants nothing: TLS only.
    bare: Material,
}

async fn setup() -> anyhow::Result<Setup> {
    let pki = tempfile::tempdir()?;
    let ca = CertDir::init(pki.path(), "prod")?;
    let nodes = ca.issue(Kind::Server, "nodes", &["127.0.0.1".into()], 1)?;
    let args = tls_args(&ca, &nodes);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Identity::Server {
        cluster: "prod".into(),
    };
    // The harness's own calls: a platform admin's client certificate.
    let harness = granted(&ca, "harness", "default", "platform-admin");
    let cluster = TestCluster::start_tls(3, &args, harness.client(&server)).await?;
    let bare = ca.issue(Kind::Client, "bare", &[], 1)?;
    let bare = Material::load(&ca.ca_cert(), &bare.cert, &bare.key)?;
    Ok(Setup {
        _pki: pki,
        cluster,
        ca,
        server,
        bare,
    })
}

impl Setup {
    /// A channel with an ungranted client certificate (TLS only) and `meta`.
    async fn chan(&self, node: u64, meta: Meta) -> Chan {
        InterceptedService::new(self.raw(node).await, meta)
    }

    /// A connected channel to `node` with the ungranted certificate.
    async fn raw(&self, node: u64) -> Channel {
        Endpoint::from_shared(format!("https://{}", self.cluster.addr(node)))
            .unwrap()
            .tls_config(self.bare.client(&self.server))
            .unwrap()
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap()
    }

    async fn admin(&self) -> AccessServiceClient<Channel> {
        self.admin_via(1).await
    }

    async fn admin_via(&self, node: u64) -> AccessServiceClient<Channel> {
        AccessServiceClient::new(self.cluster.channel(node).await.unwrap())
    }

    async fn token(&self, tenant: &str, role: &str, ttl_seconds: u64) -> String {
        self.token_via(1, tenant, role, ttl_seconds).await
    }

    async fn token_via(&self, node: u64, tenant: &str, role: &str, ttl_seconds: u64) -> String {
        self.admin_via(node)
            .await
            .create_token(CreateTokenRequest {
                tenant: tenant.into(),
                role: role.into(),
                ttl_seconds,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secret
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_by_every_role_in_and_out_of_the_tenant() -> anyhow::Result<()> {
    let mut setup = setup().await?;
    let agent = setup
        .ca
        .issue(Kind::Agent, "worker-1", &["127.0.0.1".into()], 1)?;
    let mut agent_args = tls_args(&setup.ca, &agent);
    agent_args.extend(["--tls-cluster".into(), "prod".into()]);
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    setup.cluster.set_agent_args(&agent_args);
    let control = setup.cluster.control_addrs();
    setup
        .cluster
        .start_agent_with("worker-1", &control, "memory")?;
    api::wait_agent_ready(&setup.cluster, "worker-1", Duration::from_secs(30)).await?;

    // The owner's sandbox, made with an owner member's token.
    let owner_member = setup.token(OWNER, "member", 0).await;
    let mut owner = SandboxServiceClient::new(
        setup
            .chan(
                1,
                Meta {
                    token: Some(owner_member.clone()),
                    tenant: None,
                },
            )
            .await,
    );
    owner
        .create_sandbox(CreateSandboxRequest {
            name: "box".into(),
            spec: Some(SandboxSpec {
                image: "berth-test:v1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let running = async {
        loop {
            let s = owner
                .get_sandbox(GetSandboxRequest {
                    name: "box".into(),
                    consistency: 0,
                })
                .await
                .unwrap()
                .into_inner();
            if s.phase == Phase::Running as i32 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), running).await?;
    // Give it an operation to read, and let it finish.
    owner
        .update_sandbox(UpdateSandboxRequest {
            name: "box".into(),
            image: Some("berth-test:v2".into()),
            ..Default::default()
        })
        .await?;
    let settled = async {
        loop {
            let s = owner
                .get_sandbox(GetSandboxRequest {
                    name: "box".into(),
                    consistency: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let done = s
                .operation
                .as_ref()
                .is_some_and(|o| o.phase == OperationPhase::Succeeded as i32);
            if done && s.phase == Phase::Running as i32 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let before = tokio::time::timeout(Duration::from_secs(60), settled).await?;

    let revoked = setup.token(OWNER, "platform-admin", 0).await;
    let revoked_id = revoked.split('_').nth(1).unwrap().to_string();
    setup
        .admin()
        .await
        .revoke_token(RevokeTokenRequest {
            id: revoked_id,
            request_id: String::new(),
        })
        .await?;
    let expired = setup.token(OWNER, "platform-admin", 1).await;

    let mut callers = vec![
        Caller {
            label: "none",
            token: None,
            tenant_header: None,
            rank: None,
            owner_side: true,
        },
        Caller {
            label: "revoked",
            token: Some(revoked),
            tenant_header: None,
            rank: None,
            owner_side: true,
        },
        Caller {
            label: "expired",
            token: Some(expired),
            tenant_header: None,
            rank: None,
            owner_side: true,
        },
        Caller {
            label: "platform-in-owner",
            token: Some(setup.token("default", "platform-admin", 0).await),
            tenant_header: Some(OWNER),
            rank: Some(PLATFORM),
            owner_side: true,
        },
    ];
    for (tenant, owner_side) in [(OWNER, true), (OTHER, false)] {
        for (role, rank) in [("reader", READER), ("member", MEMBER), ("admin", ADMIN)] {
            let label: &'static str = Box::leak(format!("{role}-of-{tenant}").into_boxed_str());
            callers.push(Caller {
                label,
                token: Some(setup.token(tenant, role, 0).await),
                tenant_header: None,
                rank: Some(rank),
                owner_side,
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // the 1 s token expires

    let mut failures = Vec::new();
    let mut checked = 0;
    for caller in &callers {
        for (i, (method, needed, scoped)) in METHODS.iter().enumerate() {
            let node = 1 + (i as u64 % 3);
            let meta = Meta {
                token: caller.token.clone(),
                tenant: caller.tenant_header.map(str::to_string),
            };
            let target = if caller.owner_side && DESTRUCTIVE.contains(method) {
                "ghost"
            } else {
                "box"
            };
            let got = call(method, setup.chan(node, meta).await, target, caller.label).await;
            let expected: &[Code] = match caller.rank {
                None => &[Code::Unauthenticated],
                Some(rank) if rank < *needed => &[Code::PermissionDenied],
                Some(_) if *scoped && !caller.owner_side => &[Code::NotFound],
                Some(_) => &[],
            };
            let ok = if expected.is_empty() {
                let refused = matches!(got, Code::Unauthenticated | Code::PermissionDenied);
                let hidden = *scoped && target == "box" && got == Code::NotFound;
                !refused && !hidden
            } else {
                expected.contains(&got)
            };
            checked += 1;
            if !ok {
                failures.push(format!(
                    "{} {method} on node {node}: got {got:?}, expected {}",
                    caller.label,
                    if expected.is_empty() {
                        "to be allowed".to_string()
                    } else {
                        format!("{expected:?}")
                    }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing another tenant did touched the owner's sandbox.
    let after = owner
        .get_sandbox(GetSandboxRequest {
            name: "box".into(),
            consistency: 0,
        })
        .await?
        .into_inner();
    assert_eq!(
        (
            after.uid.as_str(),
            after.revision,
            after.phase,
            after.tenant.as_str()
        ),
        (
            before.uid.as_str(),
            before.revision,
            Phase::Running as i32,
            OWNER
        )
    );
    // The other tenant's events for the name hold only its own attempts.
    let owner_id = owner_member.split('_').nth(1).unwrap().to_string();
    let other_events = SandboxServiceClient::new(
        setup
            .chan(
                3,
                Meta {
                    token: callers.last().unwrap().token.clone(),
                    tenant: None,
                },
            )
            .await,
    )
    .sandbox_events(SandboxEventsRequest { name: "box".into() })
    .await?
    .into_inner()
    .events;
    assert!(
        other_events
            .iter()
            .all(|e| !e.principal.contains(&owner_id) && e.outcome != "ok"),
        "{other_events:?}"
    );
    // Listings are per tenant: the other tenant sees only what it made.
    let theirs = SandboxServiceClient::new(
        setup
            .chan(
                2,
                Meta {
                    token: callers.last().unwrap().token.clone(),
                    tenant: None,
                },
            )
            .await,
    )
    .list_sandboxes(ListSandboxesRequest::default())
    .await?
    .into_inner()
    .sandboxes;
    assert!(
        theirs.iter().all(|s| s.tenant == OTHER)
            && theirs.iter().any(|s| s.name.starts_with("new-")),
        "{theirs:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_across_nodes_admit_exactly_the_quota() -> anyhow::Result<()> {
    let setup = setup().await?;
    setup
        .admin()
        .await
        .set_quota(SetQuotaRequest {
            tenant: "racers".into(),
            quota: Some(Quota {
                max_sandboxes: 5,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?;
    let token = setup.token("racers", "member", 0).await;
    let mut calls = Vec::new();
    for i in 0..24u64 {
        let chan = setup
            .chan(
                1 + i % 3,
                Meta {
                    token: Some(token.clone()),
                    tenant: None,
                },
            )
            .await;
        calls.push(tokio::spawn(async move {
            SandboxServiceClient::new(chan)
                .create_sandbox(CreateSandboxRequest {
                    name: format!("r{i}"),
                    spec: Some(SandboxSpec {
                        image: "berth-test:v1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }));
    }
    let mut admitted = 0;
    for call in calls {
        match call.await? {
            Ok(()) => admitted += 1,
            Err(Code::ResourceExhausted) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 5);
    let tenant = setup
        .admin()
        .await
        .get_tenant(GetTenantRequest {
            tenant: "racers".into(),
        })
        .await?
        .into_inner();
    assert_eq!(tenant.sandboxes, 5);
    Ok(())
}

/// Read-your-writes for credentials: a token made through one node works
/// at once on a node that has not applied it yet (that node waits for a
/// linearizable read point before calling an unknown token unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_works_at_once_on_a_node_that_lags() -> anyhow::Result<()> {
    let mut setup = setup().await?;
    let leader = setup
        .cluster
        .wait_for_leader(Duration::from_secs(10))
        .await?;
    let lagging = setup
        .cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    for round in 0..5 {
        // A connection to the lagging node, open before it stops.
        let channel = setup.raw(lagging).await;
        setup.cluster.process(lagging).unwrap().pause()?;
        let made = setup.token_via(leader, "lag", "reader", 0).await;
        setup.cluster.process(lagging).unwrap().resume()?;
        let chan = InterceptedService::new(
            channel,
            Meta {
                token: Some(made),
                tenant: None,
            },
        );
        let me = AccessServiceClient::new(chan)
            .who_am_i(WhoAmIRequest {})
            .await;
        assert!(me.is_ok(), "round {round}: {me:?}");
    }
    Ok(())
}

//! Control nodes over mutual TLS (`berthd --tls-ca/--tls-cert/--tls-key`):
//! a cluster forms and replicates (a write through a follower is forwarded
//! to the leader over mTLS), and the Raft transport admits only
//! certificates naming this cluster's servers: an agent's or a client's
//! certificate from the same CA, no certificate, another CA's certificate
//! and plaintext are all refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth_proto::raft_v1::raft_service_client::RaftServiceClient;
use berth_proto::raft_v1::RaftPayload;
use berth_proto::v1::{CreateSandboxRequest, GetSandboxRequest, SandboxSpec};
use berth_testkit::TestCluster;
use berth_tls::{CertDir, ClientGrant, Identity, Kind, Material};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn material(ca: &CertDir, kind: Kind, name: &str) -> Material {
    let issued = ca.issue(kind, name, &["127.0.0.1".into()], 1).unwrap();
    Material::load(&ca.ca_cert(), &issued.cert, &issued.key).unwrap()
}

/// A client certificate that is a credential: `role` in `tenant`.
fn granted(ca: &CertDir, name: &str, tenant: &str, role: &str) -> Material {
    let grant = ClientGrant {
        tenant: tenant.into(),
        role: role.into(),
    };
    let issued = ca.issue_client(name, &grant, &[], 1).unwrap();
    Material::load(&ca.ca_cert(), &issued.cert, &issued.key).unwrap()
}

/// Calls Vote on the Raft transport at `addr` with `tls` (plaintext when
/// None); the payload is garbage, so a caller that gets past the identity
/// check gets InvalidArgument.
async fn raft_vote(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), tonic::Status> {
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap(),
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    RaftServiceClient::new(channel)
        .vote(RaftPayload {
            data: vec![1, 2, 3],
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_nodes_replicate_over_mutual_tls_and_refuse_other_identities() -> anyhow::Result<()>
{
    let pki = tempfile::tempdir()?;
    let ca = CertDir::init(pki.path(), "prod")?;
    let nodes = ca.issue(Kind::Server, "nodes", &["127.0.0.1".into()], 1)?;
    let ca_path = ca.ca_cert().display().to_string();
    let cert = nodes.cert.display().to_string();
    let key = nodes.key.display().to_string();
    let args = [
        "--tls-ca",
        ca_path.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
    ];
    let server_id = Identity::Server {
        cluster: "prod".into(),
    };
    let tests = granted(&ca, "tests", "default", "platform-admin");
    let mut cluster = TestCluster::start_tls(3, &args, tests.client(&server_id)).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;

    // A write through a follower reaches the leader over mTLS and every
    // node applies it.
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let mut client = cluster.sandboxes(follower).await?;
    client
        .create_sandbox(CreateSandboxRequest {
            name: "over-tls".into(),
            spec: Some(SandboxSpec {
                image: "berth-test:v1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    for id in cluster.node_ids() {
        let started = Instant::now();
        loop {
            let mut client = cluster.sandboxes(id).await?;
            let got = client
                .get_sandbox(GetSandboxRequest {
                    name: "over-tls".into(),
                    consistency: 0,
                })
                .await;
            if got.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "node {id}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let addr = cluster.addr(leader).to_string();
    // A server certificate gets past the check (and then fails to decode).
    let peer = material(&ca, Kind::Server, "another-node");
    let err = raft_vote(&addr, Some(peer.client(&server_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // An agent's certificate, or a client's (even a platform admin's),
    // from the same CA may not.
    for other in [
        material(&ca, Kind::Agent, "worker-1"),
        granted(&ca, "ops", "default", "platform-admin"),
    ] {
        let err = raft_vote(&addr, Some(other.client(&server_id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }
    // A client certificate that grants nothing proves nothing.
    let bare = material(&ca, Kind::Client, "bare");
    let err = raft_vote(&addr, Some(bare.client(&server_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // No certificate at all.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca.ca_cert())?))
        .domain_name(server_id.dns_name());
    let err = raft_vote(&addr, Some(anonymous)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // A server certificate from another CA (the client trusts this
    // cluster's CA) never completes the handshake.
    let elsewhere = tempfile::tempdir()?;
    let other_ca = CertDir::init(elsewhere.path(), "prod")?;
    let forged = other_ca.issue(Kind::Server, "node-1", &[], 1)?;
    let stranger = Material::load(&ca.ca_cert(), &forged.cert, &forged.key)?;
    let err = raft_vote(&addr, Some(stranger.client(&server_id)))
        .await
        .unwrap_err();
    assert!(
        !matches!(err.code(), tonic::Code::InvalidArgument | tonic::Code::Ok),
        "{err:?}"
    );
    // Plaintext is not served at all.
    let err = raft_vote(&addr, None).await.unwrap_err();
    assert!(
        !matches!(err.code(), tonic::Code::InvalidArgument),
        "{err:?}"
    );

    // A new node with this cluster's server certificate joins over mutual
    // TLS (`berthd --join` asks as a control node).
    cluster.start_joining(4)?;
    let started = Instant::now();
    loop {
        let status = cluster.status(leader).await?;
        let four = status.members.iter().find(|m| m.id == 4);
        if four.is_some_and(|m| m.role == berth_proto::v1::MemberRole::Follower as i32) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node 4 never joined: {status:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The cluster is unharmed.
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    Ok(())
}

/// The `--tls-*` flags of a component.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_speak_mutual_tls_as_their_own_node_only() -> anyhow::Result<()> {
    use berth_proto::agent_v1::agent_control_client::AgentControlClient;
    use berth_proto::agent_v1::agent_data_client::AgentDataClient;
    use berth_proto::agent_v1::{agent_message, AgentMessage, Register, VolumeSizeRequest};
    use berth_testkit::api;

    let pki = tempfile::tempdir()?;
    let ca = CertDir::init(pki.path(), "prod")?;
    let nodes = ca.issue(Kind::Server, "nodes", &["127.0.0.1".into()], 1)?;
    let node_args = tls_args(&ca, &nodes);
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let server_id = Identity::Server {
        cluster: "prod".into(),
    };
    let tests = granted(&ca, "tests", "default", "platform-admin");
    let mut cluster = TestCluster::start_tls(3, &node_args, tests.client(&server_id)).await?;

    // An agent with its own node's certificate: Ready, runs a sandbox, and
    // the leader reaches its data plane over mTLS (exec).
    let agent = ca.issue(Kind::Agent, "worker-1", &["127.0.0.1".into()], 1)?;
    let mut agent_args = tls_args(&ca, &agent);
    agent_args.extend(["--tls-cluster".into(), "prod".into()]);
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    cluster.set_agent_args(&agent_args);
    let control = cluster.control_addrs();
    cluster.start_agent_with("worker-1", &control, "memory")?;
    api::wait_agent_ready(&cluster, "worker-1", Duration::from_secs(30)).await?;
    api::create(&mut cluster, "tls-box", "berth-test:v1").await?;
    api::wait_until(&mut cluster, "tls-box", Duration::from_secs(30), |s| {
        s.phase == berth_proto::v1::Phase::Running as i32
    })
    .await?;
    let (code, out) = api::exec(&mut cluster, "tls-box", &["echo", "over-mtls"]).await?;
    assert_eq!((code, out.trim()), (0, "echo over-mtls"));

    // An agent whose certificate names another node refuses to start.
    let stray = ca.issue(Kind::Agent, "worker-9", &[], 1)?;
    let mut stray_args = tls_args(&ca, &stray);
    stray_args.extend(["--tls-cluster".into(), "prod".into()]);
    let stray_args: Vec<&str> = stray_args.iter().map(String::as_str).collect();
    cluster.set_agent_args(&stray_args);
    cluster.start_agent_with("worker-2", &control, "memory")?;
    let started = Instant::now();
    while cluster.agent("worker-2").is_some_and(|p| p.is_running()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stray agent kept running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader refuses a session whose certificate names another node,
    // or a server.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let leader_addr = cluster.addr(leader).to_string();
    for (cert, as_node) in [
        (material(&ca, Kind::Agent, "worker-1"), "worker-3"),
        (material(&ca, Kind::Server, "nodes-2"), "worker-3"),
    ] {
        let channel = Endpoint::from_shared(format!("https://{leader_addr}"))?
            .tls_config(cert.client(&server_id))?
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let register = AgentMessage {
            msg: Some(agent_message::Msg::Register(Register {
                node_name: as_node.into(),
                ..Default::default()
            })),
        };
        let outbound = tokio_stream::iter(vec![register]);
        let err = AgentControlClient::new(channel)
            .session(outbound)
            .await
            .expect_err("the session must be refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }

    // The agent's data plane admits control nodes only.
    let data_addr = {
        let mut client = cluster.cluster_client(leader).await?;
        let agents = client
            .list_agents(berth_proto::v1::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        agents
            .into_iter()
            .find(|a| a.name == "worker-1")
            .map(|a| a.data_addr)
            .expect("worker-1 is listed")
    };
    let agent_id = Identity::Agent {
        node: "worker-1".into(),
    };
    for (kind, name, want) in [
        (Kind::Client, "ops", tonic::Code::PermissionDenied),
        (Kind::Server, "nodes-3", tonic::Code::Ok),
    ] {
        let caller = material(&ca, kind, name);
        let channel = Endpoint::from_shared(format!("https://{data_addr}"))?
            .tls_config(caller.client(&agent_id))?
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let got = AgentDataClient::new(channel)
            .volume_size(VolumeSizeRequest {
                volume: "berth-nothing".into(),
            })
            .await;
        let code = got.map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        if want == tonic::Code::Ok {
            assert!(
                !matches!(
                    code,
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ),
                "{kind:?}: {code:?}"
            );
        } else {
            assert_eq!(code, want, "{kind:?}");
        }
    }
    Ok(())
}

#[test]
fn binaries_refuse_to_run_without_tls_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = berth_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let runs = [
        std::process::Command::new(berth_testkit::bin_path("berthd"))
            .args(["--id", "1", "--listen", &addr, "--data-dir"])
            .arg(&data)
            .args(["--initial-cluster", &format!("1={addr}")])
            .output()
            .unwrap(),
        std::process::Command::new(berth_testkit::bin_path("berth-agent"))
            .args([
                "--control",
                &addr,
                "--node-name",
                "n1",
                "--driver",
                "memory",
                "--data-dir",
            ])
            .arg(&data)
            .output()
            .unwrap(),
    ];
    for out in runs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("--insecure"), "{stderr}");
    }
    // Nothing was written.
    assert!(!data.exists());
}

/// GetStatus over TLS, checking the server's certificate for `domain`.
async fn status_as(
    addr: &str,
    client: &Material,
    ca: &CertDir,
    domain: &str,
) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca.ca_cert()).unwrap()))
        .identity(client.tonic_identity())
        .domain_name(domain);
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    berth_proto::v1::cluster_service_client::ClusterServiceClient::new(channel)
        .get_status(berth_proto::v1::GetStatusRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_from_disk_without_a_restart() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let ca = CertDir::init(pki.path(), "prod")?;
    let nodes = ca.issue(Kind::Server, "nodes", &["127.0.0.1".into()], 1)?;
    let args = tls_args(&ca, &nodes);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server_id = Identity::Server {
        cluster: "prod".into(),
    };
    let admin = granted(&ca, "admin", "default", "platform-admin");
    let mut cluster = TestCluster::start_tls(3, &args, admin.client(&server_id)).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let addr = cluster.addr(leader).to_string();

    // The served certificate does not name rotated.example yet.
    assert!(status_as(&addr, &admin, &ca, "rotated.example")
        .await
        .is_err());

    // Issue the nodes' certificate again, now also for rotated.example,
    // over the same files (through a rename, as `berth certs` writes).
    ca.issue(
        Kind::Server,
        "nodes",
        &["127.0.0.1".into(), "rotated.example".into()],
        1,
    )?;
    let started = Instant::now();
    loop {
        match status_as(&addr, &admin, &ca, "rotated.example").await {
            Ok(()) => break,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(15),
                "the new certificate was never served: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node serves it, and the cluster still replicates over the
    // connections it had and the ones it makes.
    for id in cluster.node_ids() {
        let addr = cluster.addr(id).to_string();
        let started = Instant::now();
        while status_as(&addr, &admin, &ca, "rotated.example")
            .await
            .is_err()
        {
            assert!(started.elapsed() < Duration::from_secs(15), "node {id}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut client = cluster.sandboxes(leader).await?;
    client
        .create_sandbox(CreateSandboxRequest {
            name: "after-reload".into(),
            spec: Some(SandboxSpec {
                image: "berth-test:v1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;

    // A broken file is not taken: the node keeps serving the last good one.
    std::fs::write(&nodes.cert, b"not a certificate")?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    status_as(&addr, &admin, &ca, "rotated.example")
        .await
        .map_err(anyhow::Error::msg)?;
    let logs: String = cluster
        .node_logs()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("TLS certificates not reloaded"),
        "the refusal is logged"
    );
    Ok(())
}

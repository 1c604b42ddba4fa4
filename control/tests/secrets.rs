//! Secret env with real processes and Podman: the value reaches the
//! sandbox's process, and nowhere else: not in any answer (get, list,
//! watch, history, events), not in the control nodes' RocksDB files (log,
//! state, snapshots), not in any log. Without a data key, a secret is
//! refused and nothing is created.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use berth_proto::v1::{
    CreateSandboxRequest, GetSandboxRequest, ListRevisionsRequest, ListSandboxesRequest,
    OperationPhase, Phase, SandboxEventsRequest, SandboxSpec, UpdateSandboxRequest,
    WatchSandboxRequest,
};
use berth_testkit::api::{exec, unique, wait_until};
use berth_testkit::podman::{self, TEST_IMAGE_V1};
use berth_testkit::TestCluster;

const NODE: &str = "n1";
const SECRET: &str = "s3cr3t-do-not-leak-7f1c9a";
const ROTATED: &str = "r0tated-do-not-leak-44be10";

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_sandbox_and_nowhere_else() -> anyhow::Result<()> {
    podman::ensure_test_image()?;
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("data-key");
    std::fs::write(
        &key_file,
        "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n",
    )?;
    let key_arg = key_file.display().to_string();
    let mut cluster = TestCluster::start_with(3, &["--data-key-file", &key_arg]).await?;
    cluster.start_agent(NODE)?;
    berth_testkit::api::wait_agent_ready(&cluster, NODE, Duration::from_secs(30)).await?;

    let name = unique("secret");
    cluster.track(&name);
    let mut client = cluster.sandboxes(2).await?;
    client
        .create_sandbox(CreateSandboxRequest {
            name: name.clone(),
            spec: Some(SandboxSpec {
                image: TEST_IMAGE_V1.into(),
                env: HashMap::from([("PLAIN".into(), "visible".into())]),
                secret_env: HashMap::from([("API_TOKEN".into(), SECRET.into())]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    wait_until(&mut cluster, &name, Duration::from_secs(60), |s| {
        s.phase == Phase::Running as i32
    })
    .await?;
    let (code, out) = exec(&mut cluster, &name, &["sh", "-c", "echo $API_TOKEN $PLAIN"]).await?;
    assert_eq!(
        (code, out.trim()),
        (0, format!("{SECRET} visible").as_str())
    );

    // Rotate the value with an update; the new one reaches the process.
    let mut client = cluster.sandboxes(3).await?;
    client
        .update_sandbox(UpdateSandboxRequest {
            name: name.clone(),
            secret_env: HashMap::from([("API_TOKEN".into(), ROTATED.into())]),
            ..Default::default()
        })
        .await?;
    wait_until(&mut cluster, &name, Duration::from_secs(90), |s| {
        s.operation
            .as_ref()
            .is_some_and(|o| o.phase == OperationPhase::Succeeded as i32)
    })
    .await?;
    let (_, out) = exec(&mut cluster, &name, &["sh", "-c", "echo $API_TOKEN"]).await?;
    assert_eq!(out.trim(), ROTATED);

    // No answer carries either value; the names are shown, redacted.
    let mut answers = Vec::new();
    let got = client
        .get_sandbox(GetSandboxRequest {
            name: name.clone(),
            consistency: 0,
        })
        .await?
        .into_inner();
    assert_eq!(
        got.spec
            .as_ref()
            .unwrap()
            .secret_env
            .get("API_TOKEN")
            .map(String::as_str),
        Some("<secret>")
    );
    answers.push(format!("{got:?}"));
    let list = client
        .list_sandboxes(ListSandboxesRequest::default())
        .await?
        .into_inner();
    answers.push(format!("{list:?}"));
    let history = client
        .list_revisions(ListRevisionsRequest { name: name.clone() })
        .await?
        .into_inner();
    answers.push(format!("{history:?}"));
    let events = client
        .sandbox_events(SandboxEventsRequest { name: name.clone() })
        .await?
        .into_inner();
    answers.push(format!("{events:?}"));
    let mut watch = client
        .watch_sandbox(WatchSandboxRequest { name: name.clone() })
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await??;
    answers.push(format!("{first:?}"));
    for answer in &answers {
        assert!(
            !answer.contains(SECRET) && !answer.contains(ROTATED),
            "{answer}"
        );
    }
    // The events record the calls (create, update, execs), by principal.
    let actions: Vec<&str> = events.events.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.iter().any(|a| a.starts_with("create ")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a.starts_with("update ")),
        "{actions:?}"
    );
    assert!(
        actions.iter().filter(|a| a.starts_with("exec ")).count() >= 2,
        "{actions:?}"
    );
    assert!(events
        .events
        .iter()
        .all(|e| e.principal == "insecure" && e.outcome == "ok"));

    // Nothing on disk or in a log holds either value: stop the nodes so
    // RocksDB has flushed what it will, then read every byte.
    let log_files: Vec<_> = cluster
        .node_logs()
        .into_iter()
        .chain(cluster.agent_logs())
        .collect();
    assert!(log_files.len() >= 4, "{log_files:?}");
    for id in cluster.node_ids() {
        cluster.kill9(id);
    }
    // The search does see what the nodes store: the plain env is there.
    for id in cluster.node_ids() {
        let plain = files_containing(&cluster.data_dir(id), b"visible");
        assert!(
            !plain.is_empty(),
            "node {id}: the search found nothing at all"
        );
    }
    for value in [SECRET, ROTATED] {
        for id in cluster.node_ids() {
            let leaked = files_containing(&cluster.data_dir(id), value.as_bytes());
            assert!(leaked.is_empty(), "node {id} stores {value}: {leaked:?}");
        }
        for log in &log_files {
            let text = std::fs::read_to_string(log)?;
            assert!(!text.contains(value), "{} holds {value}", log.display());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_data_key_a_secret_is_refused_and_nothing_is_created() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let mut client = cluster.sandboxes(1).await?;
    let err = client
        .create_sandbox(CreateSandboxRequest {
            name: "no-key".into(),
            spec: Some(SandboxSpec {
                image: TEST_IMAGE_V1.into(),
                secret_env: HashMap::from([("K".into(), "v".into())]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("data key"), "{err:?}");
    let err = client
        .create_sandbox(CreateSandboxRequest {
            name: "both".into(),
            spec: Some(SandboxSpec {
                image: TEST_IMAGE_V1.into(),
                env: HashMap::from([("K".into(), "v".into())]),
                secret_env: HashMap::from([("K".into(), "v".into())]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let list = client
        .list_sandboxes(ListSandboxesRequest::default())
        .await?
        .into_inner();
    assert!(list.sandboxes.is_empty(), "{list:?}");
    Ok(())
}

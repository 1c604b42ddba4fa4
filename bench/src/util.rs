//! Shared bench helpers: creating many sandboxes concurrently and waiting
//! for all of them to reach a phase.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::v1::{CreateSandboxRequest, ListSandboxesRequest, Phase, SandboxSpec};
use berth_testkit::TestCluster;
use futures::StreamExt;

/// Creates `names` with `image`, `parallel` requests at a time.
pub async fn create_all(
    cluster: &TestCluster,
    via: u64,
    names: &[String],
    image: &str,
    parallel: usize,
) -> anyhow::Result<()> {
    let client = cluster.sandboxes(via).await?;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let mut client = client.clone();
            let spec = SandboxSpec {
                image: image.to_string(),
                policy: None,
                env: HashMap::new(),
                ..Default::default()
            };
            async move {
                client
                    .create_sandbox(CreateSandboxRequest {
                        name,
                        spec: Some(spec),
                        request_id: String::new(),
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Waits until at least `count` sandboxes are in `phase`.
pub async fn wait_phase_count(
    cluster: &TestCluster,
    via: u64,
    phase: Phase,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut client = cluster.sandboxes(via).await?;
    loop {
        let mut n = 0;
        let mut page_token = String::new();
        loop {
            let page = client
                .list_sandboxes(ListSandboxesRequest {
                    page_size: 5000,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            n += page
                .sandboxes
                .iter()
                .filter(|s| s.phase == phase as i32)
                .count();
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if n >= count {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "only {n}/{count} reached {phase:?} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

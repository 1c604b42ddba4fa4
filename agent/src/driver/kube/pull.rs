//! Image pulls on a Kubernetes node: the kubelet pulls, so the driver
//! starts a short-lived pre-pull Pod with the image on its node and waits
//! until its container has started (the image is there) or the kubelet
//! reports it cannot pull it. The first step of an update, taken while
//! the old Pod keeps running; bounded by the agent's `--pull-timeout`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};

use super::client::{code, error};
use super::driver::{lock, KubeDriver};
use super::objects::{LABEL_MANAGED_BY, LABEL_ROLE, MANAGER};
use crate::driver::DriverError;

/// The kubelet's reasons for an image it cannot get.
const PULL_FAILURES: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// Name of the pre-pull Pod of `image` on `node` (stable, so a repeated
/// pull finds the one in progress).
pub fn pull_pod_name(image: &str, node: &str) -> String {
    // FNV-1a: stable across builds, unlike the std hasher.
    let hash = format!("{node}\0{image}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("berth-pull-{hash:016x}")
}

/// The pre-pull Pod: the image's container only has to start.
pub fn pull_pod(image: &str, node: &str, namespace: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(pull_pod_name(image, node)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
                (LABEL_ROLE.to_string(), "pull".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            restart_policy: Some("Never".to_string()),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(0),
            containers: vec![Container {
                name: "pull".to_string(),
                image: Some(image.to_string()),
                image_pull_policy: Some("IfNotPresent".to_string()),
                command: Some(vec!["sh".into(), "-c".into(), "exit 0".into()]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// What the pre-pull Pod says: `Some(Ok)` the image is there, `Some(Err)`
/// it cannot be pulled, `None` not yet known (with a progress line).
fn verdict(pod: &Pod) -> (Option<Result<(), String>>, String) {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let Some(state) = status.and_then(|c| c.state.as_ref()) else {
        return (None, "waiting for the kubelet".to_string());
    };
    if state.running.is_some() || state.terminated.is_some() {
        return (Some(Ok(())), "pulled".to_string());
    }
    let waiting = state.waiting.as_ref();
    let reason = waiting.and_then(|w| w.reason.clone()).unwrap_or_default();
    let message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
    // Failing to create or run the container comes after the pull.
    if reason.starts_with("CreateContainer") || reason == "RunContainerError" {
        return (Some(Ok(())), "pulled".to_string());
    }
    if PULL_FAILURES.contains(&reason.as_str()) {
        let why = if message.is_empty() {
            reason.clone()
        } else {
            format!("{reason}: {message}")
        };
        return (Some(Err(why)), reason);
    }
    (None, format!("kubelet: {reason}"))
}

impl KubeDriver {
    /// Make sure `image` is on this node (bounded by the pull timeout).
    pub(super) async fn pull_image(&self, image: &str) -> Result<(), DriverError> {
        if image.is_empty() {
            return Err(DriverError::Invalid("image is empty".into()));
        }
        if lock(&self.pulled).contains(image) {
            return Ok(());
        }
        let pod = pull_pod(image, &self.node, &self.apis.namespace);
        let name = pull_pod_name(image, &self.node);
        let not_found = |reason: String| DriverError::ImageNotFound {
            image: image.to_string(),
            reason,
        };
        self.set_progress(image, Some("starting a pre-pull pod".to_string()));
        let result = tokio::time::timeout(self.pull_timeout, async {
            match self.apis.pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(e) if code(&e) == Some(409) => {} // a pull in progress
                Err(e) => return Err(error("create pre-pull pod", e)),
            }
            loop {
                let Some(p) = self
                    .apis
                    .pods
                    .get_opt(&name)
                    .await
                    .map_err(|e| error("get pod", e))?
                else {
                    // Deleted under us (another pull finished): start again.
                    self.apis
                        .pods
                        .create(&PostParams::default(), &pod)
                        .await
                        .or_else(|e| {
                            if code(&e) == Some(409) {
                                Ok(pod.clone())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| error("create pre-pull pod", e))?;
                    continue;
                };
                let (verdict, line) = verdict(&p);
                self.set_progress(image, Some(line));
                match verdict {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(why)) => return Err(not_found(why)),
                    None => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            }
        })
        .await;
        self.set_progress(image, None);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        if let Err(e) = self.apis.pods.delete(&name, &dp).await {
            if code(&e) != Some(404) {
                tracing::warn!(pod = %name, error = %e, "cannot delete the pre-pull pod");
            }
        }
        match result {
            Err(_) => Err(not_found(format!(
                "pull timed out after {:?} (the agent's --pull-timeout)",
                self.pull_timeout
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                lock(&self.pulled).insert(image.to_string());
                Ok(())
            }
        }
    }

    fn set_progress(&self, image: &str, line: Option<String>) {
        let mut pulls = lock(&self.pulls);
        match line {
            Some(line) => pulls.insert(image.to_string(), line),
            None => pulls.remove(image),
        };
    }

    pub(super) fn progress(&self, image: &str) -> Option<String> {
        lock(&self.pulls).get(image).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_pods_are_per_image_and_node_and_valid_names() {
        let a = pull_pod_name("localhost/img:v1", "n1");
        assert_eq!(a, pull_pod_name("localhost/img:v1", "n1"));
        assert_ne!(a, pull_pod_name("localhost/img:v2", "n1"));
        assert_ne!(a, pull_pod_name("localhost/img:v1", "n2"));
        assert!(
            a.len() <= 63
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}

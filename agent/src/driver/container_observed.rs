//! How the container driver reads engine state: the berth labels, the
//! mapping of an inspected container to `Observed`, and the mapping of engine
//! errors to `DriverError` (transport failures mean "engine unreachable";
//! the engine's own messages are kept for the operator).

use berth_proto::agent_v1::{ContainerState, Observed};
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};

use super::DriverError;

pub const LABEL_SANDBOX: &str = "berth.sandbox";
pub const LABEL_UID: &str = "berth.uid";
pub const LABEL_REVISION: &str = "berth.revision";
pub const LABEL_VOLUME: &str = "berth.volume";

pub(super) fn check_uid(
    name: &str,
    uid: &str,
    c: &ContainerInspectResponse,
) -> Result<(), DriverError> {
    let found = label(c, LABEL_UID);
    if uid.is_empty() || uid == found {
        Ok(())
    } else {
        Err(DriverError::UidMismatch {
            name: name.to_string(),
            expected: uid.to_string(),
            found: found.to_string(),
        })
    }
}

pub(super) fn label<'a>(c: &'a ContainerInspectResponse, key: &str) -> &'a str {
    c.config
        .as_ref()
        .and_then(|cfg| cfg.labels.as_ref())
        .and_then(|l| l.get(key))
        .map(String::as_str)
        .unwrap_or_default()
}

pub(super) fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

pub(super) fn absent(name: &str, uid: &str, volume: &str) -> Observed {
    Observed {
        name: name.to_string(),
        uid: uid.to_string(),
        state: ContainerState::Absent as i32,
        volume: volume.to_string(),
        ..Default::default()
    }
}

/// What an inspected container says about its sandbox (volume presence is
/// filled in by the caller).
pub(super) fn observed_of(name: &str, c: &ContainerInspectResponse) -> Observed {
    let st = c.state.clone().unwrap_or_default();
    let status = st.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
    let state = if st.running.unwrap_or(false) {
        ContainerState::Running
    } else {
        match status {
            ContainerStateStatusEnum::EMPTY | ContainerStateStatusEnum::CREATED => {
                ContainerState::Created
            }
            _ => ContainerState::Exited,
        }
    };
    let message = match st.error.filter(|e| !e.is_empty()) {
        Some(err) => err,
        None => status.to_string(),
    };
    Observed {
        name: name.to_string(),
        uid: label(c, LABEL_UID).to_string(),
        revision: label(c, LABEL_REVISION).parse().unwrap_or(0),
        container_id: c.id.clone().unwrap_or_default(),
        state: state as i32,
        exit_code: st.exit_code.unwrap_or(0),
        started_at: st.started_at.unwrap_or_default(),
        volume: label(c, LABEL_VOLUME).to_string(),
        volume_present: false,
        message,
        seq: 0,
        pull_progress: String::new(),
    }
}

pub(super) fn status(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Runs an engine call again while its answer names a container state
/// the Docker API schema does not know: Podman briefly reports "stopped"
/// while a container is being stopped, in inspects and listings alike.
/// Bounded (5 s); any other answer is returned as it is.
pub(super) async fn retry_unknown_state<T, F, Fut>(mut call: F) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    let mut attempts = 0;
    loop {
        match call().await {
            Err(e) if attempts < 50 && e.to_string().contains("unknown variant") => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
}

/// The engine says the object does not exist: a 404, or Podman's 500 for a
/// container removed between a listing and an inspect.
pub(super) fn is_gone(e: &EngineError) -> bool {
    match e {
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } => *status_code == 404 || message.contains("no such container"),
        _ => false,
    }
}

pub(super) fn engine_reason(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } => message.clone(),
        EngineError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Map an engine error: transport failures mean the engine is unreachable.
pub(super) fn engine(op: &'static str, e: EngineError) -> DriverError {
    match e {
        EngineError::HyperResponseError { .. }
        | EngineError::IOError { .. }
        | EngineError::RequestTimeoutError
        | EngineError::SocketNotFoundError(_)
        | EngineError::HyperLegacyError { .. } => {
            DriverError::EngineUnreachable(format!("{op}: {e}"))
        }
        source => DriverError::Engine { op, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState as EngineState};

    fn container(status: ContainerStateStatusEnum, running: bool) -> ContainerInspectResponse {
        let labels = [
            (LABEL_SANDBOX, "s1"),
            (LABEL_UID, "u1"),
            (LABEL_REVISION, "7"),
            (LABEL_VOLUME, "vol-s1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        ContainerInspectResponse {
            id: Some("abc".into()),
            config: Some(ContainerConfig {
                labels: Some(labels.into()),
                ..Default::default()
            }),
            state: Some(EngineState {
                status: Some(status),
                running: Some(running),
                exit_code: Some(137),
                started_at: Some("2024-01-01T00:00:00Z".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn observed_from_labels_and_state() {
        let o = observed_of("s1", &container(ContainerStateStatusEnum::RUNNING, true));
        assert_eq!((o.uid.as_str(), o.revision), ("u1", 7));
        assert_eq!(
            (o.container_id.as_str(), o.volume.as_str()),
            ("abc", "vol-s1")
        );
        assert_eq!(o.state, ContainerState::Running as i32);
        assert_eq!(o.started_at, "2024-01-01T00:00:00Z");
        let o = observed_of("s1", &container(ContainerStateStatusEnum::EXITED, false));
        assert_eq!((o.state, o.exit_code), (ContainerState::Exited as i32, 137));
        assert_eq!(o.message, "exited");
        let o = observed_of("s1", &container(ContainerStateStatusEnum::CREATED, false));
        assert_eq!(o.state, ContainerState::Created as i32);
    }

    #[test]
    fn uid_check_allows_empty_and_equal_only() {
        let c = container(ContainerStateStatusEnum::RUNNING, true);
        assert!(check_uid("s1", "", &c).is_ok());
        assert!(check_uid("s1", "u1", &c).is_ok());
        assert!(matches!(
            check_uid("s1", "u2", &c),
            Err(DriverError::UidMismatch { .. })
        ));
    }
}

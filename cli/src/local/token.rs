//! The local cluster's API token: a new cluster writes its bootstrap
//! platform-admin token into the data dir of the node that led when it
//! was made (`node-N/bootstrap-token`); `berth up` copies the one the
//! cluster accepts to `HOME/token` (mode 0600), where the CLI looks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::v1::WhoAmIRequest;
use tonic::transport::ClientTlsConfig;

use crate::client::{Control, Credentials};
use crate::credentials::token_file;
use crate::Failure;

/// Credentials holding a token the cluster accepts: `HOME/token` if it
/// still works, else a node's bootstrap token (then saved to `HOME/token`).
pub async fn adopt(
    home: &Path,
    node_dirs: &[PathBuf],
    control: &str,
    tls: Option<&ClientTlsConfig>,
    timeout: Duration,
) -> Result<Credentials, Failure> {
    let deadline = Instant::now() + timeout;
    let saved = token_file(home);
    loop {
        let candidates = std::iter::once(saved.clone())
            .chain(node_dirs.iter().map(|d| d.join("bootstrap-token")));
        for path in candidates {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let credentials = Credentials::new(Some(text.trim()), None)?;
            if accepted(control, tls, &credentials).await {
                if path != saved {
                    save(&saved, text.trim())?;
                }
                return Ok(credentials);
            }
        }
        if Instant::now() > deadline {
            return Err(Failure {
                message: format!(
                    "the cluster made no bootstrap token within {timeout:?}; see the node logs"
                ),
                code: 5,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn accepted(control: &str, tls: Option<&ClientTlsConfig>, credentials: &Credentials) -> bool {
    let Ok(c) = Control::connect(control, tls, credentials).await else {
        return false;
    };
    c.access().who_am_i(WhoAmIRequest {}).await.is_ok()
}

fn save(path: &Path, token: &str) -> Result<(), Failure> {
    Ok(berth_tls::write_file(
        path,
        format!("{token}\n").as_bytes(),
        0o600,
    )?)
}

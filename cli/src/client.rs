//! Connecting to the control plane: try each address in order and use the
//! first that answers. Any control node serves any request.

use std::time::Duration;

use berth_proto::v1::access_service_client::AccessServiceClient;
use berth_proto::v1::cluster_service_client::ClusterServiceClient;
use berth_proto::v1::sandbox_service_client::SandboxServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::Failure;

/// Request deadline: a little over the server's own bound, so the server's
/// answer (for example "no quorum") arrives before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// How long one control node may take to accept a connection (TCP and
/// the TLS handshake) before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A fresh idempotency key for one mutating request: the control plane
/// applies a request id at most once, whoever retries it.
pub fn request_id() -> String {
    format!("cli-{}", uuid::Uuid::new_v4())
}

/// What every call carries: the bearer token, and the tenant a platform
/// admin acts in.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<MetadataValue<Ascii>>,
    tenant: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    pub fn new(token: Option<&str>, tenant: Option<&str>) -> Result<Self, Failure> {
        let value = |what: &str, text: &str| {
            text.parse::<MetadataValue<Ascii>>()
                .map_err(|_| Failure::usage(format!("{what} is not printable ASCII")))
        };
        Ok(Self {
            token: token
                .map(|t| value("the token", &format!("Bearer {}", t.trim())))
                .transpose()?,
            tenant: tenant.map(|t| value("--as-tenant", t)).transpose()?,
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        if let Some(tenant) = &self.tenant {
            request
                .metadata_mut()
                .insert("berth-tenant", tenant.clone());
        }
        berth_telemetry::propagate::inject_metadata(request.metadata_mut());
        Ok(request)
    }
}

/// A channel to a control node that sends the credentials with each call.
pub type Chan = InterceptedService<Channel, Credentials>;

pub struct Control {
    channel: Channel,
    credentials: Credentials,
}

impl Control {
    /// Connects to the first of `addrs` that answers, over TLS with `tls`.
    pub async fn connect(
        addrs: &str,
        tls: Option<&ClientTlsConfig>,
        credentials: &Credentials,
    ) -> Result<Self, Failure> {
        let addrs: Vec<&str> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(Failure::usage("--control names no address"));
        }
        let mut errors = Vec::new();
        for addr in &addrs {
            let invalid = |e: tonic::transport::Error| {
                Failure::usage(format!("invalid control address {addr:?}: {e}"))
            };
            let endpoint = match tls {
                Some(tls) => berth_proto::dial::endpoint(&format!("https://{addr}"))
                    .and_then(|e| e.tls_config(tls.clone()))
                    .map_err(invalid)?,
                None => berth_proto::dial::endpoint(addr).map_err(invalid)?,
            }
            .connect_timeout(Duration::from_secs(1))
            .timeout(REQUEST_TIMEOUT);
            // The TLS handshake is not bounded by the connect timeout: a
            // node that accepts but never answers (paused, overloaded)
            // must not hold the CLI; the next address is tried.
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
                Ok(Ok(channel)) => {
                    return Ok(Self {
                        channel,
                        credentials: credentials.clone(),
                    })
                }
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no answer within {CONNECT_TIMEOUT:?}")),
            }
        }
        Err(Failure {
            message: format!("no control node reachable ({})", errors.join("; ")),
            code: 5,
        })
    }

    fn chan(&self) -> Chan {
        InterceptedService::new(self.channel.clone(), self.credentials.clone())
    }

    pub fn sandboxes(&self) -> SandboxServiceClient<Chan> {
        SandboxServiceClient::new(self.chan())
    }

    pub fn cluster(&self) -> ClusterServiceClient<Chan> {
        ClusterServiceClient::new(self.chan())
    }

    pub fn access(&self) -> AccessServiceClient<Chan> {
        AccessServiceClient::new(self.chan())
    }
}

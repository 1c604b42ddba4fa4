//! A tower layer for tonic servers: each request continues the caller's
//! trace (W3C context from its headers) in a `grpc` server span, and is
//! counted by method and status code with its latency
//! (`berth_grpc_server_requests_total`, `…_request_duration_seconds`).
//! The code is the `grpc-status` of a trailers-only answer (every error
//! before the first message), else OK; a stream that fails later counts
//! as OK here. Raft's own traffic (heartbeats, votes, replication) and the
//! agent session stream are counted but not traced: they are not part of
//! any one operation, and would drown the traces that are (the `Forward`
//! of a client's write is traced).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument;

/// The layer; add it with `Server::builder().layer(TraceLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

/// Whether requests to `method` get a server span.
fn traced(method: &str) -> bool {
    let internal =
        method.starts_with("/berth.raft.v1.RaftService/") && !method.ends_with("/Forward");
    !(internal || method == "/berth.agent.v1.AgentControl/Session")
}

/// The gRPC code name of a numeric `grpc-status`.
pub fn code_name(status: &str) -> String {
    let code = status
        .parse::<i32>()
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Unknown);
    format!("{code:?}")
}

impl<S, B, R> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let span = if traced(&method) {
            let span = tracing::info_span!("grpc", otel.name = %method, otel.kind = "server", rpc.method = %method, rpc.grpc.status_code = tracing::field::Empty);
            crate::propagate::continue_from_headers(&span, req.headers());
            span
        } else {
            tracing::Span::none()
        };
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let result = fut.await;
                let code = match &result {
                    Ok(res) => res
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map_or_else(|| "Ok".to_string(), code_name),
                    Err(_) => "Internal".to_string(),
                };
                tracing::Span::current().record("rpc.grpc.status_code", code.as_str());
                // An unknown path is one label value, however many a
                // client makes up (bounded cardinality).
                let label = if code == "Unimplemented" {
                    "unknown"
                } else {
                    method.as_str()
                };
                crate::metrics::get().grpc(label, &code, start.elapsed());
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_traffic_is_not_traced_but_forwarded_writes_are() {
        assert!(!traced("/berth.raft.v1.RaftService/AppendEntries"));
        assert!(!traced("/berth.raft.v1.RaftService/Vote"));
        assert!(!traced("/berth.agent.v1.AgentControl/Session"));
        assert!(traced("/berth.raft.v1.RaftService/Forward"));
        assert!(traced("/berth.v1.SandboxService/CreateSandbox"));
    }

    #[test]
    fn status_codes_have_their_names() {
        assert_eq!(code_name("0"), "Ok");
        assert_eq!(code_name("5"), "NotFound");
        assert_eq!(code_name("16"), "Unauthenticated");
        assert_eq!(code_name("x"), "Unknown");
    }
}

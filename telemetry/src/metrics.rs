//! Prometheus metrics of berth's processes, in one place: the families
//! ([`Metrics`], one static set per process), which of them a component
//! exposes ([`Component`]), and the `/metrics` endpoint ([`serve`], the
//! OpenMetrics text format). Names carry their unit and counters end in
//! `_total`; labels have bounded values (methods, codes, phases, kinds),
//! never a sandbox name. A scraper that asks for OpenMetrics gets it; any
//! other gets the classic text format (0.0.4), which `promtool check
//! metrics` reads.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Which process serves the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Control,
    Agent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOutcome {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindResult {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    pub call: String,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn slow() -> Histogram {
    // 50 ms .. ~27 min
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

/// Every metric berth exposes.
pub struct Metrics {
    // gRPC server (both components)
    pub grpc_requests: Family<MethodCode, Counter>,
    pub grpc_duration: Hist<Method>,
    // Raft (control)
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_apply_lag: Gauge,
    pub raft_snapshots: Counter,
    pub raft_snapshot_duration: Histogram,
    pub raft_append_duration: Histogram,
    // Sandboxes and operations (control)
    pub sandboxes: Family<PhaseLabel, Gauge>,
    pub time_to_running: Histogram,
    pub container_restarts: Counter,
    pub operations: Family<KindOutcome, Counter>,
    pub phase_duration: Hist<PhaseLabel>,
    pub leader_changes: Counter,
    pub failover_duration: Histogram,
    // Agent
    pub agent_commands: Family<KindResult, Counter>,
    pub agent_fence_refusals: Counter,
    pub agent_engine_duration: Hist<Call>,
    pub agent_sessions: Counter,
    pub agent_connected: Gauge,
}

impl Metrics {
    fn new() -> Self {
        Self {
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            raft_snapshots: Counter::default(),
            raft_snapshot_duration: slow(),
            raft_append_duration: latency(),
            sandboxes: Family::default(),
            time_to_running: slow(),
            container_restarts: Counter::default(),
            operations: Family::default(),
            phase_duration: Family::new_with_constructor(slow),
            leader_changes: Counter::default(),
            failover_duration: slow(),
            agent_commands: Family::default(),
            agent_fence_refusals: Counter::default(),
            agent_engine_duration: Family::new_with_constructor(latency),
            agent_sessions: Counter::default(),
            agent_connected: Gauge::default(),
        }
    }

    /// A registry with the families `component` exposes.
    pub fn registry(&'static self, component: Component) -> Registry {
        let mut r = Registry::with_prefix("berth");
        let s = Unit::Seconds;
        r.register(
            "grpc_server_requests",
            "gRPC requests served, by method and status code",
            self.grpc_requests.clone(),
        );
        r.register_with_unit(
            "grpc_server_request_duration",
            "Time to answer a gRPC request (to its first response for streams)",
            s.clone(),
            self.grpc_duration.clone(),
        );
        match component {
            Component::Control => {
                r.register("raft_term", "Current Raft term", self.raft_term.clone());
                r.register(
                    "raft_is_leader",
                    "1 on the leader, 0 elsewhere",
                    self.raft_is_leader.clone(),
                );
                r.register(
                    "raft_last_log_index",
                    "Index of the last entry in this node's log",
                    self.raft_last_log_index.clone(),
                );
                r.register(
                    "raft_commit_index",
                    "Highest log index known committed",
                    self.raft_commit_index.clone(),
                );
                r.register(
                    "raft_applied_index",
                    "Highest log index applied to the state machine",
                    self.raft_applied_index.clone(),
                );
                r.register(
                    "raft_apply_lag_entries",
                    "Entries in the log not yet applied",
                    self.raft_apply_lag.clone(),
                );
                r.register(
                    "raft_snapshots",
                    "Snapshots built by this node",
                    self.raft_snapshots.clone(),
                );
                r.register_with_unit(
                    "raft_snapshot_duration",
                    "Time to build a snapshot",
                    s.clone(),
                    self.raft_snapshot_duration.clone(),
                );
                r.register_with_unit(
                    "raft_append_duration",
                    "Time to append (and sync) a batch of log entries",
                    s.clone(),
                    self.raft_append_duration.clone(),
                );
                r.register(
                    "sandboxes",
                    "Sandboxes by phase (on the leader)",
                    self.sandboxes.clone(),
                );
                r.register_with_unit(
                    "sandbox_time_to_running",
                    "From create to first Running",
                    s.clone(),
                    self.time_to_running.clone(),
                );
                r.register(
                    "sandbox_container_restarts",
                    "Sandbox containers seen (re)started after their first start",
                    self.container_restarts.clone(),
                );
                r.register(
                    "operations",
                    "Finished updates and rollbacks, by kind and outcome",
                    self.operations.clone(),
                );
                r.register_with_unit(
                    "operation_phase_duration",
                    "Time an update or rollback spent in each phase",
                    s.clone(),
                    self.phase_duration.clone(),
                );
                r.register(
                    "leader_changes",
                    "Times this node became leader",
                    self.leader_changes.clone(),
                );
                r.register_with_unit(
                    "failover_duration",
                    "From becoming leader to every sandbox actor running",
                    s,
                    self.failover_duration.clone(),
                );
            }
            Component::Agent => {
                r.register(
                    "agent_commands",
                    "Commands from the control plane, by kind and result",
                    self.agent_commands.clone(),
                );
                r.register(
                    "agent_fence_refusals",
                    "Commands refused for a stale term",
                    self.agent_fence_refusals.clone(),
                );
                r.register_with_unit(
                    "agent_engine_call_duration",
                    "Driver calls to the container engine or Kubernetes API",
                    s,
                    self.agent_engine_duration.clone(),
                );
                r.register(
                    "agent_sessions",
                    "Control sessions established",
                    self.agent_sessions.clone(),
                );
                r.register(
                    "agent_session_connected",
                    "1 while a control session is up",
                    self.agent_connected.clone(),
                );
            }
        }
        r
    }

    /// Record one gRPC request.
    pub fn grpc(&self, method: &str, code: &str, took: Duration) {
        self.grpc_requests
            .get_or_create(&MethodCode {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.grpc_duration
            .get_or_create(&Method {
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// This process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text:
/// counters are declared under their `_total` name, and the `# UNIT` and
/// `# EOF` lines go.
pub fn to_classic(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match declared {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Serve `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, component: Component) {
    let registry = std::sync::Arc::new(get().registry(component));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move {
                        let open_metrics = req
                            .headers()
                            .get(http::header::ACCEPT)
                            .and_then(|a| a.to_str().ok())
                            .is_some_and(|a| a.contains("application/openmetrics-text"));
                        let (status, body, kind) = if req.uri().path() != "/metrics" {
                            (
                                http::StatusCode::NOT_FOUND,
                                "try /metrics\n".to_string(),
                                "text/plain",
                            )
                        } else if open_metrics {
                            (
                                http::StatusCode::OK,
                                render(&registry),
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                        } else {
                            (
                                http::StatusCode::OK,
                                to_classic(&render(&registry)),
                                "text/plain; version=0.0.4; charset=utf-8",
                            )
                        };
                        let mut res = http::Response::new(Full::new(Bytes::from(body)));
                        *res.status_mut() = status;
                        if let Ok(v) = http::HeaderValue::from_str(kind) {
                            res.headers_mut().insert(http::header::CONTENT_TYPE, v);
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Bind `addr` and serve metrics in the background.
pub async fn spawn(addr: &str, component: Component) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, component));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_declares_counters_by_their_total_name() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n# HELP a_lat Latency.\n# TYPE a_lat histogram\n# UNIT a_lat seconds\na_lat_count 1\n# EOF\n";
        let classic = to_classic(open);
        assert_eq!(
            classic,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP a_lat Latency.\n# TYPE a_lat histogram\na_lat_count 1\n"
        );
    }

    #[test]
    fn names_carry_units_and_counters_end_in_total() {
        let m = get();
        m.grpc(
            "/berth.v1.SandboxService/CreateSandbox",
            "OK",
            Duration::from_millis(3),
        );
        m.operations
            .get_or_create(&KindOutcome {
                kind: "update".into(),
                outcome: "succeeded".into(),
            })
            .inc();
        let text = render(&m.registry(Component::Control));
        assert!(text.contains("berth_grpc_server_requests_total{method=\"/berth.v1.SandboxService/CreateSandbox\",code=\"OK\"} 1"), "{text}");
        assert!(
            text.contains("berth_grpc_server_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("berth_operations_total{kind=\"update\",outcome=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("agent_commands"),
            "agent metrics only on agents"
        );
        let agent = render(&m.registry(Component::Agent));
        assert!(
            agent.contains("berth_agent_fence_refusals_total 0"),
            "{agent}"
        );
        assert!(!agent.contains("raft_term"));
    }
}

//! One trace per operation across every process: an in-process OTLP
//! collector (the OTLP TraceService over tonic) receives the spans of the
//! CLI, berthd and berth-agent (kube driver, against berth-kubefake), and
//! a create and an update must each be one trace holding spans of all
//! three services, every parent link resolving to a collected span: CLI
//! → berthd API → the leader's command → the agent's command → the
//! driver's engine call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_kubefake::{FakeApi, Image};
use berth_testkit::bin_path;
use common::{berth_home, free_base_port, Down};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const NS: &str = "berth-sandboxes";
const NODE: &str = "worker-1";

#[derive(Debug, Clone)]
struct Collected {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<Collected>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Collected {
                    service: service.clone(),
                    name: span.name,
                    trace: span.trace_id,
                    id: span.span_id,
                    parent: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// The trace whose root span is the CLI's `root`, once it holds spans
    /// named `wanted` (service, name prefix) with every parent collected.
    fn trace_of(&self, root: &str, wanted: &[(&str, &str)]) -> Option<Vec<Collected>> {
        let spans = self.0.lock().unwrap().clone();
        let roots = spans
            .iter()
            .filter(|s| s.service == "berth" && s.name == root);
        for r in roots {
            let trace: Vec<Collected> = spans
                .iter()
                .filter(|s| s.trace == r.trace)
                .cloned()
                .collect();
            let has = |(service, prefix): &(&str, &str)| {
                trace
                    .iter()
                    .any(|s| s.service == *service && s.name.starts_with(prefix))
            };
            let ids: BTreeSet<&Vec<u8>> = trace.iter().map(|s| &s.id).collect();
            let linked = trace
                .iter()
                .all(|s| s.parent.is_empty() || ids.contains(&s.parent));
            if wanted.iter().all(has) && linked {
                return Some(trace);
            }
        }
        None
    }
}

fn wait_trace(c: &Collector, root: &str, wanted: &[(&str, &str)]) -> Vec<Collected> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = c.trace_of(root, wanted) {
            return t;
        }
        if Instant::now() > deadline {
            let names: Vec<String> =
                c.0.lock()
                    .unwrap()
                    .iter()
                    .map(|s| format!("{}:{}", s.service, s.name))
                    .collect();
            panic!("no complete trace for {root:?} with {wanted:?}; collected {names:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The chain from `leaf` (service, name prefix) up to the root.
fn ancestry(trace: &[Collected], service: &str, prefix: &str) -> Vec<String> {
    let by_id: HashMap<&Vec<u8>, &Collected> = trace.iter().map(|s| (&s.id, s)).collect();
    let mut at = trace
        .iter()
        .find(|s| s.service == service && s.name.starts_with(prefix))
        .unwrap();
    let mut chain = vec![format!("{}:{}", at.service, at.name)];
    while let Some(parent) = by_id.get(&at.parent) {
        at = parent;
        chain.push(format!("{}:{}", at.service, at.name));
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_and_an_update_are_each_one_trace_across_cli_berthd_and_agent() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let api = FakeApi::start().await.unwrap();
    for (image, v) in [("localhost/demo:v1", "v1"), ("localhost/demo:v2", "v2")] {
        api.add_image(
            image,
            Image {
                sandbox: vec![("README".into(), format!("{v}\n"))],
                exit_code: None,
            },
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(NS)).unwrap();
    let home = dir.path().join("home");
    let base = free_base_port();
    let _down = Down(&home);
    let (h, k, o) = (home.clone(), kubeconfig.clone(), otlp.clone());
    let up = tokio::task::spawn_blocking(move || {
        Command::new(bin_path("berth"))
            .args(["up", "--home"])
            .arg(&h)
            .args([
                "--base-port",
                &base.to_string(),
                "--driver",
                "kube",
                "--kube-node",
                NODE,
                "--kubeconfig",
            ])
            .arg(&k)
            // berthd and the agent inherit these: export to the collector,
            // in batches every 200 ms.
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &o)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let control = format!(
        "127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}",
        base + 1,
        base + 2
    );
    let cli = |args: Vec<String>| {
        let (home, control) = (home.clone(), control.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            berth_home(&home, &control, &args)
        })
    };
    let args = |s: &str| -> Vec<String> {
        let mut v = vec!["--otlp-endpoint".to_string(), otlp.clone()];
        v.extend(s.split_whitespace().map(str::to_string));
        v
    };

    let made = cli(args("sandbox create web --image localhost/demo:v1"))
        .await
        .unwrap();
    assert_eq!(made.code, 0, "{}", made.stderr);
    let create = wait_trace(
        &collector,
        "berth sandbox create",
        &[
            ("berthd", "/berth.v1.SandboxService/CreateSandbox"),
            ("berthd", "leader Ensure"),
            ("berth-agent", "agent ensure"),
            ("berth-agent", "engine ensure"),
        ],
    );
    let services: BTreeSet<&str> = create.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, BTreeSet::from(["berth", "berth-agent", "berthd"]));
    let chain = ancestry(&create, "berth-agent", "engine ensure");
    assert_eq!(
        chain.last().map(String::as_str),
        Some("berth:berth sandbox create"),
        "{chain:?}"
    );
    assert!(
        chain.iter().any(|s| s == "berthd:leader Ensure"),
        "{chain:?}"
    );
    assert!(
        chain.iter().any(|s| s == "berth-agent:agent ensure"),
        "{chain:?}"
    );

    let updated = cli(args("sandbox update web --image localhost/demo:v2 --wait"))
        .await
        .unwrap();
    assert_eq!(updated.code, 0, "{}{}", updated.stdout, updated.stderr);
    let update = wait_trace(
        &collector,
        "berth sandbox update",
        &[
            ("berthd", "/berth.v1.SandboxService/UpdateSandbox"),
            ("berthd", "update Pulling -> "),
            ("berthd", "update Verifying -> Succeeded"),
            ("berth-agent", "agent pull"),
            ("berth-agent", "agent ensure"),
        ],
    );
    let chain = ancestry(&update, "berth-agent", "agent ensure");
    assert_eq!(
        chain.last().map(String::as_str),
        Some("berth:berth sandbox update"),
        "{chain:?}"
    );
    let phases: Vec<&str> = update
        .iter()
        .filter(|s| s.name.starts_with("update "))
        .map(|s| s.name.as_str())
        .collect();
    assert!(phases.len() >= 4, "a span per phase: {phases:?}");
    server.abort();
}

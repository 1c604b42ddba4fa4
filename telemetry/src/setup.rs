//! Installs the global tracing subscriber: a log layer always, and an
//! OpenTelemetry layer exporting over OTLP/gRPC when an endpoint is
//! configured. The exporter runs on its own small Tokio runtime, because
//! the SDK's batch processor exports from a plain thread and tonic needs a
//! reactor; [`Guard`] flushes and stops it.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What one process wants from telemetry.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service: &'static str,
    pub format: LogFormat,
    /// The filter when `RUST_LOG` is unset.
    pub default_filter: &'static str,
    /// OTLP/gRPC endpoint (`http://host:4317`); `None`: the environment's
    /// `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, else tracing export is off.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot start the OTLP exporter's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("invalid OTLP exporter configuration: {0}")]
    Exporter(String),
}

/// Keeps the exporter alive; flushes pending spans when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Guard {
    /// Whether traces are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry: flushing traces failed: {e}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn configured_endpoint(flag: Option<&str>) -> Option<String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    flag.map(str::to_string)
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Install logging and, if configured, trace export. Call once, early.
pub fn init(settings: Settings) -> Result<Guard, TelemetryError> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.default_filter));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match settings.format {
        LogFormat::Json => logs.json().boxed(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    crate::propagate::install();
    let Some(endpoint) = configured_endpoint(settings.otlp_endpoint.as_deref()) else {
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .init();
        return Ok(Guard {
            provider: None,
            runtime: None,
        });
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(TelemetryError::Runtime)?;
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(settings.service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("berth");
    // Spans go to the exporter at every level the filter lets through
    // for logs, and at info and above for berth's own spans otherwise.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new(
            "info,h2=off,hyper=off,tower=off,openraft=off,ractor=off",
        ));
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .init();
    tracing::info!(%endpoint, service = settings.service, "exporting traces over OTLP");
    Ok(Guard {
        provider: Some(provider),
        runtime: Some(runtime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_environment() {
        assert_eq!(
            configured_endpoint(Some("http://127.0.0.1:4317")).as_deref(),
            Some("http://127.0.0.1:4317")
        );
    }
}

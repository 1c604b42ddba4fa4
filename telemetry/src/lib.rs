//! berth's telemetry, shared by `berthd`, `berth-agent` and `berth`:
//!
//! - [`init`]: logs (text or JSON, filtered by `RUST_LOG`) and, when an
//!   OTLP endpoint is configured (`--otlp-endpoint` or the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`), OpenTelemetry traces exported over
//!   OTLP/gRPC. Off when not configured: no exporter, no cost but spans.
//! - [`propagate`]: W3C trace context in gRPC metadata and in strings
//!   carried inside messages and replicated records (the agent session is
//!   one long stream; an update outlives the request that began it).
//! - [`grpc`]: a tower layer for tonic servers that continues the caller's
//!   trace and counts requests by method and code with their latency.
//! - [`metrics`]: the Prometheus registry and its `/metrics` endpoint.

pub mod grpc;
pub mod metrics;
pub mod propagate;
mod setup;

pub use setup::{init, Guard, LogFormat, Settings, TelemetryError};

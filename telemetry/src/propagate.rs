//! W3C trace context (`traceparent`, `tracestate`) across every hop:
//! gRPC metadata on calls, and a string inside messages and replicated
//! records where there is no call to carry it (a command down the agent
//! session stream; an update that a later leader resumes).

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Make W3C trace context the global propagator.
pub fn install() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

struct HeaderMapCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderMapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataCarrier<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MapCarrier(HashMap<String, String>);

impl Injector for MapCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for MapCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace context a caller sent in request headers.
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderMapCarrier(headers)))
}

/// Make `span` a child of the trace context in request `headers`.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = extract_headers(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Put the current span's trace context into outgoing gRPC metadata.
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataCarrier(metadata));
        });
    }
}

/// The current span's `traceparent` (empty when there is no trace), to
/// carry inside a message or a record.
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier = MapCarrier(HashMap::new());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0.remove("traceparent").unwrap_or_default()
}

/// Make `span` a child of the trace context in `traceparent`, if valid.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = MapCarrier(HashMap::from([(
        "traceparent".to_string(),
        traceparent.to_string(),
    )]));
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        let span = tracing::info_span!("x");
        continue_from(&span, "not-a-traceparent");
        continue_from(&span, "");
        assert_eq!(current_traceparent(), "");
    }
}

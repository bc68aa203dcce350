//! Logging, tracing and trace context, set up once for both services.
//!
//! Logs are JSON lines on stdout. Every step of an event runs in a span carrying
//! `trace_id` and `span_id` fields, so each log line inside it names its trace. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over OTLP
//! (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the default, or `grpc`; service name
//! from `OTEL_SERVICE_NAME`, sampler from `OTEL_TRACES_SAMPLER`); without it no
//! OpenTelemetry layer is installed at all, and the ids are made here.
//!
//! A trace crosses processes as a W3C `traceparent`: Dojo's request header continues its
//! trace, ingress injects the publish span's into the AMQP headers, and the processor's
//! span is its child.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// The log filter without `RUST_LOG`: `info`, but lapin's own lines off (every
/// connection and channel problem is logged once by the services themselves, with what
/// it means; lapin would add several ERROR lines per attempt).
pub const DEFAULT_FILTER: &str = "info,lapin=off";

/// Set when the OpenTelemetry layer is installed.
static EXPORTING: OnceLock<bool> = OnceLock::new();

/// True when spans are exported over OTLP. Without export, spans carry only what the
/// logs need (`trace_id`, `span_id`): every other field would be formatted into each
/// span's log context for nothing, a third of ingress's CPU per request at `info`.
pub fn exporting() -> bool {
    EXPORTING.get().copied().unwrap_or(false)
}

/// Flushes and stops span export when dropped (bounded: 5 s).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("telemetry: span export did not finish: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

fn exporter() -> Result<opentelemetry_otlp::SpanExporter, String> {
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    exporter_for(&protocol)
}

/// The OTLP span exporter for a protocol name (endpoint, headers and timeouts come from
/// the standard `OTEL_EXPORTER_OTLP_*` variables).
fn exporter_for(protocol: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    let built = match protocol.trim() {
        "grpc" => SpanExporter::builder().with_tonic().build(),
        "http/protobuf" | "" => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (grpc, http/protobuf)"
            ))
        }
    };
    built.map_err(|e| e.to_string())
}

/// Installs logging, and span export when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Call once, inside a Tokio runtime
/// (the gRPC exporter needs one). Keep the returned guard until exit.
pub fn init(service: &str) -> Result<Telemetry, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stdout);
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    if !endpoint {
        let _ = EXPORTING.set(false);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(logs)
            .try_init();
        return Ok(Telemetry { provider: None });
    }
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .with_batch_exporter(exporter()?)
        .build();
    let tracer = provider.tracer(service.to_owned());
    let _ = EXPORTING.set(true);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Logging only (tests, tools).
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new random 16-byte trace id, as 32 lowercase hex digits.
pub fn new_trace_id() -> String {
    random_hex(16)
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id_from_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| trace.to_ascii_lowercase())
}

/// A `traceparent` for a new span in `trace_id` (sampled).
pub fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{}-01", random_hex(8))
}

/// The ids of a span, as logged and as passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: String,
    pub span_id: String,
}

impl Ids {
    /// The `traceparent` naming this span as the parent of the next hop.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// Makes `span` part of the trace of `parent` (a `traceparent`; a new trace when `None`
/// or invalid), and records its `trace_id` and `span_id` fields (declare them `Empty`).
/// Call before the span is first entered.
pub fn adopt(span: &tracing::Span, parent: Option<&str>) -> Ids {
    let parent = parent.filter(|p| trace_id_from_traceparent(p).is_some());
    let ids = if exporting() {
        if let Some(p) = parent {
            let carrier = HashMap::from([("traceparent".to_owned(), p.to_owned())]);
            let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        Ids {
            trace_id: sc.trace_id().to_string(),
            span_id: sc.span_id().to_string(),
        }
    } else {
        Ids {
            trace_id: parent
                .and_then(trace_id_from_traceparent)
                .unwrap_or_else(new_trace_id),
            span_id: random_hex(8),
        }
    };
    span.record("trace_id", ids.trace_id.as_str());
    span.record("span_id", ids.span_id.as_str());
    ids
}

/// [`adopt`] for a child of the current span, in the same trace as `parent_ids`.
pub fn adopt_child(span: &tracing::Span, parent_ids: &Ids) -> Ids {
    adopt(span, Some(&parent_ids.traceparent()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_valid_traceparent_and_refuses_others() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_from_traceparent(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert_eq!(trace_id_from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn made_up_ids_are_valid_w3c_ids() {
        let id = new_trace_id();
        assert_eq!(trace_id_from_traceparent(&traceparent(&id)), Some(id));
    }

    #[tokio::test]
    async fn both_otlp_protocols_are_supported_and_others_named() {
        assert!(exporter_for("http/protobuf").is_ok());
        assert!(exporter_for("grpc").is_ok());
        let err = exporter_for("http/json").unwrap_err();
        assert!(err.contains("http/json"), "{err}");
    }

    #[test]
    fn without_export_a_span_continues_the_incoming_trace() {
        let span = tracing::info_span!(
            "t",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        );
        let ids = adopt(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(ids.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.span_id.len(), 16);
        let child = adopt_child(&span, &ids);
        assert_eq!(child.trace_id, ids.trace_id);
        assert_ne!(child.span_id, ids.span_id);
        assert_eq!(adopt(&span, Some("garbage")).trace_id.len(), 32);
    }
}

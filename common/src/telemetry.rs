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
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// The log filter without `RUST_LOG`: `info`, but lapin's own lines off (every
/// connection and channel problem is logged once by the services themselves, with what
/// it means; lapin would add several ERROR lines per attempt), and PostgreSQL's notices
/// only from warnings up (its NOTICEs are the migrations' "already exists, skipping").
pub const DEFAULT_FILTER: &str = "info,lapin=off,sqlx::postgres::notice=warn";

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
        .fmt_fields(AppendJsonFields)
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
        .fmt_fields(AppendJsonFields)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

/// A span's fields as one JSON object (what the JSON log lines show under `span`), grown
/// by appending when a field is recorded later.
///
/// tracing-subscriber's own `JsonFields` collects the fields into a map of JSON values
/// and, on every `Span::record`, parses the object and writes it again: with the ids
/// recorded on two spans per delivery, that was the largest single cost of an ingress
/// request (about a fifth of its instructions; docs/PERFORMANCE.md, "Against the
/// thinnest receiver"). Here each field is written straight as `"name":value` (strings
/// and `Debug` values as JSON strings, integers and booleans as themselves), and a record
/// splices the new fields in before the closing brace. A field recorded twice appears
/// twice; readers of the object (the JSON event formatter among them) keep the last value.
#[derive(Debug, Default, Clone, Copy)]
pub struct AppendJsonFields;

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut object = String::from("{");
        fields.record(&mut AppendJson(&mut object));
        object.push('}');
        writer.write_str(&object)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let object = &mut current.fields;
        if object.is_empty() {
            object.push('{');
        } else if object.ends_with('}') {
            object.pop();
        } else {
            return Err(std::fmt::Error);
        }
        fields.record(&mut AppendJson(object));
        object.push('}');
        Ok(())
    }
}

/// Appends `"name":value` pairs to an open JSON object (for [`AppendJsonFields`]).
struct AppendJson<'a>(&'a mut String);

impl AppendJson<'_> {
    fn key(&mut self, field: &tracing::field::Field) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        self.string(field.name());
        self.0.push(':');
    }

    fn string(&mut self, value: &str) {
        // Serialising a `str` cannot fail.
        self.0
            .push_str(&serde_json::to_string(value).expect("a string serialises"));
    }
}

impl tracing::field::Visit for AppendJson<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field);
        self.string(value);
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.key(field);
        self.0.push_str(&value.to_string());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.key(field);
        self.0.push_str(&value.to_string());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.key(field);
        match serde_json::Number::from_f64(value) {
            Some(n) => self.0.push_str(&n.to_string()),
            None => self.string(&value.to_string()),
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.string(&format!("{value:?}"));
    }
}

/// A new random 16-byte trace id, as 32 lowercase hex digits (never all zeros, W3C
/// Trace Context §3.2.2.3).
pub fn new_trace_id() -> String {
    format!("{:032x}", nonzero(rand::random::<u128>))
}

/// A new random 8-byte span id, as 16 lowercase hex digits (never all zeros).
fn new_span_id() -> String {
    format!("{:016x}", nonzero(rand::random::<u64>))
}

fn nonzero<T: PartialEq + Default>(draw: impl Fn() -> T) -> T {
    loop {
        let v = draw();
        if v != T::default() {
            return v;
        }
    }
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
    format!("00-{trace_id}-{}-01", new_span_id())
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

    /// Ids for a child span made here (no span export): the same trace, a new span id.
    pub fn child(&self) -> Ids {
        Ids {
            trace_id: self.trace_id.clone(),
            span_id: new_span_id(),
        }
    }
}

/// Makes `span` part of the trace of `parent` (a `traceparent`; a new trace when `None`
/// or invalid), and records its `trace_id` and `span_id` fields (declare them `Empty`).
/// Call before the span is first entered.
pub fn adopt(span: &tracing::Span, parent: Option<&str>) -> Ids {
    let ids = if exporting() {
        let parent = parent.filter(|p| trace_id_from_traceparent(p).is_some());
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
        continue_trace(parent)
    };
    span.record("trace_id", ids.trace_id.as_str());
    span.record("span_id", ids.span_id.as_str());
    ids
}

/// Ids for a new span, made here (no span export): in the trace of `parent` (a W3C
/// `traceparent`) when it is valid, else in a new trace. For a span that takes them as
/// fields when it is created, rather than recording them after ([`adopt`]).
pub fn continue_trace(parent: Option<&str>) -> Ids {
    Ids {
        trace_id: parent
            .and_then(trace_id_from_traceparent)
            .unwrap_or_else(new_trace_id),
        span_id: new_span_id(),
    }
}

/// [`adopt`] for a child of the current span, in the same trace as `parent_ids`.
pub fn adopt_child(span: &tracing::Span, parent_ids: &Ids) -> Ids {
    if exporting() {
        return adopt(span, Some(&parent_ids.traceparent()));
    }
    let ids = parent_ids.child();
    span.record("trace_id", ids.trace_id.as_str());
    span.record("span_id", ids.span_id.as_str());
    ids
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

    /// The log lines of `body`, run under the services' JSON log format, parsed.
    fn json_lines(body: impl FnOnce()) -> Vec<serde_json::Value> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(AppendJsonFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, body);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
            .collect()
    }

    #[test]
    fn log_lines_carry_span_fields_recorded_after_the_span_began() {
        use tracing::field::Empty;
        let lines = json_lines(|| {
            let span = tracing::info_span!(
                "delivery",
                attempt = 3u64,
                delta = -2i64,
                ratio = 0.5f64,
                sampled = true,
                kind = ?Some("a\\b"),
                channel = "webhook",
                location = Empty,
                trace_id = Empty,
                span_id = Empty
            );
            let ids = adopt(
                &span,
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            span.record("location", "the \"quoted\" one");
            span.in_scope(|| tracing::info!("first"));
            let child = tracing::info_span!("publish", trace_id = Empty, span_id = Empty);
            let child_ids = adopt_child(&child, &ids);
            child.in_scope(|| tracing::info!("second"));
            span.record("location", "renamed");
            span.in_scope(|| tracing::info!("third"));
            assert_eq!(child_ids.trace_id, ids.trace_id);
            assert_ne!(child_ids.span_id, ids.span_id);
        });
        assert_eq!(lines.len(), 3);
        let span = |i: usize| &lines[i]["span"];
        assert_eq!(span(0)["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span(0)["channel"], "webhook");
        assert_eq!(span(0)["attempt"], 3);
        assert_eq!(span(0)["delta"], -2);
        assert_eq!(span(0)["ratio"], 0.5);
        assert_eq!(span(0)["sampled"], true);
        assert_eq!(span(0)["kind"], "Some(\"a\\\\b\")");
        assert_eq!(span(0)["location"], "the \"quoted\" one");
        assert_eq!(span(0)["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(span(1)["name"], "publish");
        assert_eq!(span(1)["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span(1)["span_id"], span(0)["span_id"]);
        // Recorded again: the latest value is the one a reader sees.
        assert_eq!(span(2)["location"], "renamed");
        assert_eq!(span(2)["span_id"], span(0)["span_id"]);
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

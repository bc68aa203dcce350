//! One trace per event, across both services: the real binaries export OTLP/HTTP to an
//! in-process collector; one webhook with Dojo's `traceparent` must yield spans from
//! ingress and processor in that trace, linked publish -> consume, and log lines that
//! carry the trace id (error answers' `traceId` included). Over Dojo's WebSocket, which
//! carries no trace context, each request is a trace of its own.

mod support;

use actix_web::{web, App, HttpResponse, HttpServer};
use e2e::isolation::Services;
use e2e::wait_until;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Collected {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Collected>>>;

const WS_KEY: &str = "sk_sandbox_trace_key";

async fn receive(body: web::Bytes, spans: web::Data<Spans>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .map(|v| match v {
                AnyValue::StringValue(s) => s,
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            let attributes = span
                .attributes
                .iter()
                .filter_map(|kv| {
                    let v = match kv.value.as_ref()?.value.as_ref()? {
                        AnyValue::StringValue(s) => s.clone(),
                        AnyValue::IntValue(i) => i.to_string(),
                        AnyValue::BoolValue(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    Some((kv.key.clone(), v))
                })
                .collect();
            spans.lock().unwrap().push(Collected {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes,
            });
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn otel_env(cmd: &mut Command, collector: &str, log: &str) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", log)
        .stdout(Stdio::piped());
}

fn read_log(child: &mut Child) -> std::thread::JoinHandle<String> {
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_is_one_trace_from_dojo_to_the_database() {
    let services = Services::new().await.unwrap();
    let spans: Spans = Arc::default();
    let data = web::Data::new(spans.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/traces", web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let collector = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let server_handle = server.handle();
    tokio::spawn(server);

    let ingress_bin = Path::new(env!("CARGO_BIN_EXE_processor")).with_file_name("ingress");
    assert!(
        ingress_bin.exists(),
        "build the workspace first (cargo build --workspace)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Dojo's WebSocket too: it sends no trace context, so each request starts a trace.
    let ws = simulator::ws::DojoWs::bind("127.0.0.1:0", Some(WS_KEY.into()))
        .await
        .unwrap();
    let mut ingress = Command::new(ingress_bin);
    ingress
        .env("INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", services.vhost.amqp_url())
        .env("DOJO_WEBHOOK_SECRETS", simulator::event::DOC_SECRET)
        .env("DOJO_WS_URL", ws.url())
        .env("DOJO_API_KEY", WS_KEY)
        .env("DOJO_SOFTWARE_HOUSE_ID", "shid-test")
        .env("DOJO_RESELLER_ID", "reseller-test");
    // Per-event lines are debug: the default (info) keeps warnings, errors and lifecycle.
    otel_env(&mut ingress, &collector, "info,ingress=debug");
    let mut ingress: support::Spawned = ingress.spawn().unwrap().into();
    let ingress_log = read_log(&mut ingress);
    let mut processor = support::command(&services);
    otel_env(&mut processor, &collector, "info,processor=debug");
    let mut processor: support::Spawned = processor.spawn().unwrap().into();
    let processor_log = read_log(&mut processor);

    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until("ingress ready", Duration::from_secs(30), || async {
        http.get(format!("{url}/readyz"))
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let dojo_span = "00f067aa0ba902b7";
    let body = simulator::event::DOC_EVENT;
    let accepted = http
        .post(format!("{url}/v1/webhooks/dojo"))
        .header("traceparent", format!("00-{trace}-{dojo_span}-01"))
        .header("dojo-signature", simulator::event::DOC_SIGNATURE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let rejected: serde_json::Value = http
        .post(format!("{url}/v1/webhooks/dojo"))
        .header("dojo-signature", "sha256=00")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let error_trace = rejected["traceId"].as_str().unwrap().to_owned();

    let collected = wait_until(
        "spans from both services",
        Duration::from_secs(30),
        || async {
            let spans = spans.lock().unwrap().clone();
            let ours: Vec<Collected> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
            let has = |service: &str, name: &str| {
                ours.iter().any(|s| s.service == service && s.name == name)
            };
            (has("ingress", "POST /v1/webhooks/dojo")
                && has("ingress", "publish dojo.events")
                && has("processor", "process dojo.events.processor")
                && has("processor", "postgresql apply event"))
            .then_some(ours)
        },
    )
    .await;
    let find = |service: &str, name: &str| {
        collected
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap()
            .clone()
    };
    let request = find("ingress", "POST /v1/webhooks/dojo");
    let publish = find("ingress", "publish dojo.events");
    let consume = find("processor", "process dojo.events.processor");
    let apply = find("processor", "postgresql apply event");
    assert_eq!(request.parent, dojo_span, "ingress continues Dojo's trace");
    assert_eq!(publish.parent, request.span_id);
    assert_eq!(
        consume.parent, publish.span_id,
        "the consume span is a child of the publish span"
    );
    assert_eq!(apply.parent, consume.span_id);
    assert_eq!(publish.attributes["messaging.system"], "rabbitmq");
    assert_eq!(
        publish.attributes["messaging.destination.name"],
        "dojo.events"
    );
    assert_eq!(apply.attributes["db.system.name"], "postgresql");
    assert_eq!(
        consume.attributes["dojo.event.id"],
        "evt_hnnHxIKR_Uy6bhZCusCltw"
    );
    assert_eq!(
        consume.attributes["dojo.payment_intent.id"],
        "pi_vpwd4ooAPEqyNAQe4z89WQ"
    );
    assert_eq!(consume.attributes["dojo.outcome"], "applied");

    // Two events over one WebSocket: two traces, each rooted at its own request (not
    // one trace per socket).
    ws.wait_for_open(1, Duration::from_secs(30)).await.unwrap();
    let mut ws_events = Vec::new();
    for n in 1..=2 {
        let event = simulator::Event::new(
            &format!("evt_ws_trace_{n}"),
            "payment_intent.created",
            &format!("pi_ws_trace_{n}"),
            "Created",
            chrono::Utc::now(),
        );
        let reply = ws
            .handle_event(&event.body(), None, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(simulator::ws::is_success(&reply), "{reply}");
        ws_events.push(event.id);
    }
    let ws_requests = wait_until(
        "spans of both WebSocket requests",
        Duration::from_secs(30),
        || async {
            let spans = spans.lock().unwrap().clone();
            let requests: Vec<Collected> = spans
                .into_iter()
                .filter(|s| s.service == "ingress" && s.name == "HandleEventV1")
                .collect();
            (requests.len() == 2).then_some(requests)
        },
    )
    .await;
    assert_ne!(ws_requests[0].trace_id, ws_requests[1].trace_id);
    for r in &ws_requests {
        assert_eq!(r.parent, "", "a WebSocket request is a trace's root: {r:?}");
        assert!(ws_events.contains(&r.attributes["dojo.event.id"]), "{r:?}");
    }

    let pool = services.db.pool().await.unwrap();
    wait_until("applied", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dojo_events")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == 3).then_some(())
    })
    .await;
    assert!(support::terminate(ingress).success());
    assert!(support::terminate(processor).success());
    server_handle.stop(true).await;

    // Logs: JSON lines, the event's lines carry its trace id, the error's traceId is there.
    let ingress_log = ingress_log.join().unwrap();
    let processor_log = processor_log.join().unwrap();
    for log in [&ingress_log, &processor_log] {
        assert!(
            log.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "JSON lines"
        );
    }
    let with_trace = |log: &str, message: &str, id: &str| {
        log.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["fields"]["message"] == message
                && v["span"]["trace_id"] == id
                && v["span"]["span_id"].is_string()
        })
    };
    assert!(
        with_trace(&ingress_log, "event queued", trace),
        "{ingress_log}"
    );
    assert!(
        with_trace(&processor_log, "event processed", trace),
        "{processor_log}"
    );
    assert!(
        with_trace(&ingress_log, "request rejected", &error_trace),
        "{ingress_log}"
    );
}

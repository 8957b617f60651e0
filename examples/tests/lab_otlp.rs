//! `reuse-lab --otlp URL`: the lab's `reuse+otel` stack exports its spans
//! and metrics over OTLP/HTTP, `reuse+span` its bare spans; here to the
//! loopback receiver.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tower_reuse_examples::lab::{self, LabConfig};
use tower_reuse_examples::otlp::{Receiver, attribute};
use tower_reuse_examples::results::RunResult;
use tower_reuse_examples::scenarios::{self, Sizes};
use tower_reuse_examples::stacks::StackKind;

const REQUESTS: u64 = 200;

/// Runs `stack` on `steady-h1` for `REQUESTS` requests, exporting to
/// `receiver`.
async fn run_exporting(stack: StackKind, receiver: &Receiver) -> RunResult {
    let sizes = Sizes {
        requests: Some(REQUESTS),
        concurrency: Some(4),
        ..Sizes::default()
    };
    let out_dir = std::env::temp_dir().join(format!(
        "reuse-lab-otlp-{}-{}",
        std::process::id(),
        stack.name()
    ));
    let results = lab::run(LabConfig {
        otlp: Some(receiver.endpoint()),
        ..LabConfig::embedded(
            vec![scenarios::build("steady-h1", &sizes).unwrap()],
            vec![stack],
            out_dir.clone(),
            "lab_otlp test",
        )
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    // The run is over and its stack dropped: its providers have exported
    // what was left before `run` returned.
    let run = results.runs.into_iter().next().unwrap();
    assert_eq!((run.stack.as_str(), run.errors), (stack.name(), 0));
    assert!(run.requests >= REQUESTS, "{} requests", run.requests);
    assert_eq!(receiver.rejected(), 0);
    assert_eq!(receiver.service_name().as_deref(), Some("reuse-lab"));
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_otel_run_exports_spans_and_metrics_to_the_otlp_endpoint() {
    let receiver = Receiver::start().unwrap();
    let run = run_exporting(StackKind::ReuseOtel, &receiver).await;
    let sent = run.requests;

    // One span per request (the default sampler keeps all; 200 spans fit
    // the batch processor's queue).
    let spans = receiver.spans();
    assert_eq!(spans.len() as u64, sent);
    assert!(spans.iter().all(|span| span.name == "GET"));
    assert!(spans.iter().all(|span| matches!(
        attribute(&span.attributes, "http.response.status_code"),
        Some(Value::IntValue(200))
    )));

    // The request metrics and the pool's.
    assert_eq!(
        receiver.histogram_count("http.client.request.duration"),
        Some(sent)
    );
    let opened = receiver.sum("tower_reuse.connection.opened", None);
    assert!(
        opened.is_some_and(|n| (1.0..=4.0).contains(&n)),
        "{opened:?}"
    );
    assert!(
        receiver
            .metric_names()
            .contains("http.client.open_connections")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_span_run_records_one_bare_span_per_request_and_no_metrics() {
    let receiver = Receiver::start().unwrap();
    let run = run_exporting(StackKind::ReuseSpan, &receiver).await;

    let spans = receiver.spans();
    assert_eq!(spans.len() as u64, run.requests);
    for span in &spans {
        assert_eq!(span.name, "GET");
        let mut keys: Vec<&str> = span.attributes.iter().map(|a| a.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "network.protocol.version",
                "server.address",
                "server.port",
                "url.scheme",
            ]
        );
        assert!(matches!(
            attribute(&span.attributes, "http.response.status_code"),
            Some(Value::IntValue(200))
        ));
    }
    // Nothing but the span: the pool's hook and the request metrics are off.
    assert!(receiver.metric_names().is_empty());
}

//! Traces exported over OTLP/gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) reach a plain gRPC
//! collector.

#![allow(clippy::unwrap_used)]

mod otlp_support;

use otlp_support::{
    assert_is_the_span, export_one_span, grpc_receiver, listener, runtime, set_env,
};

#[test]
fn spans_reach_an_otlp_grpc_collector() {
    let listener = listener();
    let addr = listener.local_addr().unwrap();
    set_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
    ]);
    runtime().block_on(async {
        let mut inbox = grpc_receiver(listener, None);
        let span = export_one_span(&mut inbox).await;
        assert_is_the_span(&span);
    });
}

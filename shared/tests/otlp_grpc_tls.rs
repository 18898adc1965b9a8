//! Traces exported over OTLP/gRPC to an `https://` collector, verified against the system's
//! roots: `SSL_CERT_FILE` names the test's CA, and no OTLP certificate variable is set.

#![allow(clippy::unwrap_used)]

mod otlp_support;

use flowmesh_shared::testing::temp_dir;
use otlp_support::{
    assert_is_the_span, export_one_span, grpc_receiver, listener, pki, runtime, set_env,
};

#[test]
fn spans_reach_a_grpc_collector_over_tls_trusted_through_the_system_roots() {
    let dir = temp_dir("otlp-grpc-tls");
    let (ca, tls) = pki(&dir, b"h2");
    let listener = listener();
    let port = listener.local_addr().unwrap().port();
    set_env(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://localhost:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("SSL_CERT_FILE", ca.display().to_string()),
    ]);
    runtime().block_on(async {
        let mut inbox = grpc_receiver(listener, Some(tls));
        let span = export_one_span(&mut inbox).await;
        assert_is_the_span(&span);
    });
}

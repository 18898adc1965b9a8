//! Traces exported over OTLP/HTTP to an `https://` collector verified against the CA of
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`.

#![allow(clippy::unwrap_used)]

mod otlp_support;

use flowmesh_shared::testing::temp_dir;
use otlp_support::{
    assert_is_the_span, export_one_span, https_receiver, listener, pki, runtime, set_env,
};

#[test]
fn spans_reach_an_https_collector_trusted_through_otel_exporter_otlp_certificate() {
    let dir = temp_dir("otlp-https");
    let (ca, tls) = pki(&dir, b"http/1.1");
    let listener = listener();
    let addr = listener.local_addr().unwrap();
    set_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.display().to_string()),
        // Not trusted for the collector: the OTLP variable names the only CA.
        ("SSL_CERT_FILE", "/nonexistent/ca.pem".to_owned()),
    ]);
    runtime().block_on(async {
        let mut inbox = https_receiver(listener, tls);
        let span = export_one_span(&mut inbox).await;
        assert_is_the_span(&span);
    });
}

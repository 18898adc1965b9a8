//! Jina's Flow vocabulary beyond what flowmesh takes: the keys a Jina Flow file may hold that
//! have no meaning here are refused by name, with what to do instead, rather than with serde's
//! bare "unknown field".
//!
//! Taken from Jina (see docs/flows.md): `jtype: Flow`, `version: '1'`, an executor's
//! `uses_with` (its `with`), and in the Flow's `with:` the gateway options `cors`, `port` and
//! `protocol: http`.

use serde_yaml_ng::Value;

use super::FlowError;

/// Jina's keys of the Flow's `with:` (its gateway options) that mean nothing here, and why.
const FLOW_WITH: &[(&str, &str)] = &[
    (
        "host",
        "the gateway's address is `--listen` (FLOWMESH_LISTEN)",
    ),
    ("port_expose", "use `port` (or `--listen`)"),
    ("ssl_certfile", "HTTPS is `--tls-cert` and `--tls-key`"),
    ("ssl_keyfile", "HTTPS is `--tls-cert` and `--tls-key`"),
    (
        "monitoring",
        "every service always serves Prometheus metrics on /metrics",
    ),
    (
        "port_monitoring",
        "every service serves /metrics on its own port",
    ),
    (
        "tracing",
        "traces are exported when OTEL_EXPORTER_OTLP_ENDPOINT is set",
    ),
    (
        "traces_exporter_host",
        "traces go to OTEL_EXPORTER_OTLP_ENDPOINT",
    ),
    (
        "traces_exporter_port",
        "traces go to OTEL_EXPORTER_OTLP_ENDPOINT",
    ),
    (
        "metrics",
        "every service always serves Prometheus metrics on /metrics",
    ),
    (
        "no_debug_endpoints",
        "the gateway's routes are fixed (docs/operations.md)",
    ),
    (
        "no_crud_endpoints",
        "the gateway's routes are fixed (docs/operations.md)",
    ),
    (
        "expose_endpoints",
        "the endpoints are /index, /search, /update and /delete",
    ),
    ("title", "the OpenAPI document's title is fixed"),
    ("description", "the OpenAPI document's description is fixed"),
    ("uvicorn_kwargs", "the gateway is not a Python server"),
    ("env", "executors inherit the environment of `flowmesh up`"),
    (
        "timeout_send",
        "use `request_timeout_ms` (or `--request-timeout`)",
    ),
    (
        "compression",
        "requests between services are not compressed",
    ),
    ("log_config", "logging is set with RUST_LOG"),
    (
        "py_modules",
        "executors are flowmesh services, not Python modules",
    ),
    (
        "uses",
        "the gateway is flowmesh's own; no custom gateway can be used",
    ),
];

/// Jina's executor keys that mean nothing here, and why.
const EXECUTOR: &[(&str, &str)] = &[
    (
        "uses_metas",
        "executors are flowmesh services, not Python classes",
    ),
    (
        "uses_requests",
        "each service serves the endpoints it has; limit them with `endpoints`",
    ),
    (
        "uses_dynamic_batching",
        "the encoder batches on its own (its `with:` flags)",
    ),
    (
        "uses_before",
        "nothing runs before the shards; `uses_after` picks the merge",
    ),
    (
        "py_modules",
        "executors are flowmesh services, not Python modules",
    ),
    (
        "install_requirements",
        "executors are flowmesh services, not Python packages",
    ),
    (
        "workspace",
        "the data lives under `flowmesh up --workspace`",
    ),
    ("env", "executors inherit the environment of `flowmesh up`"),
    (
        "host",
        "an executor run elsewhere is given as `addresses: [http://HOST:PORT]`",
    ),
    (
        "port",
        "`flowmesh up` picks free ports; an executor run elsewhere is given as `addresses`",
    ),
    (
        "external",
        "an executor run elsewhere is given as `addresses: [http://HOST:PORT]`",
    ),
    (
        "tls",
        "give `https://` addresses; `flowmesh up --tls-cert` serves every executor over HTTPS",
    ),
    (
        "port_monitoring",
        "every service serves /metrics on its own port",
    ),
    (
        "monitoring",
        "every service always serves Prometheus metrics on /metrics",
    ),
    ("docker_kwargs", "executors are processes, not containers"),
    (
        "gpus",
        "the encoder's ONNX Runtime picks its device (its `with:` flags)",
    ),
    ("entrypoint", "executors are processes, not containers"),
    ("volumes", "executors are processes, not containers"),
    ("upload_files", "executors are processes on this machine"),
    (
        "force_update",
        "executors are flowmesh services, not hub images",
    ),
    ("timeout_ready", "use `flowmesh up --ready-timeout-secs`"),
    ("floating", "every executor is in the request's path"),
    ("when", "documents are not filtered between executors"),
    (
        "exit_on_exceptions",
        "a failed call is retried (`retries`) and answered as an error",
    ),
    ("reload", "restart `flowmesh up` to change a Flow"),
    ("log_config", "logging is set with RUST_LOG"),
    ("quiet", "logging is set with RUST_LOG"),
    (
        "output_array_type",
        "embeddings are JSON numbers or MessagePack floats",
    ),
    ("grpc_server_options", "executors speak HTTP"),
    (
        "disable_reduce",
        "`uses_after` picks how the shards' answers merge",
    ),
];

/// The error for a Flow file serde refused: a key of Jina's that means nothing here is named
/// with what to use instead; anything else is serde's message.
pub(super) fn explain(text: &str, error: &serde_yaml_ng::Error) -> FlowError {
    let own = serde_yaml_ng::from_str::<Value>(text)
        .ok()
        .and_then(|flow| jina_key(&flow));
    FlowError::Syntax(own.unwrap_or_else(|| error.to_string()))
}

/// The entry of `table` whose key the mapping `map` has.
fn found(
    map: &Value,
    table: &'static [(&'static str, &'static str)],
) -> Option<(&'static str, &'static str)> {
    let map = map.as_mapping()?;
    table
        .iter()
        .copied()
        .find(|(key, _)| map.contains_key(*key))
}

/// The first key of Jina's in `flow` that has no meaning here, described.
fn jina_key(flow: &Value) -> Option<String> {
    if let Some((key, why)) = found(&flow["with"], FLOW_WITH) {
        return Some(format!(
            "with: `{key}` is a Jina gateway option with no meaning in flowmesh: {why}"
        ));
    }
    for executor in flow["executors"].as_sequence().into_iter().flatten() {
        if let Some((key, why)) = found(executor, EXECUTOR) {
            let name = executor["name"].as_str().unwrap_or("?");
            return Some(format!(
                "executor {name:?}: `{key}` is a Jina option with no meaning in flowmesh: {why}"
            ));
        }
    }
    None
}

//! The Flow file's parsing and validation, and its serialisation back to YAML.

use super::*;

/// The polling of `/search` and of `/index`.
fn search_and_index(executor: &ExecutorSpec) -> [Polling; 2] {
    [Endpoint::Search, Endpoint::Index].map(|e| executor.polling_for(e).unwrap())
}

fn err(yaml: &str) -> String {
    FlowSpec::from_yaml(yaml).unwrap_err().to_string()
}

#[test]
fn defaults_chain_executors_in_order() {
    let f = FlowSpec::from_yaml(
        "executors:\n  - {name: a, uses: sentencizer}\n  - {name: b, uses: encoder}\n  - {name: c, uses: indexer}\n",
    )
    .unwrap();
    assert_eq!(f.predecessors().unwrap(), vec![vec![], vec![0], vec![1]]);
    assert_eq!(
        search_and_index(&f.executors[2]),
        [Polling::All, Polling::Any]
    );
}

#[test]
fn needs_all_joins_the_orphans() {
    let f = FlowSpec::from_yaml(
        "executors:\n  - {name: p1, uses: encoder, needs: gateway}\n  - {name: p2, uses: encoder, needs: gateway}\n  - {name: p3, uses: encoder, needs: gateway}\n  - {name: r1, uses: ranker, needs: all}\n",
    )
    .unwrap();
    assert_eq!(f.predecessors().unwrap()[3], vec![0, 1, 2]);
}

#[test]
fn problems_are_named() {
    // (one executor's YAML, what the error says)
    let cases = [
        (
            "{name: a, uses: encoder, needs: nope}",
            r#"executor "a": needs "nope", which is not an executor"#,
        ),
        (
            "{name: a, uses: encoder, replicas: 0}",
            r#"executor "a": replicas must be at least 1"#,
        ),
        (
            "{name: a, uses: indexer, polling: some}",
            r#"executor "a": unknown polling mode "some" for /index (use any or all)"#,
        ),
        (
            "{name: a, uses: remote, addresses: ['ftp://x:1']}",
            "bad address \"ftp://x:1\"",
        ),
        (
            "{name: a, uses: remote, addresses: ['not an address']}",
            "bad address",
        ),
        (
            "{name: a, uses: encodr}",
            "unknown uses \"encodr\" (use one of sentencizer, encoder, indexer, ranker, remote)",
        ),
        (
            "{name: a, uses: indexer, uses_after: top}",
            "unknown uses_after \"top\" (use topk or concat)",
        ),
        (
            "{name: a, uses: indexer, polling: {'/serch': all}}",
            "polling names unknown endpoint \"/serch\"",
        ),
        (
            "{name: a, uses: indexer, endpoints: [/foo]}",
            "endpoints names unknown endpoint \"/foo\"",
        ),
        (
            "{name: a, uses: encoder, replica: 2}",
            "unknown field `replica`",
        ),
        (
            "{name: a, uses: indexer, shards: 2, addresses: [['http://a:1']]}",
            "has 2 shards but addresses for 1",
        ),
    ];
    for (executor, expected) in cases {
        let error = err(&format!("executors:\n  - {executor}\n"));
        assert!(error.contains(expected), "{executor}: {error}");
    }
    let cycle = err("executors:\n  - {name: a, uses: encoder, needs: b}\n  - {name: b, uses: encoder, needs: a}\n");
    assert!(cycle.contains("cycle: "), "{cycle}");
}

#[test]
fn per_endpoint_polling_with_fallback() {
    let f = FlowSpec::from_yaml(
        "executors:\n  - name: a\n    uses: indexer\n    polling: {'/search': any, '*': all}\n",
    )
    .unwrap();
    assert_eq!(
        search_and_index(&f.executors[0]),
        [Polling::Any, Polling::All]
    );
}

/// Every Flow file of the repository, serialised and parsed again, is the same Flow, and the
/// YAML written leaves absent options out instead of writing `null`.
#[test]
fn flow_files_round_trip_through_serialisation() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = FlowSpec::from_yaml(&text).unwrap();
        let written = serde_yaml_ng::to_string(&parsed).unwrap();
        assert!(!written.contains("null"), "{}: {written}", path.display());
        let again = FlowSpec::from_yaml(&written)
            .unwrap_or_else(|e| panic!("{}: {e}\n{written}", path.display()));
        assert_eq!(parsed, again, "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} flow files in {}", dir.display());
}

#[test]
fn every_option_round_trips() {
    let text = "name: all-options\nwith: {request_size: 3, prefetch: 2, timeout_ms: 500, request_timeout_ms: 9000, retries: 1, health_interval_ms: 50}\nexecutors:\n  - {name: s, uses: sentencizer, with: {min_sent_len: 2}}\n  - name: i\n    uses: remote\n    needs: [gateway, s]\n    shards: 2\n    replicas: 2\n    polling: {/search: all, '*': any}\n    uses_after: concat\n    addresses: [['http://a:1', 'http://b:1'], ['http://c:1', 'http://d:1']]\n    endpoints: [/search, index]\n    timeout_ms: 20\n    retries: 0\n  - {name: r, uses: ranker, needs: all, polling: ALL}\n";
    let parsed = FlowSpec::from_yaml(text).unwrap();
    let written = serde_yaml_ng::to_string(&parsed).unwrap();
    assert_eq!(FlowSpec::from_yaml(&written).unwrap(), parsed, "{written}");
}

#[test]
fn executors_may_be_named_by_https_addresses() {
    let spec = FlowSpec::from_yaml(
        "executors:\n  - {name: a, uses: remote, addresses: ['https://indexer.internal:8443', 'http://127.0.0.1:1']}\n",
    )
    .unwrap();
    spec.validate().unwrap();
    let error = err("executors:\n  - {name: a, uses: remote, addresses: ['https://x:1/path']}\n");
    assert!(error.contains("no path"), "{error}");
}

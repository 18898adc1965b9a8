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
    let text = "name: all-options\nwith: {request_size: 3, prefetch: 2, timeout_ms: 500, request_timeout_ms: 9000, retries: 1, health_interval_ms: 50}\nexecutors:\n  - {name: s, uses: sentencizer, with: {min_sent_len: 2}}\n  - name: i\n    uses: remote\n    needs: [gateway, s]\n    shards: 2\n    replicas: 2\n    polling: {/search: all, '*': any}\n    uses_after: concat\n    addresses: [['http://a:1', 'http://b:1'], ['http://c:1', 'http://d:1']]\n    endpoints: [/search, index]\n    timeout_ms: 20\n    retries: 0\n    stateful: true\n    write_consistency: majority\n  - {name: r2, uses: indexer, replicas: 3, write_consistency: 2}\n  - {name: r, uses: ranker, needs: all, polling: ALL}\n";
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

fn one_executor(yaml: &str) -> ExecutorSpec {
    FlowSpec::from_yaml(&format!("executors:\n  - {yaml}\n"))
        .unwrap()
        .executors
        .remove(0)
}

#[test]
fn stateful_defaults_and_mirroring() {
    // (executor, stateful, mirrored, what validate says)
    let cases = [
        ("{name: i, uses: indexer}", true, false, "stateful, 1 copy per shard"),
        (
            "{name: i, uses: indexer, replicas: 2}",
            true,
            true,
            "stateful, 2 mirrored copies per shard, write_consistency 1",
        ),
        (
            "{name: i, uses: indexer, replicas: 3, write_consistency: all}",
            true,
            true,
            "stateful, 3 mirrored copies per shard, write_consistency all",
        ),
        (
            "{name: r, uses: ranker, replicas: 2, write_consistency: Majority}",
            true,
            true,
            "stateful, 2 mirrored copies per shard, write_consistency majority",
        ),
        (
            "{name: r, uses: ranker, replicas: 2, with: {store: redis}}",
            false,
            false,
            "stateless, 2 load-balanced replicas",
        ),
        (
            "{name: r, uses: ranker, replicas: 2, with: {store: memory}}",
            false,
            false,
            "stateless, 2 load-balanced replicas",
        ),
        (
            "{name: e, uses: encoder, replicas: 2}",
            false,
            false,
            "stateless, 2 load-balanced replicas",
        ),
        (
            "{name: i, uses: indexer, replicas: 2, stateful: false}",
            false,
            false,
            "stateless, 2 load-balanced replicas",
        ),
        (
            "{name: x, uses: remote, stateful: true, addresses: ['http://a:1', 'http://b:1'], write_consistency: 2}",
            true,
            true,
            "stateful, 2 mirrored copies per shard, write_consistency 2",
        ),
        (
            "{name: x, uses: remote, addresses: ['http://a:1', 'http://b:1']}",
            false,
            false,
            "stateless, 2 load-balanced replicas",
        ),
        // A ranker run elsewhere chose its store on its own host (Ansible's share one Redis).
        (
            "{name: r, uses: ranker, addresses: ['http://a:1', 'http://b:1']}",
            false,
            false,
            "stateless, 2 load-balanced replicas",
        ),
        (
            "{name: r, uses: ranker, stateful: true, addresses: ['http://a:1', 'http://b:1']}",
            true,
            true,
            "stateful, 2 mirrored copies per shard, write_consistency 1",
        ),
    ];
    for (yaml, stateful, mirrored, kind) in cases {
        let e = one_executor(yaml);
        assert_eq!(e.is_stateful(), stateful, "{yaml}");
        assert_eq!(e.is_mirrored(), mirrored, "{yaml}");
        assert_eq!(e.describe_kind(), kind, "{yaml}");
    }
    assert_eq!(
        one_executor("{name: i, uses: indexer, replicas: 3, write_consistency: '3'}")
            .write_consistency()
            .unwrap(),
        WriteConsistency::Count(3)
    );
}

#[test]
fn state_problems_are_named() {
    let cases = [
        (
            "{name: a, uses: indexer, replicas: 2, write_consistency: 3}",
            r#"executor "a": write_consistency 3 is more than the 2 copies"#,
        ),
        (
            "{name: a, uses: encoder, replicas: 2, write_consistency: all}",
            r#"executor "a": write_consistency is only for stateful executors"#,
        ),
        (
            "{name: a, uses: encoder, stateful: true}",
            r#"executor "a": stateful: true, but the encoder keeps no data"#,
        ),
        (
            "{name: a, uses: sentencizer, stateful: true}",
            r#"executor "a": stateful: true, but the sentencizer keeps no data"#,
        ),
        (
            "{name: a, uses: indexer, replicas: 2, write_consistency: most}",
            r#"executor "a": write_consistency must be 1, majority, all"#,
        ),
        (
            "{name: a, uses: indexer, replicas: 2, write_consistency: 0}",
            r#"executor "a": write_consistency must be 1, majority, all"#,
        ),
        (
            "{name: a, uses: indexer, shards: 2, addresses: [['http://a:1', 'http://b:1'], ['http://c:1']], write_consistency: 2}",
            r#"executor "a": write_consistency 2 is more than the 1 copies"#,
        ),
    ];
    for (executor, expected) in cases {
        let error = err(&format!("executors:\n  - {executor}\n"));
        assert!(error.contains(expected), "{executor}: {error}");
    }
}

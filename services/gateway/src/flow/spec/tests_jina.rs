//! Jina's Flow vocabulary: what is taken (`version`, `jtype`, `uses_with`, the gateway's `cors`,
//! `port` and `protocol: http`) and what is refused by name.

use super::*;

fn err(yaml: &str) -> String {
    FlowSpec::from_yaml(yaml).unwrap_err().to_string()
}

#[test]
fn a_flow_in_jinas_words_is_taken() {
    let f = FlowSpec::from_yaml(
        "jtype: Flow\n\
         version: '1'\n\
         with:\n  protocol: http\n  port: 28099\n  cors: true\n\
         executors:\n\
         \x20 - name: enc\n    uses: encoder\n    uses_with: {model: hash, dim: 64}\n",
    )
    .unwrap();
    assert!(f.settings.cors);
    assert_eq!(f.settings.port, Some(28099));
    assert_eq!(f.executors[0].settings["model"], "hash");
    assert_eq!(f.executors[0].settings["dim"], 64);
    // A number, and a list of one protocol, as Jina also writes them.
    let f = FlowSpec::from_yaml(
        "version: 1\nwith: {protocol: [HTTP]}\nexecutors: [{name: a, uses: encoder}]\n",
    )
    .unwrap();
    assert!(!f.settings.cors, "cors is off unless asked for");
    // `uses_with` is written back as `with`.
    let yaml = serde_yaml_ng::to_string(
        &FlowSpec::from_yaml("executors: [{name: a, uses: encoder, uses_with: {dim: 8}}]").unwrap(),
    )
    .unwrap();
    assert!(
        yaml.contains("with:") && !yaml.contains("uses_with"),
        "{yaml}"
    );
}

#[test]
fn jina_values_without_a_meaning_here_are_refused() {
    let executors = "executors: [{name: a, uses: encoder}]\n";
    let e = err(&format!("version: '2'\n{executors}"));
    assert!(e.contains("version") && e.contains("'1'"), "{e}");
    let e = err(&format!("jtype: Executor\n{executors}"));
    assert!(e.contains("jtype: Flow"), "{e}");
    let e = err(&format!("with: {{protocol: grpc}}\n{executors}"));
    assert!(e.contains("protocol \"grpc\""), "{e}");
    let e = err(&format!(
        "with: {{protocol: [http, websocket]}}\n{executors}"
    ));
    assert!(e.contains("websocket"), "{e}");
}

#[test]
fn jina_keys_without_a_meaning_here_are_named() {
    let e = err("with: {port_expose: 8080}\nexecutors: [{name: a, uses: encoder}]\n");
    assert!(
        e.contains("`port_expose` is a Jina gateway option with no meaning in flowmesh")
            && e.contains("`port`"),
        "{e}"
    );
    let e = err("executors: [{name: enc, uses: encoder, uses_metas: {name: x}}]\n");
    assert!(
        e.contains("executor \"enc\": `uses_metas` is a Jina option with no meaning"),
        "{e}"
    );
    let e = err("executors: [{name: idx, uses: indexer, host: 10.0.0.2, port: 9000}]\n");
    assert!(e.contains("`host`") && e.contains("addresses"), "{e}");
    // A key that is neither flowmesh's nor Jina's keeps serde's message.
    let e = err("executors: [{name: a, uses: encoder, nonsense: 1}]\n");
    assert!(e.contains("unknown field `nonsense`"), "{e}");
}

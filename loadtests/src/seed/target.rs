//! Where the benchmark's requests go and how they are spoken: flowmesh's own `POST /index` and
//! `POST /search`, or Jina's `POST /post` with `execEndpoint` (which flowmesh's gateway speaks
//! too), and how an answer is read back into query ids and match ids.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::load::Failure;

/// The request protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// `POST /index`, `POST /search` with `{"data": [...], "parameters": {...}}`.
    Native,
    /// `POST /post` with `{"data": [...], "execEndpoint": "/index", "parameters": {...}}`.
    Jina,
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Operation {
    Index,
    Search,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Index => "index",
            Self::Search => "search",
        }
    }
}

/// A Flow's HTTP front: its base URL (`http://host:port`) and protocol.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Target {
    pub(crate) base: String,
    pub(crate) protocol: Protocol,
}

impl Target {
    pub(crate) fn new(base: &str, protocol: Protocol) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            protocol,
        }
    }

    /// The URL and JSON body of one request.
    pub(crate) fn request(
        &self,
        op: Operation,
        docs: &[Value],
        parameters: &Value,
    ) -> (String, Bytes) {
        match self.protocol {
            Protocol::Native => (
                format!("{}/{}", self.base, op.as_str()),
                Bytes::from(json!({"data": docs, "parameters": parameters}).to_string()),
            ),
            Protocol::Jina => (
                format!("{}/post", self.base),
                Bytes::from(
                    json!({
                        "data": docs,
                        "execEndpoint": format!("/{}", op.as_str()),
                        "parameters": parameters,
                    })
                    .to_string(),
                ),
            ),
        }
    }
}

/// One answered document: its id and the ids of its matches, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answered {
    pub(crate) id: String,
    pub(crate) matches: Vec<String>,
}

/// The documents of an answer's body: `data` as a list (flowmesh, Jina 3's HTTP gateway) or as
/// `{"docs": [...]}` (older Jina).
pub(crate) fn answered_docs(body: &[u8]) -> Result<Vec<Answered>, Failure> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Failure::new("bad_json", e.to_string()))?;
    let data = match &v["data"] {
        Value::Array(docs) => docs,
        Value::Object(o) => match o.get("docs") {
            Some(Value::Array(docs)) => docs,
            _ => return Err(Failure::new("bad_json", "`data` holds no `docs` list")),
        },
        _ => return Err(Failure::new("bad_json", "no `data` list in the answer")),
    };
    Ok(data
        .iter()
        .map(|d| Answered {
            id: d["id"].as_str().unwrap_or_default().to_owned(),
            matches: d["matches"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// Checks an answer to a request of `sent` documents: the same number back and, for a search,
/// `expected_matches` matches each.
pub(crate) fn validate(
    body: &[u8],
    op: Operation,
    sent: usize,
    expected_matches: usize,
) -> Result<Vec<Answered>, Failure> {
    let docs = answered_docs(body)?;
    if docs.len() != sent {
        return Err(Failure::new(
            "wrong_docs",
            format!("{} documents answered for {sent} sent", docs.len()),
        ));
    }
    if op == Operation::Search {
        if let Some(d) = docs.iter().find(|d| d.matches.len() != expected_matches) {
            return Err(Failure::new(
                "wrong_matches",
                format!(
                    "query {:?}: {} matches instead of {expected_matches}",
                    d.id,
                    d.matches.len()
                ),
            ));
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_build_their_requests() {
        let docs = vec![json!({"id": "a", "text": "x"})];
        let params = json!({"top_k": 5});
        let native = Target::new("http://h:1/", Protocol::Native);
        let (url, body) = native.request(Operation::Search, &docs, &params);
        assert_eq!(url, "http://h:1/search");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["parameters"]["top_k"], 5);
        let jina = Target::new("http://h:1", Protocol::Jina);
        let (url, body) = jina.request(Operation::Index, &docs, &params);
        assert_eq!(url, "http://h:1/post");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["execEndpoint"], "/index");
        assert_eq!(v["data"][0]["id"], "a");
    }

    #[test]
    fn validation_counts_documents_and_matches() {
        let two = br#"{"data": [{"id": "q", "matches": [{"id": "a"}, {"id": "b"}]}]}"#;
        let ok = validate(two, Operation::Search, 1, 2).expect("valid");
        assert_eq!(ok[0].matches, ["a", "b"]);
        let short = validate(two, Operation::Search, 1, 3).expect_err("too few");
        assert_eq!(short.kind, "wrong_matches");
        assert_eq!(
            validate(two, Operation::Search, 2, 2)
                .expect_err("a document missing")
                .kind,
            "wrong_docs"
        );
        // Index answers carry no matches and need none.
        assert!(validate(two, Operation::Index, 1, 0).is_ok());
        let old_jina = br#"{"data": {"docs": [{"id": "q", "matches": [{"id": "a"}]}]}}"#;
        assert!(validate(old_jina, Operation::Search, 1, 1).is_ok());
        assert_eq!(
            validate(b"{", Operation::Index, 1, 0)
                .expect_err("not JSON")
                .kind,
            "bad_json"
        );
    }
}

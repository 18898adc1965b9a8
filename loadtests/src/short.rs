//! The short-text workload of `overhead`, `abuse` and the Jina comparison's overhead rows:
//! documents `doc-I` of 8 words, indexed in requests of consecutive documents, then searches of
//! one short text unlike the indexed ones, each answer checked to hold `top_k` matches.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::load::{self, Done, Failure, HttpClient, LoadConfig, Measured};
use crate::texts;

/// Query `i` is the text of item `QUERY_OFFSET + i`: never an indexed document's.
const QUERY_OFFSET: usize = 1_000_003;

/// `(id, text)` of documents `0..n`.
pub(crate) fn documents(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("doc-{i}"), texts::short(i)))
        .collect()
}

/// A `POST /index` body of `docs`.
pub(crate) fn index_body(docs: &[(String, String)]) -> Bytes {
    let data: Vec<Value> = docs
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}))
        .collect();
    Bytes::from(json!({"data": data, "parameters": {}}).to_string())
}

/// The `POST /search` body of query `i`: one document `q-I` of `text`, `top_k` matches asked.
pub(crate) fn search_body(i: usize, text: &str, top_k: usize) -> Bytes {
    Bytes::from(
        json!({"data": [{"id": format!("q-{i}"), "text": text}], "parameters": {"top_k": top_k}})
            .to_string(),
    )
}

/// The text of short query `i`.
pub(crate) fn query_text(i: usize) -> String {
    texts::short(QUERY_OFFSET + i)
}

/// Every query of a search answer must have exactly `top_k` matches, and there must be one.
pub(crate) fn check_matches(body: &[u8], top_k: usize) -> Result<(), Failure> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Failure::new("bad_json", e.to_string()))?;
    let data = v["data"]
        .as_array()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| Failure::new("bad_json", "no `data` list in the answer"))?;
    for d in data {
        let n = d["matches"].as_array().map_or(0, Vec::len);
        if n != top_k {
            return Err(Failure::new(
                "wrong_matches",
                format!("{n} matches instead of {top_k}"),
            ));
        }
    }
    Ok(())
}

/// POSTs `body` to `url` and checks the answer with `check`; what the driver counts.
pub(crate) async fn send_checked(
    client: &HttpClient,
    url: &str,
    body: Bytes,
    documents: usize,
    check: impl FnOnce(&[u8]) -> Result<(), Failure>,
) -> Result<Done, Failure> {
    let answer = load::post_ok(client, url, body, load::NO_LIMIT).await?;
    check(&answer.body)?;
    Ok(Done {
        documents,
        executor_ms: answer
            .server_timing
            .as_deref()
            .map(load::parse_server_timing)
            .unwrap_or_default(),
    })
}

/// Searches at `{base}/search` under `config`, request `i` a single query of text `query(i)`
/// (such as [`query_text`]), each answer checked to hold `top_k` matches.
pub(crate) async fn search(
    client: &HttpClient,
    base: &str,
    config: &LoadConfig,
    top_k: usize,
    query: fn(usize) -> String,
) -> Measured {
    let (client, url) = (client.clone(), format!("{base}/search"));
    load::run(config, move |i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = search_body(i, &query(i), top_k);
            send_checked(&client, &url, body, 1, |b| check_matches(b, top_k)).await
        }
    })
    .await
}

/// Indexes `docs` at `{base}/index` in requests of `size` from `concurrency` clients, within
/// `duration`; each answer must hold the request's documents, the first one first.
pub(crate) async fn index(
    client: &HttpClient,
    base: &str,
    docs: Arc<Vec<(String, String)>>,
    size: usize,
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let size = size.max(1);
    let config = LoadConfig::new(concurrency, docs.len().div_ceil(size), duration);
    let (client, url) = (client.clone(), format!("{base}/index"));
    load::run(&config, move |b| {
        let (client, url, docs) = (client.clone(), url.clone(), docs.clone());
        async move {
            let batch = &docs[(b * size).min(docs.len())..((b + 1) * size).min(docs.len())];
            let body = index_body(batch);
            send_checked(&client, &url, body, batch.len(), |a| {
                check_index_answer(a, size, docs.len())
            })
            .await
        }
    })
    .await
}

/// An index answer of a request of documents `doc-{b * size}` onwards (ids as [`index_body`]
/// gets them) must hold every one of them: as many as the request had, the first one first.
fn check_index_answer(body: &[u8], size: usize, total: usize) -> Result<(), Failure> {
    let wrong = |m: String| Failure::new("wrong_docs", m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Failure::new("bad_json", e.to_string()))?;
    let data = v["data"]
        .as_array()
        .ok_or_else(|| Failure::new("bad_json", "no `data` list in the answer"))?;
    let first = data
        .first()
        .and_then(|d| {
            d["id"]
                .as_str()?
                .strip_prefix("doc-")?
                .parse::<usize>()
                .ok()
        })
        .ok_or_else(|| wrong("no document back".into()))?;
    if first % size != 0 || first >= total {
        return Err(wrong(format!(
            "first document back is doc-{first}, not a request's first"
        )));
    }
    let want = size.min(total - first);
    if data.len() == want {
        Ok(())
    } else {
        Err(wrong(format!(
            "{} documents back for {want} sent",
            data.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_for_matches_and_documents() {
        let two = br#"{"data": [{"id": "q", "matches": [{"id": "a"}, {"id": "b"}]}]}"#;
        assert!(check_matches(two, 2).is_ok());
        assert_eq!(
            check_matches(two, 3).map_err(|f| f.kind),
            Err("wrong_matches".into())
        );
        assert_eq!(
            check_matches(br#"{"data": []}"#, 2).map_err(|f| f.kind),
            Err("bad_json".into()),
            "an empty answer is no answer"
        );
        let docs = br#"{"data": [{"id": "doc-4"}, {"id": "doc-5"}]}"#;
        assert!(check_index_answer(docs, 2, 10).is_ok());
        assert!(
            check_index_answer(docs, 4, 10).is_err(),
            "doc-4 starts request 1 of 4"
        );
        assert!(
            check_index_answer(docs, 3, 10).is_err(),
            "doc-4 starts no request of 3"
        );
        assert!(check_index_answer(br#"{"data": []}"#, 2, 10).is_err());
    }

    #[test]
    fn bodies_hold_the_documents_and_queries() {
        let docs = documents(3);
        assert_eq!(docs[2].0, "doc-2");
        let v: Value = serde_json::from_slice(&index_body(&docs)).expect("JSON");
        assert_eq!(v["data"][1]["text"], docs[1].1.as_str());
        let v: Value = serde_json::from_slice(&search_body(7, "x y", 5)).expect("JSON");
        assert_eq!(v["data"][0]["id"], "q-7");
        assert_eq!(v["parameters"]["top_k"], 5);
        assert_ne!(query_text(0), docs[0].1);
    }
}

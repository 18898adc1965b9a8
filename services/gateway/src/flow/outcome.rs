//! What running a batch through the Flow yields: the documents that went through and, on writes,
//! the ones set aside because an executor failed for them; and how answers are put together.

use std::collections::HashSet;

use flowmesh_shared::api::merge_by_id;
use flowmesh_shared::{ApiError, Document};

/// The root documents whose write did not complete, and why (the first failure).
#[derive(Debug, Clone, Default)]
pub(super) struct Failed {
    pub(super) ids: Vec<String>,
    pub(super) error: Option<ApiError>,
}

impl Failed {
    pub(super) fn absorb(&mut self, other: Failed) {
        self.ids.extend(other.ids);
        if self.error.is_none() {
            self.error = other.error;
        }
    }
}

/// What an executor (or a batch) made of its documents; `failed` is empty except on writes.
#[derive(Debug, Clone, Default)]
pub(super) struct Output {
    pub(super) docs: Vec<Document>,
    pub(super) failed: Failed,
}

impl Output {
    pub(super) fn done(docs: Vec<Document>) -> Self {
        Self {
            docs,
            failed: Failed::default(),
        }
    }
}

pub(super) type NodeOutput = Result<Output, ApiError>;

/// On a write, an executor's failure for `docs` sets them aside (their write did not complete)
/// and the request goes on; on other endpoints, and for the client's own errors, it fails.
pub(super) fn fail_docs(write: bool, docs: &[Document], err: ApiError) -> NodeOutput {
    let status = err.status().as_u16();
    if write && (status >= 500 || status == 429) {
        Ok(Output {
            docs: Vec::new(),
            failed: Failed {
                ids: docs.iter().map(|d| d.id.clone()).collect(),
                error: Some(err),
            },
        })
    } else {
        Err(err)
    }
}

/// Puts the answers of `any` polling back in the order the documents came in. An executor that
/// answers with a different number of documents than it was sent has its answer appended as is.
pub(super) fn reassemble(
    executor: &str,
    total: usize,
    answers: Vec<(Vec<usize>, Vec<Document>)>,
) -> Vec<Document> {
    let mut slots: Vec<Option<Document>> = vec![None; total];
    let mut extra = Vec::new();
    for (positions, docs) in answers {
        if positions.len() == docs.len() {
            for (p, d) in positions.into_iter().zip(docs) {
                slots[p] = Some(d);
            }
        } else {
            tracing::warn!(
                executor,
                sent = positions.len(),
                got = docs.len(),
                "executor changed the number of documents"
            );
            extra.extend(docs);
        }
    }
    slots.into_iter().flatten().chain(extra).collect()
}

/// The 503 for a write that did not complete for `failed.ids`, listed in the request's `order`.
pub(super) fn partial_write(order: &[String], failed: Failed) -> ApiError {
    let failed_ids: HashSet<&str> = failed.ids.iter().map(String::as_str).collect();
    let mut not_written: Vec<String> = order
        .iter()
        .filter(|id| failed_ids.contains(id.as_str()))
        .cloned()
        .collect();
    // Ids an executor made up (not in the request) still fail the write: listed after the rest.
    let requested: HashSet<&str> = order.iter().map(String::as_str).collect();
    let mut extra = HashSet::new();
    for id in &failed.ids {
        if !requested.contains(id.as_str()) && extra.insert(id.as_str()) {
            not_written.push(id.clone());
        }
    }
    let why = failed
        .error
        .map_or_else(|| "an executor failed".to_owned(), |e| e.to_string());
    ApiError::PartialWrite {
        message: format!(
            "{} of {} documents were not written: {why}. The others were written; sending the \
             same request again completes it (writes are upserts)",
            not_written.len(),
            order.len()
        ),
        not_written,
    }
}

/// Joins the outputs of several predecessors: their documents by id, their failures together.
pub(super) fn join_outputs(outputs: Vec<Output>) -> (Vec<Document>, Failed) {
    let mut failed = Failed::default();
    let docs = outputs
        .into_iter()
        .map(|o| {
            failed.absorb(o.failed);
            o.docs
        })
        .collect();
    (join_by_id(docs), failed)
}

/// Merges the answers of several predecessors by document id, in the first answer's order.
pub(super) fn join_by_id(inputs: Vec<Vec<Document>>) -> Vec<Document> {
    let mut inputs = inputs.into_iter();
    let mut merged = inputs.next().unwrap_or_default();
    merge_by_id(&mut merged, inputs.flatten());
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_written_follows_the_request_order_once_each() {
        let order: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let failed = Failed {
            ids: ["d", "b", "d", "x"].map(String::from).to_vec(),
            error: Some(ApiError::BadRequest("shard down".into())),
        };
        let err = partial_write(&order, failed);
        assert_eq!(err.status(), 503);
        let body = err.body();
        assert_eq!(body.not_written.unwrap(), ["b", "d", "x"]);
        assert!(body.error.contains("shard down"), "{}", body.error);
    }
}

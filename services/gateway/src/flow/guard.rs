//! What the gateway checks before a request runs through the Flow, and the gateway-only limits.
//!
//! Every check runs before anything is allocated in proportion to a client's number: the
//! documents and `top_k` ([`Limits::check`]), the bytes of each text, the known parameters' types,
//! and, while the built-in sentencizer runs, the chunks it may create.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flowmesh_shared::{ApiError, Deadline, Document, Envelope, Limits};

/// The default of `--max-text-bytes`.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 1024 * 1024;
/// The default of `--max-chunks-per-document`.
pub const DEFAULT_MAX_CHUNKS_PER_DOCUMENT: usize = 10_000;
/// The default of `--max-chunks-per-request`.
pub const DEFAULT_MAX_CHUNKS_PER_REQUEST: usize = 100_000;
/// The request timeout when neither `--request-timeout` nor the Flow's `request_timeout_ms` sets
/// one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway's own limits (every service's are in [`Limits`]).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayLimits {
    /// Most bytes of one document's (or chunk's) `text`; 413 beyond it. Default 1 MiB.
    #[arg(long, env = "FLOWMESH_MAX_TEXT_BYTES", default_value_t = DEFAULT_MAX_TEXT_BYTES)]
    pub max_text_bytes: usize,
    /// Most sentence chunks the built-in sentencizer makes of one document; 413 beyond it.
    /// Default 10,000.
    #[arg(long, env = "FLOWMESH_MAX_CHUNKS_PER_DOCUMENT", default_value_t = DEFAULT_MAX_CHUNKS_PER_DOCUMENT)]
    pub max_chunks_per_document: usize,
    /// Most sentence chunks the built-in sentencizer makes for one request; 413 beyond it.
    /// Default 100,000.
    #[arg(long, env = "FLOWMESH_MAX_CHUNKS_PER_REQUEST", default_value_t = DEFAULT_MAX_CHUNKS_PER_REQUEST)]
    pub max_chunks_per_request: usize,
    /// How long a request may take, in seconds (`60`) or with a unit (`1500ms`, `2m`); after it
    /// the caller gets 504 `deadline_exceeded` and the executors' work is stopped. Default: the
    /// Flow's `request_timeout_ms`, else 60 s.
    #[arg(long, env = "FLOWMESH_REQUEST_TIMEOUT", value_parser = parse_timeout)]
    pub request_timeout: Option<Duration>,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self::defaults()
    }
}

impl GatewayLimits {
    /// The defaults, as the flags'.
    pub fn defaults() -> Self {
        Self {
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_chunks_per_document: DEFAULT_MAX_CHUNKS_PER_DOCUMENT,
            max_chunks_per_request: DEFAULT_MAX_CHUNKS_PER_REQUEST,
            request_timeout: None,
        }
    }

    /// Checks `envelope` against `limits` (documents, `top_k`, the known switches' types) and
    /// these limits.
    pub fn check(&self, limits: &Limits, envelope: &Envelope) -> Result<(), ApiError> {
        limits.check(envelope)?;
        for doc in &envelope.data {
            self.check_texts(doc)?;
        }
        Ok(())
    }

    fn check_texts(&self, doc: &Document) -> Result<(), ApiError> {
        if let Some(text) = &doc.text {
            if text.len() > self.max_text_bytes {
                return Err(ApiError::LimitExceeded(format!(
                    "document {:?} has {} bytes of text; the limit is {} (--max-text-bytes, FLOWMESH_MAX_TEXT_BYTES)",
                    doc.id,
                    text.len(),
                    self.max_text_bytes
                )));
            }
        }
        doc.chunks.iter().try_for_each(|c| self.check_texts(c))
    }

    /// The deadline of a request that starts now, under the Flow's `request_timeout_ms`.
    pub fn deadline(&self, flow_timeout_ms: Option<u64>) -> Deadline {
        let timeout = self
            .request_timeout
            .or(flow_timeout_ms.map(Duration::from_millis))
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        Deadline::after(timeout)
    }

    /// What one request may still ask of the sentencizer.
    pub fn chunk_budget(&self) -> ChunkBudget {
        ChunkBudget {
            per_document: self.max_chunks_per_document,
            per_request: self.max_chunks_per_request,
            used: AtomicUsize::new(0),
        }
    }
}

/// The chunks one request may still have the sentencizer make (shared by its batches).
#[derive(Debug)]
pub struct ChunkBudget {
    per_document: usize,
    per_request: usize,
    used: AtomicUsize,
}

impl Default for ChunkBudget {
    fn default() -> Self {
        GatewayLimits::defaults().chunk_budget()
    }
}

impl ChunkBudget {
    /// The most chunks one document may have.
    pub fn per_document(&self) -> usize {
        self.per_document
    }

    /// 413 naming `--max-chunks-per-document`, for a document with more chunks.
    pub fn document_error(&self, id: &str) -> ApiError {
        ApiError::LimitExceeded(format!(
            "document {id:?} has more than {} sentences; the limit is {} chunks per document (--max-chunks-per-document, FLOWMESH_MAX_CHUNKS_PER_DOCUMENT)",
            self.per_document, self.per_document
        ))
    }

    /// Takes `n` chunks from the request's budget; 413 naming `--max-chunks-per-request` when
    /// they are more than it has left.
    pub fn take(&self, n: usize) -> Result<(), ApiError> {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.per_request {
            return Err(ApiError::LimitExceeded(format!(
                "the request's texts make more than {} sentence chunks (--max-chunks-per-request, FLOWMESH_MAX_CHUNKS_PER_REQUEST)",
                self.per_request
            )));
        }
        Ok(())
    }
}

/// `--request-timeout`: whole seconds (`60`), or a duration with its unit (`1500ms`, `2m`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| {
            format!("{e}: give seconds (60) or a duration with a unit (1500ms, 2m)")
        })?,
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timeouts_are_seconds_or_have_a_unit() {
        assert_eq!(parse_timeout("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn the_flag_wins_over_the_flow_and_the_default_is_60_s() {
        let mut g = GatewayLimits::defaults();
        let left = |d: Deadline| d.remaining().unwrap().as_secs_f64();
        assert!((left(g.deadline(None)) - 60.0).abs() < 1.0);
        assert!((left(g.deadline(Some(5_000))) - 5.0).abs() < 1.0);
        g.request_timeout = Some(Duration::from_secs(2));
        assert!((left(g.deadline(Some(5_000))) - 2.0).abs() < 1.0);
    }

    #[test]
    fn long_texts_and_mistyped_parameters_are_refused() {
        let g = GatewayLimits {
            max_text_bytes: 10,
            ..GatewayLimits::defaults()
        };
        let mut env = Envelope::new(vec![Document::text("d", "x".repeat(11))]);
        let err = g.check(&Limits::default(), &env).unwrap_err();
        assert_eq!(err.status(), 413);
        assert!(err.to_string().contains("--max-text-bytes"), "{err}");
        env.data[0].text = Some("short".into());
        g.check(&Limits::default(), &env).unwrap();
        env.parameters
            .insert("return_embeddings".into(), json!("yes"));
        let err = g.check(&Limits::default(), &env).unwrap_err();
        assert_eq!(err.kind(), "invalid_parameter");
        assert!(err.to_string().contains("return_embeddings"), "{err}");
    }

    #[test]
    fn the_chunk_budget_is_per_request() {
        let b = GatewayLimits {
            max_chunks_per_request: 5,
            ..GatewayLimits::defaults()
        }
        .chunk_budget();
        b.take(3).unwrap();
        let err = b.take(3).unwrap_err();
        assert_eq!(err.status(), 413);
        assert!(
            err.to_string().contains("--max-chunks-per-request"),
            "{err}"
        );
    }
}

//! The limits every service enforces on what one client may ask of it.
//!
//! Each limit is a flag and a `FLOWMESH_*` variable on every service (and a `with:` key of an
//! executor in a Flow file, which `flowmesh up` turns into the flag). A request over a limit gets
//! a 4xx JSON error that names the limit and its flag; nothing is allocated in proportion to a
//! client's number before it is checked against its limit.

use std::time::Duration;

use crate::api::{Envelope, Parameters};
use crate::error::ApiError;

/// The default of `--max-top-k`.
pub const DEFAULT_MAX_TOP_K: usize = 1_000;
/// The default of `--max-documents`.
pub const DEFAULT_MAX_DOCUMENTS: usize = 10_000;
/// The default of `--max-body-bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The default of `--max-concurrent-requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
/// The default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_024;
/// The default of `--header-timeout-secs`.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 20;
/// The default of `--body-timeout-secs`.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 60;

/// Request and connection limits, the same flags on every service.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest accepted request body, in bytes (413 beyond it).
    #[arg(long, env = "FLOWMESH_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Largest accepted `parameters.top_k` (400 `invalid_parameter` beyond it).
    #[arg(long, env = "FLOWMESH_MAX_TOP_K", default_value_t = DEFAULT_MAX_TOP_K)]
    pub max_top_k: usize,
    /// Most documents in one request's `data` (413 `limit_exceeded` beyond it).
    #[arg(long, env = "FLOWMESH_MAX_DOCUMENTS", default_value_t = DEFAULT_MAX_DOCUMENTS)]
    pub max_documents: usize,
    /// Most requests worked on at once; more are shed at once with 429 and `Retry-After`
    /// instead of queueing without bound. Health, status and metrics are never shed.
    #[arg(long, env = "FLOWMESH_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,
    /// Most open client connections; more wait in the kernel's accept queue.
    #[arg(long, env = "FLOWMESH_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, counted from when the connection opens
    /// or its previous answer was sent: connections that trickle headers, or sit idle between
    /// requests for longer, are closed.
    #[arg(long, env = "FLOWMESH_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout_secs: u64,
    /// Seconds a client has, once its headers arrived, to send the whole request body; then it
    /// gets 408 `request_timeout`. A body trickled in a byte at a time would otherwise hold a
    /// connection and a request slot for as long as the client likes.
    #[arg(long, env = "FLOWMESH_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,
}

/// How long a request's body may take to arrive, as a request extension that [`serve`] adds
/// and the body extractor ([`crate::codec::Negotiated`]) reads.
///
/// [`serve`]: crate::server::serve
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

impl Default for BodyTimeout {
    fn default() -> Self {
        Self(Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_top_k: DEFAULT_MAX_TOP_K,
            max_documents: DEFAULT_MAX_DOCUMENTS,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
        }
    }
}

impl Limits {
    /// [`Limits::default`] with another body limit (tests and embedded services).
    pub fn with_max_body_bytes(max_body_bytes: usize) -> Self {
        Self {
            max_body_bytes,
            ..Self::default()
        }
    }

    /// The header-read (and keep-alive idle) timeout.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }

    /// The time a request's body may take to arrive.
    pub fn body_timeout(&self) -> BodyTimeout {
        BodyTimeout(Duration::from_secs(self.body_timeout_secs.max(1)))
    }

    /// Checks what every endpoint of every service must bound or understand: at least one and at
    /// most `--max-documents` documents, `top_k`, and the switches `return_embeddings` and
    /// `include_blob`. Executor- and model-specific limits are checked by the services themselves.
    pub fn check(&self, envelope: &Envelope) -> Result<(), ApiError> {
        if envelope.data.is_empty() {
            return Err(ApiError::BadRequest(
                "data is empty: send at least one document".into(),
            ));
        }
        self.check_documents(envelope.data.len())?;
        top_k(&envelope.parameters, self.max_top_k)?;
        check_request_id(&envelope.header.request_id)?;
        for flag in BOOLEAN_PARAMETERS {
            match envelope.parameters.get(*flag) {
                None | Some(serde_json::Value::Null | serde_json::Value::Bool(_)) => {}
                Some(other) => {
                    return Err(ApiError::InvalidParameter {
                        name: (*flag).into(),
                        message: format!("must be true or false, not {other}"),
                    })
                }
            }
        }
        Ok(())
    }

    /// 413 when `n` documents are more than `--max-documents`.
    pub fn check_documents(&self, n: usize) -> Result<(), ApiError> {
        if n > self.max_documents {
            return Err(ApiError::LimitExceeded(format!(
                "{n} documents in one request; the limit is {} (--max-documents, FLOWMESH_MAX_DOCUMENTS)",
                self.max_documents
            )));
        }
        Ok(())
    }
}

/// The longest `header.request_id` accepted.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A request id travels in logs and in the `x-request-id` header of every executor call: at most
/// [`MAX_REQUEST_ID_BYTES`] of visible ASCII (a UUID, Jina's hex ids), else 400.
fn check_request_id(id: &str) -> Result<(), ApiError> {
    if id.len() <= MAX_REQUEST_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(ApiError::InvalidParameter {
        name: "header.request_id".into(),
        message: format!(
            "must be at most {MAX_REQUEST_ID_BYTES} visible ASCII characters (letters, digits, \
             punctuation; no spaces or control characters)"
        ),
    })
}

/// The parameters that are switches: `true` or `false` (or absent).
const BOOLEAN_PARAMETERS: &[&str] = &["return_embeddings", "include_blob"];

/// The default number of matches a search returns when `parameters.top_k` is absent.
pub const DEFAULT_TOP_K: usize = 10;

/// `parameters.top_k`: [`DEFAULT_TOP_K`] when absent (or `null`), else a whole number from 1 to
/// `max`. Jina clients send every number as a float (`3.0`), through protobuf's Struct, so a
/// float with no fraction counts as whole. Anything else is 400 `invalid_parameter`.
pub fn top_k(parameters: &Parameters, max: usize) -> Result<usize, ApiError> {
    let Some(value) = parameters.get("top_k").filter(|v| !v.is_null()) else {
        return Ok(DEFAULT_TOP_K.min(max.max(1)));
    };
    let whole = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
            .map(|f| f as u64)
    });
    let invalid = |message: String| ApiError::InvalidParameter {
        name: "top_k".into(),
        message,
    };
    let k = whole.ok_or_else(|| {
        invalid(format!(
            "must be a whole number from 1 to {max}, not {value}"
        ))
    })?;
    if k == 0 {
        return Err(invalid(format!(
            "must be a whole number from 1 to {max}, not 0"
        )));
    }
    match usize::try_from(k) {
        Ok(k) if k <= max => Ok(k),
        _ => Err(invalid(format!(
            "{k} is over the limit of {max} (--max-top-k, FLOWMESH_MAX_TOP_K)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: serde_json::Value) -> Parameters {
        let mut p = Parameters::new();
        p.insert("top_k".into(), v);
        p
    }

    #[test]
    fn top_k_defaults_when_absent_or_null() {
        assert_eq!(top_k(&Parameters::new(), 1000).unwrap(), DEFAULT_TOP_K);
        assert_eq!(top_k(&params(json!(null)), 1000).unwrap(), DEFAULT_TOP_K);
        assert_eq!(top_k(&Parameters::new(), 3).unwrap(), 3);
    }

    #[test]
    fn top_k_takes_whole_numbers_and_jina_floats() {
        assert_eq!(top_k(&params(json!(3)), 1000).unwrap(), 3);
        assert_eq!(top_k(&params(json!(4.0)), 1000).unwrap(), 4);
        assert_eq!(top_k(&params(json!(1000)), 1000).unwrap(), 1000);
    }

    #[test]
    fn invalid_top_k_is_a_400_naming_the_parameter() {
        for bad in [
            json!(0),
            json!(-1),
            json!("abc"),
            json!(1.5),
            json!(true),
            json!([1]),
            json!(1e300),
        ] {
            let err = top_k(&params(bad.clone()), 1000).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
            assert_eq!(err.kind(), "invalid_parameter", "{bad}");
            assert!(err.to_string().contains("top_k"), "{bad}: {err}");
        }
    }

    #[test]
    fn top_k_over_the_limit_names_the_limit_and_its_flag() {
        for big in [json!(1001), json!(1_000_000_000_000_u64), json!(1e9)] {
            let err = top_k(&params(big.clone()), 1000).unwrap_err();
            assert_eq!(err.kind(), "invalid_parameter", "{big}");
            let msg = err.to_string();
            assert!(msg.contains("1000") && msg.contains("--max-top-k"), "{msg}");
        }
    }

    #[test]
    fn too_many_documents_is_a_413_naming_the_flag() {
        let limits = Limits {
            max_documents: 2,
            ..Limits::default()
        };
        let env = Envelope::new(vec![crate::Document::default(); 3]);
        let err = limits.check(&env).unwrap_err();
        assert_eq!(err.status(), 413);
        assert_eq!(err.kind(), "limit_exceeded");
        assert!(err.to_string().contains("--max-documents"), "{err}");
        limits
            .check(&Envelope::new(vec![crate::Document::default(); 2]))
            .unwrap();
        let empty = limits.check(&Envelope::new(Vec::new())).unwrap_err();
        assert_eq!(empty.status(), 400);
    }

    #[test]
    fn request_ids_must_be_short_visible_ascii() {
        let mut env = Envelope::new(vec![crate::Document::default()]);
        for good in ["", "0f8c2a", "req-1/2:3"] {
            env.header.request_id = good.into();
            Limits::default().check(&env).unwrap();
        }
        for bad in ["a b", "\u{1}x", "é", &"x".repeat(129)] {
            env.header.request_id = bad.into();
            let err = Limits::default().check(&env).unwrap_err();
            assert_eq!(err.kind(), "invalid_parameter", "{bad:?}");
            assert!(err.to_string().contains("request_id"), "{err}");
        }
    }

    #[test]
    fn switches_must_be_booleans() {
        let mut env = Envelope::new(vec![crate::Document::default()]);
        env.parameters
            .insert("return_embeddings".into(), json!(true));
        Limits::default().check(&env).unwrap();
        env.parameters.insert("include_blob".into(), json!("yes"));
        let err = Limits::default().check(&env).unwrap_err();
        assert_eq!(err.kind(), "invalid_parameter");
        assert!(err.to_string().contains("include_blob"), "{err}");
    }
}

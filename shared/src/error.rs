//! The one error type of the mesh and its JSON body `{"error": ..., "kind": ...}`.
//!
//! Every service maps its failures to [`ApiError`]; the status code is decided here and only here.
//! 4xx means the caller got something wrong, 5xx is a fault of the mesh.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// A stable machine-readable category (`invalid_body`, `invalid_parameter`,
    /// `limit_exceeded`, `deadline_exceeded`, `partial_write`, ...).
    pub kind: String,
    /// With `partial_write`: the ids of the documents that were not written. Sending the same
    /// request again writes them (writes are idempotent upserts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_written: Option<Vec<String>>,
}

impl ErrorBody {
    /// A body with `error` and `kind` only.
    pub fn new(error: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            kind: kind.into(),
            not_written: None,
        }
    }
}

/// The `WWW-Authenticate` challenge of every 401.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"flowmesh\"";

/// Seconds a shed or overloaded caller is asked to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

/// Errors that a service answers with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON / MessagePack, or has the wrong types.
    #[error("{0}")]
    InvalidBody(String),
    /// The request is well-formed but not acceptable (empty `data`, bad parameter, ...).
    #[error("{0}")]
    BadRequest(String),
    /// A known parameter has a wrong value (`top_k` of 0, a string, over its limit, ...).
    #[error("invalid parameter {name}: {message}")]
    InvalidParameter {
        /// The parameter (or header) name.
        name: String,
        /// What is wrong, naming the limit and its flag where one was exceeded.
        message: String,
    },
    /// The body is larger than the configured limit.
    #[error("request body is too large: {0}")]
    PayloadTooLarge(String),
    /// The request asks for more work than a limit allows; the message names the limit and
    /// its flag.
    #[error("{0}")]
    LimitExceeded(String),
    /// No such endpoint.
    #[error("unknown endpoint {0:?}")]
    UnknownEndpoint(String),
    /// The request carries no credential, or a wrong one (401, with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(String),
    /// The credential is valid but does not allow this request (a write with a read-only key).
    #[error("{0}")]
    Forbidden(String),
    /// The request names something that does not exist (updating an unknown document).
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// The service is overloaded; try again later.
    #[error("{0}")]
    Overloaded(String),
    /// A downstream executor answered with an error the caller caused (a 4xx).
    #[error("executor {executor}: {message}")]
    Rejected {
        /// The executor's name.
        executor: String,
        /// Its status.
        status: u16,
        /// Its error kind.
        kind: String,
        /// Its message.
        message: String,
    },
    /// No replica of an executor could serve the request.
    #[error("executor {executor} is unavailable: {message}")]
    Unavailable {
        /// The executor's name.
        executor: String,
        /// Why.
        message: String,
    },
    /// An executor did not answer in time.
    #[error("executor {executor} timed out after {timeout_ms} ms")]
    Timeout {
        /// The executor's name.
        executor: String,
        /// The timeout that ran out.
        timeout_ms: u64,
    },
    /// The client did not send the whole request body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The request's deadline passed before it was answered; its work was stopped.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A write reached some shards or stores and not others: the listed documents were not
    /// written (the others were, and are searchable with their content).
    #[error("{message}")]
    PartialWrite {
        /// What failed, naming the executor, shard and replica.
        message: String,
        /// The ids of the documents that were not written.
        not_written: Vec<String>,
    },
    /// The request conflicts with how the service works (a write sent straight to a mirrored
    /// copy instead of through the gateway).
    #[error("{0}")]
    Conflict(String),
    /// The service is not ready yet (model loading, store disconnected, ...).
    #[error("{0}")]
    NotReady(String),
    /// Anything else that is the mesh's fault. The message is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidBody(_) | Self::BadRequest(_) | Self::InvalidParameter { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge(_) | Self::LimitExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnknownEndpoint(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Rejected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::Unavailable { .. } | Self::NotReady(_) | Self::PartialWrite { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout { .. } | Self::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable kind of this error.
    pub fn kind(&self) -> &str {
        match self {
            Self::InvalidBody(_) => "invalid_body",
            Self::BadRequest(_) => "bad_request",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownEndpoint(_) => "unknown_endpoint",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Overloaded(_) => "overloaded",
            Self::Rejected { kind, .. } => kind,
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout { .. } => "timeout",
            Self::DeadlineExceeded(_) => "deadline_exceeded",
            Self::RequestTimeout(_) => "request_timeout",
            Self::PartialWrite { .. } => "partial_write",
            Self::NotReady(_) => "not_ready",
            Self::Conflict(_) => "conflict",
            Self::Internal(_) => "internal",
        }
    }

    /// The body sent to the caller. Internal details stay in the log.
    pub fn body(&self) -> ErrorBody {
        let error = match self {
            Self::Internal(_) => "internal error; see the service log".to_owned(),
            other => other.to_string(),
        };
        ErrorBody {
            error,
            kind: self.kind().to_owned(),
            not_written: match self {
                Self::PartialWrite { not_written, .. } => Some(not_written.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, kind = self.kind(), "request failed");
        } else {
            tracing::debug!(error = %self, kind = self.kind(), "request rejected");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if matches!(self, Self::Overloaded(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        if matches!(self, Self::Unauthorized(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(WWW_AUTHENTICATE),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_are_not_sent() {
        let body = ApiError::Internal("secret path /x".into()).body();
        assert!(!body.error.contains("secret"));
        assert_eq!(body.kind, "internal");
    }

    #[test]
    fn overloaded_says_when_to_retry() {
        let r = ApiError::Overloaded("busy".into()).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn unauthorized_challenges_and_forbidden_does_not() {
        let r = ApiError::Unauthorized("missing credential".into()).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[axum::http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"flowmesh\""
        );
        assert_eq!(ApiError::Unauthorized(String::new()).kind(), "unauthorized");
        let r = ApiError::Forbidden("read-only key".into()).into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r
            .headers()
            .get(axum::http::header::WWW_AUTHENTICATE)
            .is_none());
        assert_eq!(ApiError::Forbidden(String::new()).kind(), "forbidden");
    }

    #[test]
    fn partial_write_lists_what_was_not_written() {
        let e = ApiError::PartialWrite {
            message: "executor indexer shard 1 is unavailable".into(),
            not_written: vec!["a".into(), "b".into()],
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["kind"], "partial_write");
        assert_eq!(body["not_written"], serde_json::json!(["a", "b"]));
        let plain = serde_json::to_value(ApiError::BadRequest("x".into()).body()).unwrap();
        assert!(plain.get("not_written").is_none());
    }

    #[test]
    fn rejected_keeps_the_downstream_status() {
        let e = ApiError::Rejected {
            executor: "indexer".into(),
            status: 422,
            kind: "bad_request".into(),
            message: "wrong dimension".into(),
        };
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.body().error, "executor indexer: wrong dimension");
    }
}

//! Who may call the gateway: client API keys ([`keys`]), the route policy of the middleware
//! [`authorize`], and the audit line of every write ([`audit`]).
//!
//! With no key configured the gateway is open, as before, and every caller is `anonymous`. With
//! any key configured, every route but `/livez`, `/readyz`, `/dry_run` (Jina's readiness check),
//! `/docs` (and its assets) and `/openapi.json` needs one, unknown paths included (they answer 401 before 404, so that what
//! exists cannot be probed without a key). A read-write key may call everything; a read-only key
//! `/search`, `/post` with a search endpoint, `GET /status` and `GET /metrics`, and gets 403 on a
//! write. `/post` names its endpoint in the body, so it is authorized by its handler, which finds
//! the [`Caller`] in the request's extensions.

pub mod audit;
pub mod keys;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use flowmesh_shared::server::bearer_token;
use flowmesh_shared::ApiError;

pub use audit::WriteAudit;
pub use keys::{ApiKeyArgs, ApiKeys, Caller};

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Health, the OpenAPI document and Swagger UI: no key.
    Open,
    /// Any valid key.
    Read,
    /// A read-write key; the request is audited.
    Write,
    /// Any valid key here; the handler checks the endpoint the body names.
    Post,
    /// Anything else: a valid key, and then the router's answer (404 for an unknown path).
    Other,
}

fn access(path: &str) -> Access {
    match path {
        "/livez" | "/readyz" | "/dry_run" | "/openapi.json" | "/docs" => Access::Open,
        p if p.starts_with("/docs/") => Access::Open,
        "/search" | "/status" | "/metrics" => Access::Read,
        "/index" | "/update" | "/delete" => Access::Write,
        "/post" => Access::Post,
        _ => Access::Other,
    }
}

/// The credential a request presents: `api-key: KEY`, else `Authorization: Bearer KEY`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    match headers.get("api-key") {
        Some(key) => Some(key.as_bytes().trim_ascii()),
        None => bearer_token(headers),
    }
}

/// The middleware on every route of the gateway: authenticates the caller (puts its [`Caller`] in
/// the request's extensions), applies the route policy above, and audits writes.
pub async fn authorize(State(keys): State<ApiKeys>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let access = access(&path);
    if access == Access::Open {
        return next.run(req).await;
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let refused = |key: &str, error: ApiError| {
        let response = error.into_response();
        if matches!(access, Access::Write | Access::Post) {
            audit::refused(&req, &path, key, client, &response);
        }
        response
    };
    let caller = if keys.is_enabled() {
        match presented_key(req.headers()).map(|k| keys.identify(k)) {
            None => {
                keys::count_failure("missing");
                return refused(
                    "missing",
                    ApiError::Unauthorized(
                        "an API key is required: send it as `api-key: KEY` or \
                         `Authorization: Bearer KEY`"
                            .into(),
                    ),
                );
            }
            Some(None) => {
                keys::count_failure("wrong");
                return refused(
                    "invalid",
                    ApiError::Unauthorized("the API key is not valid".into()),
                );
            }
            Some(Some(caller)) => caller,
        }
    } else {
        Caller::anonymous()
    };
    if !caller.may_write() {
        match access {
            Access::Write => {
                keys::count_failure("read_only");
                return refused(caller.name(), forbidden(&path));
            }
            // A read-only key reaches only the routes it is meant for: a route that is not
            // classified above is not served to it, whatever it is.
            Access::Other => return ApiError::UnknownEndpoint(path).into_response(),
            Access::Open | Access::Read | Access::Post => {}
        }
    }
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    match access {
        Access::Write | Access::Post => audit::answered(&caller, client, &path, &response),
        Access::Open | Access::Read | Access::Other => {}
    }
    response
}

/// The 403 of a write with a read-only key.
pub fn forbidden(endpoint: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "this API key is read-only: {endpoint} writes; use a read-write key"
    ))
}

/// Shared by the gateway's handlers: the caller of a request (anonymous when keys are off or the
/// router was built without [`authorize`]).
pub fn caller_of(caller: Option<&Caller>) -> Caller {
    caller.cloned().unwrap_or_else(Caller::anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        for open in [
            "/livez",
            "/readyz",
            "/dry_run",
            "/openapi.json",
            "/docs",
            "/docs/",
            "/docs/index.css",
        ] {
            assert_eq!(access(open), Access::Open, "{open}");
        }
        for (path, expected) in [
            ("/search", Access::Read),
            ("/status", Access::Read),
            ("/metrics", Access::Read),
            ("/index", Access::Write),
            ("/update", Access::Write),
            ("/delete", Access::Write),
            ("/post", Access::Post),
            ("/index/", Access::Other),
            ("/docsx", Access::Other),
            ("/", Access::Other),
            ("/%69ndex", Access::Other),
        ] {
            assert_eq!(access(path), expected, "{path}");
        }
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", "Bearer  abc ".parse().unwrap());
        assert_eq!(presented_key(&h), Some(&b"abc"[..]));
        h.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some(&b"abc"[..]));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("api-key", "xyz".parse().unwrap());
        assert_eq!(presented_key(&h), Some(&b"xyz"[..]));
    }
}

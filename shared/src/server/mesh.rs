//! The mesh credential: a shared token that every call to an executor must carry.
//!
//! An executor with a token refuses every route except `/livez`, `/readyz`, its OpenAPI document
//! (`/openapi.json`) and Swagger UI (`/docs` and its assets), as the gateway does with API keys,
//! unless the call has `Authorization: Bearer TOKEN` with one of its tokens: 401 `unauthorized` with
//! `WWW-Authenticate: Bearer realm="flowmesh"`, counted in
//! `flowmesh_auth_failures_total{service,reason}` (`reason` is `missing` or `wrong`). The gateway
//! sends the first token of its set ([`crate::client::ExecutorClient::secured`]).
//!
//! The token comes from the environment (`FLOWMESH_MESH_TOKEN`, read here by hand so that it can
//! never be given on a command line) and/or from `--mesh-token-file` (one token per line, read
//! again on SIGHUP: put the new token first and keep the old one below it while rotating).

use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::secret::SecretSet;

/// The environment variable holding the mesh token (comma-separated for several).
pub const MESH_TOKEN_ENV: &str = "FLOWMESH_MESH_TOKEN";

/// The environment variable of `--mesh-token-file`.
pub const MESH_TOKEN_FILE_ENV: &str = "FLOWMESH_MESH_TOKEN_FILE";

/// Where the mesh token comes from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MeshArgs {
    /// File holding the mesh token, one per line (several while rotating: a service accepts
    /// any, the gateway sends the first); read again on SIGHUP. The token may also be given in
    /// the environment variable FLOWMESH_MESH_TOKEN (never on the command line).
    #[arg(long, env = MESH_TOKEN_FILE_ENV, value_name = "PATH")]
    pub mesh_token_file: Option<PathBuf>,
}

impl MeshArgs {
    /// The mesh tokens: those of `--mesh-token-file` first, then those of
    /// `FLOWMESH_MESH_TOKEN`. `None` when neither is set (the mesh is open); an unreadable or
    /// empty file is an error.
    pub fn tokens(&self) -> anyhow::Result<Option<SecretSet>> {
        let files: Vec<PathBuf> = self.mesh_token_file.iter().cloned().collect();
        SecretSet::load(Some(MESH_TOKEN_ENV), &files)
    }
}

/// The state of the [`require_mesh_token`] middleware.
#[derive(Debug, Clone)]
pub struct MeshGuard {
    service: &'static str,
    tokens: SecretSet,
}

/// The middleware behind [`require_mesh_token`].
type MeshFn = fn(State<MeshGuard>, Request, Next) -> futures::future::BoxFuture<'static, Response>;

/// The layer [`require_mesh_token`] returns.
pub type MeshLayer = axum::middleware::FromFnLayer<MeshFn, MeshGuard, (State<MeshGuard>, Request)>;

/// Whether `path` stays open without the mesh token: the probes, the OpenAPI document and
/// Swagger UI (whose Authorize button then asks for the token).
fn is_open(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/openapi.json" | "/docs") || path.starts_with("/docs/")
}

/// The bearer token of `Authorization`, if the header is `Bearer TOKEN` (scheme in any case).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// A layer that refuses every request except `/livez`, `/readyz`, `/openapi.json` and `/docs`
/// (with its assets) of the service `service`
/// unless it carries `Authorization: Bearer T` with `T` one of `tokens` (401 `unauthorized`
/// otherwise). Put it on the whole router (`Router::layer`) so that unknown paths, `/metrics`
/// and the service's own routes are covered too.
pub fn require_mesh_token(service: &'static str, tokens: SecretSet) -> MeshLayer {
    fn check(
        State(guard): State<MeshGuard>,
        req: Request,
        next: Next,
    ) -> futures::future::BoxFuture<'static, Response> {
        Box::pin(async move {
            if is_open(req.uri().path()) {
                return next.run(req).await;
            }
            let refusal = match bearer_token(req.headers()) {
                None => Some((
                    "missing",
                    "this service needs the mesh token (Authorization: Bearer)",
                )),
                Some(token) if !guard.tokens.accepts(token) => {
                    Some(("wrong", "the mesh token is not accepted"))
                }
                Some(_) => None,
            };
            match refusal {
                None => next.run(req).await,
                Some((reason, message)) => {
                    metrics::counter!(
                        "flowmesh_auth_failures_total",
                        "service" => guard.service,
                        "reason" => reason
                    )
                    .increment(1);
                    ApiError::Unauthorized(message.to_owned()).into_response()
                }
            }
        })
    }
    axum::middleware::from_fn_with_state(MeshGuard { service, tokens }, check as MeshFn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_the_document_and_swagger_ui_are_open() {
        for open in [
            "/livez",
            "/readyz",
            "/openapi.json",
            "/docs",
            "/docs/",
            "/docs/swagger-ui.css",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/search", "/index", "/metrics", "/stats", "/docsx", "/", "/openapi",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }

    #[test]
    fn bearer_is_parsed_in_any_case() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some(&b"abc"[..]));
        h.insert(AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some(&b"abc"[..]));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, "Bear".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }
}

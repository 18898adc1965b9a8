//! The OpenAPI drift check: the committed document is the generated one, and the router serves
//! exactly what the document says.

use std::path::Path;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use utoipa::openapi::OpenApi;

/// What a path parameter (`{endpoint}`) is replaced with in the requests of the route check.
const PARAMETER: &str = "openapi-probe";

/// Paths no service serves: each must get the unknown-route 404.
const UNDOCUMENTED: [&str; 3] = ["/", "/openapi-probe/not/a/route", "/v1/index"];

/// The whole drift check of the service `flowmesh-{service}`: the committed
/// `openapi/{service}.json` is `api` (see [`assert_openapi_committed`]), `api` documents each of
/// `paths`, and `app` serves exactly the documented routes (see [`assert_routes_documented`]).
///
/// # Panics
/// On any difference, saying which.
pub async fn assert_openapi(service: &str, api: &OpenApi, paths: &[&str], app: &Router) {
    // This crate sits right below the repository root.
    let openapi_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi"));
    assert_committed(
        openapi_dir,
        &format!("{service}.json"),
        &crate::openapi::to_json(api),
        &format!("flowmesh-{service}"),
    );
    for path in paths {
        assert!(api.paths.paths.contains_key(*path), "{path} is documented");
    }
    assert_routes_documented(app, api).await;
}

/// Compares a service's generated OpenAPI document with `openapi/<file>` at the repository root
/// (`manifest_dir` is the calling crate's `CARGO_MANIFEST_DIR`, two levels below the root). With
/// `UPDATE_OPENAPI` set, the committed file is rewritten first; under CI (`CI` set) that is a
/// failure too, since the check would then pass whatever the code generates.
///
/// # Panics
/// When the committed document differs from `generated`, with the command that refreshes it, or
/// when `UPDATE_OPENAPI` and `CI` are both set.
pub fn assert_openapi_committed(manifest_dir: &str, file: &str, generated: &str, package: &str) {
    let openapi_dir = Path::new(manifest_dir).join("../../openapi");
    assert_committed(&openapi_dir, file, generated, package);
}

/// [`assert_openapi_committed`] of `openapi_dir/file`.
fn assert_committed(openapi_dir: &Path, file: &str, generated: &str, package: &str) {
    let path = openapi_dir.join(file);
    let generated = format!("{generated}\n");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        assert!(
            std::env::var_os("CI").is_none(),
            "UPDATE_OPENAPI is set under CI: openapi/{file} was rewritten instead of checked"
        );
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/{file} is out of date; regenerate it with `UPDATE_OPENAPI=1 cargo test -p {package}`"
    );
}

/// Asserts that `app` routes every path and method `api` documents (the answer is neither the
/// unknown-route 404 nor a 405), that a method `api` does not list on a documented path is a
/// 405, and that a few paths no service documents get the unknown-route 404. Path parameters
/// are filled in with a placeholder; requests carry an empty JSON body, which handlers refuse
/// before doing any work.
///
/// # Panics
/// On the first route that differs from the document.
pub async fn assert_routes_documented(app: &Router, api: &OpenApi) {
    for (path, item) in &api.paths.paths {
        let uri = fill_parameters(path);
        let documented = [
            (Method::GET, item.get.is_some()),
            (Method::POST, item.post.is_some()),
            (Method::PUT, item.put.is_some()),
            (Method::DELETE, item.delete.is_some()),
            (Method::PATCH, item.patch.is_some()),
        ];
        for (method, is_documented) in documented {
            let (status, kind) = route(app, method.clone(), &uri).await;
            if is_documented {
                assert!(
                    !is_fallback(status, &kind) && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not routed: {status} {kind:?}"
                );
            } else {
                assert!(
                    !is_fallback(status, &kind),
                    "{path} is documented but not routed: {method} gets the unknown-route 404"
                );
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is routed but not documented ({kind:?})"
                );
            }
        }
    }
    for path in UNDOCUMENTED {
        assert!(
            !api.paths.paths.contains_key(path),
            "{path} is documented; the check needs paths that are not"
        );
        for method in [Method::GET, Method::POST] {
            let (status, kind) = route(app, method.clone(), path).await;
            assert!(
                is_fallback(status, &kind),
                "{method} {path} is routed but not documented: {status} {kind:?}"
            );
        }
    }
}

/// The example request body of `POST path` in the document `app` serves at `/openapi.json`,
/// fetched without credentials, as Swagger UI does.
///
/// # Panics
/// When the document cannot be fetched or has no such example.
pub async fn served_example(app: &Router, path: &str) -> serde_json::Value {
    let request = Request::get("/openapi.json")
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("bad request: {e}"));
    let (status, document) = super::send(app, request).await;
    assert_eq!(status, StatusCode::OK, "GET /openapi.json: {document}");
    let example = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .clone();
    assert!(
        example.is_object(),
        "POST {path} has no example body: {document}"
    );
    example
}

/// Asserts that `app` serves Swagger UI at `/docs` (redirected to `/docs/`), without
/// credentials, reading the service's own `/openapi.json`.
///
/// # Panics
/// When a page is missing or points elsewhere.
pub async fn assert_swagger_ui(app: &Router) {
    let get = |uri: &str| {
        Request::get(uri)
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("bad request for {uri}: {e}"))
    };
    let (status, _) = super::send_raw(app, get("/docs")).await;
    assert!(status.is_redirection(), "GET /docs: {status}");
    let (status, page) = super::send_raw(app, get("/docs/")).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(status, StatusCode::OK, "GET /docs/: {page}");
    assert!(
        page.contains("swagger-ui"),
        "GET /docs/ is not Swagger UI: {page}"
    );
    let (status, config) = super::send_raw(app, get("/docs/swagger-initializer.js")).await;
    let config = String::from_utf8_lossy(&config);
    assert_eq!(
        status,
        StatusCode::OK,
        "GET /docs/swagger-initializer.js: {config}"
    );
    assert!(
        config.contains("\"/openapi.json\""),
        "Swagger UI does not read /openapi.json: {config}"
    );
}

/// `path` with each `{parameter}` replaced by [`PARAMETER`].
fn fill_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                PARAMETER
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether an answer is the routers' fallback for an unknown route.
fn is_fallback(status: StatusCode, kind: &Option<String>) -> bool {
    status == StatusCode::NOT_FOUND && kind.as_deref() == Some("unknown_endpoint")
}

/// Sends `method uri` with an empty JSON body through `app`: the status and the error `kind`
/// of a JSON answer.
async fn route(app: &Router, method: Method, uri: &str) -> (StatusCode, Option<String>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("bad request for {uri}: {e}"));
    let (status, bytes) = super::send_raw(app, request).await;
    let kind = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_owned));
    (status, kind)
}

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;
    use crate::server::{method_not_allowed, unknown_route};

    /// A document of `GET /a` and `POST /items/{id}`.
    fn api() -> OpenApi {
        serde_json::from_value(serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/a": {"get": {"responses": {}}},
                "/items/{id}": {"post": {"responses": {}}},
            },
        }))
        .unwrap_or_else(|e| panic!("a valid document: {e}"))
    }

    fn app(routes: Router) -> Router {
        routes
            .fallback(unknown_route)
            .method_not_allowed_fallback(method_not_allowed)
    }

    #[tokio::test]
    async fn a_router_that_serves_the_document_passes() {
        let routes = Router::new()
            .route("/a", get(|| async { "a" }))
            .route("/items/{id}", axum::routing::post(|| async { "item" }));
        assert_routes_documented(&app(routes), &api()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "/items/{id} is documented but not routed")]
    async fn a_documented_route_the_router_lacks_fails() {
        let routes = Router::new().route("/a", get(|| async { "a" }));
        assert_routes_documented(&app(routes), &api()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "DELETE /a is routed but not documented")]
    async fn a_method_the_document_leaves_out_fails() {
        let routes = Router::new()
            .route("/a", get(|| async { "a" }).delete(|| async { "gone" }))
            .route("/items/{id}", axum::routing::post(|| async { "item" }));
        assert_routes_documented(&app(routes), &api()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "is routed but not documented")]
    async fn an_undocumented_path_the_router_serves_fails() {
        let routes = Router::new()
            .route("/a", get(|| async { "a" }))
            .route("/items/{id}", axum::routing::post(|| async { "item" }))
            .route("/v1/index", get(|| async { "v1" }));
        assert_routes_documented(&app(routes), &api()).await;
    }
}

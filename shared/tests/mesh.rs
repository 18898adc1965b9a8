//! The mesh token on a real executor server: refused without it or with a wrong one, answered
//! with it, probes open; rotation through a token file; the secured client sends it.

#![allow(clippy::unwrap_used)]

mod support;

use flowmesh_shared::client::{CallError, ExecutorClient};
use flowmesh_shared::secret::{Secret, SecretSet};
use flowmesh_shared::server::require_mesh_token;
use flowmesh_shared::testing::{temp_dir, write_private};
use flowmesh_shared::tls::ClientTlsArgs;
use support::{call, echo_router, one_doc, start};

fn token(tag: &str) -> String {
    // Made by the test, never a fixed value: a per-run random part from the clock and the pid.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{:x}{:x}", std::process::id(), nanos)
}

#[tokio::test]
async fn executor_routes_need_the_token_and_probes_do_not() {
    let good = token("good");
    let tokens = SecretSet::new(vec![Secret::new(&good)]);
    let app = echo_router().layer(require_mesh_token("test", tokens));
    let server = start(app, None).await;
    let base = format!("http://{}", server.addr);

    for (method, path) in [
        ("POST", "/index"),
        ("POST", "/search"),
        ("POST", "/delete"),
        ("GET", "/metrics"),
        ("GET", "/peer"),
        ("GET", "/no-such-route"),
    ] {
        let url = format!("{base}{path}");
        let none = call(method, &url, None).await.unwrap();
        assert_eq!(none.status, 401, "{method} {path} without a token");
        assert_eq!(
            none.headers[http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"flowmesh\""
        );
        let body = none.json();
        assert_eq!(body["kind"], "unauthorized", "{body}");
        assert!(body["error"].is_string());
        assert!(!none.body.windows(good.len()).any(|w| w == good.as_bytes()));

        let wrong = call(method, &url, Some("Bearer not-the-token"))
            .await
            .unwrap();
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        assert_eq!(wrong.json()["kind"], "unauthorized");

        let basic = call(method, &url, Some(&format!("Basic {good}")))
            .await
            .unwrap();
        assert_eq!(basic.status, 401, "{method} {path} with another scheme");
    }
    let auth = format!("Bearer {good}");
    for (method, path) in [("POST", "/index"), ("POST", "/search"), ("GET", "/metrics")] {
        let right = call(method, &format!("{base}{path}"), Some(&auth))
            .await
            .unwrap();
        assert_eq!(right.status, 200, "{method} {path} with the token");
    }
    // The token's scheme is case-insensitive, as RFC 7235 says.
    let lower = call(
        "POST",
        &format!("{base}/index"),
        Some(&format!("bearer {good}")),
    )
    .await
    .unwrap();
    assert_eq!(lower.status, 200);
    for path in ["/livez", "/readyz"] {
        let open = call("GET", &format!("{base}{path}"), None).await.unwrap();
        assert_eq!(open.status, 200, "{path} stays open");
    }
    let metrics = call("GET", &format!("{base}/metrics"), Some(&auth))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("flowmesh_auth_failures_total{service=\"test\",reason=\"missing\"}")
            && text.contains("flowmesh_auth_failures_total{service=\"test\",reason=\"wrong\"}"),
        "{text}"
    );
    assert!(!text.contains(&good));
}

#[tokio::test]
async fn the_peer_address_reaches_the_handler() {
    let server = start(echo_router(), None).await;
    let answer = call("GET", &format!("http://{}/peer", server.addr), None)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let peer: std::net::SocketAddr = String::from_utf8_lossy(&answer.body).parse().unwrap();
    assert!(peer.ip().is_loopback());
    assert_ne!(peer.port(), server.addr.port());
}

#[tokio::test]
async fn a_token_file_rotates_without_a_restart() {
    let dir = temp_dir("mesh-rotation");
    let file = dir.join("mesh-token");
    let (old, new) = (token("old"), token("new"));
    write_private(&file, &format!("# the mesh token\n{new}\n\n  {old}  \n"));
    let tokens = SecretSet::load(None, std::slice::from_ref(&file))
        .unwrap()
        .unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens.first().unwrap().expose(), new);
    let server = start(
        echo_router().layer(require_mesh_token("test", tokens.clone())),
        None,
    )
    .await;
    let url = format!("http://{}/index", server.addr);
    for t in [&old, &new] {
        let a = call("POST", &url, Some(&format!("Bearer {t}")))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "both tokens are accepted while rotating");
    }

    // The old token is retired: after a reload only the new one is accepted.
    write_private(&file, &format!("{new}\n"));
    assert_eq!(tokens.reload().unwrap(), 1);
    let a = call("POST", &url, Some(&format!("Bearer {old}")))
        .await
        .unwrap();
    assert_eq!(a.status, 401, "the retired token is refused after reload");
    let a = call("POST", &url, Some(&format!("Bearer {new}")))
        .await
        .unwrap();
    assert_eq!(a.status, 200);

    // A broken file keeps the previous set.
    write_private(&file, "# nothing here\n\n");
    let err = tokens.reload().unwrap_err();
    assert!(format!("{err:#}").contains("mesh-token"), "{err:#}");
    let a = call("POST", &url, Some(&format!("Bearer {new}")))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "a failed reload keeps the old tokens");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_secured_client_sends_the_first_token() {
    let (first, second) = (token("first"), token("second"));
    let server_tokens = SecretSet::new(vec![Secret::new(&first)]);
    let server = start(
        echo_router().layer(require_mesh_token("test", server_tokens)),
        None,
    )
    .await;
    let uri: http::Uri = format!("http://{}/search", server.addr).parse().unwrap();
    let health: http::Uri = format!("http://{}/metrics", server.addr).parse().unwrap();

    let plain = ExecutorClient::new();
    match plain.post(uri.clone(), one_doc(), "r1").await {
        Err(CallError::Status { status: 401, body }) => assert_eq!(body.kind, "unauthorized"),
        other => panic!("expected 401, got {other:?}"),
    }

    let client_tokens = SecretSet::new(vec![Secret::new(&first), Secret::new(&second)]);
    let secured = ExecutorClient::secured(&ClientTlsArgs::default(), Some(client_tokens)).unwrap();
    assert!(secured.sends_token());
    let answer = secured.post(uri.clone(), one_doc(), "r2").await.unwrap();
    assert_eq!(answer.data[0].text.as_deref(), Some("search"));
    secured.get_ok(health).await.unwrap();

    let wrong_first = SecretSet::new(vec![Secret::new(&second), Secret::new(&first)]);
    let wrong = ExecutorClient::secured(&ClientTlsArgs::default(), Some(wrong_first)).unwrap();
    assert!(matches!(
        wrong.post(uri, one_doc(), "r3").await,
        Err(CallError::Status { status: 401, .. })
    ));
}

#[test]
fn mesh_args_read_the_environment_and_the_file() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        mesh: flowmesh_shared::server::MeshArgs,
    }
    // The token itself is not an option: it cannot be put on a command line.
    assert!(Cli::try_parse_from(["x", "--mesh-token", "abc"]).is_err());

    let dir = temp_dir("mesh-args");
    let file = dir.join("token");
    let value = token("file");
    write_private(&file, &value);
    let cli = Cli::try_parse_from(["x", "--mesh-token-file", file.to_str().unwrap()]).unwrap();
    let set = cli.mesh.tokens().unwrap().unwrap();
    assert!(set.accepts(value.as_bytes()));
    assert!(!set.accepts(b"other"));

    let missing = Cli::try_parse_from(["x", "--mesh-token-file", "/nonexistent/token"]).unwrap();
    let err = format!("{:#}", missing.mesh.tokens().unwrap_err());
    assert!(err.contains("/nonexistent/token"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

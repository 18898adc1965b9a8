//! TLS on a real server with certificates from CAs made by the test: the secured client gets
//! answers, plain HTTP and clients trusting another CA are refused, and mutual TLS requires a
//! client certificate from the configured CA.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use flowmesh_shared::client::{CallError, ExecutorClient};
use flowmesh_shared::secret::{Secret, SecretSet};
use flowmesh_shared::server::{require_mesh_token, ServerTlsArgs};
use flowmesh_shared::testing::pki::TestCa;
use flowmesh_shared::testing::temp_dir;
use flowmesh_shared::tls::ClientTlsArgs;
use support::{call, echo_router, one_doc, start};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, on disk.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let ca = TestCa::new(&format!("flowmesh test CA {name}"));
        let (server_cert, server_key) = ca
            .issue(&["localhost", "127.0.0.1"])
            .write(dir, &format!("{name}-server"));
        let (client_cert, client_key) =
            ca.issue(&["gateway"]).write(dir, &format!("{name}-client"));
        Self {
            dir: dir.to_owned(),
            ca: ca.write(dir, &format!("{name}-ca")),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    fn server(&self, client_ca: Option<&Path>) -> ServerTlsArgs {
        ServerTlsArgs {
            tls_cert: Some(self.server_cert.clone()),
            tls_key: Some(self.server_key.clone()),
            tls_client_ca: client_ca.map(Path::to_owned),
        }
    }

    fn client(&self, with_cert: Option<&Pki>) -> ClientTlsArgs {
        ClientTlsArgs {
            tls_ca: Some(self.ca.clone()),
            tls_client_cert: with_cert.map(|p| p.client_cert.clone()),
            tls_client_key: with_cert.map(|p| p.client_key.clone()),
        }
    }
}

fn is_tls_refusal(e: &CallError) -> bool {
    matches!(e, CallError::Transport(_))
}

#[tokio::test]
async fn https_with_the_ca_works_and_everything_else_is_refused() {
    let dir = temp_dir("tls-basic");
    let pki = Pki::new(&dir, "a");
    let other = Pki::new(&dir, "b");
    let acceptor = pki.server(None).acceptor().unwrap().unwrap();
    let token = format!("tok-{:x}", std::process::id());
    let app = echo_router().layer(require_mesh_token(
        "test",
        SecretSet::new(vec![Secret::new(&token)]),
    ));
    let server = start(app, Some(acceptor)).await;
    let port = server.addr.port();
    let tokens = SecretSet::new(vec![Secret::new(&token)]);

    // Trusting the CA: answers, for the IP SAN and for the DNS name.
    let client = ExecutorClient::secured(&pki.client(None), Some(tokens.clone())).unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let uri: http::Uri = format!("https://{host}:{port}/index").parse().unwrap();
        let answer = client.post(uri, one_doc(), "r").await.unwrap();
        assert_eq!(answer.data[0].text.as_deref(), Some("index"), "{host}");
        let peer: http::Uri = format!("https://{host}:{port}/peer").parse().unwrap();
        client.get_ok(peer).await.unwrap();
    }

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = call("GET", &format!("http://127.0.0.1:{port}/livez"), None).await;
    assert!(plain.is_err(), "plain HTTP on a TLS port must fail");

    // A client trusting another CA refuses the server's certificate.
    let stranger = ExecutorClient::secured(&other.client(None), Some(tokens.clone())).unwrap();
    let uri: http::Uri = format!("https://127.0.0.1:{port}/index").parse().unwrap();
    let err = stranger
        .post(uri.clone(), one_doc(), "r")
        .await
        .unwrap_err();
    assert!(is_tls_refusal(&err), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // A client without a CA says what it needs.
    let err = ExecutorClient::new()
        .post(uri, one_doc(), "r")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--tls-ca"), "{err}");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = temp_dir("tls-mutual");
    let pki = Pki::new(&dir, "a");
    let other = Pki::new(&dir, "b");
    let acceptor = pki.server(Some(&pki.ca)).acceptor().unwrap().unwrap();
    let server = start(echo_router(), Some(acceptor)).await;
    let uri: http::Uri = format!("https://127.0.0.1:{}/search", server.addr.port())
        .parse()
        .unwrap();

    let without = ExecutorClient::secured(&pki.client(None), None).unwrap();
    let err = without.post(uri.clone(), one_doc(), "r").await.unwrap_err();
    assert!(is_tls_refusal(&err), "no client certificate: {err:?}");

    let foreign = ExecutorClient::secured(&pki.client(Some(&other)), None).unwrap();
    let err = foreign.post(uri.clone(), one_doc(), "r").await.unwrap_err();
    assert!(is_tls_refusal(&err), "a certificate of another CA: {err:?}");

    let member = ExecutorClient::secured(&pki.client(Some(&pki)), None).unwrap();
    let answer = member.post(uri, one_doc(), "r").await.unwrap();
    assert_eq!(answer.data[0].text.as_deref(), Some("search"));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn a_stalled_handshake_does_not_hold_the_server() {
    use tokio::io::AsyncWriteExt as _;
    let dir = temp_dir("tls-stall");
    let pki = Pki::new(&dir, "a");
    let acceptor = pki.server(None).acceptor().unwrap().unwrap();
    let server = start(echo_router(), Some(acceptor)).await;
    // Connections that never start their handshake, then a real client: it is served.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"\x16").await.unwrap();
        idle.push(s);
    }
    let client = ExecutorClient::secured(&pki.client(None), None).unwrap();
    let uri: http::Uri = format!("https://127.0.0.1:{}/index", server.addr.port())
        .parse()
        .unwrap();
    client.post(uri, one_doc(), "r").await.unwrap();
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[test]
fn bad_tls_configurations_are_clear_errors() {
    let dir = temp_dir("tls-config");
    let pki = Pki::new(&dir, "a");
    let other = Pki::new(&dir, "b");
    let err = |args: ServerTlsArgs| format!("{:#}", args.server_config().unwrap_err());

    let missing = err(ServerTlsArgs {
        tls_cert: Some(dir.join("nope.crt")),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: None,
    });
    assert!(missing.contains("nope.crt"), "{missing}");

    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let none = err(ServerTlsArgs {
        tls_cert: Some(empty.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: None,
    });
    assert!(none.contains("no PEM certificate"), "{none}");

    let no_key = err(ServerTlsArgs {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(empty),
        tls_client_ca: None,
    });
    assert!(no_key.contains("no PEM private key"), "{no_key}");

    let mismatch = err(ServerTlsArgs {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(other.server_key.clone()),
        tls_client_ca: None,
    });
    assert!(mismatch.contains("does not match"), "{mismatch}");
    // The key's content is never in an error.
    let key_text = std::fs::read_to_string(&other.server_key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    assert!(!mismatch.contains(key_body));

    let half = err(ServerTlsArgs {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: None,
        tls_client_ca: None,
    });
    assert!(half.contains("--tls-key"), "{half}");

    assert!(ServerTlsArgs::default().acceptor().unwrap().is_none());
    assert!(ClientTlsArgs::default().client_config().unwrap().is_none());
    let cert_without_ca = ClientTlsArgs {
        tls_ca: None,
        tls_client_cert: Some(pki.client_cert.clone()),
        tls_client_key: Some(pki.client_key),
    };
    assert!(cert_without_ca.client_config().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

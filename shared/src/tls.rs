//! TLS with rustls and its `ring` provider (no OpenSSL, no aws-lc): the server side every service
//! takes ([`ServerTlsArgs`]: `--tls-cert`, `--tls-key`, and `--tls-client-ca` for mutual TLS) and
//! the client side of the gateway, `flowmesh up` and trace export ([`ClientTlsArgs`]: `--tls-ca`
//! to verify `https://` servers against a private CA, `--tls-client-cert` and
//! `--tls-client-key` to present a client certificate).
//!
//! Certificates and keys are PEM files. Servers are verified by webpki against the given CA only,
//! for the host name or IP address of the URL (a certificate's DNS or IP SANs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol every flowmesh server and client speaks.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider of every TLS configuration here: `ring`, chosen explicitly so that
/// nothing depends on a process-wide default.
///
/// rustls 0.23.48 deprecated `ring::default_provider` because ring has no post-quantum key
/// exchange (aws-lc-rs has). The project keeps ring on purpose: aws-lc needs cmake and a C
/// toolchain in every build image and the CI, and the mesh's traffic (a private network, keys
/// that rotate) does not call for post-quantum key exchange yet. Revisit when ring gains it.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS options. With `--tls-cert` and `--tls-key` the service serves HTTPS only.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain to serve HTTPS with (the server's certificate first); needs
    /// --tls-key.
    #[arg(long, env = "FLOWMESH_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLOWMESH_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): require mutual TLS, with a client certificate signed by one of
    /// them.
    #[arg(long, env = "FLOWMESH_TLS_CLIENT_CA", value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// Whether TLS is asked for (some option is set).
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_client_ca.is_some()
    }

    /// The server's rustls configuration, `None` without TLS options. Errors say which file is
    /// missing, holds no certificate or key, or whose key does not match the certificate.
    pub fn server_config(&self) -> anyhow::Result<Option<Arc<ServerConfig>>> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_none() => return Ok(None),
            (None, None) => bail!("--tls-client-ca needs --tls-cert and --tls-key"),
            (Some(_), None) => bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
            (Some(cert), Some(key)) => (cert, key),
        };
        let chain = read_certificates(cert)?;
        let key = read_private_key(key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?;
        let builder = match &self.tls_client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = read_roots(ca)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .with_context(|| {
                    format!("cannot verify client certificates with {}", ca.display())
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).with_context(|| {
            format!(
                "the key {} does not match the certificate {} (or is not usable)",
                self.tls_key.as_deref().unwrap_or(Path::new("")).display(),
                cert.display()
            )
        })?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// The acceptor that runs the server side of TLS handshakes, `None` without TLS options.
    pub fn acceptor(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        Ok(self.server_config()?.map(tokio_rustls::TlsAcceptor::from))
    }
}

/// A client's TLS options: the CA that `https://` servers are verified against, and the client
/// certificate presented to servers that require mutual TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) that https:// executors (and the trace collector) are verified
    /// against.
    #[arg(long, env = "FLOWMESH_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to servers that require mutual TLS; needs
    /// --tls-client-key.
    #[arg(long, env = "FLOWMESH_TLS_CLIENT_CERT", value_name = "PATH")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "FLOWMESH_TLS_CLIENT_KEY", value_name = "PATH")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// Whether any client TLS option is set.
    pub fn enabled(&self) -> bool {
        self.tls_ca.is_some() || self.tls_client_cert.is_some() || self.tls_client_key.is_some()
    }

    /// The client's rustls configuration, `None` without options.
    pub fn client_config(&self) -> anyhow::Result<Option<Arc<ClientConfig>>> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(ca) = &self.tls_ca else {
            bail!("--tls-client-cert and --tls-client-key need --tls-ca (the CA of the servers)");
        };
        client_config_with(
            ca,
            self.tls_client_cert.as_deref(),
            self.tls_client_key.as_deref(),
        )
        .map(Some)
    }
}

/// A client configuration trusting the CA(s) in `ca`, presenting `cert` with `key` when given.
pub fn client_config_with(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = read_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => bail!("--tls-client-cert needs --tls-client-key"),
        (None, Some(_)) => bail!("--tls-client-key needs --tls-client-cert"),
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert)?;
            let private = read_private_key(key)?;
            builder
                .with_client_auth_cert(chain, private)
                .with_context(|| {
                    format!(
                        "the key {} does not match the client certificate {} (or is not usable)",
                        key.display(),
                        cert.display()
                    )
                })?
        }
    };
    // No ALPN here: the connector ([`https_connector`]) sets `http/1.1` itself.
    Ok(Arc::new(config))
}

/// A connector for `http://` and `https://` URIs (HTTP/1.1, ALPN `http/1.1`) over `http`,
/// verifying servers with `config`; `None` trusts no server, so only `http://` can be reached.
pub fn https_connector(
    http: hyper_util::client::legacy::connect::HttpConnector,
    config: Option<Arc<ClientConfig>>,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = http;
    http.enforce_http(false);
    let mut config = config.map_or_else(untrusting_config, Arc::unwrap_or_clone);
    // hyper-rustls sets the ALPN protocols from the schemes it enables and panics on others.
    config.alpn_protocols.clear();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// A client configuration that trusts no server.
fn untrusting_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // The ring provider supports the default versions; rustls' own default is the same.
        .unwrap_or_else(|_| ClientConfig::builder())
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// The certificates of the PEM file `path`; none is an error.
pub fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the certificate file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a valid PEM file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The private key of the PEM file `path` (PKCS#8, PKCS#1 or SEC1). The error never includes
/// the file's content.
pub fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow::anyhow!("{} holds no PEM private key", path.display())
        }
        _ => anyhow::anyhow!("{} is not a valid PEM private key", path.display()),
    })
}

/// A root store of the CA certificate(s) in the PEM file `path`.
pub fn read_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{} holds a certificate that is not a CA", path.display()))?;
    }
    Ok(roots)
}

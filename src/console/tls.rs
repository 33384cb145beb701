//! HTTPS for `paysync console` on its own (`console.tls_cert_file` and
//! `console.tls_key_file`): rustls with ring, HTTP/1.1, each connection
//! served by the console's router with the peer's address known (the login
//! throttle counts per address).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Why the certificate or key cannot be used; names the file, never the key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("console.tls_cert_file {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("console.tls_key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the console's certificate and key do not go together: {0}")]
    Config(String),
}

/// The server's TLS configuration from PEM files.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certificate = |reason: String| TlsError::Certificate {
        path: cert_file.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|error| certificate(format!("cannot read it: {error}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| certificate(format!("not PEM certificates: {error}")))?;
    if chain.is_empty() {
        return Err(certificate("holds no certificate".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| TlsError::Key {
        path: key_file.display().to_string(),
        reason: format!("no readable PEM private key: {error}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TLS connections on `listener` and serves `router` on each until
/// the task is aborted (its connections with it).
pub async fn serve(listener: TcpListener, router: Router, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let (acceptor, router) = (acceptor.clone(), router.clone());
        connections.spawn(async move {
            // A client that fails the handshake is simply not served.
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(peer));
                    router.clone().oneshot(request)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

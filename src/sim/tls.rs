//! The simulator's TLS mode: the live service speaks only TLS 1.2/1.3 and offers HTTP/2 and
//! HTTP/1.1 by ALPN (`dmdata-api.md` §1), so the simulator can too, from a certificate chain
//! the caller gives it (a test makes a throwaway CA; nothing private ships with the project).
//!
//! Handshakes run in their own tasks, so one slow or refused client never holds up the
//! accept loop, and each one's outcome is recorded ([`Handshake`]): a client that refuses the
//! certificate shows up there, since it never gets as far as an HTTP request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{Inner, lock};

/// The simulator's certificate chain (leaf first) and the leaf's private key, both PEM.
#[derive(Clone)]
pub struct SimTls {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for SimTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTls").finish_non_exhaustive()
    }
}

/// One TLS handshake as the simulator saw it.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The ALPN protocol agreed (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// `TLSv1_3`, `TLSv1_2`.
    pub protocol: Option<String>,
    /// Why the handshake failed (e.g. the client refused the certificate); None when it worked.
    pub error: Option<String>,
}

/// A client that has not finished its handshake after this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of TLS: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, ring as the provider.
pub(super) fn acceptor(tls: &SimTls) -> std::io::Result<TlsAcceptor> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let chain = CertificateDer::pem_slice_iter(tls.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("simulator certificate chain", &e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| invalid("simulator private key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid("simulator TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("simulator certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepted TLS connections, for `axum::serve`.
pub(super) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` until `stop`, handshaking each connection in its own task.
    pub(super) fn spawn(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        inner: Arc<Inner>,
        stop: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::debug!(error = %e, "simulator: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, inner, tx) = (acceptor.clone(), inner.clone(), tx.clone());
                tokio::spawn(async move {
                    let outcome =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    let stream = match outcome {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return record(&inner, None, Some(e.to_string())),
                        Err(_) => return record(&inner, None, Some("handshake timed out".into())),
                    };
                    record(&inner, Some(stream.get_ref().1), None);
                    let _ = tx.send((stream, peer)).await;
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

fn record(inner: &Inner, session: Option<&rustls::ServerConnection>, error: Option<String>) {
    let handshake = Handshake {
        alpn: session
            .and_then(|s| s.alpn_protocol())
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        protocol: session
            .and_then(|s| s.protocol_version())
            .map(|v| format!("{v:?}")),
        error,
    };
    lock(&inner.handshakes).push(handshake);
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop has stopped (the simulator is stopping): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

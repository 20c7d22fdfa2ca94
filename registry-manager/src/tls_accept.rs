//! The manager's TLS front door: every accepted connection is sorted by its first byte. A TLS
//! handshake is completed here (mutual TLS: the client's certificate must be signed by the
//! CA), so that a refused certificate (expired, from another CA, none) is logged with the
//! reason and the peer's address; the connection then goes to the gRPC server. Anything else
//! is a plaintext client: it goes to a server that answers every call `UNAUTHENTICATED`,
//! saying that TLS is required and how to give a certificate.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::conn_limit::Counted;
use crate::revocation::{OpenConnections, Revocable};

/// Connections accepted at once before the accept loop waits for the servers.
const BACKLOG: usize = 256;
/// A client that sends nothing, or does not finish its handshake, within this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// What every call over plaintext is answered, on a manager that serves TLS.
pub const PLAINTEXT_REFUSED: &str = "this registry manager serves TLS only (mutual TLS): plaintext is refused. Connect with a certificate signed by the fleet's CA: --ca, --cert and --key (or FLEET_REGISTRY_CA, FLEET_REGISTRY_CERT, FLEET_REGISTRY_KEY) on the command lines, `tls: { cert, key, ca }` in an agent's configuration";

/// The two streams of connections a TLS listener sorts its clients into.
pub struct Sorted {
    /// Connections whose TLS handshake succeeded, each followed by its client's certificate.
    pub tls: ReceiverStream<std::io::Result<Revocable<TlsStream<Counted<TcpStream>>>>>,
    /// Plaintext connections (to be refused with [`PLAINTEXT_REFUSED`]), each holding its
    /// slot for as long as its client keeps it open.
    pub plain: ReceiverStream<std::io::Result<Counted<TcpStream>>>,
}

impl std::fmt::Debug for Sorted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sorted").finish_non_exhaustive()
    }
}

/// Accepts on `listener` until `cancel`, sorting connections by their first byte. Each
/// handshake takes the newest of `configs` (the revocation list may change); each TLS
/// connection is followed in `open` by the serial of its client's certificate.
pub fn sort(
    listener: TcpListener,
    configs: watch::Receiver<Arc<rustls::ServerConfig>>,
    open: Arc<OpenConnections>,
    slots: Arc<crate::conn_limit::Slots>,
    cancel: CancellationToken,
) -> (Sorted, tokio::task::JoinHandle<()>) {
    let (tls_tx, tls_rx) = mpsc::channel(BACKLOG);
    let (plain_tx, plain_rx) = mpsc::channel(BACKLOG);
    let task = crate::conn_limit::accept_each(
        listener,
        slots,
        cancel,
        move |stream, peer, slot| {
            let acceptor = TlsAcceptor::from(Arc::clone(&configs.borrow()));
            let (tls_tx, plain_tx, open) = (tls_tx.clone(), plain_tx.clone(), Arc::clone(&open));
            async move {
                // Closed at once (a TCP probe), an error, or silence: nothing to serve.
                let Some(first) = crate::conn_limit::first_byte(&stream, HANDSHAKE_TIMEOUT).await
                else {
                    return;
                };
                if first != TLS_HANDSHAKE {
                    tracing::warn!(%peer, "refused a plaintext client: this manager serves TLS only");
                    let _ = plain_tx.send(Ok(Counted::new(stream, slot))).await;
                    return;
                }
                let stream = Counted::new(stream, slot);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let serial = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| proto::tls::cert_facts(cert).ok())
                            .map(|facts| facts.serial)
                            .unwrap_or_default();
                        let _ = tls_tx.send(Ok(open.track(serial, tls))).await;
                    }
                    Ok(Err(e)) => tracing::warn!(
                        %peer,
                        error = %proto::tls::error_chain(&e),
                        "refused a TLS connection (the client's certificate must be signed by this fleet's CA, valid now and not revoked)"
                    ),
                    Err(_) => {
                        tracing::warn!(%peer, "refused a TLS connection: no handshake within 10s")
                    }
                }
            }
        },
    );
    (
        Sorted {
            tls: ReceiverStream::new(tls_rx),
            plain: ReceiverStream::new(plain_rx),
        },
        task,
    )
}

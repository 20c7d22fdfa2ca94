//! The CA's list of revoked certificates (`tls.crl`, written by `registry-manager certs
//! revoke`). Read at start: a list that cannot be used stops the manager with the reason. Then
//! the file is looked at every [`CHECK_EVERY`] and read again when it changed; the TLS front
//! door takes the newest server configuration for every new handshake, and the member's own
//! dialing of other members ([`proto::crl::ClientTls`]) checks their certificates against the
//! newest list. A list that changed but cannot be used is reported and the one read before
//! stays in force.
//!
//! Every TLS connection is followed by the serial of the certificate its client presented
//! ([`OpenConnections`]); when a list read again names it, the connection is cut
//! ([`Revocable`]): its next read or write fails and the server closes it.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use proto::crl::ClientTls;
use proto::tls::{TlsError, TlsMaterial};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the list's file is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The serials of the certificates a list names.
type Serials = proto::crl::Serials;

/// The open TLS connections, each with the serial of the certificate its client presented, so
/// that those of a certificate revoked later can be cut.
#[derive(Debug, Default)]
pub struct OpenConnections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Followed>>,
}

/// One open connection: its client certificate's serial, and how to cut it.
type Followed = (Vec<u8>, Arc<Cut>);

/// Set when a connection is to be cut; wakes the task serving it.
#[derive(Debug, Default)]
struct Cut {
    cut: AtomicBool,
    waker: AtomicWaker,
}

impl Cut {
    /// Whether the connection is cut; if not, the task polling is woken when it is.
    fn poll_cut(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.cut.load(Ordering::Acquire)
    }
}

impl OpenConnections {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Followed>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows `io`, a connection whose client presented a certificate of serial `serial`
    /// ([`proto::tls::serial_bytes`]), until it is dropped.
    pub fn track<T>(self: &Arc<Self>, serial: Vec<u8>, io: T) -> Revocable<T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = Arc::new(Cut::default());
        self.entries().insert(id, (serial, Arc::clone(&cut)));
        Revocable {
            io,
            cut,
            id,
            open: Arc::clone(self),
        }
    }

    /// Cuts every open connection whose certificate `revoked` names; how many.
    fn cut(&self, revoked: &Serials) -> usize {
        let entries = self.entries();
        let mut n = 0;
        for (serial, cut) in entries.values() {
            if revoked.contains(serial) && !cut.cut.swap(true, Ordering::AcqRel) {
                cut.waker.wake();
                n += 1;
            }
        }
        n
    }

    /// Connections followed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

/// A connection that fails its next read or write once its client's certificate is revoked.
#[derive(Debug)]
pub struct Revocable<T> {
    io: T,
    cut: Arc<Cut>,
    id: u64,
    open: Arc<OpenConnections>,
}

/// What the gRPC server learns of the connection (its client's certificate) is the inner one's.
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Revocable<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T> Drop for Revocable<T> {
    fn drop(&mut self) {
        self.open.entries().remove(&self.id);
    }
}

fn revoked() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the client's certificate was revoked (tls.crl)",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Revocable<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut.poll_cut(cx) {
            return Poll::Ready(Err(revoked()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Revocable<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cut.poll_cut(cx) {
            return Poll::Ready(Err(revoked()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cut.poll_cut(cx) {
            return Poll::Ready(Err(revoked()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The newest server configuration, for each new TLS handshake.
pub type Configs = watch::Receiver<Arc<rustls::ServerConfig>>;

/// A member's TLS: the server configurations new handshakes take, its client side toward the
/// other members, and the task following the list's file (when there is one).
pub struct MemberTls {
    /// The newest server configuration.
    pub configs: Configs,
    /// How this member dials the other members.
    pub client: ClientTls,
    /// Follows the list's file until the manager stops.
    pub follow: Option<tokio::task::JoinHandle<()>>,
}

/// `material`'s TLS, refusing the certificates the list `crl` names (when given), on both
/// sides, and the task that follows the list's file until `cancel`. When the list changes,
/// the connections of `open` whose certificates it names are cut.
pub fn member_tls(
    material: &TlsMaterial,
    crl: Option<&Path>,
    open: Arc<OpenConnections>,
    cancel: CancellationToken,
) -> Result<MemberTls, TlsError> {
    let Some(path) = crl else {
        let (_, configs) = watch::channel(material.server_config()?);
        return Ok(MemberTls {
            configs,
            client: material.client_tls(None)?,
            follow: None,
        });
    };
    let (pem, read) = proto::crl::read(path)?;
    let config = material.server_config_revoking(Some((path, &pem)))?;
    let client = material.client_tls(Some((path, &pem)))?;
    let serials = proto::crl::revoked_serials(&pem);
    tracing::info!(path = %path.display(), revoked = serials.len(), "read the revocation list: certificates it names are refused");
    let (tx, configs) = watch::channel(config);
    let (material, to_client) = (material.clone(), client.clone());
    let follow = tokio::spawn(proto::crl::follow_file(
        path.to_path_buf(),
        read,
        CHECK_EVERY,
        cancel,
        move |path, pem| match material.server_config_revoking(Some((path, &pem))) {
            Ok(config) => {
                tx.send_replace(config);
                let serials = match to_client.revoke_from(path, &pem) {
                    Ok(s) => s,
                    Err(e) => {
                        // Not expected: the same list was just found usable.
                        tracing::warn!(error = %e, "the revocation list cannot be used to check other members");
                        proto::crl::revoked_serials(&pem)
                    }
                };
                let cut = open.cut(&serials);
                tracing::info!(path = %path.display(), revoked = serials.len(), cut, "read the changed revocation list: new connections are checked against it, and the open connections of the certificates it names are cut");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the revocation list changed but cannot be used; the list read before stays in force");
            }
        },
    ));
    Ok(MemberTls {
        configs,
        client,
        follow: Some(follow),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::crl::revoked_serials;
    use std::collections::BTreeSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_of_a_revoked_certificate_is_cut_and_the_others_are_not() {
        let open = Arc::new(OpenConnections::default());
        let (revoked_end, mut revoked_peer) = tokio::io::duplex(1024);
        let (kept_end, mut kept_peer) = tokio::io::duplex(1024);
        let mut revoked_conn = open.track(vec![7], revoked_end);
        let mut kept_conn = open.track(vec![8], kept_end);
        assert_eq!(open.len(), 2);

        // A read waiting on the connection is woken by the cut, and fails.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let r = revoked_conn.read(&mut buf).await;
            (r, revoked_conn)
        });
        tokio::task::yield_now().await;
        assert_eq!(open.cut(&BTreeSet::from([vec![7]])), 1);
        let (r, mut revoked_conn) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the waiting read is woken")
            .unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
        assert!(
            revoked_conn.write_all(b"x").await.is_err(),
            "writes fail too"
        );
        assert_eq!(open.cut(&BTreeSet::from([vec![7]])), 0, "cut once");

        // The other connection carries on both ways.
        kept_conn.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        kept_peer.read_exact(&mut buf).await.unwrap();
        kept_peer.write_all(b"pong").await.unwrap();
        kept_conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // A connection dropped is no longer followed.
        drop(revoked_conn);
        revoked_peer.shutdown().await.unwrap();
        assert_eq!(open.len(), 1);
        drop(kept_conn);
        assert_eq!(open.len(), 0);
    }

    #[test]
    fn the_serials_a_list_names_are_read_from_it() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(dir.path()).unwrap();
        for n in ["a", "b"] {
            crate::certs::issue_into(dir.path(), &crate::certs::LeafSpec::new(n, vec![], vec![]))
                .unwrap();
        }
        crate::certs::revoke_into(dir.path(), &["b".into()]).unwrap();
        let pem = std::fs::read(dir.path().join(crate::certs::CRL_FILE)).unwrap();
        let serial = |n: &str| {
            use rustls::pki_types::pem::PemObject;
            let crt = std::fs::read(dir.path().join(format!("{n}.crt"))).unwrap();
            let der = rustls::pki_types::CertificateDer::from_pem_slice(&crt).unwrap();
            proto::tls::cert_facts(&der).unwrap().serial
        };
        assert_eq!(revoked_serials(&pem), BTreeSet::from([serial("b")]));
        assert!(revoked_serials(b"junk").is_empty());
    }
}

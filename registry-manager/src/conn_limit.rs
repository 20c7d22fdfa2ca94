//! What one client may hold, and what a connection must do to be served: at most
//! [`crate::Tuning::max_connections_per_client`] connections from one address (loopback is not
//! counted: local tools and tests), and the first bytes within [`FIRST_BYTES_TIMEOUT`] (a
//! connection that never sends the HTTP/2 preface or a TLS hello is closed instead of held for
//! ever). The plaintext front door lives here; the TLS one (`tls_accept`) uses the same slots.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// A client that sends nothing within this long after connecting is dropped.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted at once before the accept loop waits for the server.
const BACKLOG: usize = 256;

/// Connections held per client address.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
    /// When the last refusal was logged (refusals are logged at most once a second).
    last_logged: Mutex<Option<std::time::Instant>>,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    /// At most `max` connections per address (0: no limit).
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            held: Mutex::new(HashMap::new()),
            last_logged: Mutex::new(None),
        })
    }

    /// A place for a connection from `ip`, or `None` when that address holds its share
    /// already. Loopback addresses are not counted (`Some(None)`).
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Option<Slot>> {
        if self.max == 0 || ip.is_loopback() {
            return Some(None);
        }
        let mut held = self.held.lock().expect("slots lock");
        let n = held.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(Slot {
            slots: Arc::clone(self),
            ip,
        }))
    }

    /// Connections held by `ip` now.
    pub fn held(&self, ip: IpAddr) -> usize {
        self.held
            .lock()
            .expect("slots lock")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    /// Logs a refused connection, at most once a second.
    pub fn log_refusal(&self, peer: std::net::SocketAddr) {
        let mut last = self.last_logged.lock().expect("slots lock");
        let now = std::time::Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            tracing::warn!(
                %peer,
                max = self.max,
                "refused a connection: this client address holds the most connections allowed per client; an agent needs one (check for a client that leaks connections)"
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("slots lock");
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A connection holding its slot for as long as it lives.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    _slot: Option<Slot>,
}

impl<S> Counted<S> {
    /// Wraps `inner`, keeping `slot` until it is dropped.
    pub fn new(inner: S, slot: Option<Slot>) -> Self {
        Counted { inner, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Waits up to `within` for the first byte of `stream`; `None` when the client closed, failed
/// or stayed silent.
pub async fn first_byte(stream: &TcpStream, within: Duration) -> Option<u8> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(within, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0]),
        _ => None,
    }
}

/// The accept loop both front doors share: accepts on `listener` until `cancel`; refuses an
/// address past its share of connections (logged, at most once a second); out of descriptors,
/// pauses accepting for 100 ms and says so instead of spinning; hands every other connection,
/// with its slot, to `serve` on a task of its own (so a slow client never holds up the loop).
pub fn accept_each<F, Fut>(
    listener: TcpListener,
    slots: Arc<Slots>,
    cancel: CancellationToken,
    serve: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(TcpStream, std::net::SocketAddr, Option<Slot>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection (out of file descriptors?); pausing accepts for 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = slots.take(peer.ip()) else {
                slots.log_refusal(peer);
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, peer, slot));
        }
    })
}

/// The plaintext front door: [`accept_each`], dropping connections silent for `silence` (in
/// the manager [`FIRST_BYTES_TIMEOUT`]) and handing the rest to the gRPC server.
pub fn accept_plain(
    listener: TcpListener,
    slots: Arc<Slots>,
    silence: Duration,
    cancel: CancellationToken,
) -> (
    ReceiverStream<std::io::Result<Counted<TcpStream>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let task = accept_each(listener, slots, cancel, move |stream, peer, slot| {
        let tx = tx.clone();
        async move {
            if first_byte(&stream, silence).await.is_none() {
                tracing::debug!(%peer, ?silence, "closed a connection that sent nothing");
                return;
            }
            let _ = tx.send(Ok(Counted::new(stream, slot))).await;
        }
    });
    (ReceiverStream::new(rx), task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_places_back_on_drop() {
        let slots = Slots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.take(a).unwrap();
        let second = slots.take(a).unwrap();
        assert!(
            slots.take(a).is_none(),
            "a third connection from one address"
        );
        assert!(slots.take(b).is_some(), "another address is not affected");
        assert_eq!(slots.held(a), 2);
        drop(first);
        assert_eq!(slots.held(a), 1);
        assert!(slots.take(a).is_some());
        drop(second);
        // Loopback is never counted; 0 means no limit.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(matches!(slots.take(lo), Some(None)));
        }
        let unlimited = Slots::new(0);
        for _ in 0..10 {
            assert!(matches!(unlimited.take(a), Some(None)));
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_a_talking_one_is_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let silence = Duration::from_millis(300);
        let (mut incoming, _task) = accept_plain(listener, Slots::new(8), silence, cancel.clone());
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut talking = TcpStream::connect(addr).await.unwrap();
        talking.write_all(b"PRI").await.unwrap();
        use futures::StreamExt;
        let served = incoming.next().await.unwrap().unwrap();
        assert_eq!(
            served.inner.peer_addr().unwrap(),
            talking.local_addr().unwrap()
        );
        // The silent one is closed once `silence` has passed (read returns end of stream).
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("closed, not hanging")
            .unwrap_or(0);
        assert_eq!(n, 0);
        cancel.cancel();
    }
}

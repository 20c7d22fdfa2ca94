//! What one client may hold, what the port holds in all, and what a connection must do to be
//! served:
//! - at most [`crate::Tuning::max_connections_per_client`] connections from one address
//!   (loopback is not counted: local tools and tests);
//! - at most [`crate::Tuning::max_connections`] connections in all, loopback included, so that
//!   a storm of connections (agents reconnecting at once, or a hostile client) never takes the
//!   descriptors the store needs: a store write that cannot open a file stops the manager. The
//!   default is the process's limit of open descriptors, raised to its hard limit at start
//!   ([`raise_descriptor_limit`]), less [`RESERVED_DESCRIPTORS`]. A connection past it is
//!   closed at once, so its client tries another member instead of waiting;
//! - the first bytes within [`FIRST_BYTES_TIMEOUT`] (a connection that never sends the HTTP/2
//!   preface or a TLS hello is closed instead of held for ever).
//!
//! The plaintext front door lives here; the TLS one (`tls_accept`) uses the same slots.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// A client that sends nothing within this long after connecting is dropped.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted at once before the accept loop waits for the server.
const BACKLOG: usize = 256;

/// Descriptors never given to client connections (a quarter of a limit smaller than four times
/// this): the store's files, the connections to other members, the HTTP port, the event hook.
pub const RESERVED_DESCRIPTORS: u64 = 1024;

/// Raises this process's soft limit of open descriptors as far as its hard limit allows (a
/// systemd service or a shell often starts with a soft limit of 1,024); the soft limit then in
/// force.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// This process's soft limit of open descriptors.
pub fn descriptor_limit() -> std::io::Result<u64> {
    rlimit::Resource::NOFILE.get().map(|(soft, _)| soft)
}

/// The most client connections a process allowed `limit` open descriptors holds, keeping
/// [`RESERVED_DESCRIPTORS`] (or a quarter of a small limit) for everything else.
pub fn connections_for(limit: u64) -> usize {
    let reserve = RESERVED_DESCRIPTORS.min(limit / 4);
    usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX)
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds its share of connections already.
    Client,
    /// The port holds the most connections in all.
    Full,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Client => "per_client",
            Refused::Full => "descriptors",
        }
    }
}

/// What the slots report on the HTTP port's `/metrics`.
#[derive(Debug, Clone)]
pub struct SlotGauges {
    /// Client connections held now.
    pub open: IntGauge,
    /// The most held in all.
    pub max: IntGauge,
    /// Connections refused, by reason.
    pub refused: IntCounterVec,
}

impl SlotGauges {
    /// Gauges registered nowhere (tests).
    pub fn unregistered() -> SlotGauges {
        SlotGauges {
            open: IntGauge::new("open", "open").expect("valid"),
            max: IntGauge::new("max", "max").expect("valid"),
            refused: IntCounterVec::new(prometheus::Opts::new("refused", "refused"), &["reason"])
                .expect("valid"),
        }
    }
}

/// Connections held per client address and in all.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    max_total: usize,
    held: Mutex<Held>,
    gauges: SlotGauges,
    /// When the last refusal of each kind was logged (at most once a second each).
    last_logged: Mutex<[Option<std::time::Instant>; 2]>,
}

#[derive(Debug, Default)]
struct Held {
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    /// The address it counts against (none: loopback, or no limit per address).
    ip: Option<IpAddr>,
}

impl Slots {
    /// At most `max` connections per address (0: no limit), `max_total` in all (0: no limit),
    /// reported on `gauges`.
    pub fn new(max: usize, max_total: usize, gauges: SlotGauges) -> Arc<Slots> {
        gauges.max.set(i64::try_from(max_total).unwrap_or(i64::MAX));
        Arc::new(Slots {
            max,
            max_total,
            held: Mutex::new(Held::default()),
            gauges,
            last_logged: Mutex::new([None, None]),
        })
    }

    /// A place for a connection from `ip`, or why there is none. Loopback addresses are
    /// counted in all, not per address.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut held = self.held.lock().expect("slots lock");
        if self.max_total != 0 && held.total >= self.max_total {
            return Err(Refused::Full);
        }
        let per_ip = self.max != 0 && !ip.is_loopback();
        if per_ip {
            let n = held.by_ip.entry(ip).or_insert(0);
            if *n >= self.max {
                return Err(Refused::Client);
            }
            *n += 1;
        }
        held.total += 1;
        self.gauges
            .open
            .set(i64::try_from(held.total).unwrap_or(i64::MAX));
        Ok(Slot {
            slots: Arc::clone(self),
            ip: per_ip.then_some(ip),
        })
    }

    /// Connections held by `ip` now.
    pub fn held(&self, ip: IpAddr) -> usize {
        self.held
            .lock()
            .expect("slots lock")
            .by_ip
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    /// Connections held now, in all.
    pub fn total(&self) -> usize {
        self.held.lock().expect("slots lock").total
    }

    /// Counts a refused connection and logs it, at most once a second for each reason.
    pub fn refused(&self, peer: std::net::SocketAddr, why: Refused) {
        self.gauges.refused.with_label_values(&[why.label()]).inc();
        let mut last = self.last_logged.lock().expect("slots lock");
        let last = &mut last[why as usize];
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
        match why {
            Refused::Client => tracing::warn!(
                %peer,
                max = self.max,
                "refused a connection: this client address holds the most connections allowed per client; an agent needs one (check for a client that leaks connections)"
            ),
            Refused::Full => tracing::warn!(
                %peer,
                max = self.max_total,
                "refused a connection: this manager holds the most connections its limit of open descriptors allows (the rest is kept for its store and the other members); the client will try another member. Raise LimitNOFILE (ulimit -n), or spread the agents over more members"
            ),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("slots lock");
        held.total = held.total.saturating_sub(1);
        self.slots
            .gauges
            .open
            .set(i64::try_from(held.total).unwrap_or(i64::MAX));
        if let Some(ip) = self.ip {
            if let Some(n) = held.by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    held.by_ip.remove(&ip);
                }
            }
        }
    }
}

/// A connection holding its slot for as long as it lives.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    _slot: Slot,
}

impl<S> Counted<S> {
    /// Wraps `inner`, keeping `slot` until it is dropped.
    pub fn new(inner: S, slot: Slot) -> Self {
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

/// The accept loop both front doors share: accepts on `listener` until `cancel`; closes at
/// once a connection from an address past its share, or past the port's whole share (counted,
/// and logged at most once a second); out of descriptors all the same, pauses accepting for
/// 100 ms and says so instead of spinning; hands every other connection, with its slot, to
/// `serve` on a task of its own (so a slow client never holds up the loop).
pub fn accept_each<F, Fut>(
    listener: TcpListener,
    slots: Arc<Slots>,
    cancel: CancellationToken,
    serve: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(TcpStream, std::net::SocketAddr, Slot) -> Fut + Send + 'static,
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
            let slot = match slots.take(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    slots.refused(peer, why);
                    continue;
                }
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
        let slots = Slots::new(2, 0, SlotGauges::unregistered());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.take(a).unwrap();
        let second = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Refused::Client);
        assert!(slots.take(b).is_ok(), "another address is not affected");
        assert_eq!(slots.held(a), 2);
        drop(first);
        assert_eq!(slots.held(a), 1);
        assert!(slots.take(a).is_ok());
        drop(second);
        // Loopback is never counted per address; 0 means no limit.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let kept: Vec<Slot> = (0..10).map(|_| slots.take(lo).unwrap()).collect();
        assert_eq!(slots.held(lo), 0);
        drop(kept);
        let unlimited = Slots::new(0, 0, SlotGauges::unregistered());
        let kept: Vec<Slot> = (0..10).map(|_| unlimited.take(a).unwrap()).collect();
        assert_eq!(unlimited.total(), 10);
        drop(kept);
        assert_eq!(unlimited.total(), 0);
    }

    #[test]
    fn the_port_holds_at_most_its_whole_share_loopback_included_and_reports_it() {
        let gauges = SlotGauges::unregistered();
        let slots = Slots::new(2, 3, gauges.clone());
        assert_eq!(gauges.max.get(), 3);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = slots.take(lo).unwrap();
        let _second = slots.take(lo).unwrap();
        let _third = slots.take(a).unwrap();
        assert_eq!(gauges.open.get(), 3);
        for ip in [lo, a, "10.0.0.2".parse().unwrap()] {
            assert_eq!(slots.take(ip).unwrap_err(), Refused::Full, "{ip}");
        }
        slots.refused("10.0.0.2:1".parse().unwrap(), Refused::Full);
        slots.refused("10.0.0.2:1".parse().unwrap(), Refused::Full);
        assert_eq!(gauges.refused.with_label_values(&["descriptors"]).get(), 2);
        // A place given back is taken again.
        drop(first);
        assert_eq!(gauges.open.get(), 2);
        assert!(slots.take(a).is_ok());
    }

    #[test]
    fn connections_keep_a_reserve_of_descriptors() {
        assert_eq!(connections_for(65_536), 65_536 - 1024);
        assert_eq!(connections_for(20_000), 20_000 - 1024);
        // A small limit keeps a quarter.
        assert_eq!(connections_for(1_024), 768);
        assert_eq!(connections_for(0), 0);
        let raised = raise_descriptor_limit().unwrap();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(raised, soft);
        assert!(soft == hard || hard == rlimit::INFINITY, "{soft} {hard}");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_a_talking_one_is_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let silence = Duration::from_millis(300);
        let (mut incoming, _task) = accept_plain(
            listener,
            Slots::new(8, 0, SlotGauges::unregistered()),
            silence,
            cancel.clone(),
        );
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

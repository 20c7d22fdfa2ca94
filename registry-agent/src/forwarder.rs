//! Transparent forwarding (the command-line contract (docs/manager.md, docs/agent.md) `forward`): a local TCP port that always leads to the
//! chosen manager of its type.
//!
//! Each accepted client connection is connected to the chosen manager; when that connect is
//! refused or times out, the manager is held down at once (passive detection, the performance targets (BENCHMARKS.md)) and the
//! next manager of the route is tried within the same accept, so the client sees no failure
//! while any candidate is reachable (as a last resort even the managers this agent holds down
//! are tried). Bytes are then copied both ways with back-pressure (a
//! read waits for the previous write). The manager closing or resetting its side closes the
//! client's; the client closing its side half-closes the manager's, which then ends the
//! connection by closing in turn.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use topology::{HostName, PackageType};

use crate::health_view::HealthView;
use crate::metrics::{self, AgentMetrics};
use crate::route_book::{RouteBook, Target};

const BUFFER_BYTES: usize = 32 * 1024;

/// One forwarding port.
#[derive(Debug)]
pub struct Forwarder {
    /// The manager type it leads to.
    pub package_type: PackageType,
    /// Where the managers are.
    pub book: watch::Receiver<Arc<RouteBook>>,
    /// Where refused connects are reported.
    pub health: Arc<HealthView>,
    /// Connect timeout per manager tried.
    pub connect_timeout: Duration,
    /// Where accepted connections are counted, by result.
    pub metrics: Arc<AgentMetrics>,
}

#[derive(Debug)]
enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Copies `r` to `w` until end of stream, then half-closes `w`.
async fn pump(mut r: OwnedReadHalf, mut w: OwnedWriteHalf) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.map_err(PumpError::Read)?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await.map_err(PumpError::Write)?;
        total += n as u64;
    }
}

impl Forwarder {
    /// Connects to the first reachable manager of the route, holding down those that refuse.
    pub async fn connect_upstream(&self) -> Option<(TcpStream, Target)> {
        self.connect_upstream_skipping(&[]).await
    }

    /// [`Forwarder::connect_upstream`], never trying the hosts in `skip` (those that already
    /// failed this client, before the route book caught up with their failure).
    async fn connect_upstream_skipping(&self, skip: &[HostName]) -> Option<(TcpStream, Target)> {
        let route = self
            .book
            .borrow()
            .get(self.package_type.as_str())
            .cloned()?;
        for target in route.order.iter().filter(|t| !skip.contains(&t.host)) {
            let attempt = tokio::time::timeout(
                self.connect_timeout,
                TcpStream::connect(target.endpoint.as_str()),
            )
            .await;
            match attempt {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, target.clone()));
                }
                Ok(Err(e)) => {
                    tracing::warn!(package_type = %self.package_type, host = %target.host, endpoint = %target.endpoint, error = %e, "forward: connect failed, trying the next manager");
                    self.health
                        .mark_down(&self.package_type, &target.host, &target.endpoint);
                }
                Err(_) => {
                    tracing::warn!(package_type = %self.package_type, host = %target.host, endpoint = %target.endpoint, "forward: connect timed out, trying the next manager");
                    self.health
                        .mark_down(&self.package_type, &target.host, &target.endpoint);
                }
            }
        }
        // Last resort: managers the registry has running but this agent holds down. A
        // successful connect counts as one passing probe toward `rise`.
        for target in route.held_down.iter().filter(|t| !skip.contains(&t.host)) {
            let attempt = tokio::time::timeout(
                self.connect_timeout,
                TcpStream::connect(target.endpoint.as_str()),
            )
            .await;
            if let Ok(Ok(stream)) = attempt {
                let _ = stream.set_nodelay(true);
                self.health
                    .record(&self.package_type, &target.host, &target.endpoint, true);
                return Some((stream, target.clone()));
            }
        }
        None
    }

    /// Connects upstream and waits for the first sign of life: the manager's first byte, or the
    /// client's. A manager that closes or resets before either side has sent a single byte
    /// (it died just after accepting) is held down and the next one is tried, so the client
    /// does not see the failure. Once the client has spoken, nothing is retried: replaying a
    /// request could run it twice.
    async fn connect_live(&self, client: &TcpStream) -> Option<(TcpStream, Target)> {
        let mut failed: Vec<HostName> = Vec::new();
        loop {
            let (upstream, target) = self.connect_upstream_skipping(&failed).await?;
            let (mut up_byte, mut client_byte) = ([0u8; 1], [0u8; 1]);
            // `peek`, not `readable()`: readiness may be reported spuriously.
            let died = tokio::select! {
                r = upstream.peek(&mut up_byte) => matches!(r, Ok(0) | Err(_)),
                _ = client.peek(&mut client_byte) => false,
            };
            if !died {
                return Some((upstream, target));
            }
            tracing::warn!(package_type = %self.package_type, host = %target.host, endpoint = %target.endpoint, "forward: manager closed the connection before any byte; trying the next manager");
            self.health
                .mark_down(&self.package_type, &target.host, &target.endpoint);
            failed.push(target.host);
        }
    }

    /// Serves one client connection to its end.
    pub async fn serve_client(&self, client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let chosen = self
            .book
            .borrow()
            .chosen(self.package_type.as_str())
            .cloned();
        let Some((upstream, target)) = self.connect_live(&client).await else {
            tracing::warn!(package_type = %self.package_type, %peer, "forward: no reachable manager; closing the client connection");
            self.metrics
                .forwarded(&self.package_type, metrics::FORWARD_NO_MANAGER);
            return;
        };
        let result = if chosen.as_ref() == Some(&target.host) {
            metrics::FORWARD_OK
        } else {
            metrics::FORWARD_FAILOVER
        };
        self.metrics.forwarded(&self.package_type, result);
        tracing::debug!(package_type = %self.package_type, %peer, host = %target.host, "forward: connected");
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        let to_upstream = pump(cr, uw);
        let to_client = pump(ur, cw);
        tokio::pin!(to_upstream, to_client);
        let mut client_done = false;
        let upstream_failure = loop {
            tokio::select! {
                r = &mut to_upstream, if !client_done => match r {
                    Ok(_) => client_done = true,
                    Err(PumpError::Write(e)) => break is_reset(&e),
                    Err(PumpError::Read(_)) => break false,
                },
                r = &mut to_client => break matches!(r, Err(PumpError::Read(e)) if is_reset(&e)),
            }
        };
        if upstream_failure {
            self.health
                .mark_down(&self.package_type, &target.host, &target.endpoint);
        }
    }

    /// Accepts clients until `shutdown`; open connections are cut at shutdown.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        let this = this.clone();
                        conns.spawn(async move { this.serve_client(client, peer).await });
                    }
                    Err(e) => {
                        tracing::warn!(package_type = %this.package_type, error = %e, "forward: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        conns.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthConfig;
    use crate::route_book::TypeRoute;
    use std::collections::BTreeMap;
    use tokio::time::timeout;

    const T: Duration = Duration::from_secs(10);

    /// An in-process TCP echo server that can be killed (listener and connections dropped).
    struct Echo {
        addr: SocketAddr,
        tasks: JoinSet<()>,
    }

    impl Echo {
        async fn start() -> Echo {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut tasks = JoinSet::new();
            tasks.spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    conns.spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            Echo { addr, tasks }
        }
        async fn kill(mut self) {
            self.tasks.shutdown().await;
        }
    }

    fn book(targets: &[(&str, SocketAddr)]) -> RouteBook {
        let t = PackageType::new("ccm").unwrap();
        let order: Vec<Target> = targets
            .iter()
            .map(|(h, a)| Target {
                host: HostName::new(*h).unwrap(),
                endpoint: a.to_string(),
            })
            .collect();
        let route = TypeRoute {
            package_type: t.clone(),
            chosen: order.first().map(|x| x.host.clone()),
            endpoint: order.first().map(|x| x.endpoint.clone()),
            route: order.iter().map(|x| x.host.clone()).collect(),
            order,
            held_down: vec![],
            reason: "test".into(),
            changes: 0,
            full: Default::default(),
            brief: Default::default(),
        };
        RouteBook {
            routes: BTreeMap::from([(t, Arc::new(route))]),
            ..Default::default()
        }
    }

    async fn start_forwarder(
        b: RouteBook,
    ) -> (
        SocketAddr,
        Arc<HealthView>,
        watch::Sender<Arc<RouteBook>>,
        CancellationToken,
    ) {
        let (tx, rx) = watch::channel(Arc::new(b));
        let health = Arc::new(HealthView::new(&HealthConfig::default()));
        let f = Forwarder {
            package_type: PackageType::new("ccm").unwrap(),
            book: rx,
            health: health.clone(),
            connect_timeout: Duration::from_millis(500),
            metrics: Arc::new(AgentMetrics::new([])),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(f.run(listener, stop.clone()));
        (addr, health, tx, stop)
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        timeout(T, s.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, msg);
    }

    /// A manager that accepts and then closes before any byte (it died right after accepting):
    /// the client is carried to the next manager, never sees the failure.
    #[tokio::test]
    async fn a_manager_dying_right_after_accept_is_skipped_within_the_same_accept() {
        let dying = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dying_addr = dying.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = dying.accept().await.unwrap();
                drop(s);
            }
        });
        let greeter = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let greeter_addr = greeter.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = greeter.accept().await.unwrap();
                tokio::spawn(async move {
                    let _ = s.write_all(b"b\n").await;
                    let mut sink = [0u8; 16];
                    let _ = s.read(&mut sink).await;
                });
            }
        });
        let (fwd, health, _tx, _stop) =
            start_forwarder(book(&[("a", dying_addr), ("b", greeter_addr)])).await;
        let mut c = TcpStream::connect(fwd).await.unwrap();
        let mut got = [0u8; 2];
        timeout(T, c.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"b\n");
        assert!(
            health.is_down("a", "ccm"),
            "the manager that died after accepting is held down"
        );
    }

    #[tokio::test]
    async fn forwards_both_ways_and_fails_over_between_connections() {
        let a = Echo::start().await;
        let b = Echo::start().await;
        let (fwd, health, _tx, stop) = start_forwarder(book(&[("a", a.addr), ("b", b.addr)])).await;

        let mut c = TcpStream::connect(fwd).await.unwrap();
        round_trip(&mut c, b"hello").await;
        drop(c);

        a.kill().await;
        // Every new connection still works: `a` refuses, `b` answers within the same accept.
        for i in 0..5 {
            let mut c = TcpStream::connect(fwd).await.unwrap();
            round_trip(&mut c, format!("after kill {i}").as_bytes()).await;
        }
        assert!(
            health.is_down("a", "ccm"),
            "the refusing manager is held down"
        );
        assert!(!health.is_down("b", "ccm"));
        stop.cancel();
        b.kill().await;
    }

    #[tokio::test]
    async fn a_manager_killed_mid_stream_closes_the_client_and_the_next_connection_fails_over() {
        let a = Echo::start().await;
        let b = Echo::start().await;
        let (fwd, health, _tx, stop) = start_forwarder(book(&[("a", a.addr), ("b", b.addr)])).await;

        let mut c = TcpStream::connect(fwd).await.unwrap();
        round_trip(&mut c, b"before").await;
        a.kill().await;
        // The client sees its connection end (EOF or reset), not a hang.
        let mut buf = [0u8; 16];
        let end = timeout(T, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            end.is_ok(),
            "client connection closed after the manager died"
        );

        let mut c = TcpStream::connect(fwd).await.unwrap();
        round_trip(&mut c, b"next").await;
        assert!(health.is_down("a", "ccm"));
        stop.cancel();
        b.kill().await;
    }

    #[tokio::test]
    async fn large_transfer_keeps_order_under_back_pressure() {
        let a = Echo::start().await;
        let (fwd, _health, _tx, stop) = start_forwarder(book(&[("a", a.addr)])).await;
        let c = TcpStream::connect(fwd).await.unwrap();
        let (mut r, mut w) = c.into_split();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        timeout(T, r.read_to_end(&mut got)).await.unwrap().unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
        stop.cancel();
        a.kill().await;
    }

    #[tokio::test]
    async fn no_reachable_manager_closes_the_client() {
        let a = Echo::start().await;
        let addr = a.addr;
        a.kill().await;
        let (fwd, health, _tx, stop) = start_forwarder(book(&[("a", addr)])).await;
        let mut c = TcpStream::connect(fwd).await.unwrap();
        let mut buf = [0u8; 1];
        let n = timeout(T, c.read(&mut buf)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
        assert!(health.is_down("a", "ccm"));
        stop.cancel();
    }

    #[tokio::test]
    async fn route_changes_apply_to_new_connections() {
        let a = Echo::start().await;
        let b = Echo::start().await;
        let (fwd, _health, tx, stop) = start_forwarder(book(&[("a", a.addr)])).await;
        let mut c1 = TcpStream::connect(fwd).await.unwrap();
        round_trip(&mut c1, b"one").await;
        tx.send_replace(Arc::new(book(&[("b", b.addr)])));
        a.kill().await;
        let mut c2 = TcpStream::connect(fwd).await.unwrap();
        round_trip(&mut c2, b"two").await;
        stop.cancel();
        b.kill().await;
    }

    #[tokio::test]
    async fn held_down_managers_are_the_last_resort() {
        let a = Echo::start().await;
        let mut b = book(&[]);
        let t = PackageType::new("ccm").unwrap();
        let mut r = (**b.routes.get("ccm").unwrap()).clone();
        r.held_down = vec![Target {
            host: HostName::new("a").unwrap(),
            endpoint: a.addr.to_string(),
        }];
        b.routes.insert(t.clone(), Arc::new(r));
        let (fwd, health, _tx, stop) = start_forwarder(b).await;
        health.mark_down(&t, &HostName::new("a").unwrap(), &a.addr.to_string());
        let mut c = TcpStream::connect(fwd).await.unwrap();
        round_trip(&mut c, b"still served").await;
        let mut c = TcpStream::connect(fwd).await.unwrap();
        round_trip(&mut c, b"twice").await;
        // Two successful connects are `rise` (2) passing probes: trusted again.
        assert!(!health.is_down("a", "ccm"));
        stop.cancel();
        a.kill().await;
    }
}

//! The gRPC port's HTTP/2 server: hyper's, driven here instead of through tonic's
//! `Server::serve`, for the one setting tonic does not expose: how many bytes a stream may hold
//! unsent ([`MAX_SEND_BUF`]).
//!
//! - hyper asks a response body (a watch stream, a keep-alive stream) for more whenever its
//!   stream holds less than this unsent. Its default is 400 KB per stream: with thousands of
//!   agents that read slowly (an overloaded rack, a reconnect storm that sends each a snapshot
//!   of a 10,000-host registry), the manager held that much for every stream and grew by
//!   gigabytes. At [`MAX_SEND_BUF`] a stream holds at most that plus one encoded chunk; the
//!   rest waits, not yet encoded, in the watch hub's shared queue (a watcher too far behind is
//!   sent one fresh snapshot instead).
//! - Everything else is as tonic serves: HTTP/2 only, each connection on a task of its own,
//!   its address (and over TLS the client's certificate) in every request's extensions, where
//!   `tonic::Request::remote_addr` and `peer_certs` find them.
//! - On cancel the port stops accepting at once, every connection is told to finish (HTTP/2
//!   GOAWAY: calls in flight complete, streams end with the manager's own cancel), and those
//!   still open after [`GRACE`] are dropped.

use std::pin::pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::http::Request;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::transport::server::Connected;

/// Most bytes one HTTP/2 stream may hold written but not yet sent (hyper's default: 400 KB).
pub const MAX_SEND_BUF: usize = 32 * 1024;

/// How long connections may take to finish after the manager is told to stop.
pub const GRACE: Duration = Duration::from_secs(5);

/// HTTP/2 settings of the port.
#[derive(Debug, Clone, Copy)]
pub struct Http2 {
    /// Streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// A PING after this long without a frame from the client...
    pub keepalive_interval: Duration,
    /// ...closes the connection unless answered within this long.
    pub keepalive_timeout: Duration,
    /// Most bytes one stream holds unsent.
    pub max_send_buf: usize,
}

impl Http2 {
    fn builder(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .max_send_buf_size(self.max_send_buf);
        b
    }
}

/// Serves `routes` on every connection `incoming` yields until `cancel` (or until `incoming`
/// ends, which cancels the manager), then lets the open connections finish (at most
/// [`GRACE`]) before the task ends.
pub fn spawn<I, IO>(
    incoming: I,
    routes: Routes,
    settings: Http2,
    cancel: CancellationToken,
) -> JoinHandle<()>
where
    I: Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let routes = routes.prepare();
    tokio::spawn(async move {
        let builder = settings.builder();
        let connections = TaskTracker::new();
        {
            // Dropped when the loop ends: the accept side stops handing connections over.
            let mut incoming = pin!(incoming);
            loop {
                let io = tokio::select! {
                    _ = cancel.cancelled() => break,
                    io = incoming.next() => io,
                };
                let io = match io {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a connection failed before it was served");
                        continue;
                    }
                    None => break,
                };
                let info = io.connect_info();
                let routes = routes.clone();
                let service = hyper::service::service_fn(move |mut request: Request<_>| {
                    request.extensions_mut().insert(info.clone());
                    routes.clone().call(request)
                });
                let connection = builder.serve_connection(TokioIo::new(io), service);
                let cancel = cancel.clone();
                connections.spawn(async move {
                    let mut connection = pin!(connection);
                    tokio::select! {
                        result = connection.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "a gRPC connection ended with an error");
                            }
                        }
                        _ = cancel.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(GRACE, connection).await;
                        }
                    }
                });
            }
        }
        // However the port ended, the rest of the manager stops with it.
        cancel.cancel();
        connections.close();
        connections.wait().await;
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::TcpSocket;

    use super::*;

    const CHUNK: usize = 4 * 1024;

    /// One route whose response never ends, counting the bytes hyper has taken from it.
    fn endless(produced: Arc<AtomicUsize>) -> Routes {
        let app = axum::Router::new().route(
            "/endless",
            axum::routing::get(move || {
                let produced = Arc::clone(&produced);
                async move {
                    axum::body::Body::from_stream(futures::stream::repeat_with(move || {
                        produced.fetch_add(CHUNK, Ordering::Relaxed);
                        Ok::<_, Infallible>(bytes::Bytes::from(vec![7u8; CHUNK]))
                    }))
                }
            }),
        );
        Routes::from(app)
    }

    /// The read half of a client socket whose reads can be stopped (the connection stays
    /// open): a client that has stopped reading, as an overloaded agent does.
    struct Stalled {
        inner: OwnedReadHalf,
        stopped: Arc<AtomicBool>,
    }

    impl AsyncRead for Stalled {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.stopped.load(Ordering::Relaxed) {
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// Bytes the server's response body gave hyper before it stopped asking, for a client that
    /// grants a 16 MB window and then reads nothing; the sockets' kernel buffers are kept small
    /// so that what the server holds is what is measured.
    async fn taken_by_a_stalled_client(max_send_buf: usize) -> usize {
        let produced = Arc::new(AtomicUsize::new(0));
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(8).unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let cancel = CancellationToken::new();
        let settings = Http2 {
            max_concurrent_streams: 16,
            keepalive_interval: Duration::from_secs(600),
            keepalive_timeout: Duration::from_secs(600),
            max_send_buf,
        };
        let server = spawn(
            incoming,
            endless(Arc::clone(&produced)),
            settings,
            cancel.clone(),
        );

        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let (read, write) = client.connect(addr).await.unwrap().into_split();
        let read = Stalled {
            inner: read,
            stopped: Arc::clone(&stopped),
        };
        let tcp = tokio::io::join(read, write);
        let (h2, connection) = h2::client::Builder::new()
            .initial_window_size(16 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        stopped.store(true, Ordering::Relaxed);
        let request = tonic::codegen::http::Request::get(format!("http://{addr}/endless"))
            .body(())
            .unwrap();
        let (_response, _) = h2.send_request(request, true).unwrap();

        // Until the server has stopped asking the body for more (unchanged for 500 ms).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let (mut last, mut still) = (0, 0);
        while still < 10 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never stopped taking data: {} bytes",
                produced.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = produced.load(Ordering::Relaxed);
            still = if now == last && now > 0 { still + 1 } else { 0 };
            last = now;
        }
        cancel.cancel();
        driver.abort();
        let _ = server.await;
        last
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_costs_the_server_at_most_its_send_buffer() {
        let taken = taken_by_a_stalled_client(MAX_SEND_BUF).await;
        // 32 KB unsent, one chunk hyper took before it stopped asking, and what the two small
        // kernel buffers hold; hyper's default (400 KB) takes more than 400 KB here.
        assert!(
            taken < 160 * 1024,
            "the server took {taken} bytes from a response its client does not read"
        );
    }
}

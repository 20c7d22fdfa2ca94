//! The gRPC port's HTTP/2 server: hyper's, driven here instead of through tonic's
//! `Server::serve`, for the one setting tonic does not expose: how many bytes a stream may hold
//! unsent ([`MAX_SEND_BUF`]).
//!
//! - hyper asks a response body (a watch stream, a keep-alive stream) for more whenever its
//!   stream holds less than this unsent. Its default is 400 KB per stream: with thousands of
//!   agents that read slowly (an overloaded rack, a reconnect storm that sends each a snapshot
//!   of a 10,000-host registry), the manager held that much for every stream and grew by
//!   gigabytes. At [`MAX_SEND_BUF`] a stream holds at most that plus one encoded chunk; the
//!   rest waits, unencoded, in the shared window of the watch hub.
//! - Everything else is as tonic serves: HTTP/2 only, each connection on a task of its own,
//!   its address (and over TLS the client's certificate) in every request's extensions, where
//!   `tonic::Request::remote_addr` and `peer_certs` find them.
//! - On cancel the port stops accepting at once, every connection is told to finish (HTTP/2
//!   GOAWAY: calls in flight complete, streams end with the manager's own cancel), and those
//!   still open after [`GRACE`] are dropped.

use std::convert::Infallible;
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
                    let mut routes = routes.clone();
                    async move {
                        Ok::<_, Infallible>(
                            routes.call(request).await.unwrap_or_else(|e| match e {}),
                        )
                    }
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

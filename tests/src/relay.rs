//! A loopback TCP relay between an agent and a manager that a test can cut: while cut, bytes in
//! both directions vanish and connections stay open, so neither side sees a reset — the way a
//! partition or a silent network looks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A cuttable relay to one target address.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying from a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(accept_loop(listener, target, cut.clone()));
        Ok(Relay { addr, cut, task })
    }

    /// The address to give the agent instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, bytes vanish in both directions (no RST, no FIN).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Bytes flow again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, cut: Arc<AtomicBool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let cut = cut.clone();
        conns.spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            // No Nagle on either leg: a relay must not add delayed-ACK stalls to small messages.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let a = pump(cr, sw, cut.clone());
            let b = pump(sr, cw, cut);
            tokio::select! {
                _ = a => {}
                _ = b => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if cut.load(Ordering::SeqCst) {
                    // A cut link carries no FIN either: hold the other side open.
                    std::future::pending::<()>().await;
                }
                return;
            }
            Ok(n) => {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

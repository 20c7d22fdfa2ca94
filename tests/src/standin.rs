//! Stand-in manager packages: a TCP server that greets every connection with its host name and a
//! newline, then echoes what it receives. Stopping it closes the port, so new connections are
//! refused (a crashed manager); starting it again binds the same port.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A stand-in manager package of one host.
#[derive(Debug)]
pub struct StandIn {
    host: String,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Starts a stand-in on a free loopback port.
    pub async fn start(host: &str) -> anyhow::Result<StandIn> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Ok(StandIn {
            host: host.to_string(),
            addr,
            task: Some(tokio::spawn(serve(listener, host.to_string()))),
        })
    }

    /// Where clients reach it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it is serving now.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Stops serving: the port closes and new connections are refused. Open connections are
    /// dropped with the task.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing_free_log(&format!("rebind {} failed: {e}; retrying", self.addr));
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.task = Some(tokio::spawn(serve(listener, self.host.clone())));
        Ok(())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tracing_free_log(msg: &str) {
    eprintln!("standin: {msg}");
}

/// Serves the stand-in protocol on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, host: String) {
    // Aborting this task drops the listener and, with the JoinSet, every open connection.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let greeting = format!("{host}\n");
        conns.spawn(async move {
            if sock.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sock.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Connects to `addr`, reads the greeting line and returns the host name in it.
pub async fn greeting(addr: SocketAddr) -> anyhow::Result<String> {
    let mut sock = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(addr),
    )
    .await??;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(std::time::Duration::from_secs(3), async {
        loop {
            let n = sock.read(&mut byte).await?;
            if n == 0 || byte[0] == b'\n' {
                return Ok::<_, std::io::Error>(());
            }
            line.push(byte[0]);
        }
    })
    .await??;
    if line.is_empty() {
        anyhow::bail!("connection to {addr} closed before a greeting");
    }
    Ok(String::from_utf8(line)?)
}

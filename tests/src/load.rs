//! Loads that run beside a fault, shared by the group tests and the benchmarks: a write load
//! through every member of a registry group, and clients connecting through a forwarding port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::admin_client::AdminClient;
use tokio::time::Instant;
use tonic::transport::Endpoint;

/// What the write load saw.
#[derive(Debug, Default)]
struct Seen {
    /// The last acknowledged write: its revision and the status it set.
    last: Option<(u64, &'static str)>,
    /// A write after the last acknowledged one failed (its outcome is unknown).
    uncertain_after: bool,
    /// When each acknowledged write was sent, and when it was acknowledged.
    acks: Vec<(Instant, Instant)>,
}

/// Operator actions on one package, one at a time, spread over the given members: `drain` and
/// `withdraw` in turn, so every acknowledged write changes the registry.
#[derive(Debug)]
pub struct WriteLoad {
    seen: Arc<Mutex<Seen>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// The outcome of a [`WriteLoad`].
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The last acknowledged write: revision and the status it set.
    pub last: Option<(u64, &'static str)>,
    /// Whether a write after it failed (its effect may or may not be there).
    pub uncertain_after: bool,
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// When each acknowledged write was sent, and when it was acknowledged.
    pub acks: Vec<(Instant, Instant)>,
}

impl WriteLoad {
    /// Starts writing `host`'s package `package_type` through `members`, round robin.
    pub fn start(members: Vec<SocketAddr>, host: &str, package_type: &str) -> WriteLoad {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (host, package_type) = (host.to_owned(), package_type.to_owned());
        let clients: Vec<_> = members
            .iter()
            .map(|a| {
                Endpoint::from_shared(format!("http://{a}"))
                    .expect("a loopback address")
                    .connect_timeout(Duration::from_millis(300))
                    .timeout(Duration::from_secs(8))
                    .connect_lazy()
            })
            .map(AdminClient::new)
            .collect();
        let task = {
            let (seen, count, stop) = (seen.clone(), count.clone(), stop.clone());
            tokio::spawn(async move {
                let mut k = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let (action, status) = if k.is_multiple_of(2) {
                        (proto::PackageAction::Drain, "draining")
                    } else {
                        (proto::PackageAction::Withdraw, "withdrawn")
                    };
                    let mut client = clients[k % clients.len()].clone();
                    k += 1;
                    let sent = Instant::now();
                    let r = client
                        .package_action(proto::PackageActionRequest {
                            host: host.clone(),
                            r#type: package_type.clone(),
                            action: action as i32,
                        })
                        .await;
                    let failed = {
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        match r {
                            Ok(resp) => {
                                s.last = Some((resp.into_inner().revision, status));
                                s.uncertain_after = false;
                                s.acks.push((sent, Instant::now()));
                                count.fetch_add(1, Ordering::Relaxed);
                                false
                            }
                            Err(_) => {
                                s.uncertain_after = true;
                                true
                            }
                        }
                    };
                    if failed {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        };
        WriteLoad {
            seen,
            count,
            stop,
            task,
        }
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` writes were acknowledged in all, up to `deadline`.
    pub async fn wait_acknowledged(&self, n: usize, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.acknowledged() < n {
            anyhow::ensure!(
                start.elapsed() < deadline,
                "only {} of {n} writes acknowledged within {deadline:?}",
                self.acknowledged()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Stops the load and returns what it saw.
    pub async fn finish(self) -> WriteOutcome {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        WriteOutcome {
            last: s.last,
            uncertain_after: s.uncertain_after,
            acknowledged: self.count.load(Ordering::Relaxed),
            acks: s.acks.clone(),
        }
    }
}

/// Clients connecting through a forwarding port again and again, counting failures.
#[derive(Debug)]
pub struct ForwardLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl ForwardLoad {
    /// Starts connecting through `addr` every 20 ms.
    pub fn start(addr: SocketAddr) -> ForwardLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !s.load(Ordering::SeqCst) {
                match crate::standin::greeting(addr).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        });
        ForwardLoad { stop, task }
    }

    /// Stops; returns (connections that worked, connections that failed).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or((0, 0))
    }
}

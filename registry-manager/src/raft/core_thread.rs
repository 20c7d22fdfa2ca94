//! The raft core and the writer on a thread of their own.
//!
//! A manager serves thousands of agents' connections on the main runtime. When they keep it
//! busy (a fan-out to 10,000 watch streams, a storm of heartbeats), every task woken there
//! waits behind all the others, and one write needs several such turns in the raft core (take
//! the entry, flush the log, apply, answer). Under saturation that made a write take more than
//! its 5 s deadline, and lapses that could not be written fed the storm. Here the core, its
//! storage and replication tasks and the proposer run on one worker thread that nothing else
//! queues on: a write waits only for the operating system to schedule that thread.
//!
//! The expiry tick stays on the main runtime on purpose: its lateness there is the allowance
//! sessions get ([`crate::sessions::LagWindow`]), since heartbeats wait in that same queue.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// The runtime of the raft core: one worker thread named `raft`.
#[derive(Debug)]
pub struct CoreThread {
    runtime: Option<Runtime>,
}

impl CoreThread {
    /// Starts the thread.
    pub fn start() -> std::io::Result<CoreThread> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("raft")
            .enable_all()
            .build()?;
        Ok(CoreThread {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on the core thread; what it spawns (openraft spawns its core, storage
    /// and replication tasks) runs there too.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .as_ref()
            .expect("the core thread runs until dropped")
            .spawn(future)
    }

    /// Stops the thread and waits, at most `timeout`, until every task on it has been dropped,
    /// and with them what they hold (the store, whose directory lock is then free for the next
    /// manager to open). Blocks: call it from a blocking thread.
    pub fn stop(mut self, timeout: std::time::Duration) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(timeout);
        }
    }
}

impl Drop for CoreThread {
    /// Stops the thread without waiting (the manager has shut raft down first); safe inside
    /// an async context, where dropping a runtime would panic. [`CoreThread::stop`] is the
    /// orderly way.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

//! Waiting on a condition with a deadline, never on a bare sleep.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `check` every `every` until it returns `Some`, or fails after `deadline` with `what` and
/// the last value seen (for the failure message).
pub async fn wait_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if start.elapsed() >= deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Push at fleet scale: the [`WatchHub`] fans every revision out to every watch stream.
//!
//! - Each delta is encoded once, by the writer, and shared (`Bytes`) by every stream.
//! - One encoded snapshot per revision, cached: a reconnect storm after a restart encodes the
//!   registry once, not once per watcher.
//! - A bounded in-memory window of recent deltas lets watchers resume from a revision they
//!   have; older resumptions get a snapshot ([`resume_plan`]).
//! - Fan-out is a tokio broadcast of bounded capacity: a slow or stuck watcher never holds up
//!   the others nor grows memory; when it falls behind by more than the capacity it is sent a
//!   fresh snapshot and carries on from there.
//! - A stream is a small state machine polled by tonic (no task or queue of its own).
//! - No message is larger than [`PART_BYTES`] of payload: a large snapshot (or delta) goes out
//!   as several events (`WatchEvent.more`), zero-copy slices of the shared encoding, with a
//!   yield between them so tonic flushes each alone. tonic's per-stream encode buffer grows to
//!   the largest message it encodes and keeps that allocation for the life of the stream; with
//!   whole snapshots, 10,000 streams held ~3.6 GB.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use proto::v1 as pb;
use proto::watch_parts::{fits, split, PART_BYTES};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use topology::Revision;

use crate::state::State;
use crate::wire::{self, EncodedDelta};

/// How a watch stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePlan {
    /// Send the whole registry first.
    Snapshot,
    /// Send the deltas after this revision (all still in the window).
    Deltas {
        /// The revision the watcher has.
        after: u64,
    },
    /// The watcher is up to date: send nothing until the next change.
    UpToDate,
}

/// Decides how a watcher that has `from` (0: nothing) starts, when the registry is at `head`
/// and the window holds the deltas `window` (first, last), if any.
///
/// A watcher that claims a revision beyond `head` (it watched another manager, or this one
/// lost unacknowledged data) gets a snapshot, whose lower revision it must accept.
pub fn resume_plan(from: u64, head: u64, window: Option<(u64, u64)>) -> ResumePlan {
    if from == 0 || from > head {
        return ResumePlan::Snapshot;
    }
    if from == head {
        return ResumePlan::UpToDate;
    }
    match window {
        Some((first, last)) if first <= from + 1 && last == head => {
            ResumePlan::Deltas { after: from }
        }
        _ => ResumePlan::Snapshot,
    }
}

/// The recent deltas, encoded, in revision order (contiguous).
#[derive(Debug)]
struct DeltaWindow {
    capacity: usize,
    deltas: VecDeque<(u64, EncodedDelta)>,
    /// Bytes of the deltas kept, bounded by [`WINDOW_BYTES`] as well as by count.
    bytes: usize,
}

/// Most bytes of deltas kept for resumption (a few huge topology changes cannot hold memory).
pub const WINDOW_BYTES: usize = 64 << 20;

impl DeltaWindow {
    fn bounds(&self) -> Option<(u64, u64)> {
        Some((self.deltas.front()?.0, self.deltas.back()?.0))
    }

    fn push(&mut self, revision: u64, delta: impl Into<EncodedDelta>) {
        let delta = delta.into();
        if self.deltas.back().is_some_and(|(r, _)| *r + 1 != revision) {
            // Never expected: keep the window contiguous rather than serve a gap.
            self.clear();
        }
        self.bytes += delta.len();
        self.deltas.push_back((revision, delta));
        while self.deltas.len() > self.capacity
            || (self.bytes > WINDOW_BYTES && self.deltas.len() > 1)
        {
            if let Some((_, d)) = self.deltas.pop_front() {
                self.bytes -= d.len();
            }
        }
    }

    fn clear(&mut self) {
        self.deltas.clear();
        self.bytes = 0;
    }

    fn after(&self, from: u64, status_changes: bool) -> Vec<pb::WatchEvent> {
        let Some((first, _)) = self.bounds() else {
            return Vec::new();
        };
        let skip = usize::try_from((from + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        self.deltas
            .iter()
            .skip(skip)
            .map(|(r, d)| wire::delta_event(*r, d.for_watcher(status_changes).clone()))
            .collect()
    }
}

/// One published revision, in both encodings (the compact one only when it differs).
#[derive(Debug, Clone)]
pub struct Published {
    /// Whole host entries for every host that changed.
    pub full: pb::WatchEvent,
    /// Status changes alone, for watchers that take them.
    pub compact: Option<pb::WatchEvent>,
}

impl Published {
    /// The event a watcher gets (one clone: the payload is shared, not copied).
    pub fn for_watcher(&self, status_changes: bool) -> pb::WatchEvent {
        match (&self.compact, status_changes) {
            (Some(compact), true) => compact.clone(),
            (_, _) => self.full.clone(),
        }
    }
}

/// The fan-out point of every revision.
#[derive(Debug)]
pub struct WatchHub {
    /// Shared: every receiver clones an `Arc`, then only the event it is sent.
    tx: broadcast::Sender<Arc<Published>>,
    /// The registry's history id, carried by every event.
    history: Mutex<String>,
    /// Bumped when the whole state is replaced: every stream resyncs.
    epoch: AtomicUsize,
    /// Cancelled to close every open stream (a member cut off from the majority).
    closer: Mutex<tokio_util::sync::CancellationToken>,
    window: Mutex<DeltaWindow>,
    /// The last snapshot encoded (epoch, revision, bytes). A plain mutex, never held across
    /// an await: see [`WatchHub::snapshot_of`].
    snapshot: Mutex<Option<(usize, u64, Bytes)>>,
    watchers: Arc<AtomicUsize>,
}

impl WatchHub {
    /// A hub keeping `window` deltas for resumption and `capacity` in the broadcast queue.
    pub fn new(window: usize, capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        WatchHub {
            tx,
            window: Mutex::new(DeltaWindow {
                capacity: window.max(1),
                deltas: VecDeque::new(),
                bytes: 0,
            }),
            snapshot: Mutex::new(None),
            watchers: Arc::new(AtomicUsize::new(0)),
            history: Mutex::new(String::new()),
            epoch: AtomicUsize::new(0),
            closer: Mutex::new(tokio_util::sync::CancellationToken::new()),
        }
    }

    /// The history id events carry.
    pub fn history(&self) -> String {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the history id (once the registry's history is named).
    pub fn set_history(&self, history: &str) {
        *self.history.lock().unwrap_or_else(|p| p.into_inner()) = history.to_owned();
    }

    /// The whole state was replaced (start, snapshot install): the window is emptied and every
    /// open stream resyncs with a snapshot at its next event.
    pub fn reset(&self, history: &str) {
        self.set_history(history);
        self.window().clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A token cancelled when [`WatchHub::close_all`] is called: streams end with it.
    pub fn closing(&self) -> tokio_util::sync::CancellationToken {
        self.closer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ends every open watch (and keep-alive) stream, so their agents move to another member.
    pub fn close_all(&self) {
        let mut closer = self.closer.lock().unwrap_or_else(|p| p.into_inner());
        closer.cancel();
        *closer = tokio_util::sync::CancellationToken::new();
    }

    fn stamp(&self, mut ev: pb::WatchEvent) -> pb::WatchEvent {
        ev.history = self.history();
        ev
    }

    fn window(&self) -> std::sync::MutexGuard<'_, DeltaWindow> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a delta in the window without pushing it (recovery at open).
    pub fn remember(&self, revision: Revision, delta: EncodedDelta) {
        self.window().push(revision.0, delta);
    }

    /// Publishes the delta of a new revision to every watcher. Called by the writer while it
    /// holds the state's write lock, so a watcher that subscribed before reading the state
    /// sees every later revision.
    pub fn publish(&self, revision: Revision, delta: EncodedDelta) {
        self.window().push(revision.0, delta.clone());
        let full = self.stamp(wire::delta_event(revision.0, delta.full));
        let compact = delta
            .compact
            .map(|c| self.stamp(wire::delta_event(revision.0, c)));
        // No receiver is not an error: nobody is watching.
        let _ = self.tx.send(Arc::new(Published { full, compact }));
    }

    /// A receiver of every event published from now on, for readers that only need to know
    /// that the registry changed (the status page); not counted as a watch stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// The oldest and newest revisions whose deltas are kept.
    pub fn window_bounds(&self) -> Option<(u64, u64)> {
        self.window().bounds()
    }

    /// Number of open watch streams.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// The encoded snapshot of `state`, built once per revision and shared.
    ///
    /// Synchronous on purpose: callers hold the state's read lock, and the writer (raft's
    /// apply) waits for every reader to let go. With an async lock here, a reconnect storm
    /// of thousands of watchers each held the read lock while queued for the cache, one turn
    /// of a saturated runtime each, and writes went uncommitted for more than their 5 s
    /// deadline. Two threads missing the cache at once may both encode (the same bytes).
    pub fn snapshot_of(&self, state: &State) -> (u64, Bytes) {
        let revision = state.revision().0;
        let epoch = self.epoch.load(Ordering::Acquire);
        let cached = |cache: &Option<(usize, u64, Bytes)>| match cache {
            Some((e, r, bytes)) if *e == epoch && *r == revision => Some(bytes.clone()),
            _ => None,
        };
        if let Some(bytes) = cached(&self.snapshot.lock().unwrap_or_else(|p| p.into_inner())) {
            return (revision, bytes);
        }
        let bytes = wire::encode_state(state);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((epoch, revision, bytes.clone()));
        (revision, bytes)
    }

    /// Opens a watch stream for a watcher that has `from`. `state` is the registry's lock;
    /// `status_changes`: the watcher applies `Delta.status_changes` (see [`EncodedDelta`]).
    pub async fn watch(
        self: &Arc<Self>,
        state: Arc<tokio::sync::RwLock<State>>,
        from: u64,
        history: &str,
        status_changes: bool,
    ) -> impl Stream<Item = Result<pb::WatchEvent, tonic::Status>> + Send + 'static {
        // Subscribe before reading the state: every revision after the one read is received.
        let rx = self.tx.subscribe();
        let epoch = self.epoch.load(Ordering::Acquire);
        let (pending, last) = {
            let guard = state.read().await;
            // Deltas only within the same history: a copy of another one gets a snapshot.
            let from = if !history.is_empty() && history != guard.history() {
                0
            } else {
                from
            };
            let head = guard.revision().0;
            match resume_plan(from, head, self.window_bounds()) {
                ResumePlan::Snapshot => {
                    let (rev, bytes) = self.snapshot_of(&guard);
                    (parts([self.stamp(wire::snapshot_event(rev, bytes))]), rev)
                }
                ResumePlan::Deltas { after } => {
                    (parts(self.window().after(after, status_changes)), head)
                }
                ResumePlan::UpToDate => (VecDeque::new(), head),
            }
        };
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let cursor = Cursor {
            hub: Arc::clone(self),
            state,
            rx,
            status_changes,
            pending,
            sent_one: false,
            last,
            epoch,
            _count: WatcherCount(Arc::clone(&self.watchers)),
        };
        futures::stream::unfold(cursor, |mut c| async move {
            let ev = c.next().await?;
            Some((Ok(ev), c))
        })
    }
}

/// Events cut into parts of at most [`PART_BYTES`], in order.
fn parts(events: impl IntoIterator<Item = pb::WatchEvent>) -> VecDeque<pb::WatchEvent> {
    events
        .into_iter()
        .flat_map(|ev| split(&ev, PART_BYTES))
        .collect()
}

/// Decrements the watcher count when a stream is dropped.
#[derive(Debug)]
struct WatcherCount(Arc<AtomicUsize>);

impl Drop for WatcherCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The per-stream state: where the watcher is, and what is queued for it.
#[derive(Debug)]
struct Cursor {
    hub: Arc<WatchHub>,
    state: Arc<tokio::sync::RwLock<State>>,
    rx: broadcast::Receiver<Arc<Published>>,
    /// The watcher takes status changes alone (the compact encoding).
    status_changes: bool,
    /// Events (parts) still to send, before any newer live one: the snapshot or resumed deltas
    /// decided at open, or the rest of a live event or resync cut into parts.
    pending: VecDeque<pb::WatchEvent>,
    /// True once an event was returned: later ones from `pending` are preceded by a yield.
    sent_one: bool,
    /// The last revision this watcher was sent (or had).
    last: u64,
    /// The hub's epoch this stream follows; another one means the state was replaced.
    epoch: usize,
    _count: WatcherCount,
}

impl Cursor {
    async fn next(&mut self) -> Option<pb::WatchEvent> {
        if !self.pending.is_empty() {
            if self.sent_one {
                // Returning `Pending` once makes tonic flush what it has encoded: without it, it
                // packs ready events into one buffer up to 32 KiB, which then stays allocated.
                tokio::task::yield_now().await;
            }
            return self.pop();
        }
        loop {
            let received = self.rx.recv().await;
            if self.hub.epoch.load(Ordering::Acquire) != self.epoch {
                let ev = self.resync().await;
                self.pending = parts([ev]);
                return self.pop();
            }
            match received.map(|p| p.for_watcher(self.status_changes)) {
                Ok(ev) if ev.revision <= self.last => continue,
                Ok(ev) if ev.revision == self.last + 1 => {
                    self.last = ev.revision;
                    if !ev.more && fits(&ev, PART_BYTES) {
                        // The common case, sent as it is: no queue, no copy.
                        self.sent_one = true;
                        return Some(ev);
                    }
                    self.pending = parts([ev]);
                    return self.pop();
                }
                // A gap (never expected) or a watcher that fell behind the queue: resync.
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let ev = self.resync().await;
                    self.pending = parts([ev]);
                    return self.pop();
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn pop(&mut self) -> Option<pb::WatchEvent> {
        let ev = self.pending.pop_front()?;
        self.sent_one = true;
        Some(ev)
    }

    async fn resync(&mut self) -> pb::WatchEvent {
        // Drop what is queued (all older than the snapshot), subscribing again before the
        // state is read, so no later revision is missed.
        self.rx = self.rx.resubscribe();
        let guard = self.state.read().await;
        self.epoch = self.hub.epoch.load(Ordering::Acquire);
        let (rev, bytes) = self.hub.snapshot_of(&guard);
        self.last = rev;
        self.hub.stamp(wire::snapshot_event(rev, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use futures::StreamExt;
    use prost::Message;

    const TREE: &str = "version: 1\ndomain: root\nhosts: [a]\n";

    /// Applies a command and publishes its delta, like the writer.
    async fn write(hub: &WatchHub, state: &tokio::sync::RwLock<State>) -> u64 {
        let mut s = state.write().await;
        let delta = s.apply(&Command::ApplyTopology { yaml: TREE.into() });
        hub.publish(delta.revision, wire::encode_delta(&delta));
        delta.revision.0
    }

    fn kind(ev: &pb::WatchEvent) -> &'static str {
        match ev.payload {
            Some(pb::watch_event::Payload::Snapshot(_)) => "snapshot",
            Some(pb::watch_event::Payload::Delta(_)) => "delta",
            None => "none",
        }
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_the_queue_gets_a_fresh_snapshot() {
        let hub = Arc::new(WatchHub::new(100, 2));
        let state = Arc::new(tokio::sync::RwLock::new(State::new()));
        write(&hub, &state).await;
        let stream = hub.watch(Arc::clone(&state), 0, "", false).await;
        let mut stream = std::pin::pin!(stream);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((kind(&first), first.revision), ("snapshot", 1));
        assert_eq!(hub.watchers(), 1);
        // Ten revisions while the watcher reads nothing: more than the queue holds.
        let mut last = 0;
        for _ in 0..10 {
            last = write(&hub, &state).await;
        }
        let ev = stream.next().await.unwrap().unwrap();
        assert_eq!((kind(&ev), ev.revision), ("snapshot", last));
        let Some(pb::watch_event::Payload::Snapshot(bytes)) = ev.payload else {
            unreachable!()
        };
        assert_eq!(pb::RegistryState::decode(bytes).unwrap().revision, last);
        // Then live deltas again, in order.
        let next = write(&hub, &state).await;
        let ev = stream.next().await.unwrap().unwrap();
        assert_eq!((kind(&ev), ev.revision), ("delta", next));
    }

    /// Applies `cmd` and publishes its delta, like the writer.
    async fn write_cmd(hub: &WatchHub, state: &tokio::sync::RwLock<State>, cmd: Command) -> u64 {
        let mut s = state.write().await;
        let delta = s.apply(&cmd);
        hub.publish(delta.revision, wire::encode_delta(&delta));
        delta.revision.0
    }

    fn delta_of(ev: &pb::WatchEvent) -> pb::Delta {
        let Some(pb::watch_event::Payload::Delta(bytes)) = &ev.payload else {
            panic!("not a delta: {ev:?}")
        };
        pb::Delta::decode(bytes.clone()).unwrap()
    }

    #[tokio::test]
    async fn a_status_change_reaches_each_watcher_in_the_form_it_asked_for() {
        use crate::command::{AgentStatus, Registration};
        use topology::{HostName, PackageType};
        let hub = Arc::new(WatchHub::new(100, 16));
        let state = Arc::new(tokio::sync::RwLock::new(State::new()));
        write(&hub, &state).await;
        let opened = write_cmd(
            &hub,
            &state,
            Command::OpenSession {
                host: HostName::new("a").unwrap(),
                session_id: crate::session_id::SessionId::new("s"),
                packages: vec![Registration {
                    package_type: PackageType::new("ccm").unwrap(),
                    endpoint: "127.0.0.1:7001".into(),
                    status: AgentStatus::Running,
                }],
            },
        )
        .await;
        let report = Command::ReportStatus {
            host: HostName::new("a").unwrap(),
            package_type: PackageType::new("ccm").unwrap(),
            status: AgentStatus::Failing,
        };
        let mut live = Vec::new();
        for compact in [false, true] {
            live.push(Box::pin(
                hub.watch(Arc::clone(&state), opened, "", compact).await,
            ));
        }
        let changed = write_cmd(&hub, &state, report).await;
        for (compact, stream) in [false, true].into_iter().zip(live.iter_mut()) {
            let d = delta_of(&stream.next().await.unwrap().unwrap());
            assert_eq!(d.revision, changed);
            assert_eq!(d.status_changes.len(), usize::from(compact));
            assert_eq!(d.upserts.len(), usize::from(!compact));
        }
        // Resumed from the window: the same choice.
        for compact in [false, true] {
            let stream = hub.watch(Arc::clone(&state), opened, "", compact).await;
            let mut stream = std::pin::pin!(stream);
            let d = delta_of(&stream.next().await.unwrap().unwrap());
            assert_eq!(d.status_changes.len(), usize::from(compact));
            assert_eq!(d.upserts.len(), usize::from(!compact));
        }
    }

    #[tokio::test]
    async fn watchers_of_one_revision_share_one_encoded_snapshot() {
        let hub = Arc::new(WatchHub::new(100, 16));
        let state = Arc::new(tokio::sync::RwLock::new(State::new()));
        write(&hub, &state).await;
        let mut payloads = Vec::new();
        for _ in 0..3 {
            let stream = hub.watch(Arc::clone(&state), 0, "", false).await;
            let mut stream = std::pin::pin!(stream);
            let ev = stream.next().await.unwrap().unwrap();
            let Some(pb::watch_event::Payload::Snapshot(bytes)) = ev.payload else {
                panic!()
            };
            payloads.push(bytes);
        }
        assert!(
            payloads.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()),
            "one encoding, shared"
        );
        assert_eq!(hub.watchers(), 0, "dropped streams are counted out");
    }

    #[tokio::test]
    async fn a_large_snapshot_goes_out_in_parts_sliced_from_one_encoding() {
        let hosts: Vec<String> = (0..3000).map(|i| format!("host-{i:05}")).collect();
        let tree = format!("version: 1\ndomain: root\nhosts: [{}]\n", hosts.join(", "));
        let hub = Arc::new(WatchHub::new(100, 16));
        let state = Arc::new(tokio::sync::RwLock::new(State::new()));
        {
            let mut s = state.write().await;
            let delta = s.apply(&Command::ApplyTopology { yaml: tree });
            hub.publish(delta.revision, wire::encode_delta(&delta));
        }
        let (rev, whole) = hub.snapshot_of(&*state.read().await);
        assert!(whole.len() > 3 * PART_BYTES, "{} bytes", whole.len());

        let stream = hub.watch(Arc::clone(&state), 0, "", false).await;
        let mut stream = std::pin::pin!(stream);
        let mut got = Vec::new();
        loop {
            let ev = stream.next().await.unwrap().unwrap();
            assert_eq!((kind(&ev), ev.revision), ("snapshot", rev));
            let Some(pb::watch_event::Payload::Snapshot(bytes)) = &ev.payload else {
                unreachable!()
            };
            assert!(bytes.len() <= PART_BYTES);
            got.push(bytes.clone());
            if !ev.more {
                break;
            }
        }
        assert_eq!(got.len(), whole.len().div_ceil(PART_BYTES));
        assert_eq!(got[0].as_ptr(), whole.as_ptr(), "zero-copy slices");
        assert_eq!(got.concat(), whole.to_vec());
        let decoded = pb::RegistryState::decode(whole).unwrap();
        assert!(decoded.topology_yaml.contains("host-02999"));
    }

    #[test]
    fn the_window_is_bounded_in_bytes_as_well_as_in_count() {
        let mut w = DeltaWindow {
            capacity: 1_000,
            deltas: VecDeque::new(),
            bytes: 0,
        };
        let big = Bytes::from(vec![0u8; WINDOW_BYTES / 3]);
        for r in 1..=5 {
            w.push(r, big.clone());
        }
        assert!(w.bytes <= WINDOW_BYTES, "{}", w.bytes);
        assert_eq!(w.bounds(), Some((3, 5)), "the oldest go first");
        w.push(6, Bytes::from(vec![0u8; WINDOW_BYTES * 2]));
        assert_eq!(
            w.bounds(),
            Some((6, 6)),
            "one oversized delta is still kept alone"
        );
    }

    #[test]
    fn resume_decisions() {
        assert_eq!(resume_plan(0, 0, None), ResumePlan::Snapshot);
        assert_eq!(resume_plan(0, 10, Some((1, 10))), ResumePlan::Snapshot);
        assert_eq!(resume_plan(10, 10, None), ResumePlan::UpToDate);
        assert_eq!(
            resume_plan(5, 10, Some((1, 10))),
            ResumePlan::Deltas { after: 5 }
        );
        assert_eq!(
            resume_plan(5, 10, Some((6, 10))),
            ResumePlan::Deltas { after: 5 }
        );
        assert_eq!(
            resume_plan(5, 10, Some((7, 10))),
            ResumePlan::Snapshot,
            "trimmed"
        );
        assert_eq!(resume_plan(5, 10, None), ResumePlan::Snapshot);
        assert_eq!(
            resume_plan(11, 10, Some((1, 10))),
            ResumePlan::Snapshot,
            "ahead"
        );
    }

    #[test]
    fn window_keeps_the_last_deltas_and_serves_after_a_revision() {
        let mut w = DeltaWindow {
            capacity: 3,
            deltas: VecDeque::new(),
            bytes: 0,
        };
        for r in 1..=5 {
            w.push(r, Bytes::from(vec![r as u8]));
        }
        assert_eq!(w.bounds(), Some((3, 5)));
        let revs: Vec<u64> = w.after(3, false).iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![4, 5]);
        let revs: Vec<u64> = w.after(2, false).iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![3, 4, 5]);
        assert!(w.after(5, false).is_empty());
        w.push(9, Bytes::new());
        assert_eq!(w.bounds(), Some((9, 9)), "a gap restarts the window");
    }
}

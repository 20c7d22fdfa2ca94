//! Watch payloads sent in parts (`WatchEvent.more`).
//!
//! A sender cuts a large payload into parts of at most [`PART_BYTES`] with [`split`]: every part
//! is a zero-copy slice of the one encoding shared by all streams. A receiver feeds every event
//! it reads to a [`Reassembler`], which hands back whole events (`more = false`, the complete
//! payload) and enforces the rules:
//!
//! - the parts of one payload are consecutive and share the revision and the kind (snapshot or
//!   delta); anything else in between is [`PartError::Interrupted`];
//! - the reassembled payload is at most the reassembler's limit ([`PartError::TooLarge`]);
//! - a part carries a payload ([`PartError::Empty`]).
//!
//! An event with `more = false` and no parts before it is returned as is (no copy), so a sender
//! that never splits is still understood.

use bytes::{Bytes, BytesMut};

use crate::v1::{watch_event::Payload, WatchEvent};

/// Largest payload slice a manager puts in one event. Chosen so that one encoded part (payload,
/// the few bytes of the event's other fields and gRPC's 5-byte frame header) fits tonic's
/// default 8 KiB encode buffer: that buffer grows to the largest message a stream encodes and
/// stays that size for the life of the stream.
pub const PART_BYTES: usize = 8 * 1024 - 64;

/// Default bound on a reassembled payload (256 MiB).
pub const MAX_REASSEMBLED_BYTES: usize = 256 * 1024 * 1024;

/// The kind of a watch payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// An encoded `RegistryState`.
    Snapshot,
    /// An encoded `Delta`.
    Delta,
}

impl PayloadKind {
    /// The kind of `payload`.
    pub fn of(payload: &Payload) -> PayloadKind {
        match payload {
            Payload::Snapshot(_) => PayloadKind::Snapshot,
            Payload::Delta(_) => PayloadKind::Delta,
        }
    }

    fn wrap(self, bytes: Bytes) -> Payload {
        match self {
            PayloadKind::Snapshot => Payload::Snapshot(bytes),
            PayloadKind::Delta => Payload::Delta(bytes),
        }
    }
}

impl std::fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PayloadKind::Snapshot => "snapshot",
            PayloadKind::Delta => "delta",
        })
    }
}

fn bytes_of(payload: &Payload) -> &Bytes {
    match payload {
        Payload::Snapshot(b) | Payload::Delta(b) => b,
    }
}

/// True when `event`'s payload (if any) is at most `part_bytes` long: [`split`] would return it
/// alone, unchanged but for `more = false`.
pub fn fits(event: &WatchEvent, part_bytes: usize) -> bool {
    event
        .payload
        .as_ref()
        .is_none_or(|p| bytes_of(p).len() <= part_bytes.max(1))
}

/// Cuts `event` into events whose payloads are at most `part_bytes` long (zero-copy slices of
/// the payload), all of its revision and kind, `more = true` on every one but the last. An event
/// that already fits (or has no payload) is returned alone, with `more = false`.
pub fn split(event: &WatchEvent, part_bytes: usize) -> Vec<WatchEvent> {
    let part_bytes = part_bytes.max(1);
    let Some(payload) = &event.payload else {
        return vec![WatchEvent {
            more: false,
            ..event.clone()
        }];
    };
    let bytes = bytes_of(payload);
    if bytes.len() <= part_bytes {
        return vec![WatchEvent {
            more: false,
            ..event.clone()
        }];
    }
    let kind = PayloadKind::of(payload);
    let n = bytes.len().div_ceil(part_bytes);
    (0..n)
        .map(|i| {
            let start = i * part_bytes;
            let end = (start + part_bytes).min(bytes.len());
            WatchEvent {
                revision: event.revision,
                payload: Some(kind.wrap(bytes.slice(start..end))),
                more: i + 1 < n,
                history: event.history.clone(),
            }
        })
        .collect()
}

/// Why a sequence of parts was refused. The receiver should drop what it has and restart its
/// watch from the revision it has applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// A part sequence was interrupted by an event of another revision or kind.
    #[error("watch payload in parts ({kind} at revision {revision}) interrupted by a {by_kind} event at revision {by_revision}; restart the watch")]
    Interrupted {
        /// Revision of the unfinished sequence.
        revision: u64,
        /// Kind of the unfinished sequence.
        kind: PayloadKind,
        /// Revision of the interrupting event.
        by_revision: u64,
        /// Kind of the interrupting event (`None`: no payload).
        by_kind: PayloadKindOrNone,
    },
    /// The reassembled payload would exceed the bound.
    #[error("watch payload in parts ({kind} at revision {revision}) exceeds {limit} bytes; refused (raise the receiver's reassembly limit if the registry is really this large)")]
    TooLarge {
        /// Revision of the sequence.
        revision: u64,
        /// Kind of the sequence.
        kind: PayloadKind,
        /// The bound, in bytes.
        limit: usize,
    },
    /// A part (`more = true`) without a payload.
    #[error("watch event at revision {0} says more parts follow but carries no payload")]
    Empty(u64),
}

/// A payload kind, or none (an event without payload), for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadKindOrNone(pub Option<PayloadKind>);

impl std::fmt::Display for PayloadKindOrNone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(k) => k.fmt(f),
            None => f.write_str("payload-less"),
        }
    }
}

/// An unfinished sequence.
#[derive(Debug)]
struct Partial {
    revision: u64,
    kind: PayloadKind,
    buf: BytesMut,
}

/// Turns the events of one watch stream back into whole events. One per stream: after an
/// error, or when the stream is reopened, start a new one (or call [`Reassembler::reset`]).
#[derive(Debug)]
pub struct Reassembler {
    limit: usize,
    partial: Option<Partial>,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(MAX_REASSEMBLED_BYTES)
    }
}

impl Reassembler {
    /// A reassembler refusing payloads in parts longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Reassembler {
            limit,
            partial: None,
        }
    }

    /// Drops any unfinished sequence.
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// Revision and bytes so far of an unfinished sequence, if any.
    pub fn in_progress(&self) -> Option<(u64, usize)> {
        self.partial.as_ref().map(|p| (p.revision, p.buf.len()))
    }

    /// Takes the next event of the stream. `Ok(Some)` is a whole event (`more = false`) to
    /// decode and apply; `Ok(None)` means a part was kept and more are expected. On error the
    /// unfinished sequence is dropped.
    pub fn push(&mut self, event: WatchEvent) -> Result<Option<WatchEvent>, PartError> {
        let kind = event.payload.as_ref().map(PayloadKind::of);
        let Some(partial) = self.partial.as_mut() else {
            if !event.more {
                return Ok(Some(event));
            }
            let (Some(kind), Some(payload)) = (kind, &event.payload) else {
                return Err(PartError::Empty(event.revision));
            };
            let bytes = bytes_of(payload);
            if bytes.len() > self.limit {
                return Err(PartError::TooLarge {
                    revision: event.revision,
                    kind,
                    limit: self.limit,
                });
            }
            let mut buf = BytesMut::with_capacity(bytes.len().saturating_mul(4).min(self.limit));
            buf.extend_from_slice(bytes);
            self.partial = Some(Partial {
                revision: event.revision,
                kind,
                buf,
            });
            return Ok(None);
        };
        if event.revision != partial.revision || kind != Some(partial.kind) {
            let err = PartError::Interrupted {
                revision: partial.revision,
                kind: partial.kind,
                by_revision: event.revision,
                by_kind: PayloadKindOrNone(kind),
            };
            self.partial = None;
            return Err(err);
        }
        let bytes = event.payload.as_ref().map(bytes_of).expect("kind matched");
        if partial.buf.len().saturating_add(bytes.len()) > self.limit {
            let err = PartError::TooLarge {
                revision: partial.revision,
                kind: partial.kind,
                limit: self.limit,
            };
            self.partial = None;
            return Err(err);
        }
        partial.buf.extend_from_slice(bytes);
        if event.more {
            return Ok(None);
        }
        let partial = self.partial.take().expect("checked above");
        Ok(Some(WatchEvent {
            revision: partial.revision,
            payload: Some(partial.kind.wrap(partial.buf.freeze())),
            more: false,
            history: event.history.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: u64, payload: Option<Payload>, more: bool) -> WatchEvent {
        WatchEvent {
            revision,
            payload,
            more,
            history: String::new(),
        }
    }

    fn snap(revision: u64, bytes: &[u8], more: bool) -> WatchEvent {
        ev(
            revision,
            Some(Payload::Snapshot(Bytes::copy_from_slice(bytes))),
            more,
        )
    }

    fn payload(e: &WatchEvent) -> &[u8] {
        bytes_of(e.payload.as_ref().unwrap())
    }

    #[test]
    fn split_cuts_into_zero_copy_slices_and_reassembles() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let whole = snap(7, &data, false);
        let parts = split(&whole, 3_000);
        assert_eq!(parts.len(), 4);
        assert!(parts[..3]
            .iter()
            .all(|p| p.more && payload(p).len() == 3_000));
        assert!(!parts[3].more);
        assert_eq!(payload(&parts[3]).len(), 1_000);
        assert!(parts.iter().all(|p| p.revision == 7));
        // Slices of the one buffer.
        let Some(Payload::Snapshot(orig)) = &whole.payload else {
            unreachable!()
        };
        let Some(Payload::Snapshot(first)) = &parts[0].payload else {
            panic!("kind kept")
        };
        assert_eq!(first.as_ptr(), orig.as_ptr());

        let mut r = Reassembler::default();
        let mut out = Vec::new();
        for p in parts {
            if let Some(e) = r.push(p).unwrap() {
                out.push(e);
            }
        }
        assert_eq!(out, vec![whole]);
        assert_eq!(r.in_progress(), None);
    }

    #[test]
    fn small_events_pass_through_unchanged() {
        let e = ev(3, Some(Payload::Delta(Bytes::from_static(b"abc"))), false);
        assert_eq!(split(&e, 3), vec![e.clone()]);
        let mut r = Reassembler::default();
        assert_eq!(r.push(e.clone()).unwrap(), Some(e));
        // No payload and no parts pending: passed on (the applier reports it).
        let empty = ev(4, None, false);
        assert_eq!(r.push(empty.clone()).unwrap(), Some(empty));
    }

    #[test]
    fn a_sequence_interrupted_by_another_revision_or_kind_is_refused() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(snap(5, b"ab", true)).unwrap(), None);
        assert_eq!(r.in_progress(), Some((5, 2)));
        let err = r.push(snap(6, b"cd", false)).unwrap_err();
        assert!(matches!(
            err,
            PartError::Interrupted {
                revision: 5,
                by_revision: 6,
                ..
            }
        ));
        assert_eq!(r.in_progress(), None, "dropped on error");

        r.push(snap(5, b"ab", true)).unwrap();
        let delta = ev(5, Some(Payload::Delta(Bytes::from_static(b"x"))), false);
        let err = r.push(delta).unwrap_err();
        assert!(err.to_string().contains("interrupted by a delta"), "{err}");

        r.push(snap(5, b"ab", true)).unwrap();
        assert!(matches!(
            r.push(ev(5, None, false)).unwrap_err(),
            PartError::Interrupted { .. }
        ));
        // After an error a new sequence is accepted.
        r.push(snap(8, b"ab", true)).unwrap();
        assert_eq!(
            payload(&r.push(snap(8, b"c", false)).unwrap().unwrap()),
            b"abc"
        );
    }

    #[test]
    fn reassembly_is_bounded_and_parts_need_a_payload() {
        let mut r = Reassembler::new(4);
        r.push(snap(1, b"abc", true)).unwrap();
        let err = r.push(snap(1, b"de", false)).unwrap_err();
        assert_eq!(
            err,
            PartError::TooLarge {
                revision: 1,
                kind: PayloadKind::Snapshot,
                limit: 4
            }
        );
        assert!(err.to_string().contains("exceeds 4 bytes"));
        assert!(matches!(
            r.push(snap(2, b"abcde", true)).unwrap_err(),
            PartError::TooLarge { .. }
        ));
        assert_eq!(r.push(ev(3, None, true)).unwrap_err(), PartError::Empty(3));
        // Exactly at the limit is fine.
        r.push(snap(4, b"ab", true)).unwrap();
        assert_eq!(
            payload(&r.push(snap(4, b"cd", false)).unwrap().unwrap()),
            b"abcd"
        );
    }
}

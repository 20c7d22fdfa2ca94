//! The record stored at each revision of the log: the command (what replicas replay) and the
//! encoded `Delta` it produced (what resuming watchers receive, without recomputing it).
//!
//! Layout: one format byte (`1`), the command's JSON length as a big-endian `u32`, the
//! command's JSON, then the protobuf `Delta` bytes.

use bytes::Bytes;

use crate::command::Command;

const FORMAT: u8 = 1;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The command applied at this revision.
    pub command: Command,
    /// The protobuf-encoded `Delta` it produced.
    pub delta: Bytes,
}

impl LogRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let cmd = serde_json::to_vec(&self.command).expect("commands serialise");
        let len = u32::try_from(cmd.len()).expect("command under 4 GiB");
        let mut out = Vec::with_capacity(5 + cmd.len() + self.delta.len());
        out.push(FORMAT);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&cmd);
        out.extend_from_slice(&self.delta);
        out
    }

    /// Decodes a record written by [`LogRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (&format, rest) = bytes.split_first().ok_or("empty log record")?;
        if format != FORMAT {
            return Err(format!(
                "log record format {format} is unknown (this build reads {FORMAT})"
            ));
        }
        if rest.len() < 4 {
            return Err("log record shorter than its header".into());
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if rest.len() < len {
            return Err("log record shorter than its command".into());
        }
        let (cmd, delta) = rest.split_at(len);
        let command = serde_json::from_slice(cmd)
            .map_err(|e| format!("logged command does not decode: {e}"))?;
        Ok(LogRecord {
            command,
            delta: Bytes::copy_from_slice(delta),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let rec = LogRecord {
            command: Command::ApplyTopology {
                yaml: "version: 1\ndomain: a\n".into(),
            },
            delta: Bytes::from_static(b"\x08\x01"),
        };
        assert_eq!(LogRecord::decode(&rec.encode()).unwrap(), rec);
    }

    #[test]
    fn truncated_records_are_refused() {
        let rec = LogRecord {
            command: Command::ApplyTopology { yaml: "x".into() },
            delta: Bytes::new(),
        };
        let bytes = rec.encode();
        for cut in [0, 1, 3, bytes.len() - 1] {
            assert!(LogRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(LogRecord::decode(&[9, 0, 0, 0, 0]).is_err());
    }
}

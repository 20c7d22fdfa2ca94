//! Located errors of the files fleet-registry reads (topology, registry snapshot, and the
//! agent's configuration): `FILE:LINE:COL: message`. One type for all of them, named after
//! each use by re-export ([`TopologyError`], [`SnapshotError`](crate::SnapshotError), and the
//! agent's `ConfigError`).

use std::fmt;

/// One problem in a file, with where it is and (in the message) how to mend it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedError {
    /// The file name as given by the caller.
    pub file: String,
    /// 1-based line (0 only when the reader gave no position).
    pub line: usize,
    /// 1-based column (0 only when the reader gave no position).
    pub column: usize,
    /// What is wrong and how to mend it.
    pub message: String,
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for LocatedError {}

/// Every error found in one file, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedErrors(pub Vec<LocatedError>);

/// A problem in a topology file.
pub use LocatedError as TopologyError;
/// Every problem found in a topology file.
pub use LocatedErrors as TopologyErrors;

impl LocatedErrors {
    /// The errors, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &LocatedError> {
        self.0.iter()
    }

    /// How many errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no error (never for a returned error).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LocatedErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LocatedErrors {}

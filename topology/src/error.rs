//! Located errors of the topology file: `FILE:LINE:COL: message`.

use std::fmt;

/// One problem in a topology file, with where it is and (in the message) how to mend it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// The file name as given by the caller.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to mend it.
    pub message: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for TopologyError {}

/// Every error found in one file, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyErrors(pub Vec<TopologyError>);

impl TopologyErrors {
    /// The errors, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &TopologyError> {
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

impl fmt::Display for TopologyErrors {
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

impl std::error::Error for TopologyErrors {}

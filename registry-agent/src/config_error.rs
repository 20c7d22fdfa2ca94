//! Located errors of the agent configuration file: `FILE:LINE:COL: message`, the same type
//! as the topology file's.

/// One problem in the agent configuration file: where it is, what is wrong and how to mend it.
pub use topology::error::LocatedError as ConfigError;
/// Every error found in one configuration file, in file order. Never empty when returned.
pub use topology::error::LocatedErrors as ConfigErrors;

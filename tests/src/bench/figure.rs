//! One measured figure: its samples (one per run), its unit and the target it is held to.

use std::fmt;

use super::stats;

/// What a figure must reach to meet the performance targets (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Reported for information; the performance targets (BENCHMARKS.md) sets no number.
    None,
    /// Strictly below the value (latencies, memory).
    Below(f64),
    /// At most the value (counts of failures).
    AtMost(f64),
    /// At least the value (throughput).
    AtLeast(f64),
    /// Within `[low, high]` (a hold-down that must neither fire early nor lag).
    Between(f64, f64),
}

impl Target {
    /// Whether `value` meets the target; `None` when there is no target.
    pub fn met(self, value: f64) -> Option<bool> {
        match self {
            Target::None => None,
            Target::Below(t) => Some(value < t),
            Target::AtMost(t) => Some(value <= t),
            Target::AtLeast(t) => Some(value >= t),
            Target::Between(lo, hi) => Some(value >= lo && value <= hi),
        }
    }

    /// The comparison, as the JSON `target_op` field.
    pub fn op(self) -> Option<&'static str> {
        match self {
            Target::None => None,
            Target::Below(_) => Some("<"),
            Target::AtMost(_) => Some("<="),
            Target::AtLeast(_) => Some(">="),
            Target::Between(..) => Some("between"),
        }
    }

    /// The bound compared against (the low bound of a range), as the JSON `target` field.
    pub fn value(self) -> Option<f64> {
        match self {
            Target::None => None,
            Target::Below(t) | Target::AtMost(t) | Target::AtLeast(t) => Some(t),
            Target::Between(lo, _) => Some(lo),
        }
    }

    /// The high bound of a range, as the JSON `target_max` field.
    pub fn high(self) -> Option<f64> {
        match self {
            Target::Between(_, hi) => Some(hi),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Target::None => write!(f, "-"),
            Target::Below(t) => write!(f, "< {}", stats::fmt_num(t)),
            Target::AtMost(t) => write!(f, "<= {}", stats::fmt_num(t)),
            Target::AtLeast(t) => write!(f, ">= {}", stats::fmt_num(t)),
            Target::Between(lo, hi) => {
                write!(f, "{}..{}", stats::fmt_num(lo), stats::fmt_num(hi))
            }
        }
    }
}

/// A figure as measured: one sample per run, the median is its value.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable name, used on the command line and in JSON.
    pub name: &'static str,
    /// Unit of every sample.
    pub unit: &'static str,
    /// What the performance targets (BENCHMARKS.md) asks for.
    pub target: Target,
    /// One value per run.
    pub samples: Vec<f64>,
    /// How it was measured, and anything odd seen while measuring.
    pub notes: Vec<String>,
    /// Why it could not be measured, when it could not.
    pub error: Option<String>,
    /// The value is the sum of the runs rather than their median (counts of failures, where
    /// one bad run must not hide behind good ones).
    pub sum_of_runs: bool,
}

impl Figure {
    /// A figure with no samples yet, with the catalog's unit and target.
    pub fn new(name: &'static str) -> Figure {
        let def = super::catalog::def(name);
        Figure {
            name,
            unit: def.map(|d| d.unit).unwrap_or(""),
            target: def.map(|d| d.target).unwrap_or(Target::None),
            samples: Vec::new(),
            notes: Vec::new(),
            error: None,
            sum_of_runs: false,
        }
    }

    /// A figure that could not be measured.
    pub fn failed(name: &'static str, error: impl Into<String>) -> Figure {
        let mut f = Figure::new(name);
        f.error = Some(error.into());
        f
    }

    /// Adds one run's value.
    pub fn push(&mut self, sample: f64) {
        self.samples.push(sample);
    }

    /// Adds a note (how it was measured, or what went wrong in one run).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The median of the runs (their sum for counts, see [`Figure::sum_of_runs`]).
    pub fn value(&self) -> Option<f64> {
        if self.error.is_some() || self.samples.is_empty() {
            return None;
        }
        if self.sum_of_runs {
            return Some(self.samples.iter().sum());
        }
        stats::median(&self.samples)
    }

    /// The smallest run.
    pub fn min(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::min)
    }

    /// The largest run.
    pub fn max(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::max)
    }

    /// Whether the median meets the target (`None`: no target or no value).
    pub fn met(&self) -> Option<bool> {
        self.value().and_then(|v| self.target.met(v))
    }

    /// The figure as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "value": self.value(),
            "unit": self.unit,
            "target": self.target.value(),
            "target_op": self.target.op(),
            "target_max": self.target.high(),
            "met": self.met(),
            "min": self.min(),
            "max": self.max(),
            "runs": self.samples.len(),
            "aggregate": if self.sum_of_runs { "sum" } else { "median" },
            "notes": self.notes,
            "error": self.error,
        })
    }
}

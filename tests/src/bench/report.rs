//! The benchmark's answer: a text table, JSON (one object per figure), or a Markdown section for
//! BENCHMARKS.md.

use std::fmt::Write as _;

use super::figure::Figure;
use super::stats::fmt_num;
use super::system::Machine;
use super::Mode;

/// Everything one invocation measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Full or quick.
    pub mode: Mode,
    /// When it started (UTC).
    pub started: String,
    /// Wall time of the whole invocation, in seconds.
    pub seconds: f64,
    /// The command line, as typed.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Every figure asked for, in catalog order.
    pub figures: Vec<Figure>,
}

fn cell(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_else(|| "-".into())
}

fn met_word(f: &Figure) -> &'static str {
    if f.error.is_some() {
        return "ERROR";
    }
    match f.met() {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    }
}

impl Report {
    /// A table for a terminal, then the notes of every figure.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fleet-bench ({} mode) on {}; started {}, took {:.0} s",
            self.mode.name(),
            self.machine,
            self.started,
            self.seconds
        );
        let _ = writeln!(
            s,
            "{:<28} {:>10} {:>10} {:>10} {:>4}  {:<9} {:<14} met",
            "figure", "value", "min", "max", "runs", "unit", "target"
        );
        for f in &self.figures {
            let _ = writeln!(
                s,
                "{:<28} {:>10} {:>10} {:>10} {:>4}  {:<9} {:<14} {}",
                f.name,
                cell(f.value()),
                cell(f.min()),
                cell(f.max()),
                f.samples.len(),
                f.unit,
                f.target.to_string(),
                met_word(f)
            );
        }
        let _ = writeln!(
            s,
            "\nvalue = median of the runs (sum for counts of failures)"
        );
        for f in &self.figures {
            if let Some(e) = &f.error {
                let _ = writeln!(s, "- {}: ERROR: {e}", f.name);
            }
            for n in &f.notes {
                let _ = writeln!(s, "- {}: {n}", f.name);
            }
        }
        s
    }

    /// One JSON document: the run's context and one object per figure.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode.name(),
            "started": self.started,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "command": self.command,
            "machine": self.machine.to_json(),
            "figures": self.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        })
    }

    /// A Markdown table and notes, for BENCHMARKS.md.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "- Date: {}", self.started);
        let _ = writeln!(s, "- Machine: {}", self.machine);
        let _ = writeln!(
            s,
            "- Mode: {}; the measurements took {:.0} s",
            self.mode.name(),
            self.seconds
        );
        let _ = writeln!(s, "- fleet-bench invoked as: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "| figure | value (median) | min | max | runs | unit | target | met |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |");
        for f in &self.figures {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
                f.name,
                cell(f.value()),
                cell(f.min()),
                cell(f.max()),
                f.samples.len(),
                f.unit,
                f.target
                    .to_string()
                    .replace('<', "&lt;")
                    .replace('>', "&gt;"),
                met_word(f)
            );
        }
        let _ = writeln!(
            s,
            "\nHow each figure was measured, as the command reported it:\n"
        );
        for f in &self.figures {
            if let Some(e) = &f.error {
                let _ = writeln!(s, "- `{}`: **not measured**: {e}", f.name);
            }
            for n in &f.notes {
                let _ = writeln!(s, "- `{}`: {n}", f.name);
            }
        }
        s
    }
}

//! `fleet-bench soak [--minutes N]`: the long churn run (see `tests::bench::soak`).
//!
//! `fleet-bench [all|GROUP|FIGURE...] [--quick] [--json|--markdown] [--list]`: measures every
//! figure of the performance targets (BENCHMARKS.md) on loopback with the real binaries built next to it (use `bench/run.sh`,
//! which builds them in release mode first) and prints figure, value, target, met.

use std::process::ExitCode;

use clap::Parser;
use tests::bench::{self, Mode, Selection};

/// Measures the figures of the performance targets (BENCHMARKS.md) and compares them with their targets.
#[derive(Debug, Parser)]
#[command(name = "fleet-bench", version, about)]
struct Args {
    /// `all` (the default), group names or figure names; `--list` shows them.
    figures: Vec<String>,
    /// Tiny sizes and test-fast settings: every figure in a few seconds (values are meaningless).
    #[arg(long)]
    quick: bool,
    /// One JSON document with one object per figure (name, value, unit, target, met, min, max, runs).
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// A Markdown table and notes, for BENCHMARKS.md.
    #[arg(long)]
    markdown: bool,
    /// List the groups and figures, then exit.
    #[arg(long)]
    list: bool,
    /// With `soak`: how long the churn runs, in minutes.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
}

/// The multi-threaded runtime every run uses (`None`, said on stderr, when it cannot start).
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("fleet-bench: cannot start the async runtime: {e}"))
        .ok()
}

/// `fleet-bench soak`: the long churn run (not a figure; its report is a time series).
fn soak(minutes: u64) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(bench::soak::run(minutes));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-bench: soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        print!("{}", bench::list());
        return ExitCode::SUCCESS;
    }
    if args.figures == ["soak"] {
        return soak(args.minutes);
    }
    let selection = match Selection::parse(&args.figures) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleet-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = if args.quick { Mode::Quick } else { Mode::Full };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let report = runtime.block_on(bench::run(mode, &selection, command));
    // Stream tasks may still hold connections; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        );
    } else if args.markdown {
        print!("{}", report.to_markdown());
    } else {
        print!("{}", report.to_text());
    }
    if report.figures.iter().any(|f| f.error.is_some()) {
        eprintln!("fleet-bench: some figures could not be measured (see ERROR above)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

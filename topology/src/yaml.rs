//! serde-saphyr settings for the snapshot parser: resource budgets that keep any input from
//! exhausting the stack or memory, and plain located error messages.

use serde_saphyr::{Budget, DuplicateKeyPolicy, Options};

/// YAML nesting a snapshot needs is 5 (root, hosts, host, packages, package); anything much
/// deeper is refused by the parser before serde recurses into it.
pub(crate) const MAX_SNAPSHOT_DEPTH: usize = 12;

pub(crate) fn snapshot_options() -> Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_SNAPSHOT_DEPTH;
    budget.flow_nesting_limit = MAX_SNAPSHOT_DEPTH;
    budget.max_nodes = 20_000_000;
    budget.max_events = 40_000_000;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options
}

/// Line, column and a plain message (no snippet, no location suffix) of a parser error.
pub(crate) fn describe(e: &serde_saphyr::Error) -> (usize, usize, String) {
    let (line, column) = match e.location() {
        Some(l) if l.line() > 0 => (l.line() as usize, l.column().max(1) as usize),
        _ => (1, 1),
    };
    let mut opts = serde_saphyr::RenderOptions::default();
    opts.snippets = serde_saphyr::SnippetMode::Off;
    let mut msg = e.render_with_options(opts);
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    let msg = msg.lines().next().unwrap_or("").trim().to_owned();
    (line, column, msg)
}

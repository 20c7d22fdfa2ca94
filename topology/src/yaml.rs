//! serde-saphyr settings shared by the topology and snapshot parsers: resource budgets that
//! keep any input from exhausting the stack or memory, and plain located error messages.

use serde_saphyr::{Budget, DuplicateKeyPolicy, Options};

use crate::topology::MAX_DEPTH;

/// Which file the options are for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Policy {
    /// Topology: duplicate keys pass through so the validator reports each with both lines.
    Topology,
    /// Snapshot: duplicate keys are an error of the parser.
    Snapshot,
}

/// YAML nesting allowed in a topology file: two levels per subdomain (the `subdomains` list
/// and the entry map) plus the host long form, with a little slack, so the semantic depth
/// check fires first on ordinary files and the parser's budget stops pathological ones.
pub(crate) const MAX_YAML_DEPTH: usize = 2 * MAX_DEPTH + 8;

pub(crate) fn options(policy: Policy) -> Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    budget.max_nodes = 20_000_000;
    budget.max_events = 40_000_000;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = match policy {
        Policy::Topology => DuplicateKeyPolicy::PassThrough,
        Policy::Snapshot => DuplicateKeyPolicy::Error,
    };
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

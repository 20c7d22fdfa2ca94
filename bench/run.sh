#!/usr/bin/env bash
# One command for every figure of the performance targets (BENCHMARKS.md).
#
#   bash bench/run.sh                      # every figure (about five minutes on 2 cores)
#   bash bench/run.sh resolve crash        # some groups or figures; `--list` names them all
#   bash bench/run.sh all --json           # one JSON document, one object per figure
#   bash bench/run.sh all --markdown       # the table and notes for BENCHMARKS.md
#   bash bench/run.sh all --quick          # tiny sizes, a few seconds: a smoke run only
#   bash bench/run.sh soak --minutes 60    # the churn soak: RSS, data size, false expiries over time
#
# Builds the workspace in release mode first, so that the manager, the agent, the stand-in
# packages and fleet-bench are the same release build side by side (fleet-bench finds the
# other binaries next to itself). Honours CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

# Build output goes to stderr so that `--json` and `--markdown` stay clean on stdout.
cargo build --release --workspace --bins >&2

# The heartbeat figures run 10,000 simulated agents on their own connections: as many
# descriptors in the benchmark and in the manager (which inherits the limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "$target_dir/release/fleet-bench" "$@"

#!/usr/bin/env bash
# The walk-through of docs/walkthrough.md, runnable: a registry manager, three agents and two
# stand-in manager packages of the worked example on loopback; a crash, a drain, and the drain
# restored. Every state it makes lives in a directory it creates and removes, so it runs the same
# every time. Each step prints the command and its output; a step that waits for an answer
# retries for up to 20 s and fails loudly if the answer does not come.
#
#   cargo build --workspace && bash scripts/walkthrough.sh
#
# Ports used (all on 127.0.0.1): 7400 (manager), 7480 (its HTTP), 7011 and 7031 (packages),
# 7411/7413/7414 (agent APIs), 7481/7483/7484 (agent HTTP), 7511/7513/7514 (forward ports).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
B=${B:-$REPO/target/debug}
for bin in registry-manager registry-agent fleet-standin; do
  [[ -x $B/$bin ]] || { echo "walkthrough: $B/$bin is missing; run cargo build --workspace first" >&2; exit 2; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/fleet-walkthrough.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

# start NAME CMD...: runs a daemon in the walk-through directory, its log in $W/NAME.log.
start() {
  local name=$1; shift
  (cd "$W" && exec "$@") >"$W/$name.log" 2>&1 &
  PIDS+=($!)
  echo "+ started $name (pid $!, log $W/$name.log)"
}

# step CMD...: prints and runs a command.
step() {
  echo "\$ $*"
  "$@"
  echo
}

# expect TEXT CMD...: runs CMD until its output contains TEXT (20 s at most), then prints it.
expect() {
  local want=$1; shift
  local out="" deadline=$((SECONDS + 20))
  echo "\$ $*"
  while (( SECONDS < deadline )); do
    out=$("$@" 2>&1) || true
    if [[ $out == *"$want"* ]]; then
      echo "$out"
      echo
      return 0
    fi
    sleep 0.2
  done
  echo "walkthrough: expected \"$want\" from: $*; last output:" >&2
  echo "$out" >&2
  exit 1
}

# through_forward PORT: one connection through an agent's forward port; prints the greeting.
through_forward() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
print(s.makefile().readline().strip())
PY
}

CCM=command-control-manager
M=("$B/registry-manager")

echo "# 1. A registry manager with the worked example's topology, data in $W/registry-data"
start manager "$B/registry-manager" serve --config "$REPO/examples/manager.yaml" \
  --data-dir "$W/registry-data" --topology "$REPO/examples/topology.yaml"
expect "framework" "${M[@]}" topology show

echo "# 2. Two command-control-manager packages (on agent-3 and agent-1) and three agents"
start standin-agent-3 "$B/fleet-standin" --host agent-3 --listen 127.0.0.1:7031
S3=${PIDS[-1]}
start standin-agent-1 "$B/fleet-standin" --host agent-1 --listen 127.0.0.1:7011
for h in 3 1 4; do
  start "agent-$h" "$B/registry-agent" run --config "$REPO/examples/agent-$h.yaml"
done
# agent-4 routes to agent-3, in its own domain (after the 5 s revert hold-down when agent-1's
# package was registered first).
expect "$CCM: agent-3 (" "$B/registry-agent" resolve $CCM --agent 127.0.0.1:7414

echo "# 3. A connection through agent-4's forward port reaches agent-3's package"
expect "agent-3" through_forward 7514

echo "# 4. agent-3's package crashes: agent-4 moves to agent-1 at once"
{ kill -9 "$S3" && wait "$S3"; } 2>/dev/null || true
expect "$CCM: agent-1 (" "$B/registry-agent" resolve $CCM --agent 127.0.0.1:7414
expect "agent-1" through_forward 7514

echo "# 5. The operator drains agent-1's package: agent-4 has no command-control-manager left"
step "${M[@]}" package drain --host agent-1 --type $CCM
expect "$CCM=draining" "${M[@]}" registry hosts
expect "$CCM: no eligible manager" "$B/registry-agent" resolve $CCM --agent 127.0.0.1:7414

echo "# 6. The drain is restored: agent-4 routes to agent-1 again"
step "${M[@]}" package restore --host agent-1 --type $CCM
expect "$CCM: agent-1 (" "$B/registry-agent" resolve $CCM --agent 127.0.0.1:7414
expect "$CCM=running" "${M[@]}" registry hosts

echo "# done: stopping every process and removing $W"

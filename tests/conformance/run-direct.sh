#!/usr/bin/env bash
# Serve the conformance fixture on 127.0.0.1, run the official MCP conformance
# suite against it directly, then stop the fixture (by its PID).
#
#   tests/conformance/run-direct.sh [PORT] [OUTDIR]
#
# Run from anywhere; PORT defaults to 3001, OUTDIR to a fresh temp dir (the
# suite writes one checks.json per scenario there; the fixture's log goes to
# OUTDIR/fixture.log). Needs the suite runner at ../shared/mcp-conformance (beside the repository)
# (override with MCP_CONFORMANCE_RUN=/path/to/run.sh).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
port=${1:-3001}
out=${2:-$(mktemp -d -t mcp-fixture-conformance-XXXX)}
suite=${MCP_CONFORMANCE_RUN:-$repo/../shared/mcp-conformance/run.sh}
url="http://127.0.0.1:$port/mcp"
mkdir -p "$out"

if (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "port $port is already in use on 127.0.0.1" >&2
  exit 1
fi

cd "$repo"
PORT=$port .venv/bin/python tests/conformance/fixture.py >"$out/fixture.log" 2>&1 &
fixture_pid=$!
stop_fixture() {
  if kill -0 "$fixture_pid" 2>/dev/null; then
    kill -TERM "$fixture_pid"
    wait "$fixture_pid" || true
  fi
}
trap stop_fixture EXIT

# Wait until it answers (any HTTP status will do), or give up after ~10 s.
for _ in $(seq 1 50); do
  curl -s -o /dev/null -m 1 "$url" && break
  kill -0 "$fixture_pid" 2>/dev/null || { echo "fixture exited early:" >&2; cat "$out/fixture.log" >&2; exit 1; }
  sleep 0.2
done

status=0
bash "$suite" suite "$url" "" "$out" | tee "$out/suite.txt" || status=$?
echo "scenarios passed: $(grep -c '^✓' "$out/suite.txt") of $(grep -cE '^(✓|✗)' "$out/suite.txt"); details in $out"
exit "$status"

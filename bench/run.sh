#!/usr/bin/env bash
# Palisade benchmark harness: mock upstream, gateway and load generator on one machine; every
# scenario runs the direct path (client -> mock) and the gateway path (client -> gateway -> mock)
# in the same invocation, then prints the comparison table. See bench/README.md.
#
#   bench/run.sh                 full run (~10 minutes)
#   bench/run.sh --quick         a subset in under two minutes (once built)
#   bench/run.sh --litellm       also run the chat scenarios through LiteLLM (installs it into bench/.venv)
#   bench/run.sh --nginx         also run the keep-alive chat scenarios through nginx, the floor
#                                reference for what any reverse proxy adds here (installs nginx-light)
#
# Options: --quick, --litellm, --nginx, --duration S, --warmup S, --repeat N, --no-pin, --out DIR,
#          --only REGEX, --bin-dir DIR (use prebuilt palisade and palisade-bench from DIR instead of
#          building). --repeat N runs each gateway scenario N times (direct, gateway, direct, ...);
#          the report shows the median of the runs and each run's added latency.
#          --halt-poll NS sets the guest kernel's halt polling (cpuidle haltpoll, VMs only, root) to NS
#          nanoseconds for the run and puts the old value back at exit (see bench/README.md).
# Environment: CARGO_TARGET_DIR (default: the repo's target/), GATEWAY_CPUS (default 1),
#              CLIENT_CPUS (default 0), LITELLM_VERSION (default below).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=quick-release
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/$PROFILE
LITELLM_VERSION=${LITELLM_VERSION:-1.106.12}
VENV=$ROOT/bench/.venv

QUICK=0
LITELLM=0
NGINX=0
PIN=1
DURATION=""
WARMUP=""
ONLY=""
OUT=""
BIN_DIR=""
REPEAT=1
HALT_POLL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --litellm) LITELLM=1 ;;
    --nginx) NGINX=1 ;;
    --no-pin) PIN=0 ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --out) OUT=$2; shift ;;
    --bin-dir) BIN_DIR=$2; shift ;;
    --halt-poll) HALT_POLL=$2; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ $REPEAT =~ ^[1-9][0-9]?$ ]]; then
  echo "bench/run.sh: --repeat takes a number of runs from 1 to 99, not '$REPEAT'" >&2; exit 2
fi
if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-4}; WARMUP=${WARMUP:-1}; DRAIN=3
else
  DURATION=${DURATION:-10}; WARMUP=${WARMUP:-2}; DRAIN=10
fi

# ---------------------------------------------------------------- guest idle policy
# On a VM whose guest kernel uses the haltpoll cpuidle driver, an idle vCPU polls this long for
# new work before it halts (a halted vCPU is woken through the host: tens to hundreds of µs).
HALT_POLL_PARAM=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_OLD=""
if [ -n "$HALT_POLL" ]; then
  if ! [[ $HALT_POLL =~ ^[0-9]{1,10}$ ]]; then
    echo "bench/run.sh: --halt-poll takes nanoseconds (0 turns polling off), not '$HALT_POLL'" >&2; exit 2
  fi
  if ! [ -w "$HALT_POLL_PARAM" ]; then
    echo "bench/run.sh: --halt-poll needs the haltpoll cpuidle driver (a VM guest) and root: $HALT_POLL_PARAM is not writable" >&2; exit 2
  fi
  HALT_POLL_OLD=$(cat "$HALT_POLL_PARAM")
fi
idle_policy() {
  local drv
  drv=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)
  if [ "$drv" = haltpoll ] && [ -r "$HALT_POLL_PARAM" ]; then
    echo "cpuidle driver haltpoll, guest halt polling $(cat "$HALT_POLL_PARAM") ns$([ -n "$HALT_POLL" ] && echo ' (set by --halt-poll for this run)')"
  else
    echo "cpuidle driver $drv"
  fi
}

# ---------------------------------------------------------------- processes we start (by PID)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  if [ -n "$HALT_POLL_OLD" ]; then
    echo "$HALT_POLL_OLD" >"$HALT_POLL_PARAM" 2>/dev/null || true
  fi
}
# Stops a process and the children it forked (found through /proc, by PID only).
stop_pid() {
  local pid=$1 kids="" t
  [ -d "/proc/$pid" ] || return 0
  for t in /proc/"$pid"/task/*/children; do kids="$kids $(cat "$t" 2>/dev/null || true)"; done
  kill -TERM "$pid" 2>/dev/null || true
  for t in $kids; do kill -TERM "$t" 2>/dev/null || true; done
  for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  kill -KILL "$pid" $kids 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The reason a palisade command gave for refusing something: the innermost cause line.
reason() { grep -vE '^(Error:|Caused by:|Stack backtrace:|[[:space:]]+[0-9]+: |[[:space:]]+at |[[:space:]]*$)' "$1" | head -n1 | sed 's/^ *//' | cut -c1-160; }
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
if [ -n "$HALT_POLL_OLD" ]; then
  echo "$HALT_POLL" >"$HALT_POLL_PARAM"
  log "guest halt polling set to $HALT_POLL ns for this run (was $HALT_POLL_OLD ns)"
fi

# ---------------------------------------------------------------- CPU pinning
NCPU=$(nproc)
if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
  GATEWAY_CPUS=${GATEWAY_CPUS:-1}
  CLIENT_CPUS=${CLIENT_CPUS:-0}
  ON_GW=(taskset -c "$GATEWAY_CPUS")
  ON_CLIENT=(taskset -c "$CLIENT_CPUS")
  PINNING="gateway/LiteLLM on CPU $GATEWAY_CPUS; mock upstream + load generator on CPU $CLIENT_CPUS"
else
  ON_GW=(); ON_CLIENT=()
  PINNING="none (all processes share $NCPU CPUs)"
fi

# ---------------------------------------------------------------- build
if [ -n "$BIN_DIR" ]; then
  BIN=$(cd "$BIN_DIR" && pwd)
  log "using prebuilt binaries in $BIN"
else
  log "building palisade and palisade-bench (profile $PROFILE, target dir $TARGET_DIR)"
  (cd "$ROOT" && cargo build --quiet --profile "$PROFILE" -p palisade -p palisade-bench)
fi
for b in palisade palisade-bench; do
  [ -x "$BIN/$b" ] || { echo "bench/run.sh: $BIN/$b not found" >&2; exit 1; }
done

STAMP=$(date +%Y%m%d-%H%M%S)
RUN_DIR=${OUT:-$ROOT/bench/results/$STAMP}
mkdir -p "$RUN_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/palisade-bench.XXXXXX")
trap 'cleanup; rm -rf "$WORK"' EXIT
log "results in $RUN_DIR"

# Ports: a block derived from our PID, each checked free, all on 127.0.0.1, and below Linux's
# ephemeral range (32768 and up), where a client connection of a previous run could hold one.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
BASE=$((20000 + ($$ % 1200) * 10))
pick_port() {
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}
MOCK_PORT=$(pick_port $((BASE + 1)))
GW_PORT=$(pick_port $((BASE + 2)))
ADMIN_PORT=$(pick_port $((BASE + 3)))
LL_PORT=$(pick_port $((BASE + 4)))
wait_port() { # port timeout_s pid
  local i
  for i in $(seq 1 $(($2 * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    [ -n "${3:-}" ] && ! [ -d "/proc/$3" ] && return 1
    sleep 0.1
  done
  return 1
}

CLK_TCK=$(getconf CLK_TCK)
KEY=pal_bench_key_0123456789abcdef0123
# LiteLLM refuses to start without a master key (no database: only this key is accepted).
LL_KEY=sk-bench-0123456789abcdef0123456789abcdef
CHAT_PATH=/v1/chat/completions

# ---------------------------------------------------------------- run metadata
cores="$NCPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
mem="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
if [ -n "$BIN_DIR" ]; then
  # Prebuilt binaries: their commit is whatever the builder wrote into DIR/COMMIT.
  commit="prebuilt binaries from $BIN ($(cat "$BIN/COMMIT" 2>/dev/null || echo 'commit unknown'))"
else
  commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit (with uncommitted changes)"; fi
fi
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
MODE="$([ "$QUICK" = 1 ] && echo quick || echo full), ${DURATION}s measured + ${WARMUP}s warm-up per run"
if [ "$REPEAT" -gt 1 ]; then MODE="$MODE, each gateway scenario $REPEAT times (direct and gateway alternating)"; fi
json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1" 2>/dev/null || printf '"%s"' "$1"; }

# ---------------------------------------------------------------- mock upstream
log "starting mock upstream on 127.0.0.1:$MOCK_PORT (50 chunks per streamed answer)"
"${ON_CLIENT[@]}" "$BIN/palisade" mock-llm --addr "127.0.0.1:$MOCK_PORT" --chunks 50 \
  >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PORT" 10 "$MOCK_PID" || { cat "$WORK/mock.log" >&2; exit 1; }

# ---------------------------------------------------------------- scenarios
SEQ=0
next_seq() { SEQ=$((SEQ + 1)); printf -v SEQ_S '%03d' "$SEQ"; }
GW_PID=""

# load TARGET SCENARIO URL EXTRA_ARGS... -> $RUN_DIR/NNN-SCENARIO.TARGET.json
# One run's result file; repeated runs of a scenario get the run number (.r01, .r02, ...).
result_file() { # scenario target
  if [ "$REPEAT" -gt 1 ] && [ "$2" != litellm ] && [ "$2" != nginx ]; then
    printf '%s/%s-%s.r%02d.%s.json' "$RUN_DIR" "$SEQ_S" "$1" "$REP" "$2"
  else
    printf '%s/%s-%s.%s.json' "$RUN_DIR" "$SEQ_S" "$1" "$2"
  fi
}

load() {
  local target=$1 scen=$2 url=$3; shift 3
  "${ON_CLIENT[@]}" "$BIN/palisade-bench" load --url "$url" --scenario "$scen" --target "$target" \
    --duration "$DURATION" --warmup "$WARMUP" --drain-timeout "$DRAIN" --clk-tck "$CLK_TCK" \
    --out "$(result_file "$scen" "$target")" "$@" >/dev/null \
    || log "load generator failed for $scen/$target"
}

summary() { # scenario target
  python3 - "$(result_file "$1" "$2")" <<'EOF' 2>/dev/null || true
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_us"]; e = r["errors"]
print(f"    {r['target']:<8} rps {r['rps']:>9.1f}  p50 {l['p50']:>7}  p99 {l['p99']:>8}  p99.9 {l['p999']:>8}  errs {e['non_2xx']+e.get('unexpected',0)}/{e['io']+e['unsent']}")
EOF
}

# scenario NAME ARGS... : direct, then gateway (with process watch), same load; --repeat times.
REP=1
scenario() {
  local name=$1; shift
  if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then return 0; fi
  next_seq
  for REP in $(seq 1 "$REPEAT"); do
    log "scenario $name$([ "$REPEAT" -gt 1 ] && echo " (run $REP of $REPEAT)")"
    load direct "$name" "http://127.0.0.1:$MOCK_PORT$CHAT_PATH" --watch-pid "$MOCK_PID" "$@"
    summary "$name" direct >&2
    load gateway "$name" "http://127.0.0.1:$GW_PORT$CHAT_PATH" --key "$KEY" --watch-pid "$GW_PID" "$@"
    summary "$name" gateway >&2
  done
  REP=1
}

skip() { # name reason
  if [ -n "$ONLY" ] && ! [[ $1 =~ $ONLY ]]; then return 0; fi
  next_seq
  log "scenario $1: $2"
  printf '{"scenario": %s, "skipped": %s}\n' "$(json_str "$1")" "$(json_str "$2")" \
    >"$RUN_DIR/$SEQ_S-$1.skipped.json"
}

# reference_runs TARGET LABEL URL PID "RATES" [LOAD ARGS...]: the keep-alive 1 KiB chat scenarios
# (each rate, then saturation) through a reference proxy, under the no-policy scenario names so
# the report shows its rows beside the gateway's.
reference_runs() {
  local target=$1 label=$2 url=$3 pid=$4 rates=$5 run name extra
  shift 5
  for run in $(printf 'r%s ' $rates) sat; do
    name="chat1k-nopolicy-ka-$run"
    if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then continue; fi
    next_seq; log "scenario $name via $label"
    if [ "$run" = sat ]; then extra=("${SAT[@]}"); else extra=(--rate "${run#r}" "${OPEN[@]}"); fi
    load "$target" "$name" "$url" --watch-pid "$pid" --prompt-bytes 1024 "${extra[@]}" "$@"
    summary "$name" "$target" >&2
  done
}

# gateway_config NAME POLICY_IDS... -> path of a config file
gateway_config() {
  local name=$1; shift
  local file="$WORK/gateway-$name.toml" list="" id
  for id in "$@"; do list="$list\"$id\", "; done
  {
    echo '[[groups]]'
    echo 'name = "bench"'
    echo '[[api_keys]]'
    echo 'name = "bench"'
    echo 'group = "bench"'
    echo "key = \"$KEY\""
    echo '[[proxies]]'
    echo 'name = "bench-llm"'
    echo 'kind = "llm"'
    echo "listen = \"127.0.0.1:$GW_PORT\""
    echo "upstream = \"http://127.0.0.1:$MOCK_PORT\""
    echo 'api = "openai"'
    # Without policies the key is left out, so this config also works on builds that
    # predate the policy engine.
    if [ $# -gt 0 ]; then echo "policies = [${list%, }]"; fi
  } >"$file"
  echo "$file"
}

# start_gateway NAME CONFIG -> sets GW_PID, or returns 1 with the reason in $GW_REFUSED
start_gateway() {
  local name=$1 cfg=$2 data
  GW_REFUSED=""
  if ! "$BIN/palisade" check-config "$cfg" >"$WORK/check-$name.log" 2>&1; then
    GW_REFUSED="not available yet: palisade check-config refuses the config ($(reason "$WORK/check-$name.log"))"
    return 1
  fi
  data=$(mktemp -d "$WORK/data-$name.XXXX")
  PALISADE_ADMIN_PASSWORD=bench-admin-password-0001 \
    "${ON_GW[@]}" "$BIN/palisade" serve --config "$cfg" --data-dir "$data" \
    --admin-addr "127.0.0.1:$ADMIN_PORT" >"$WORK/gateway-$name.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  local i
  for i in $(seq 1 200); do
    grep -q "proxy \`${GW_PROXY:-bench-llm}\` listening" "$WORK/gateway-$name.log" 2>/dev/null && break
    if ! [ -d "/proc/$GW_PID" ]; then break; fi
    sleep 0.1
  done
  if ! grep -q "proxy \`${GW_PROXY:-bench-llm}\` listening" "$WORK/gateway-$name.log" 2>/dev/null; then
    GW_REFUSED="not available yet: the gateway did not start the proxy ($(grep -iE 'error|refus|fail|invalid' "$WORK/gateway-$name.log" | head -n1 | cut -c1-160))"
    cp "$WORK/gateway-$name.log" "$RUN_DIR/gateway-$name.log" 2>/dev/null || true
    stop_gateway
    return 1
  fi
  # Idle memory: after start-up has settled, before any traffic.
  sleep 1
  local rss
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status")
  idle_json "palisade $name" "$GW_PID" >"$RUN_DIR/idle-palisade-$name.json"
  log "gateway ($name) up, pid $GW_PID, idle RSS $((rss / 1024)) MiB"
}

# An idle-memory record: resident size, and its anonymous (heap, stacks) and file-backed (mapped
# binary and libraries, shared with the page cache) parts.
idle_json() {
  local status="/proc/$2/status"
  printf '{"kind": "idle", "config": %s, "rss_kib": %s, "rss_anon_kib": %s, "rss_file_kib": %s}\n' \
    "$(json_str "$1")" "$(awk '/^VmRSS:/ {print $2}' "$status")" \
    "$(awk '/^RssAnon:/ {print $2}' "$status")" "$(awk '/^RssFile:/ {print $2}' "$status")"
}

stop_gateway() {
  [ -n "$GW_PID" ] || return 0
  stop_pid "$GW_PID"
  forget_pid "$GW_PID"
  GW_PID=""
}

# Policy packs, from the shipped files: all of them, and those with redaction rules.
ALL_PACKS=()
REDACT_PACKS=()
for f in "$ROOT"/policies/*.json; do
  case "$f" in *.schema.json) continue ;; esac
  id=$(basename "$f" .json)
  ALL_PACKS+=("$id")
  grep -qE '"action"[[:space:]]*:[[:space:]]*"redact"' "$f" && REDACT_PACKS+=("$id")
done
LLM_PACKS=()
for id in "${ALL_PACKS[@]}"; do case "$id" in mcp-*) ;; *) LLM_PACKS+=("$id") ;; esac; done

# run_config NAME SCENARIO_FUNCTION PACKS... ; tries all packs, then (for allpacks) LLM-only packs.
run_config() {
  local name=$1 fn=$2; shift 2
  local cfg
  cfg=$(gateway_config "$name" "$@")
  if start_gateway "$name" "$cfg"; then
    if [ $# -gt 0 ]; then log "policies on the proxy: $*"; fi
    "$fn" "$name" ""
    stop_gateway
  else
    log "$name: $GW_REFUSED"
    "$fn" "$name" "$GW_REFUSED"
  fi
}

# Each scenario function gets (config, refusal); with a refusal every scenario is skipped.
S() { # run-or-skip: S CONFIG REFUSAL NAME ARGS...
  local refused=$2 name=$3; shift 3
  if [ -n "$refused" ]; then skip "$name" "$refused"; else scenario "$name" "$@"; fi
}
OPEN=(--connections 64)
SAT=(--connections 32)
# Ordinary chat lines in four languages (eval/corpora, see its NOTICE): the `novel` scenarios'
# prompts are runs of them, a different one on every request, as in real traffic.
NOVEL=(--prompt-lines "$ROOT/eval/corpora/chatterbot.jsonl")

# The repeated prompt with a number on every request (`--numbered`): the same words, but no text
# the policy memo has seen, so these rows show the engine's full cost on every request.
# (Quick mode: saturation only, to stay within two minutes.)
numbered_scenarios() {
  local c=$1 r=$2
  if [ "$QUICK" = 0 ]; then
    S "$c" "$r" "chat1k-numbered-$c-ka-r2000" --prompt-bytes 1024 --numbered --rate 2000 "${OPEN[@]}"
  fi
  S "$c" "$r" "chat1k-numbered-$c-ka-sat" --prompt-bytes 1024 --numbered "${SAT[@]}"
}

chat_scenarios() {
  local c=$1 r=$2
  if [ "$QUICK" = 1 ]; then
    if [ "$c" = nopolicy ] && [ "$LITELLM" = 1 ]; then
      S "$c" "$r" "chat1k-$c-ka-r20" --prompt-bytes 1024 --rate 20 "${OPEN[@]}"
    fi
    S "$c" "$r" "chat1k-$c-ka-r500" --prompt-bytes 1024 --rate 500 "${OPEN[@]}"
    S "$c" "$r" "chat1k-$c-ka-r2000" --prompt-bytes 1024 --rate 2000 "${OPEN[@]}"
    S "$c" "$r" "chat1k-$c-ka-sat" --prompt-bytes 1024 "${SAT[@]}"
    if [ "$c" = nopolicy ]; then
      S "$c" "$r" "stream50-$c-ka-r500" --prompt-bytes 1024 --stream --rate 500 "${OPEN[@]}"
    else
      numbered_scenarios "$c" "$r"
    fi
    return 0
  fi
  for rate in 20 100 500 2000 5000; do
    S "$c" "$r" "chat1k-$c-ka-r$rate" --prompt-bytes 1024 --rate "$rate" "${OPEN[@]}"
  done
  S "$c" "$r" "chat1k-$c-ka-sat" --prompt-bytes 1024 "${SAT[@]}"
  if [ "$c" != nopolicy ]; then numbered_scenarios "$c" "$r"; fi
  S "$c" "$r" "chat1k-novel-$c-ka-r500" --prompt-bytes 1024 "${NOVEL[@]}" --rate 500 "${OPEN[@]}"
  S "$c" "$r" "chat1k-novel-$c-ka-sat" --prompt-bytes 1024 "${NOVEL[@]}" "${SAT[@]}"
  S "$c" "$r" "chat16k-$c-ka-r2000" --prompt-bytes 16384 --rate 2000 "${OPEN[@]}"
  S "$c" "$r" "chat16k-$c-ka-sat" --prompt-bytes 16384 "${SAT[@]}"
  S "$c" "$r" "stream50-$c-ka-r500" --prompt-bytes 1024 --stream --rate 500 "${OPEN[@]}"
  S "$c" "$r" "stream50-$c-ka-sat" --prompt-bytes 1024 --stream "${SAT[@]}"
  if [ "$c" = nopolicy ]; then
    for rate in 500 2000; do
      S "$c" "$r" "chat1k-$c-fresh-r$rate" --prompt-bytes 1024 --fresh-connections --rate "$rate" "${OPEN[@]}"
    done
    S "$c" "$r" "chat1k-$c-fresh-sat" --prompt-bytes 1024 --fresh-connections "${SAT[@]}"
  fi
}

redact_scenarios() {
  local c=$1 r=$2
  S "$c" "$r" "chat1k-pii-$c-ka-r2000" --prompt-bytes 1024 --pii --rate 2000 "${OPEN[@]}"
  S "$c" "$r" "chat1k-pii-$c-ka-sat" --prompt-bytes 1024 --pii "${SAT[@]}"
  # Streamed answer with redaction and unmasking on: time to first byte.
  S "$c" "$r" "stream50-pii-$c-ka-r500" --prompt-bytes 1024 --pii --stream --rate 500 "${OPEN[@]}"
  if [ "$QUICK" = 0 ]; then S "$c" "$r" "chat16k-pii-$c-ka-r2000" --prompt-bytes 16384 --pii --rate 2000 "${OPEN[@]}"; fi
}

GOAL_CONFIG=nopolicy
run_config nopolicy chat_scenarios

if [ ${#ALL_PACKS[@]} -eq 0 ]; then
  skip chat1k-allpacks "not available: no policy packs in policies/"
else
  cfg=$(gateway_config allpacks "${ALL_PACKS[@]}")
  packs=("${ALL_PACKS[@]}")
  # An LLM proxy may refuse MCP-only packs: fall back to the LLM packs.
  if ! "$BIN/palisade" check-config "$cfg" >/dev/null 2>&1 && [ ${#LLM_PACKS[@]} -gt 0 ]; then
    packs=("${LLM_PACKS[@]}")
  fi
  run_config allpacks chat_scenarios "${packs[@]}"
  if [ -z "$GW_REFUSED" ]; then GOAL_CONFIG=allpacks; fi
fi

if [ "$QUICK" = 0 ]; then
  if [ ${#REDACT_PACKS[@]} -eq 0 ]; then
    skip chat1k-pii-redact "not available yet: no shipped pack has redact rules"
  else
    run_config redact redact_scenarios "${REDACT_PACKS[@]}"
  fi
fi

# MCP tools/call through an MCP proxy (approved tool, mcp-advanced-security on arguments and
# results) in front of `palisade mock-mcp --stateless`, against the same mock directly.
MCP_PORT=$(pick_port $((BASE + 5)))
"${ON_CLIENT[@]}" "$BIN/palisade" mock-mcp --addr "127.0.0.1:$MCP_PORT" --stateless >"$WORK/mock-mcp.log" 2>&1 &
MCP_PID=$!
PIDS+=("$MCP_PID")
if wait_port "$MCP_PORT" 10 "$MCP_PID"; then
  python3 -c '
import json, sys
msg = ("Please echo this line of ordinary business text back. " * 19)[:1024]
json.dump({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"message": msg}}}, open(sys.argv[1], "w"))
' "$WORK/mcp-call.json"
  {
    echo '[[api_keys]]'
    echo 'name = "bench"'
    echo "key = \"$KEY\""
    echo '[[proxies]]'
    echo 'name = "bench-mcp"'
    echo 'kind = "mcp"'
    echo "listen = \"127.0.0.1:$GW_PORT\""
    echo "upstream = \"http://127.0.0.1:$MCP_PORT/mcp\""
    echo 'approved_tools = ["echo"]'
    echo 'policies = ["mcp-advanced-security"]'
  } >"$WORK/gateway-mcp.toml"
  # The gateway passes a tool only once a client listed it (it pins the tool's definition):
  # list through the gateway, then check that a call is answered by the server, not refused.
  mcp_ready() { # URL KEY CALL_FILE
    python3 - "$@" <<'PY'
import json, sys, urllib.request
url, key, call = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
def post(body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {
        "authorization": f"Bearer {key}", "content-type": "application/json",
        "accept": "application/json, text/event-stream"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())
listed = post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
names = [t.get("name") for t in listed.get("result", {}).get("tools", [])]
if "echo" not in names:
    sys.exit(f"tools/list through the gateway does not list echo: {json.dumps(listed)[:200]}")
answer = post(call)
if "result" not in answer:
    sys.exit(f"tools/call through the gateway is not answered: {json.dumps(answer)[:200]}")
PY
  }
  MCP_READY=0
  if GW_PROXY=bench-mcp start_gateway mcp "$WORK/gateway-mcp.toml"; then
    if NOT_READY=$(mcp_ready "http://127.0.0.1:$GW_PORT/mcp" "$KEY" "$WORK/mcp-call.json" 2>&1); then
      MCP_READY=1
    else
      GW_REFUSED="not measured: ${NOT_READY:0:200}"
      stop_gateway
    fi
  fi
  if [ "$MCP_READY" = 1 ]; then
    for spec in "mcp-toolscall-ka-r2000 --rate 2000 ${OPEN[*]}" "mcp-toolscall-ka-sat ${SAT[*]}"; do
      read -r name args <<<"$spec"
      if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then continue; fi
      next_seq
      log "scenario $name"
      # shellcheck disable=SC2086
      load direct "$name" "http://127.0.0.1:$MCP_PORT/mcp" --body-file "$WORK/mcp-call.json" --expect '"result"' --watch-pid "$MCP_PID" $args
      summary "$name" direct >&2
      # shellcheck disable=SC2086
      load gateway "$name" "http://127.0.0.1:$GW_PORT/mcp" --key "$KEY" --body-file "$WORK/mcp-call.json" --expect '"result"' --watch-pid "$GW_PID" $args
      summary "$name" gateway >&2
    done
    stop_gateway
  else
    skip mcp-toolscall-ka-r2000 "$GW_REFUSED"
    skip mcp-toolscall-ka-sat "$GW_REFUSED"
  fi
else
  skip mcp-toolscall-ka-r2000 "mock-mcp did not start"
fi
stop_pid "$MCP_PID"
forget_pid "$MCP_PID"

# ---------------------------------------------------------------- nginx floor reference
# What any proxy costs on this machine: nginx (a C reverse proxy with upstream keep-alive, no
# body inspection) on the gateway's CPU, in front of the same mock, same load. Its added latency
# is the floor of the extra loopback hop; Palisade's minus nginx's is what the gateway itself adds.
if [ "$NGINX" = 1 ]; then
  NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  if ! [ -x "$NGINX_BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing nginx-light (Debian) for the floor reference"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) \
      >"$WORK/nginx-install.log" 2>&1 || true
  fi
  if [ -x "$NGINX_BIN" ]; then
    NGX_PORT=$(pick_port $((BASE + 6)))
    mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
    cat >"$WORK/nginx/nginx.conf" <<EOF
# One process (no master) so its PID is the one serving: CPU and RSS are read from it.
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  client_body_buffer_size 64k;
  keepalive_requests 1000000;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
    "${ON_GW[@]}" "$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/stdout.log" 2>&1 &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    if wait_port "$NGX_PORT" 10 "$NGX_PID"; then
      nv=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')
      log "nginx ($nv) on 127.0.0.1:$NGX_PORT, pid $NGX_PID"
      if [ "$QUICK" = 1 ]; then rates="2000"; else rates="500 2000 5000"; fi
      reference_runs nginx nginx "http://127.0.0.1:$NGX_PORT$CHAT_PATH" "$NGX_PID" "$rates"
    else
      skip nginx "nginx did not start (see nginx-error.log)"
    fi
    cp "$WORK/nginx/logs/error.log" "$RUN_DIR/nginx-error.log" 2>/dev/null || true
    stop_pid "$NGX_PID"
    forget_pid "$NGX_PID"
  else
    skip nginx "nginx is not installed (and could not be installed: not root or no apt-get)"
  fi
fi

# ---------------------------------------------------------------- LiteLLM comparison
if [ "$LITELLM" = 1 ]; then
  have=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true)
  if ! [ -x "$VENV/bin/litellm" ] || [ "$have" != "$LITELLM_VERSION" ]; then
    log "installing litellm[proxy]==$LITELLM_VERSION into bench/.venv"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION"
  fi
  cat >"$WORK/litellm.yaml" <<EOF
model_list:
  - model_name: mock-gpt
    litellm_params:
      model: openai/mock-gpt
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: unused
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  master_key: $LL_KEY
EOF
  log "starting LiteLLM $LITELLM_VERSION on 127.0.0.1:$LL_PORT"
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_LOG=ERROR \
    DISABLE_ADMIN_UI=True NO_DOCS=True PYTHONUNBUFFERED=1 \
    "${ON_GW[@]}" "$VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 \
    --port "$LL_PORT" --num_workers 1 >"$WORK/litellm.log" 2>&1 &
  LL_PID=$!
  PIDS+=("$LL_PID")
  ok=0
  if wait_port "$LL_PORT" 120 "$LL_PID"; then
    for _ in $(seq 1 60); do
      if curl -sf -o /dev/null "http://127.0.0.1:$LL_PORT$CHAT_PATH" -H 'content-type: application/json' \
        -H "authorization: Bearer $LL_KEY" \
        -d '{"model":"mock-gpt","messages":[{"role":"user","content":"hello"}]}'; then ok=1; break; fi
      sleep 1
    done
  fi
  if [ "$ok" = 1 ]; then
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$LL_PID/status")
    idle_json "litellm $LITELLM_VERSION" "$LL_PID" >"$RUN_DIR/idle-zz-litellm.json"
    # LiteLLM has no guardrails configured, so it is measured once per rate and compared with
    # Palisade without policies (like for like) and, copied under that name, with all packs.
    if [ "$QUICK" = 1 ]; then rates="20"; else rates="20 100 500 2000 5000"; fi
    reference_runs litellm LiteLLM "http://127.0.0.1:$LL_PORT$CHAT_PATH" "$LL_PID" "$rates" \
      --key "$LL_KEY"
    if [ "$GOAL_CONFIG" = allpacks ] && [ "$QUICK" = 0 ]; then
      for f in "$RUN_DIR"/*-chat1k-nopolicy-ka-*.litellm.json; do
        [ -f "$f" ] || continue
        sed 's/"scenario": "chat1k-nopolicy-/"scenario": "chat1k-allpacks-/' "$f" \
          >"${f/-chat1k-nopolicy-/-chat1k-allpacks-}"
      done
    fi
  else
    log "LiteLLM did not answer; see $RUN_DIR/litellm.log"
    cp "$WORK/litellm.log" "$RUN_DIR/litellm.log" || true
    skip litellm "LiteLLM did not start (see litellm.log)"
  fi
  stop_pid "$LL_PID"
  forget_pid "$LL_PID"
  cp "$WORK/litellm.log" "$RUN_DIR/litellm.log" 2>/dev/null || true
fi

# ---------------------------------------------------------------- report
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
{
  printf '{"kind": "meta", "date": %s, ' "$(json_str "$(date -u '+%Y-%m-%d %H:%M UTC')")"
  printf '"machine": %s, ' "$(json_str "$cores, $mem, $(uname -sr)")"
  printf '"commit": %s, ' "$(json_str "$commit")"
  printf '"load": %s, ' "$(json_str "load average (1/5/15 min) at start $LOAD_START, at end $LOAD_END")"
  printf '"pinning": %s, ' "$(json_str "$PINNING")"
  printf '"idle": %s, ' "$(json_str "$(idle_policy)")"
  printf '"mode": %s}\n' "$(json_str "$MODE")"
} >"$RUN_DIR/meta.json"
"$BIN/palisade-bench" report "$RUN_DIR" \
  --latency-goal "chat1k-allpacks-ka-r2000,chat1k-nopolicy-ka-r2000" \
  --saturation-goal "chat1k-allpacks-ka-sat,chat1k-nopolicy-ka-sat" | tee "$RUN_DIR/report.txt"
log "report saved to $RUN_DIR/report.txt"

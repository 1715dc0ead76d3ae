#!/usr/bin/env bash
# CPU per paid call at the rates agents use (issue 22, goal 6): RATE paid calls per second for
# SECONDS_PER_ROUND to a paywall that answers 100-300 ms after a valid payment (like a server
# that settles first; tests/common/paywall.rs `/settling`, signatures verified), open loop.
# Measured in one run, ROUNDS alternating rounds:
#   * Coinbase's client: @x402/fetch + @x402/evm in Node paying the paywall itself; that Node
#     process's CPU per paid call (the reference of the goal);
#   * the floor: bare Pingora (benches/pingora.rs) relaying free calls that wait as long
#     (`/delayed`) from a plain Node agent (undici fetch), its CPU per call; pag0 relaying the
#     same free calls;
#   * pag0 paying: the plain agent through pag0 (absolute-form requests); pag0's CPU (every
#     thread, from /proc/PID/task/*/schedstat) per paid call;
# and pag0's CPU per second while idle (IDLE seconds without traffic, after the calls).
# pag0 runs conf/examples/paid-apis.yaml with only addresses, files, the loopback allowance, the
# bench key and an unreachable facilitator URL (no internet here) changed.
#
# BASELINE=path/to/an/older/pag0 adds that binary to the same rounds.
#
#   benches/paid_rate.sh        # RATE=50 SECONDS_PER_ROUND=20 ROUNDS=3 IDLE=10 by default
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-50}
CALL_SECONDS=${SECONDS_PER_ROUND:-20}
ROUNDS=${ROUNDS:-3}
IDLE=${IDLE:-10}
KEY=pag0_demo_dev_only_key
WALLET=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
X402JS_VERSION=2.27.0
VIEM_VERSION=2.58.8

. benches/lib.sh
command -v node >/dev/null || { echo "node is required (.ci/bootstrap installs it)" >&2; exit 1; }
.ci/bootstrap >&2
cargo build --release --locked --bin pag0 >&2
HELPER=$(bench_helper x402)
TOOLS=$PWD/target/tools
export NODE_TOOLS_DIR=$TOOLS X402JS_DIR=$TOOLS/x402js
installed() { node -p "JSON.parse(require('fs').readFileSync('$X402JS_DIR/node_modules/$1/package.json')).version" 2>/dev/null; }
if [ "$(installed @x402/fetch)" != "$X402JS_VERSION" ] || [ "$(installed @x402/evm)" != "$X402JS_VERSION" ] \
  || [ "$(installed viem)" != "$VIEM_VERSION" ]; then
  echo "installing @x402/fetch, @x402/evm $X402JS_VERSION and viem $VIEM_VERSION under $X402JS_DIR" >&2
  mkdir -p "$X402JS_DIR"
  (cd "$X402JS_DIR" && { [ -f package.json ] || echo '{"private":true}' > package.json; } \
    && npm install --no-audit --no-fund --silent "@x402/fetch@$X402JS_VERSION" "@x402/evm@$X402JS_VERSION" "viem@$VIEM_VERSION") >&2
fi

start_work
UP=$(port)
"$HELPER" paywall "127.0.0.1:$UP" 2>/dev/null & pids+=($!)
wait_port "$UP"

# conf/examples/paid-apis.yaml, with this machine's addresses and files.
start_pag0() { # $1 = name, $2 = binary; sets PAG0_PORT and PAG0_PID
  local p a
  p=$(port); a=$(port)
  python3 - "$work" "$1" "$p" "$a" > "$work/$1.yaml" <<'PY'
import sys
work, name, proxy, admin = sys.argv[1:]
text = open("conf/examples/paid-apis.yaml").read()
def swap(old, new):
    global text
    assert text.count(old) == 1, old
    text = text.replace(old, new)
swap("admin:\n", f"server:\n  listen: [\"127.0.0.1:{proxy}\"]\n  pid_file: {work}/{name}.pid\n"
     f"  upgrade_sock: {work}/{name}.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 0\n"
     f"admin:\n  listen: 127.0.0.1:{admin}\n")
swap("url: https://x402.org/facilitator", "url: http://127.0.0.1:9/facilitator")
swap("  - kind: ssrf_guard\n", '  - kind: ssrf_guard\n    allow: ["127.0.0.1/32"]\n')
swap("sha256:0a6b2f6b8a2ac0ef5c1f2f0d7d5e6b7c8a9b0c1d2e3f405162738495a6b7c8d9",
     "sha256:79f8ca837c673888f582d0c8204f8b6ab31c8b0a7930512e94a4bd0a518bf83a")
text += f"""
database:
  url: sqlite:{work}/{name}.db
  spool_file: {work}/{name}.spool
"""
print(text)
PY
  PAG0_ADMIN_TOKEN=bench-admin-token-0123456789 RESEARCH_AGENT_WALLET_KEY=$WALLET RUST_LOG=warn \
    "$2" -c "$work/$1.yaml" >"$work/$1.log" 2>&1 &
  PAG0_PID=$!; pids+=($PAG0_PID)
  wait_port "$p"
  PAG0_PORT=$p
}

# Nanoseconds of CPU that every thread of process $1 has used so far.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {printf "%d", s}'; }
AUTH=$(printf 'research-agent:%s' "$KEY" | base64 -w0)
URL="http://127.0.0.1:$UP/settling"
client() { node benches/paid_rate_client.mjs "$@"; }
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

declare -A PID PORT
start_pag0 pag0 target/release/pag0; PID[pag0]=$PAG0_PID; PORT[pag0]=$PAG0_PORT
NAMES=(pag0)
if [ -n "${BASELINE:-}" ]; then
  start_pag0 baseline "$BASELINE"; PID[baseline]=$PAG0_PID; PORT[baseline]=$PAG0_PORT
  NAMES+=(baseline)
fi
# The floor: bare Pingora (benches/pingora.rs, as many threads as pag0) relaying the same
# rate of free calls that wait as long (`/delayed`) from the same Node agent.
BARE_HELPER=$(bench_helper pingora)
PB=$(port)
"$BARE_HELPER" proxy "127.0.0.1:$PB" "127.0.0.1:$UP" "$(awk '/^  threads:/ {print $2}' "$work/pag0.yaml" | grep . || echo 2)" >/dev/null 2>&1 &
BARE=$!; pids+=($BARE)
wait_port "$PB"

# Warm-up: every client once, pag0 learns the price.
for n in "${NAMES[@]}"; do client proxy "$URL" 20 1 "http://127.0.0.1:${PORT[$n]}" "$AUTH" >/dev/null; done
client x402-fetch "$URL" 20 1 >/dev/null
client direct "http://127.0.0.1:$PB/delayed" 20 1 >/dev/null

declare -A PER_CALL AGENT
# case NAME PID CLIENT-ARGS...: one round of CLIENT-ARGS; appends PID's CPU per call (if a PID
# is given) and the agent's own to PER_CALL[NAME] and AGENT[NAME].
case_run() {
  local name=$1 pid=$2 before after out
  shift 2
  before=$([ -n "$pid" ] && cpu_ns "$pid" || echo 0)
  out=$(client "$@")
  after=$([ -n "$pid" ] && cpu_ns "$pid" || echo 0)
  [ "$(json "$out" failed)" = 0 ] || { echo "$name: failed calls: $out" >&2; exit 1; }
  PER_CALL[$name]+="$(awk -v d=$((after - before)) -v c="$(json "$out" ok)" 'BEGIN {printf "%.3f", d/c/1e6}') "
  AGENT[$name]+="$(awk -v m="$(json "$out" cpu_ms)" -v c="$(json "$out" ok)" 'BEGIN {printf "%.3f", m/c}') "
  echo "round $round $name: $out" >&2
}
CASES=("x402-fetch" "pingora-bare free" "pag0 free")
echo "pag0 paid calls at a fixed rate  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  rate=$RATE/s  ${CALL_SECONDS}s per round  rounds=$ROUNDS" >&2
for round in $(seq 1 "$ROUNDS"); do
  case_run "x402-fetch" "" x402-fetch "$URL" "$RATE" "$CALL_SECONDS"
  case_run "pingora-bare free" "$BARE" direct "http://127.0.0.1:$PB/delayed" "$RATE" "$CALL_SECONDS"
  case_run "pag0 free" "${PID[pag0]}" proxy "http://127.0.0.1:$UP/delayed" "$RATE" "$CALL_SECONDS" "http://127.0.0.1:${PORT[pag0]}" "$AUTH"
  for n in "${NAMES[@]}"; do
    case_run "$n paid" "${PID[$n]}" proxy "$URL" "$RATE" "$CALL_SECONDS" "http://127.0.0.1:${PORT[$n]}" "$AUTH"
  done
done
for n in "${NAMES[@]}"; do CASES+=("$n paid"); done

declare -A IDLE_MS
sleep 2
for n in "${NAMES[@]}"; do
  before=$(cpu_ns "${PID[$n]}"); sleep "$IDLE"; after=$(cpu_ns "${PID[$n]}")
  IDLE_MS[$n]=$(awk -v d=$((after - before)) -v s="$IDLE" 'BEGIN {printf "%.3f", d/s/1e6}')
done

echo
# shellcheck disable=SC2086
D=$(median ${AGENT[x402-fetch]})
printf "%-22s %14s %10s %14s  %s\n" case "proxy CPU ms" "x fetch" "agent CPU ms" "proxy CPU ms per round"
printf "%-22s %14s %10s %14s  %s\n" "@x402/fetch (pays)" "-" "-" "$D" ""
for c in "${CASES[@]:1}"; do
  # shellcheck disable=SC2086
  m=$(median ${PER_CALL[$c]}); a=$(median ${AGENT[$c]})
  printf "%-22s %14s %10s %14s  %s\n" "$c" "$m" "$(awk -v a="$m" -v b="$D" 'BEGIN {printf "%.3f", a/b}')" "$a" "${PER_CALL[$c]}"
done
echo "(per call, medians of $ROUNDS rounds; proxy CPU = every thread of the proxy process; agent CPU = the Node client's own)"
echo
for n in "${NAMES[@]}"; do echo "$n idle: ${IDLE_MS[$n]} ms CPU per second"; done

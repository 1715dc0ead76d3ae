#!/usr/bin/env bash
# CPU per paid call at the rates agents use (issue 22, goal 6): RATE paid calls per second for
# SECONDS_PER_ROUND to a paywall that answers 100-300 ms after a valid payment (like a server
# that settles first; tests/common/paywall.rs `/settling`, signatures verified), open loop.
# Measured in one run, ROUNDS alternating rounds:
#   * through pag0: a plain Node agent (undici fetch via the proxy) and pag0 paying; pag0's CPU
#     (every thread, from /proc/PID/task/*/schedstat) per paid call;
#   * Coinbase's client: @x402/fetch + @x402/evm in Node paying the same paywall itself; that
#     Node process's CPU per paid call.
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
if ! (cd "$X402JS_DIR" 2>/dev/null && node -e "process.exit(require('@x402/fetch/package.json').version === '$X402JS_VERSION' ? 0 : 1)" 2>/dev/null); then
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
# Warm-up: every client once, pag0 learns the price.
for n in "${NAMES[@]}"; do client proxy "$URL" 20 1 "http://127.0.0.1:${PORT[$n]}" "$AUTH" >/dev/null; done
client x402-fetch "$URL" 20 1 >/dev/null

declare -A PER_CALL AGENT
DIRECT=()
echo "pag0 paid calls at a fixed rate  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  rate=$RATE/s  ${CALL_SECONDS}s per round  rounds=$ROUNDS" >&2
for round in $(seq 1 "$ROUNDS"); do
  for n in "${NAMES[@]}"; do
    before=$(cpu_ns "${PID[$n]}")
    out=$(client proxy "$URL" "$RATE" "$CALL_SECONDS" "http://127.0.0.1:${PORT[$n]}" "$AUTH")
    after=$(cpu_ns "${PID[$n]}")
    [ "$(json "$out" failed)" = 0 ] || { echo "$n: failed calls: $out" >&2; exit 1; }
    PER_CALL[$n]+="$(awk -v d=$((after - before)) -v c="$(json "$out" ok)" 'BEGIN {printf "%.3f", d/c/1e6}') "
    AGENT[$n]+="$(awk -v m="$(json "$out" cpu_ms)" -v c="$(json "$out" ok)" 'BEGIN {printf "%.3f", m/c}') "
    echo "round $round $n: $out" >&2
  done
  out=$(client x402-fetch "$URL" "$RATE" "$CALL_SECONDS")
  [ "$(json "$out" failed)" = 0 ] || { echo "x402-fetch: failed calls: $out" >&2; exit 1; }
  DIRECT+=("$(awk -v m="$(json "$out" cpu_ms)" -v c="$(json "$out" ok)" 'BEGIN {printf "%.3f", m/c}')")
  echo "round $round x402-fetch: $out" >&2
done

declare -A IDLE_MS
sleep 2
for n in "${NAMES[@]}"; do
  before=$(cpu_ns "${PID[$n]}"); sleep "$IDLE"; after=$(cpu_ns "${PID[$n]}")
  IDLE_MS[$n]=$(awk -v d=$((after - before)) -v s="$IDLE" 'BEGIN {printf "%.3f", d/s/1e6}')
done

echo
D=$(median "${DIRECT[@]}")
printf "%-34s %16s %10s  %s\n" case "CPU ms per call" "x fetch" "rounds"
printf "%-34s %16s %10s  %s\n" "@x402/fetch (Node, pays itself)" "$D" "1.00" "${DIRECT[*]}"
for n in "${NAMES[@]}"; do
  # shellcheck disable=SC2086
  m=$(median ${PER_CALL[$n]}); a=$(median ${AGENT[$n]})
  printf "%-34s %16s %10s  %s\n" "$n: pag0 process" "$m" "$(awk -v a="$m" -v b="$D" 'BEGIN {printf "%.3f", a/b}')" "${PER_CALL[$n]}"
  printf "%-34s %16s %10s  %s\n" "$n: the agent (Node via proxy)" "$a" "$(ratio "$a" "$D")" "${AGENT[$n]}"
done
echo
for n in "${NAMES[@]}"; do echo "$n idle: ${IDLE_MS[$n]} ms CPU per second"; done

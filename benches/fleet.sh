#!/usr/bin/env bash
# What the fleet-wide money guarantees (issue 32) cost, measured in one run with alternating
# rounds against BASELINE, a pag0 built before them (in-process idempotency records, an
# in-process cache-fill lock):
#
#  1. paid calls, each with a fresh Idempotency-Key (price memory on: one signed round trip per
#     call, against the test paywall with verification off): the records in Redis (shared) and
#     in the embedded SQLite (durable) vs BASELINE's in-process records; calls/s and the CPU
#     time of the pag0 process (all its threads, /proc/PID/stat) per call;
#  2. cache hits from the memory tier of a pag0 with a Redis tier (the fleet-wide fill lock
#     on; a hit must not touch Redis) vs BASELINE's with the same configuration.
#
#   BASELINE=path/to/older/pag0 benches/fleet.sh     # DURATION=8 ROUNDS=3 CONNS=20 THREADS=1
# Needs wrk and Redis on 127.0.0.1:6379 (keys under a random prefix, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-20}
THREADS=${THREADS:-1}
KEY=pag0_demo_dev_only_key
WALLET=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
: "${BASELINE:?set BASELINE to a pag0 binary built before issue 32}"

. benches/lib.sh
need_tools wrk
cargo build --release --locked --bin pag0 >&2
HELPER=$(bench_helper x402)
start_work
PREFIX="pag0fleet$RANDOM$RANDOM"
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; for k in $(redis-cli --scan --pattern "$PREFIX:*" 2>/dev/null); do redis-cli DEL "$k" >/dev/null; done; rm -rf "$work"' EXIT

UP=$(port)
"$HELPER" paywall "127.0.0.1:$UP" --no-verify 2>/dev/null & pids+=($!)
wait_port "$UP"

REDIS="redis:
  url: redis://127.0.0.1:6379
  key_prefix: $PREFIX"

# start_paid NAME BIN EXTRA_YAML: a pag0 paying with price memory behind the idempotency
# stage; sets PAG0_PORT and PAG0_PID.
start_paid() {
  local p a
  p=$(port); a=$(port)
  { pag0_base_yaml "$1" "$p" "$a"; cat <<YAML; } > "$work/$1.yaml"
payments:
  assets:
    - { network: eip155:84532, address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", symbol: USDC, decimals: 6 }
  price_memory_seconds: 300
stages:
  - kind: auth
  - kind: ssrf_guard
    allow: ["127.0.0.1"]
  - kind: idempotency
  - kind: payment
projects:
  - id: demo
    keys: ["sha256:79f8ca837c673888f582d0c8204f8b6ab31c8b0a7930512e94a4bd0a518bf83a"]
    wallet: { private_key: "\${BENCH_WALLET_KEY}" }
$3
YAML
  BENCH_WALLET_KEY=$WALLET RUST_LOG=warn "$2" -c "$work/$1.yaml" >/dev/null 2>&1 &
  PAG0_PID=$!; pids+=($!)
  wait_port "$p"
  PAG0_PORT=$p
}

# keyed_lua TAG: paid calls to the paywall's /paid, each with its own Idempotency-Key.
keyed_lua() {
  cat > "$work/keyed.lua" <<LUA
wrk.path = "http://127.0.0.1:$UP/paid"
wrk.headers["Host"] = "127.0.0.1:$UP"
wrk.headers["Proxy-Authorization"] = "Basic $(printf 'demo:%s' "$KEY" | base64 -w0)"
local n = 0
request = function()
  n = n + 1
  wrk.headers["Idempotency-Key"] = "$1-" .. n
  return wrk.format()
end
LUA
  echo "$work/keyed.lua"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# keyed_round PORT PID TAG -> "calls/s cpu_us_per_call non2xx"
keyed_round() {
  local before after out rps bad
  before=$(cpu_ticks "$2")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$(keyed_lua "$3")" "http://127.0.0.1:$1/")
  after=$(cpu_ticks "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  bad=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$out" | awk '{print $NF}' | grep . || echo 0)
  awk -v r="$rps" -v t=$((after - before)) -v hz="$TICK" -v d="$DURATION" -v b="$bad" \
    'BEGIN {printf "%s %.1f %s\n", r, t * 1e6 / hz / (r * d), b}'
}

# Each round starts every instance afresh (its records empty: BASELINE's in-process map slows
# down past 100 000 keys), warms it up (it learns the price), then measures them in turn.
TARGETS=${TARGETS:-base redis sqlite}
declare -A CALLS CPU BAD
for r in $(seq 1 "$ROUNDS"); do
  declare -A PORT PID
  for t in $TARGETS; do
    case $t in
      base) start_paid "base$r" "$BASELINE" "" ;;
      redis) start_paid "redis$r" target/release/pag0 "$REDIS" ;;
      sqlite) start_paid "sqlite$r" target/release/pag0 "" ;;
    esac
    PORT[$t]=$PAG0_PORT; PID[$t]=$PAG0_PID
    wrk -t1 -c4 -d2s -s "$(keyed_lua "warm$r$t")" "http://127.0.0.1:$PAG0_PORT/" >/dev/null
  done
  for t in $TARGETS; do
    read -r c u b < <(keyed_round "${PORT[$t]}" "${PID[$t]}" "r$r$t")
    CALLS[$t]="${CALLS[$t]:-} $c"; CPU[$t]="${CPU[$t]:-} $u"; BAD[$t]="${BAD[$t]:-} $b"
  done
  for t in $TARGETS; do kill "${PID[$t]}" 2>/dev/null || true; done
  unset PORT PID
done

if [ "${HITS:-1}" = 1 ]; then
# Part 2: memory-tier hits with a Redis tier configured, this build vs BASELINE.
start_route_pag0 hitnew "  - kind: cache" "$REDIS"; HNEW=$PAG0_PORT
PAG0_BIN=$BASELINE start_route_pag0 hitbase "  - kind: cache" "$REDIS"; HBASE=$PAG0_PORT
wait_port "$HNEW"; wait_port "$HBASE"
cat > "$work/hit.lua" <<LUA
wrk.path = "/free"
wrk.headers["X-Pag0-API-Key"] = "$KEY"
LUA
for p in $HNEW $HBASE; do wrk -t1 -c10 -d2s -s "$work/hit.lua" "http://127.0.0.1:$p/" >/dev/null; done
for p in $HNEW $HBASE; do
  h=$(curl -s -o /dev/null -D - -H "X-Pag0-API-Key: $KEY" "http://127.0.0.1:$p/free" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-pag0-cache" {print $2}')
  [ "$h" = HIT ] || { echo "pag0 on $p does not answer from its cache (X-Pag0-Cache: $h)" >&2; exit 1; }
done
CONNS_HIT=${CONNS_HIT:-50}
hit_new=(); hit_base=(); hit_pairs=()
for _ in $(seq 1 "$ROUNDS"); do
  read -r n _ < <(CONNS=$CONNS_HIT measure "http://127.0.0.1:$HNEW/free" "$work/hit.lua" "$CONNS_HIT" 0)
  read -r b _ < <(CONNS=$CONNS_HIT measure "http://127.0.0.1:$HBASE/free" "$work/hit.lua" "$CONNS_HIT" 0)
  hit_new+=("$n"); hit_base+=("$b"); hit_pairs+=("$(ratio "$n" "$b")")
done

fi

echo
echo "pag0 fleet benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  pag0 threads=$THREADS  conns=$CONNS  duration=${DURATION}s  rounds=$ROUNDS"
echo "baseline: $BASELINE"
printf "%-34s %12s %14s %10s   %s\n" "paid calls, fresh key each" "calls/s" "CPU us/call" "non-2xx" "rounds: calls/s | CPU us/call"
for t in $TARGETS; do
  case $t in base) name="baseline (in-process records)" ;; redis) name="records in Redis (shared)" ;; sqlite) name="records in SQLite (embedded)" ;; esac
  # shellcheck disable=SC2086
  printf "%-34s %12s %14s %10s   %s\n" "$name" "$(median ${CALLS[$t]})" "$(median ${CPU[$t]})" "$(echo ${BAD[$t]} | tr ' ' '+' | bc)" "${CALLS[$t]# } |${CPU[$t]}"
done
# shellcheck disable=SC2086
if [[ " $TARGETS " == *" base "* ]]; then
  for t in redis sqlite; do
    [[ " $TARGETS " == *" $t "* ]] || continue
    echo "$t / baseline: calls/s $(ratio "$(median ${CALLS[$t]})" "$(median ${CALLS[base]})"), CPU per call $(ratio "$(median ${CPU[$t]})" "$(median ${CPU[base]})")"
  done
fi
[ "${HITS:-1}" = 1 ] && echo && echo "memory-tier hits with a Redis tier (req/s, $CONNS_HIT conns): this build $(median "${hit_new[@]}"), baseline $(median "${hit_base[@]}"), ratio $(ratio "$(median "${hit_new[@]}")" "$(median "${hit_base[@]}")"); per round ${hit_pairs[*]}"

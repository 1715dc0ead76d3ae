#!/usr/bin/env bash
# Paid x402 calls through pag0 against the test paywall (verification off, so the upstream stays
# cheap), measured in one run: pass-through (free route) vs paid with price memory (one signed
# round trip per call, signatures on the signing pool: the default) vs the same with inline
# signing on the worker (signer_threads: 0) vs paid without price memory (402 + signed replay
# per call). Also prints the EIP-3009 sign+encode cost per call.
#
# BASELINE=path/to/an/older/pag0 adds that binary's paid/pass-through pairs to the same rounds
# (same paywall, alternating), for a before/after comparison in one run.
#
#   benches/paid.sh            # DURATION=10 ROUNDS=3 CONNS=20 THREADS=1 by default
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-20}
THREADS=${THREADS:-1}
KEY=pag0_demo_dev_only_key
WALLET=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d

. benches/lib.sh
need_tools wrk
cargo build --release --locked --bin pag0 >&2
HELPER=$(bench_helper x402)

start_work

UP=$(port)
"$HELPER" paywall "127.0.0.1:$UP" --no-verify 2>/dev/null & pids+=($!)
wait_port "$UP"

start_pag0() { # $1 = name, $2 = price_memory_seconds, $3 = extra YAML (policy), $4 = signer threads; sets PAG0_PORT
  local p a
  p=$(port); a=$(port)
  { pag0_base_yaml "$1" "$p" "$a"; cat <<YAML; } > "$work/$1.yaml"
payments:
  assets:
    - { network: eip155:84532, address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", symbol: USDC, decimals: 6 }
  price_memory_seconds: $2
  signer_threads: ${4:-1}
stages:
  - kind: auth
  - kind: ssrf_guard
    allow: ["127.0.0.1"]
  - kind: payment
projects:
  - id: demo
    keys: ["sha256:79f8ca837c673888f582d0c8204f8b6ab31c8b0a7930512e94a4bd0a518bf83a"]
    wallet: { private_key: "\${BENCH_WALLET_KEY}" }
${3:-}
YAML
  BENCH_WALLET_KEY=$WALLET RUST_LOG=warn "${PAG0_BIN:-target/release/pag0}" -c "$work/$1.yaml" >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$p"
  PAG0_PORT=$p
}

start_pag0 memory 300
MEM=$PAG0_PORT
BASE=""
if [ -n "${BASELINE:-}" ]; then
  PAG0_BIN=$BASELINE start_pag0 baseline 300
  BASE=$PAG0_PORT
fi
start_pag0 nomemory 0
NOMEM=$PAG0_PORT
start_pag0 inline 300 "" 0
INLINE=$PAG0_PORT
# Spend firewall on top of price memory: a policy with a budget that never runs out, kept in
# the in-process ledger or in Redis (127.0.0.1:6379, keys under a random prefix).
POLICY='    policy:
      budgets:
        - { asset: USDC, per_request: "0.05", daily: "100000000", monthly: "100000000" }'
start_pag0 policylocal 300 "$POLICY"
POLLOCAL=$PAG0_PORT
BENCH_PREFIX="pag0bench$RANDOM$RANDOM"
start_pag0 policyredis 300 "$POLICY
redis:
  url: redis://127.0.0.1:6379
  key_prefix: $BENCH_PREFIX
budgets:
  ledger: redis"
POLREDIS=$PAG0_PORT

lua() { # $1 = path on the paywall
  cat > "$work/run.lua" <<LUA
wrk.path = "http://127.0.0.1:$UP$1"
wrk.headers["Host"] = "127.0.0.1:$UP"
wrk.headers["Proxy-Authorization"] = "Basic $(printf 'demo:%s' "$KEY" | base64 -w0)"
LUA
  echo "$work/run.lua"
}

paid_measure() { # $1 = pag0 port, $2 = path -> "req/s p99ms non2xx"
  local rps p99 problems
  read -r rps p99 problems < <(wrk_run "$CONNS" "$(lua "$2")" "http://127.0.0.1:$1/")
  echo "$rps $p99 $(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$problems" | awk '{print $NF}' | grep . || echo 0)"
}

paced() { # $1 = pag0 port, $2 = path -> p99 ms at ~1000 req/s (10 connections, 10 ms apart)
  lua "$2" >/dev/null
  echo 'function delay() return 10 end' >> "$work/run.lua"
  wrk_run 10 "$work/run.lua" "http://127.0.0.1:$1/" | awk '{print $2}'
}

# Warm-up: learns the price on the price-memory instances.
for port in "$MEM" "$INLINE" "$POLLOCAL" "$POLREDIS" $BASE; do
  wrk -t1 -c4 -d2s -s "$(lua /paid)" "http://127.0.0.1:$port/" >/dev/null
done
wrk -t1 -c4 -d2s -s "$(lua /free)" "http://127.0.0.1:$MEM/" >/dev/null

# The headline ratio: ROUNDS alternating pass-through / paid pairs on the same instance (the
# VM's speed drifts within a run), reported as medians, with each pair's own ratio.
free_runs=(); mem_runs=(); pair_ratios=(); base_ratios=()
for _ in $(seq 1 "$ROUNDS"); do
  read -r FREE_RPS FREE_P99 FREE_BAD < <(paid_measure "$MEM" /free)
  read -r MEM_RPS MEM_P99 MEM_BAD < <(paid_measure "$MEM" /paid)
  free_runs+=("$FREE_RPS $FREE_P99 $FREE_BAD"); mem_runs+=("$MEM_RPS $MEM_P99 $MEM_BAD")
  pair_ratios+=("$(ratio "$MEM_RPS" "$FREE_RPS")")
  if [ -n "$BASE" ]; then
    read -r B_FREE _ _ < <(paid_measure "$BASE" /free)
    read -r B_PAID _ _ < <(paid_measure "$BASE" /paid)
    base_ratios+=("$(ratio "$B_PAID" "$B_FREE") ($B_PAID/$B_FREE)")
  fi
done
median_run() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
read -r FREE_RPS FREE_P99 FREE_BAD < <(median_run "${free_runs[@]}")
read -r MEM_RPS MEM_P99 MEM_BAD < <(median_run "${mem_runs[@]}")
read -r INLINE_RPS INLINE_P99 INLINE_BAD < <(paid_measure "$INLINE" /paid)
read -r NOMEM_RPS NOMEM_P99 NOMEM_BAD < <(paid_measure "$NOMEM" /paid)
read -r PL_RPS PL_P99 PL_BAD < <(paid_measure "$POLLOCAL" /paid)
read -r PR_RPS PR_P99 PR_BAD < <(paid_measure "$POLREDIS" /paid)
MEM_PACED=$(paced "$MEM" /paid)
INLINE_PACED=$(paced "$INLINE" /paid)
PL_PACED=$(paced "$POLLOCAL" /paid)
PR_PACED=$(paced "$POLREDIS" /paid)
for k in $(redis-cli --scan --pattern "$BENCH_PREFIX:*" 2>/dev/null); do redis-cli DEL "$k" >/dev/null; done
SIGN=$("$HELPER" sign 2000)

echo
echo "pag0 paid-call benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  pag0 threads=$THREADS  conns=$CONNS  duration=${DURATION}s"
printf "%-26s %12s %10s %10s %10s\n" case "req/s" "p99 ms" "non-2xx" "ratio"
printf "%-26s %12s %10s %10s %10s\n" "pass-through (free)" "$FREE_RPS" "$FREE_P99" "$FREE_BAD" "1.00"
printf "%-26s %12s %10s %10s %10s\n" "paid, price memory" "$MEM_RPS" "$MEM_P99" "$MEM_BAD" "$(ratio "$MEM_RPS" "$FREE_RPS")"
printf "%-26s %12s %10s %10s %10s\n" "paid, memory, inline sign" "$INLINE_RPS" "$INLINE_P99" "$INLINE_BAD" "$(ratio "$INLINE_RPS" "$FREE_RPS")"
printf "%-26s %12s %10s %10s %10s\n" "paid, no price memory" "$NOMEM_RPS" "$NOMEM_P99" "$NOMEM_BAD" "$(ratio "$NOMEM_RPS" "$FREE_RPS")"
printf "%-26s %12s %10s %10s %10s\n" "paid, memory, policy/mem" "$PL_RPS" "$PL_P99" "$PL_BAD" "$(ratio "$PL_RPS" "$FREE_RPS")"
printf "%-26s %12s %10s %10s %10s\n" "paid, memory, policy/redis" "$PR_RPS" "$PR_P99" "$PR_BAD" "$(ratio "$PR_RPS" "$FREE_RPS")"
echo
echo "paced ~1000 req/s, p99 ms: paid+memory $MEM_PACED | inline signing $INLINE_PACED | + policy (in-process ledger) $PL_PACED (added $(awk -v a="$PL_PACED" -v b="$MEM_PACED" 'BEGIN {printf "%.2f", a-b}')) | + policy (redis ledger) $PR_PACED (added $(awk -v a="$PR_PACED" -v b="$MEM_PACED" 'BEGIN {printf "%.2f", a-b}'))"
echo "paid, price memory / pass-through per round ($ROUNDS alternating pairs; medians above): ${pair_ratios[*]}"
if [ -n "$BASE" ]; then
  echo "baseline $BASELINE, paid / pass-through per round (paid/free req/s): ${base_ratios[*]}"
fi
echo "$SIGN"

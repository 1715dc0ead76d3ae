#!/usr/bin/env bash
# The shared rate limit's cost: pass-through requests through pag0 (reverse route to a fast
# nginx upstream, the bench pipeline with its rate_limit stage) with the limiter in-process vs
# in Redis (one GCRA script per request, 127.0.0.1:6379, keys under a random prefix), in one
# run: ROUNDS alternating saturation pairs (medians and each pair's ratio), then a paced load
# of ~1000 req/s (CONNS_PACED connections, PACE_MS apart) and its p99 on each.
#
#   benches/ratelimit.sh            # DURATION=8 ROUNDS=3 CONNS=50 THREADS=1 by default
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
CONNS_PACED=${CONNS_PACED:-10}
PACE_MS=${PACE_MS:-10}
THREADS=${THREADS:-1}
KEY=pag0_demo_dev_only_key

. benches/lib.sh
need_tools wrk nginx
cargo build --release --locked --bin pag0 >&2
start_work

UP=$(port)
nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; location / { return 200 '0123456789012345678901234567890123456789012345678901234567890123'; } }"
nginx -c "$work/upstream.conf" & pids+=($!)
wait_port "$UP"

start_route_pag0 local "" ""
LOCAL=$PAG0_PORT
PREFIX="pag0bench$RANDOM$RANDOM"
start_route_pag0 redis "" "redis:
  url: redis://127.0.0.1:6379
  key_prefix: $PREFIX"
REDIS=$PAG0_PORT; REDIS_ADMIN=$PAG0_ADMIN
wait_port "$LOCAL"; wait_port "$REDIS"

cat > "$work/auth.lua" <<LUA
wrk.headers["Proxy-Authorization"] = "Basic $(printf 'demo:%s' "$KEY" | base64 -w0)"
wrk.headers["X-Pag0-API-Key"] = "$KEY"
LUA
for p in $LOCAL $REDIS; do wrk -t1 -c4 -d2s -s "$work/auth.lua" "http://127.0.0.1:$p/" >/dev/null; done

local_runs=(); redis_runs=(); pairs=()
for _ in $(seq 1 "$ROUNDS"); do
  read -r L_RPS L_P99 L_BAD < <(measure "http://127.0.0.1:$LOCAL/" "$work/auth.lua" "$CONNS" 0)
  read -r R_RPS R_P99 R_BAD < <(measure "http://127.0.0.1:$REDIS/" "$work/auth.lua" "$CONNS" 0)
  [ -n "${L_BAD:-}${R_BAD:-}" ] && echo "warning: ${L_BAD:-} ${R_BAD:-}" >&2
  local_runs+=("$L_RPS $L_P99"); redis_runs+=("$R_RPS $R_P99")
  pairs+=("$(ratio "$R_RPS" "$L_RPS")")
done
median_run() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
read -r L_RPS L_P99 < <(median_run "${local_runs[@]}")
read -r R_RPS R_P99 < <(median_run "${redis_runs[@]}")
read -r LP_RPS LP_P99 _ < <(measure "http://127.0.0.1:$LOCAL/" "$work/auth.lua" "$CONNS_PACED" 1)
read -r RP_RPS RP_P99 _ < <(measure "http://127.0.0.1:$REDIS/" "$work/auth.lua" "$CONNS_PACED" 1)
FALLBACKS=$(curl -s -H "Authorization: Bearer bench-admin-token-0123456789" "http://127.0.0.1:$REDIS_ADMIN/metrics" | awk '/^pag0_rate_limit_fallbacks_total/ {print $2}')
for k in $(redis-cli --scan --pattern "$PREFIX:*" 2>/dev/null); do redis-cli DEL "$k" >/dev/null; done

echo
echo "pag0 rate-limit benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  pag0 threads=$THREADS  conns=$CONNS  duration=${DURATION}s"
printf "%-28s %12s %10s %10s\n" case "req/s" "p99 ms" "ratio"
printf "%-28s %12s %10s %10s\n" "rate limit in-process" "$L_RPS" "$L_P99" "1.00"
printf "%-28s %12s %10s %10s\n" "rate limit in Redis" "$R_RPS" "$R_P99" "$(ratio "$R_RPS" "$L_RPS")"
echo "Redis / in-process per round ($ROUNDS alternating pairs; medians above): ${pairs[*]}"
echo "paced ~1000 req/s, p99 ms: in-process $LP_P99 ($LP_RPS req/s) | Redis $RP_P99 ($RP_RPS req/s) | added $(awk -v a="$RP_P99" -v b="$LP_P99" 'BEGIN {printf "%.2f", a-b}')"
echo "decisions made in-process on the Redis instance (fallbacks): ${FALLBACKS:-?}"

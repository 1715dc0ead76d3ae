#!/usr/bin/env bash
# Cache-hit throughput and latency, side by side in one run on this machine: nginx proxy_cache
# hits, pag0 hits from the memory tier, pag0 hits from Redis only (memory tier off), and pag0's
# pass-through (no cache stage) to the same upstream, and a bare Pingora answering every request
# itself (benches/pingora.rs: the ceiling for a response served from Pingora's request_filter),
# and one answering with a body it first reads from Redis (the ceiling for a Redis-only hit).
# Ratios matter; absolute numbers depend on the box.
#
#   benches/cache.sh                 # DURATION=10 THREADS=1 CONNS=50 by default
#
# Phases per target: (1) closed-loop saturation with wrk (req/s, p99); (2) a paced load of
# ~1000 req/s (CONNS_PACED connections, each waiting PACE_MS between requests), its p99.
# Needs wrk, nginx (both installed with apt-get when missing) and Redis on REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
THREADS=${THREADS:-1}
CONNS=${CONNS:-50}
CONNS_PACED=${CONNS_PACED:-10}
PACE_MS=${PACE_MS:-10}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
KEY=pag0_demo_dev_only_key
TOKEN=bench-admin-token-0123456789

. benches/lib.sh
need_tools wrk nginx
cargo build --release --locked --bin pag0 >&2
BARE=$(bench_helper pingora)
start_work
UP=$(port); NGX=$(port)
BODY=0123456789012345678901234567890123456789012345678901234567890123

mkdir -p "$work/nginx-cache"
# nginx workers run as an unprivileged user: let them reach the cache directory.
chmod 755 "$work"; chmod 777 "$work/nginx-cache"
nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; location / { return 200 '$BODY'; } }"
nginx_conf cache "$THREADS" \
  "server { listen 127.0.0.1:$NGX; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_cache bench; proxy_cache_valid 200 5m; proxy_cache_lock on; } }" \
  "proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=10m use_temp_path=off;"
nginx -c "$work/upstream.conf" & pids+=($!)
nginx -c "$work/cache.conf" & pids+=($!)

PREFIX=bench$$
start_route_pag0 pass "" ""
PASS=$PAG0_PORT
start_route_pag0 mem "  - kind: cache" ""
MEM=$PAG0_PORT
start_route_pag0 redis "  - kind: cache" "redis:
  url: $REDIS_URL
  key_prefix: $PREFIX
cache:
  memory_bytes: 0"
RED=$PAG0_PORT; RED_ADM=$PAG0_ADMIN
PA=$(port)
"$BARE" answer "127.0.0.1:$PA" "$THREADS" >/dev/null 2>&1 & pids+=($!)
PR=$(port)
"$BARE" answer-redis "127.0.0.1:$PR" "$REDIS_URL" "$THREADS" >/dev/null 2>&1 & pids+=($!)

for p in $UP $NGX $PASS $MEM $RED $PA $PR; do wait_port "$p"; done
h=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGX/")
[ "$h" = 200 ] || { echo "nginx proxy_cache answers $h; see $work/cache.err" >&2; cat "$work/cache.err" >&2; exit 1; }

cat > "$work/reverse.lua" <<LUA
wrk.headers["X-Pag0-API-Key"] = "$KEY"
LUA

# Warm-up: fills every cache, opens the pools.
wrk -t1 -c10 -d2s "http://127.0.0.1:$NGX/" >/dev/null
wrk -t1 -c10 -d2s "http://127.0.0.1:$PR/" >/dev/null
for p in $PASS $MEM $RED; do wrk -t1 -c10 -d2s -s "$work/reverse.lua" "http://127.0.0.1:$p/" >/dev/null; done
for p in $MEM $RED; do
  h=$(curl -s -o /dev/null -D - -H "X-Pag0-API-Key: $KEY" "http://127.0.0.1:$p/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-pag0-cache" {print $2}')
  [ "$h" = HIT ] || { echo "pag0 on $p does not answer from its cache (X-Pag0-Cache: $h)" >&2; exit 1; }
done

targets="nginx-cache-hit pingora-answer pag0-memory-hit pingora-redis-answer pag0-redis-hit pag0-pass-through"
for target in $targets; do
  case $target in
    nginx-cache-hit) url="http://127.0.0.1:$NGX/"; lua="" ;;
    pingora-answer) url="http://127.0.0.1:$PA/"; lua="" ;;
    pingora-redis-answer) url="http://127.0.0.1:$PR/"; lua="" ;;
    pag0-memory-hit) url="http://127.0.0.1:$MEM/"; lua="$work/reverse.lua" ;;
    pag0-redis-hit) url="http://127.0.0.1:$RED/"; lua="$work/reverse.lua" ;;
    pag0-pass-through) url="http://127.0.0.1:$PASS/"; lua="$work/reverse.lua" ;;
  esac
  measure_target "$target" "$url" "$lua"
done
curl -s -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" -d '{"pattern":"*"}' \
  -H 'Content-Type: application/json' "http://127.0.0.1:$RED_ADM/api/cache/purge" || true

echo
echo "pag0 cache benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  threads/workers=$THREADS  duration=${DURATION}s"
printf "%-20s %12s %10s   %14s %12s\n" target "req/s" "p99 ms" "paced req/s" "paced p99"
for t in $targets; do
  printf "%-20s %12s %10s   %14s %12s\n" "$t" "${RPS[$t]}" "${P99[$t]}" "${PRPS[$t]}" "${PP99[$t]}"
done
echo
echo "ratios (saturation req/s):"
echo "  pag0-memory-hit / nginx-cache-hit   = $(ratio "${RPS[pag0-memory-hit]}" "${RPS[nginx-cache-hit]}")"
echo "  pag0-redis-hit  / nginx-cache-hit   = $(ratio "${RPS[pag0-redis-hit]}" "${RPS[nginx-cache-hit]}")"
echo "  pingora-answer  / nginx-cache-hit   = $(ratio "${RPS[pingora-answer]}" "${RPS[nginx-cache-hit]}")"
echo "  pag0-memory-hit / pingora-answer    = $(ratio "${RPS[pag0-memory-hit]}" "${RPS[pingora-answer]}")"
echo "  pingora-redis-answer / nginx-cache-hit = $(ratio "${RPS[pingora-redis-answer]}" "${RPS[nginx-cache-hit]}")"
echo "  pag0-redis-hit / pingora-redis-answer  = $(ratio "${RPS[pag0-redis-hit]}" "${RPS[pingora-redis-answer]}")"
echo "  pag0-memory-hit / pag0-pass-through = $(ratio "${RPS[pag0-memory-hit]}" "${RPS[pag0-pass-through]}")"

#!/usr/bin/env bash
# Throughput and latency of pag0 against the same upstream reached directly, through nginx and
# through a bare Pingora proxy (benches/pingora.rs: Pingora's own cost, without pag0's stages),
# all measured in one run on this machine (ratios matter, absolute numbers depend on the box).
#
#   benches/proxy.sh                 # DURATION=10 THREADS=1 CONNS=50 ROUNDS=1 by default
#   BASELINE=/path/to/older/pag0 ROUNDS=3 benches/proxy.sh
#                                    # adds that binary as pag0-baseline (reverse route); every
#                                    # target is measured once per round, rounds alternate, and
#                                    # the table shows each target's median over the rounds
#
# Phases per target: (1) closed-loop saturation with wrk (req/s, p99); (2) a paced load of
# ~1000 req/s (CONNS_PACED connections, each waiting PACE_MS between requests via wrk's delay()),
# whose p99 minus the direct p99 is the latency pag0 adds. Needs wrk; nginx is optional (the
# upstream falls back to... nginx too, so the script installs both when apt-get is available).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
THREADS=${THREADS:-1}          # worker threads of pag0 = worker_processes of nginx
WORK_STEALING=${WORK_STEALING:-true}
CONNS=${CONNS:-50}
CONNS_PACED=${CONNS_PACED:-10}
PACE_MS=${PACE_MS:-10}
KEY=pag0_demo_dev_only_key

. benches/lib.sh
need_tools wrk nginx
cargo build --release --locked --bin pag0 >&2
BARE=$(bench_helper pingora)
start_work
UP=$(port); NGX=$(port)

# Fast local upstream: nginx answering a fixed 64-byte body (1 worker, never the bottleneck role).
nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; location / { return 200 '0123456789012345678901234567890123456789012345678901234567890123'; } }"
nginx_conf proxy "$THREADS" "server { listen 127.0.0.1:$NGX; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -c "$work/upstream.conf" & pids+=($!)
nginx -c "$work/proxy.conf" & pids+=($!)

start_route_pag0 pag0 "" ""
P0=$PAG0_PORT
targets="direct nginx pingora-bare pag0-reverse pag0-forward"
if [ -n "${BASELINE:-}" ]; then
  PAG0_BIN=$BASELINE start_route_pag0 baseline "" ""
  PBASE=$PAG0_PORT
  targets="$targets pag0-baseline"
fi
PB=$(port)
"$BARE" proxy "127.0.0.1:$PB" "127.0.0.1:$UP" "$THREADS" >/dev/null 2>&1 & pids+=($!)

for p in $UP $NGX $P0 $PB ${PBASE:-}; do wait_port "$p"; done

cat > "$work/reverse.lua" <<LUA
wrk.headers["X-Pag0-API-Key"] = "$KEY"
LUA
cat > "$work/forward.lua" <<LUA
wrk.path = "http://127.0.0.1:$UP/"
wrk.headers["Host"] = "127.0.0.1:$UP"
wrk.headers["Proxy-Authorization"] = "Basic $(printf 'demo:%s' "$KEY" | base64 -w0)"
LUA

# Warm-up (connection pools, DNS cache).
wrk -t1 -c10 -d2s -s "$work/reverse.lua" "http://127.0.0.1:$P0/" >/dev/null
wrk -t1 -c10 -d2s "http://127.0.0.1:$NGX/" >/dev/null
wrk -t1 -c10 -d2s "http://127.0.0.1:$PB/" >/dev/null

[ -n "${PBASE:-}" ] && wrk -t1 -c10 -d2s -s "$work/reverse.lua" "http://127.0.0.1:$PBASE/" >/dev/null

ROUNDS=${ROUNDS:-1}
declare -A ALL_RPS ALL_P99 ALL_PRPS ALL_PP99
for round in $(seq 1 "$ROUNDS"); do
for target in $targets; do
  case $target in
    direct) url="http://127.0.0.1:$UP/"; lua="" ;;
    nginx) url="http://127.0.0.1:$NGX/"; lua="" ;;
    pingora-bare) url="http://127.0.0.1:$PB/"; lua="" ;;
    pag0-reverse) url="http://127.0.0.1:$P0/"; lua="$work/reverse.lua" ;;
    pag0-forward) url="http://127.0.0.1:$P0/"; lua="$work/forward.lua" ;;
    pag0-baseline) url="http://127.0.0.1:$PBASE/"; lua="$work/reverse.lua" ;;
  esac
  measure_target "$target" "$url" "$lua"
  ALL_RPS[$target]+="${RPS[$target]} "; ALL_P99[$target]+="${P99[$target]} "
  ALL_PRPS[$target]+="${PRPS[$target]} "; ALL_PP99[$target]+="${PP99[$target]} "
done
[ "$ROUNDS" -gt 1 ] && echo "round $round: $(for t in $targets; do printf '%s=%s ' "$t" "${RPS[$t]}"; done)" >&2
done
for t in $targets; do
  RPS[$t]=$(median ${ALL_RPS[$t]}); P99[$t]=$(median ${ALL_P99[$t]})
  PRPS[$t]=$(median ${ALL_PRPS[$t]}); PP99[$t]=$(median ${ALL_PP99[$t]})
done

echo
echo "pag0 benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  threads/workers=$THREADS  duration=${DURATION}s  rounds=$ROUNDS (medians)"
printf "%-14s %12s %10s   %14s %12s %14s\n" target "req/s" "p99 ms" "paced req/s" "paced p99" "added p99 ms"
for t in $targets; do
  added=$(awk -v a="${PP99[$t]}" -v b="${PP99[direct]}" 'BEGIN {printf "%.3f", a-b}')
  printf "%-14s %12s %10s   %14s %12s %14s\n" "$t" "${RPS[$t]}" "${P99[$t]}" "${PRPS[$t]}" "${PP99[$t]}" "$added"
done
echo
echo "ratios (saturation req/s):"
echo "  pag0-reverse / nginx   = $(ratio "${RPS[pag0-reverse]}" "${RPS[nginx]}")"
echo "  pag0-forward / nginx   = $(ratio "${RPS[pag0-forward]}" "${RPS[nginx]}")"
echo "  pingora-bare / nginx   = $(ratio "${RPS[pingora-bare]}" "${RPS[nginx]}")"
echo "  pag0-reverse / pingora-bare = $(ratio "${RPS[pag0-reverse]}" "${RPS[pingora-bare]}")"
echo "  pag0-reverse / direct  = $(ratio "${RPS[pag0-reverse]}" "${RPS[direct]}")"
echo "  pag0-forward / direct  = $(ratio "${RPS[pag0-forward]}" "${RPS[direct]}")"
echo "  pag0-forward / pingora-bare = $(ratio "${RPS[pag0-forward]}" "${RPS[pingora-bare]}")"
if [ -n "${PBASE:-}" ]; then
  echo "  pag0-reverse / pag0-baseline = $(ratio "${RPS[pag0-reverse]}" "${RPS[pag0-baseline]}")"
  echo "  pag0-baseline / pingora-bare = $(ratio "${RPS[pag0-baseline]}" "${RPS[pingora-bare]}")"
fi

#!/usr/bin/env bash
# Request analytics' cost and capacity, in one run on this machine:
#
# 1. Pass-through (benches/proxy.sh's setup: reverse route to a fast nginx upstream, the bench
#    pipeline) with analytics off vs on (embedded SQLite): ROUNDS alternating saturation pairs
#    (medians and each pair's ratio, and the CPU per request of the request worker and of the
#    threads that write analytics, from /proc), then a paced load of ~1000 req/s on each and
#    its p99.
# 2. Sustained: SUSTAINED seconds of saturation on the forward proxy with analytics in
#    PostgreSQL (a throwaway database on 127.0.0.1:5432): rows written vs requests wrk counted,
#    the writer's CPU per record (the pag0-state threads, from /proc), the peak queue depth.
#
#   benches/analytics.sh            # DURATION=8 ROUNDS=5 SUSTAINED=60 CONNS=50 THREADS=1
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
SUSTAINED=${SUSTAINED:-60}
CONNS=${CONNS:-50}
CONNS_PACED=${CONNS_PACED:-10}
PACE_MS=${PACE_MS:-10}
THREADS=${THREADS:-1}
KEY=pag0_demo_dev_only_key
TOKEN=bench-admin-token-0123456789

. benches/lib.sh
need_tools wrk nginx psql
cargo build --release --locked --bin pag0 >&2
start_work

UP=$(port)
nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; location / { return 200 '0123456789012345678901234567890123456789012345678901234567890123'; } }"
nginx -c "$work/upstream.conf" & pids+=($!)
wait_port "$UP"

start_route_pag0 off "" "analytics:
  enabled: false"
OFF=$PAG0_PORT; OFF_PID=${pids[-1]}
start_route_pag0 on "" ""
ON=$PAG0_PORT; ON_ADMIN=$PAG0_ADMIN; ON_PID=${pids[-1]}
wait_port "$OFF"; wait_port "$ON"

cat > "$work/auth.lua" <<LUA
wrk.headers["X-Pag0-API-Key"] = "$KEY"
LUA
for p in $OFF $ON; do wrk -t1 -c4 -d2s -s "$work/auth.lua" "http://127.0.0.1:$p/" >/dev/null; done

# cpu_ns PID KIND: CPU nanoseconds so far of PID's request workers (proxy) or of the threads
# that write analytics (writer: the state runtime and the SQLite connection threads).
cpu_ns() {
  local t comm total=0 ns
  for t in /proc/"$1"/task/*; do
    comm=$(cat "$t/comm" 2>/dev/null) || continue
    case "$2:$comm" in
      "proxy:pag0 proxy"*|writer:pag0-state*|writer:sqlx-sqlite*)
        read -r ns _ < "$t/schedstat" && total=$((total + ns)) ;;
    esac
  done
  echo "$total"
}
# per_req NS_BEFORE NS_AFTER REQ_PER_S: µs per request over a DURATION run.
per_req() { awk -v a="$1" -v b="$2" -v r="$3" -v d="$DURATION" 'BEGIN {printf "%.1f", (b - a) / 1000 / (r * d)}'; }

off_runs=(); on_runs=(); pairs=(); off_worker=(); on_worker=(); on_writer=()
for _ in $(seq 1 "$ROUNDS"); do
  w0=$(cpu_ns "$OFF_PID" proxy)
  read -r F_RPS F_P99 F_BAD < <(measure "http://127.0.0.1:$OFF/" "$work/auth.lua" "$CONNS" 0)
  off_worker+=("$(per_req "$w0" "$(cpu_ns "$OFF_PID" proxy)" "$F_RPS")")
  w0=$(cpu_ns "$ON_PID" proxy); r0=$(cpu_ns "$ON_PID" writer)
  read -r N_RPS N_P99 N_BAD < <(measure "http://127.0.0.1:$ON/" "$work/auth.lua" "$CONNS" 0)
  on_worker+=("$(per_req "$w0" "$(cpu_ns "$ON_PID" proxy)" "$N_RPS")")
  on_writer+=("$(per_req "$r0" "$(cpu_ns "$ON_PID" writer)" "$N_RPS")")
  [ -n "${F_BAD:-}${N_BAD:-}" ] && echo "warning: ${F_BAD:-} ${N_BAD:-}" >&2
  off_runs+=("$F_RPS $F_P99"); on_runs+=("$N_RPS $N_P99")
  pairs+=("$(ratio "$N_RPS" "$F_RPS")")
done
median_run() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
read -r F_RPS F_P99 < <(median_run "${off_runs[@]}")
read -r N_RPS N_P99 < <(median_run "${on_runs[@]}")
read -r FP_RPS FP_P99 _ < <(measure "http://127.0.0.1:$OFF/" "$work/auth.lua" "$CONNS_PACED" 1)
read -r NP_RPS NP_P99 _ < <(measure "http://127.0.0.1:$ON/" "$work/auth.lua" "$CONNS_PACED" 1)
metric() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }
ON_WRITTEN=$(metric "$ON_ADMIN" pag0_analytics_records_written_total)

# Sustained load with PostgreSQL.
DB="pag0_bench_$RANDOM$RANDOM"
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB" postgres
trap_db() { psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" postgres >/dev/null 2>&1 || true; }
P=$(port); A=$(port)
{ pag0_base_yaml pg "$P" "$A" | sed "s|url: sqlite:.*|url: postgres://postgres@127.0.0.1:5432/$DB|"; bench_pipeline_yaml ""; } > "$work/pg.yaml"
RUST_LOG=warn target/release/pag0 -c "$work/pg.yaml" >/dev/null & PG_PID=$!; pids+=($PG_PID)
wait_port "$P"; wait_port "$A"
cat > "$work/forward.lua" <<LUA
wrk.path = "http://127.0.0.1:$UP/"
wrk.headers["Host"] = "127.0.0.1:$UP"
wrk.headers["Proxy-Authorization"] = "Basic $(printf 'demo:%s' "$KEY" | base64 -w0)"
LUA
state_ticks() { cat /proc/"$PG_PID"/task/*/stat 2>/dev/null | awk '$2 ~ /pag0-state/ {t += $14 + $15} END {print t+0}'; }
rows() { psql -h 127.0.0.1 -U postgres -tAc "SELECT COUNT(*) FROM analytics_requests" "$DB"; }
BEFORE_ROWS=$(rows); BEFORE_TICKS=$(state_ticks)
OUT=$(wrk -t1 -c"$CONNS" -d"${SUSTAINED}s" -s "$work/forward.lua" "http://127.0.0.1:$P/")
SENT=$(awk '/requests in/ {print $1}' <<<"$OUT")
SUST_RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$OUT")
PROBLEMS=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$OUT" | tr '\n' ' ')
# Let the writer finish (a few ms of batches).
for _ in $(seq 1 50); do [ "$(( $(rows) - BEFORE_ROWS ))" -ge "$SENT" ] && break; sleep 0.2; done
AFTER_TICKS=$(state_ticks)
WRITTEN=$(( $(rows) - BEFORE_ROWS ))
HZ=$(getconf CLK_TCK)
CPU_US=$(awk -v t=$((AFTER_TICKS - BEFORE_TICKS)) -v hz="$HZ" -v n="$WRITTEN" 'BEGIN {printf "%.1f", t / hz * 1e6 / (n > 0 ? n : 1)}')
PEAK=$(metric "$A" pag0_analytics_queue_depth_peak)
SPOOLED=$(metric "$A" pag0_analytics_records_spooled_total)
BATCHES=$(metric "$A" pag0_analytics_batch_seconds_count)
BATCH_SUM=$(metric "$A" pag0_analytics_batch_seconds_sum)
kill "$PG_PID" 2>/dev/null; wait "$PG_PID" 2>/dev/null || true
trap_db

echo
echo "pag0 analytics benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  pag0 threads=$THREADS  conns=$CONNS  duration=${DURATION}s"
printf "%-28s %12s %10s %10s\n" case "req/s" "p99 ms" "ratio"
printf "%-28s %12s %10s %10s\n" "analytics off" "$F_RPS" "$F_P99" "1.00"
printf "%-28s %12s %10s %10s\n" "analytics on (SQLite)" "$N_RPS" "$N_P99" "$(ratio "$N_RPS" "$F_RPS")"
echo "on / off per round ($ROUNDS alternating pairs; medians above): ${pairs[*]}"
echo "CPU per request, µs (medians): request worker off $(median "${off_worker[@]}"), on $(median "${on_worker[@]}"); analytics writer threads $(median "${on_writer[@]}")"
echo "  per round: worker off ${off_worker[*]} | worker on ${on_worker[*]} | writer ${on_writer[*]}"
echo "paced ~1000 req/s, p99 ms: off $FP_P99 ($FP_RPS req/s) | on $NP_P99 ($NP_RPS req/s) | added $(awk -v a="$NP_P99" -v b="$FP_P99" 'BEGIN {printf "%.2f", a-b}')"
echo "records written by the SQLite instance: ${ON_WRITTEN:-?}"
echo
echo "sustained ${SUSTAINED}s, forward proxy, analytics in PostgreSQL: ${SUST_RPS} req/s ${PROBLEMS:+($PROBLEMS)}"
echo "  requests wrk counted: $SENT   rows written: $WRITTEN   spooled: ${SPOOLED:-?}"
echo "  writer CPU per record: ${CPU_US} µs   peak queue depth: ${PEAK:-?}   batches: ${BATCHES:-?} (mean $(awk -v s="${BATCH_SUM:-0}" -v n="${BATCHES:-1}" 'BEGIN {printf "%.2f", s / n * 1000}') ms)"

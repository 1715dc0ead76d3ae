#!/usr/bin/env bash
# Smart route vs plain route, pass-through, in one run on this machine: one pag0 (the bench
# pipeline, one worker) with a plain route `/plain` to a fast nginx and a smart route `/smart`
# whose two candidates are two listeners of that nginx; ROUNDS alternating saturation pairs
# (medians and each pair's ratio), then a paced ~1000 req/s load on each and its p99. Then
# `cargo bench --bench route_choice` (the choice's cost per request in ns).
#
#   benches/smart_route.sh            # DURATION=8 ROUNDS=5 CONNS=50 THREADS=1
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-50}
CONNS_PACED=${CONNS_PACED:-10}
THREADS=${THREADS:-1}
KEY=pag0_demo_dev_only_key

. benches/lib.sh
need_tools wrk nginx
cargo build --release --locked --bin pag0 >&2
start_work

UP=$(port); UP2=$(port)
BODY="'0123456789012345678901234567890123456789012345678901234567890123'"
nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; listen 127.0.0.1:$UP2; location / { return 200 $BODY; } }"
nginx -c "$work/upstream.conf" & pids+=($!)
wait_port "$UP"; wait_port "$UP2"

P=$(port); A=$(port)
{ pag0_base_yaml smart "$P" "$A"; bench_pipeline_yaml ""; cat <<YAML; } > "$work/smart.yaml"
routes:
  - name: plain
    path_prefix: /plain
    upstream: http://127.0.0.1:$UP
  - name: smart
    path_prefix: /smart
    category: bench
    candidates:
      - upstream: http://127.0.0.1:$UP
      - upstream: http://127.0.0.1:$UP2
YAML
RUST_LOG=warn target/release/pag0 -c "$work/smart.yaml" >/dev/null & pids+=($!)
wait_port "$P"

cat > "$work/auth.lua" <<LUA
wrk.headers["X-Pag0-API-Key"] = "$KEY"
LUA
for path in plain smart; do wrk -t1 -c4 -d2s -s "$work/auth.lua" "http://127.0.0.1:$P/$path" >/dev/null; done

plain_runs=(); smart_runs=(); pairs=()
for _ in $(seq 1 "$ROUNDS"); do
  read -r F_RPS F_P99 F_BAD < <(measure "http://127.0.0.1:$P/plain" "$work/auth.lua" "$CONNS" 0)
  read -r S_RPS S_P99 S_BAD < <(measure "http://127.0.0.1:$P/smart" "$work/auth.lua" "$CONNS" 0)
  [ -n "${F_BAD:-}${S_BAD:-}" ] && echo "warning: ${F_BAD:-} ${S_BAD:-}" >&2
  plain_runs+=("$F_RPS $F_P99"); smart_runs+=("$S_RPS $S_P99")
  pairs+=("$(ratio "$S_RPS" "$F_RPS")")
done
median_run() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
read -r F_RPS F_P99 < <(median_run "${plain_runs[@]}")
read -r S_RPS S_P99 < <(median_run "${smart_runs[@]}")
read -r FP_RPS FP_P99 _ < <(measure "http://127.0.0.1:$P/plain" "$work/auth.lua" "$CONNS_PACED" 1)
read -r SP_RPS SP_P99 _ < <(measure "http://127.0.0.1:$P/smart" "$work/auth.lua" "$CONNS_PACED" 1)
CHOICES=$(curl -s -H "Authorization: Bearer bench-admin-token-0123456789" "http://127.0.0.1:$A/metrics" | awk '/^pag0_route_choice_total/ {print}' | tr '\n' ';')

echo
echo "pag0 smart route benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  pag0 threads=$THREADS  conns=$CONNS  duration=${DURATION}s"
printf "%-28s %12s %10s %10s\n" case "req/s" "p99 ms" "ratio"
printf "%-28s %12s %10s %10s\n" "plain route" "$F_RPS" "$F_P99" "1.00"
printf "%-28s %12s %10s %10s\n" "smart route (2 candidates)" "$S_RPS" "$S_P99" "$(ratio "$S_RPS" "$F_RPS")"
echo "smart / plain per round ($ROUNDS alternating pairs): ${pairs[*]} (median $(median "${pairs[@]}"))"
echo "paced ~1000 req/s, p99 ms: plain $FP_P99 ($FP_RPS req/s) | smart $SP_P99 ($SP_RPS req/s)"
echo "choices: $CHOICES"
echo
cargo bench --locked --bench route_choice 2>/dev/null | tail -n 4

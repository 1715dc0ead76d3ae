#!/usr/bin/env bash
# HTTPS through pag0's CONNECT path, side by side in one run on this machine: HTTPS straight to
# the upstream (the baseline), pag0's forward proxy with absolute-form https:// targets (plain
# HTTP to pag0, TLS upstream: what interception adds is the agent-side TLS), an intercepted
# CONNECT tunnel with keep-alive (pass-through: pag0 terminates TLS, then connects upstream
# with TLS), a tunnel with the cache stage (hits from the memory tier), and a blind tunnel
# (tunnel_only); plus the time to mint a leaf certificate, and a new connection (and tunnel)
# per request, directly and through an intercepted tunnel (TLS session resumption on both: one
# client session cache, like one agent process). Ratios matter; absolute numbers depend on
# the box.
#
# Also plain HTTP inside an intercepted CONNECT (what Node's proxy agents send for http://
# URLs) against the same requests sent absolute-form to pag0 (http-connect-plain vs
# http-forward-absolute, a plain upstream).
#
#   benches/connect.sh               # DURATION=10 THREADS=1 CONNS=50 by default
#   TARGETS="http-forward-absolute http-connect-plain" FRESH=0 benches/connect.sh   # a subset
#
# Phases per target: (1) closed-loop saturation (CONNS keep-alive connections, one tunnel
# each); (2) a paced load of ~1000 req/s (CONNS_PACED connections, each waiting PACE_MS between
# requests), its p99. The load generator (benches/connect.rs) runs on one thread, like wrk -t1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
THREADS=${THREADS:-1}
CONNS=${CONNS:-50}
CONNS_PACED=${CONNS_PACED:-10}
PACE_MS=${PACE_MS:-10}
KEY=pag0_demo_dev_only_key

. benches/lib.sh
cargo build --release --locked --bin pag0 >&2
HELPER=$(cargo bench --locked --bench connect --no-run 2>&1 | grep -o 'target/release/deps/connect-[0-9a-f]*' | head -n1)
[ -x "$HELPER" ] || { echo "cannot find the connect bench helper" >&2; exit 1; }
start_work
UP=$(port)

"$HELPER" upstream "127.0.0.1:$UP" "$work/upstream-ca.pem" 2>/dev/null & pids+=($!)
PLAIN=$(port)
"$HELPER" plain-upstream "127.0.0.1:$PLAIN" 2>/dev/null & pids+=($!)

# start_connect_pag0 NAME EXTRA_STAGES EXTRA_CONNECT: a release pag0 intercepting CONNECT (any
# port: the upstream listens on a random one), trusting the upstream's CA for localhost; sets
# PAG0_PORT.
start_connect_pag0() {
  local p a
  p=$(port); a=$(port)
  { pag0_base_yaml "$1" "$p" "$a"; bench_pipeline_yaml "$2"; cat <<YAML; } > "$work/$1.yaml"
connect:
  ca_dir: $work/$1-ca
  ports: ["*"]
$3
upstream:
  trust:
    - hosts: [localhost]
      ca_file: $work/upstream-ca.pem
YAML
  RUST_LOG=warn target/release/pag0 -c "$work/$1.yaml" >/dev/null & pids+=($!)
  PAG0_PORT=$p
}

wait_port "$UP"
start_connect_pag0 pass "" ""
PASS=$PAG0_PORT
start_connect_pag0 cache "  - kind: cache" ""
CACHE=$PAG0_PORT
start_connect_pag0 blind "" "  tunnel_only: [localhost]"
BLIND=$PAG0_PORT
for p in $PASS $CACHE $BLIND; do wait_port "$p"; done

URL="https://localhost:$UP/"
PURL="http://127.0.0.1:$PLAIN/"
wait_port "$PLAIN"
# load NAME PACE_MS CONNS -> "req/s p99_ms errors"
load() {
  case $1 in
    https-direct) "$HELPER" load "$URL" "$work/upstream-ca.pem" "$3" "$DURATION" "$2" ;;
    forward-absolute) "$HELPER" load "$URL" "$work/upstream-ca.pem" "$3" "$DURATION" "$2" "127.0.0.1:$PASS" "demo:$KEY" absolute ;;
    connect-pass-through) "$HELPER" load "$URL" "$work/pass-ca/ca.crt" "$3" "$DURATION" "$2" "127.0.0.1:$PASS" "demo:$KEY" ;;
    connect-cache-hit) "$HELPER" load "$URL" "$work/cache-ca/ca.crt" "$3" "$DURATION" "$2" "127.0.0.1:$CACHE" "demo:$KEY" ;;
    connect-blind) "$HELPER" load "$URL" "$work/upstream-ca.pem" "$3" "$DURATION" "$2" "127.0.0.1:$BLIND" "demo:$KEY" ;;
    http-forward-absolute) "$HELPER" load "$PURL" - "$3" "$DURATION" "$2" "127.0.0.1:$PASS" "demo:$KEY" absolute ;;
    http-connect-plain) "$HELPER" load "$PURL" - "$3" "$DURATION" "$2" "127.0.0.1:$PASS" "demo:$KEY" ;;
  esac
}

# Warm-up (fills the cache, mints the leaves, opens the pools) and a check of each path.
for target in forward-absolute connect-pass-through connect-cache-hit connect-blind http-forward-absolute http-connect-plain; do
  read -r _ _ e < <(DURATION=1 load "$target" 0 4)
  [ "$e" = 0 ] || { echo "$target: $e errors in the warm-up" >&2; exit 1; }
done
h=$(curl -s -o /dev/null -D - --cacert "$work/cache-ca/ca.crt" -x "http://demo:$KEY@127.0.0.1:$CACHE" "$URL" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-pag0-cache" {print $2}')
[ "$h" = HIT ] || { echo "the cache pag0 does not answer from its cache (X-Pag0-Cache: $h)" >&2; exit 1; }

targets=${TARGETS:-"https-direct forward-absolute connect-pass-through connect-cache-hit connect-blind http-forward-absolute http-connect-plain"}
declare -A ERR
for target in $targets; do
  read -r r p e < <(load "$target" 0 "$CONNS")
  RPS[$target]=$r; P99[$target]=$p; ERR[$target]=$e
  read -r r p e < <(load "$target" "$PACE_MS" "$CONNS_PACED")
  PRPS[$target]=$r; PP99[$target]=$p; ERR[$target]="${ERR[$target]}/$e"
done
# A new connection per request (saturation only, short: every request leaves a TIME_WAIT).
[ "${FRESH:-1}" = 1 ] && for target in https-direct connect-pass-through; do
  read -r r p e < <(BENCH_FRESH=1 DURATION=${DURATION_FRESH:-3} load "$target" 0 "$CONNS")
  RPS[$target-new]=$r; P99[$target-new]=$p; ERR[$target-new]=$e
done
MINT=$("$HELPER" mint 200)

echo
echo "pag0 CONNECT benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  threads/workers=$THREADS  duration=${DURATION}s"
printf "%-22s %10s %9s   %12s %10s   %s\n" target "req/s" "p99 ms" "paced req/s" "paced p99" "errors (sat/paced)"
for t in $targets; do
  printf "%-22s %10s %9s   %12s %10s   %s\n" "$t" "${RPS[$t]}" "${P99[$t]}" "${PRPS[$t]}" "${PP99[$t]}" "${ERR[$t]}"
done
echo
echo "ratios (saturation req/s):"
r() { [ -n "${RPS[$1]:-}" ] && [ -n "${RPS[$2]:-}" ] && echo "  $1 / $2 = $(ratio "${RPS[$1]}" "${RPS[$2]}")"; return 0; }
r connect-pass-through https-direct
r connect-pass-through forward-absolute
r connect-cache-hit https-direct
r connect-blind https-direct
r http-connect-plain http-forward-absolute
[ "${FRESH:-1}" = 1 ] || { echo "$MINT"; exit 0; }
echo "new connection per request (req/s, p99 ms incl. connect + CONNECT + TLS): direct ${RPS[https-direct-new]} ${P99[https-direct-new]} (errors ${ERR[https-direct-new]}), through pag0 ${RPS[connect-pass-through-new]} ${P99[connect-pass-through-new]} (errors ${ERR[connect-pass-through-new]}); ratio $(ratio "${RPS[connect-pass-through-new]}" "${RPS[https-direct-new]}")"
echo "added p99 at ~1000 req/s (paced): pass-through $(awk -v a="${PP99[connect-pass-through]}" -v b="${PP99[https-direct]}" 'BEGIN {printf "%+.2f", a-b}') ms, cache hit $(awk -v a="${PP99[connect-cache-hit]}" -v b="${PP99[https-direct]}" 'BEGIN {printf "%+.2f", a-b}') ms"
echo "$MINT"

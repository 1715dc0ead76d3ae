#!/usr/bin/env bash
# Idle agents (issue 22): pag0's memory with IDLE_PLAIN idle keep-alive connections to the
# forward proxy and IDLE_TUNNELS idle intercepted HTTPS tunnels (each made one call first), and
# the throughput of a wrk run on the forward proxy with and without them, in alternating
# rounds of one run. The configuration is conf/examples/https-proxy.yaml with only its
# addresses, CA directory, CONNECT port, loopback allowance, upstream trust and the project's
# rate limit (10^7/s: thousands of agents of one project) changed for this machine (see
# make_config).
#
#   benches/idle.sh            # IDLE_PLAIN=10000 IDLE_TUNNELS=2000 DURATION=10 ROUNDS=3 CONNS=50
#
# The idle connections are opened by benches/idle_clients.py (Python asyncio).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
IDLE_PLAIN=${IDLE_PLAIN:-10000}
IDLE_TUNNELS=${IDLE_TUNNELS:-2000}
KEY=pag0_demo_dev_only_key

. benches/lib.sh
need_tools wrk nginx openssl
# Every idle connection is a file descriptor in pag0 and in the client.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((IDLE_PLAIN + IDLE_TUNNELS + 1000)) ] || {
  echo "ulimit -n $(ulimit -n) is too low for $IDLE_PLAIN + $IDLE_TUNNELS connections" >&2; exit 1; }
cargo build --release --locked --bin pag0 >&2
start_work
UP=$(port); TLS=$(port); P=$(port); A=$(port)

# An HTTPS upstream for the tunnels: a leaf for localhost signed by a throwaway CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$work/up-ca.key" -out "$work/up-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$work/up.key" -out "$work/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$work/up.ext"
openssl x509 -req -in "$work/up.csr" -CA "$work/up-ca.crt" -CAkey "$work/up-ca.key" -CAcreateserial \
  -days 2 -extfile "$work/up.ext" -out "$work/up.crt" 2>/dev/null

BODY=0123456789012345678901234567890123456789012345678901234567890123
nginx_conf upstream 1 "server { listen 127.0.0.1:$UP; location / { return 200 '$BODY'; } }
  server { listen 127.0.0.1:$TLS ssl; ssl_certificate $work/up.crt; ssl_certificate_key $work/up.key;
           location / { return 200 '$BODY'; } }"
nginx -c "$work/upstream.conf" & pids+=($!)

# conf/examples/https-proxy.yaml, with this machine's addresses and files.
make_config() {
  python3 - "$work" "$P" "$A" "$TLS" > "$work/pag0.yaml" <<'PY'
import sys
work, proxy, admin, tls = sys.argv[1:]
text = open("conf/examples/https-proxy.yaml").read()
def swap(old, new):
    global text
    assert text.count(old) == 1, old
    text = text.replace(old, new)
swap('listen: ["127.0.0.1:8402"]', f'listen: ["127.0.0.1:{proxy}"]\n  pid_file: {work}/pag0.pid\n'
     f'  upgrade_sock: {work}/pag0.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 0')
swap("listen: 127.0.0.1:9402", f"listen: 127.0.0.1:{admin}")
swap("ca_dir: pag0-ca", f"ca_dir: {work}/ca")
swap("ports: [443]", f"ports: [{tls}]")
swap("  - kind: ssrf_guard\n", '  - kind: ssrf_guard\n    allow: ["127.0.0.1/32"]\n')
# Thousands of agents of one project: a rate limit that lets them in (the stage still runs).
swap("  - id: agent\n", "  - id: agent\n    rate_limit: {requests_per_second: 10000000, burst: 10000000}\n")
text += f"""
upstream:
  trust:
    - hosts: ["localhost"]
      ca_file: {work}/up-ca.crt
database:
  url: sqlite:{work}/pag0.db
  spool_file: {work}/pag0.spool
"""
print(text)
PY
}
make_config
export PAG0_ADMIN_TOKEN=bench-admin-token-0123456789
PAG0_AGENT_WALLET_KEY=0x$(openssl rand -hex 32)
export PAG0_AGENT_WALLET_KEY
RUST_LOG=warn target/release/pag0 -c "$work/pag0.yaml" >"$work/pag0.log" 2>&1 & PAG0=$!; pids+=($PAG0)
for p in $UP $TLS $P $A; do wait_port "$p"; done

cat > "$work/forward.lua" <<LUA
wrk.path = "http://127.0.0.1:$UP/"
wrk.headers["Host"] = "127.0.0.1:$UP"
wrk.headers["Proxy-Authorization"] = "Basic $(printf 'agent:%s' "$KEY" | base64 -w0)"
LUA
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PAG0/status"; }
fds() { ls "/proc/$PAG0/fd" | wc -l; }
wrk -t1 -c10 -d2s -s "$work/forward.lua" "http://127.0.0.1:$P/" >/dev/null

declare -a WITHOUT WITH RSS_IDLE RSS_LOAD OPEN
echo "pag0 idle-connection benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  plain=$IDLE_PLAIN tunnels=$IDLE_TUNNELS duration=${DURATION}s" >&2
RSS_START=$(rss_mb)
for round in $(seq 1 "$ROUNDS"); do
  read -r rps _ e < <(wrk_run "$CONNS" "$work/forward.lua" "http://127.0.0.1:$P/")
  [ -n "${e:-}" ] && echo "warning: without idle connections: $e" >&2
  WITHOUT+=("$rps")
  python3 benches/idle_clients.py --proxy "127.0.0.1:$P" --auth "agent:$KEY" \
    --plain "$IDLE_PLAIN" --plain-url "http://127.0.0.1:$UP/" \
    --tunnels "$IDLE_TUNNELS" --tunnel-target "localhost:$TLS" --ca "$work/ca/ca.crt" \
    > "$work/clients.out" 2> "$work/clients.err" & CLIENTS=$!
  for _ in $(seq 1 600); do
    grep -q '^ready' "$work/clients.out" 2>/dev/null && break
    kill -0 "$CLIENTS" 2>/dev/null || { cat "$work/clients.err" >&2; exit 1; }
    sleep 0.2
  done
  grep -q '^ready' "$work/clients.out" || { echo "the idle clients did not get ready" >&2; exit 1; }
  sleep 2
  RSS_IDLE+=("$(rss_mb)")
  read -r rps _ e < <(wrk_run "$CONNS" "$work/forward.lua" "http://127.0.0.1:$P/")
  [ -n "${e:-}" ] && echo "warning: with idle connections: $e" >&2
  WITH+=("$rps")
  RSS_LOAD+=("$(rss_mb)")
  echo "round $round: fds $(fds)" >&2
  kill "$CLIENTS"; wait "$CLIENTS" 2>/dev/null || true
  OPEN+=("$(awk '/^open/ {print $2 "/" $4}' "$work/clients.out")")
  sleep 2
done

echo
printf "%-6s %14s %14s %8s %14s %14s %14s\n" round "req/s without" "req/s with" ratio "RSS idle MB" "RSS +wrk MB" "still open"
PAIRS=()
for i in $(seq 0 $((ROUNDS - 1))); do
  r=$(ratio "${WITH[$i]}" "${WITHOUT[$i]}"); PAIRS+=("$r")
  printf "%-6s %14s %14s %8s %14s %14s %14s\n" $((i + 1)) "${WITHOUT[$i]}" "${WITH[$i]}" "$r" "${RSS_IDLE[$i]}" "${RSS_LOAD[$i]}" "${OPEN[$i]}"
done
echo
echo "RSS at start (after warm-up): $RSS_START MB; peak (VmHWM): $(awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$PAG0/status") MB"
echo "throughput with/without idle connections, median of the pairs: $(median "${PAIRS[@]}")"
echo "RSS with the idle connections, median: $(median "${RSS_IDLE[@]}") MB (goal <= 150)"

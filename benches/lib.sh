# Shared plumbing of the bench scripts (sourced, not run): tools, ports, a work directory that
# is removed with every background process on exit, and wrk measurements.

# need_tools wrk [nginx]: installs what is missing with apt-get when possible, else exits.
need_tools() {
  export PATH=$PATH:/usr/sbin
  local tool pkg
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
      pkg=$tool; [ "$tool" = nginx ] && pkg=nginx-light
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null || true
    fi
    command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install ${pkg:-$tool})" >&2; exit 1; }
  done
}

# Sets $work (a temporary directory) and $pids (append background processes to it).
start_work() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done
  echo "port $1 did not open" >&2; exit 1
}

# wrk_run CONNS SCRIPT URL -> "req/s p99_ms problems" (problems: non-2xx / socket errors).
wrk_run() {
  local out rps p99 problems
  out=$(wrk -t1 -c"$1" -d"${DURATION}s" --latency -s "$2" "$3")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub("us","",v); v=v/1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v=v*1000}; print v}' <<<"$out")
  problems=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$rps $p99 ${problems:-}"
}

# nginx_conf NAME WORKERS SERVER_BLOCK [HTTP_EXTRA]: writes $work/NAME.conf (upstream
# "backend" = 127.0.0.1:$UP with keep-alive).
nginx_conf() {
  cat > "$work/$1.conf" <<CONF
worker_processes $2;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  ${4:-}
  $3
}
CONF
}

# pag0_base_yaml NAME PORT ADMIN_PORT: the server, admin and database sections of a bench
# pag0 (its own pid file, socket, journal and spool in $work).
pag0_base_yaml() {
  cat <<YAML
server:
  listen: ["127.0.0.1:$2"]
  threads: $THREADS
  work_stealing: ${WORK_STEALING:-true}
  pid_file: $work/$1.pid
  upgrade_sock: $work/$1.sock
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 0
admin:
  listen: 127.0.0.1:$3
  token: \${BENCH_TOKEN:-bench-admin-token-0123456789}
database:
  url: sqlite:$work/$1.db
  spool_file: $work/$1.spool
YAML
}

# bench_pipeline_yaml EXTRA_STAGES: auth, a rate limit that never bites and the SSRF guard
# (loopback allowed) + EXTRA_STAGES, and the demo project.
bench_pipeline_yaml() {
  cat <<YAML
stages:
  - kind: auth
  - kind: rate_limit
    default: { requests_per_second: 10000000, burst: 10000000 }
  - kind: ssrf_guard
    allow: ["127.0.0.1"]
$1
projects:
  - id: demo
    keys: ["sha256:79f8ca837c673888f582d0c8204f8b6ab31c8b0a7930512e94a4bd0a518bf83a"]
YAML
}

# start_route_pag0 NAME EXTRA_STAGES EXTRA_SECTIONS: a release pag0 ($PAG0_BIN, by default
# target/release/pag0; THREADS workers) whose
# route `/` goes to 127.0.0.1:$UP, with the bench pipeline (+ EXTRA_STAGES); sets PAG0_PORT
# and PAG0_ADMIN.
start_route_pag0() {
  local p a
  p=$(port); a=$(port)
  { pag0_base_yaml "$1" "$p" "$a"; bench_pipeline_yaml "$2"; cat <<YAML; } > "$work/$1.yaml"
routes:
  - name: bench
    path_prefix: /
    upstream: http://127.0.0.1:$UP
$3
YAML
  RUST_LOG=warn "${PAG0_BIN:-target/release/pag0}" -c "$work/$1.yaml" >/dev/null & pids+=($!)
  PAG0_PORT=$p; PAG0_ADMIN=$a
}
# measure URL LUA_FILE_OR_EMPTY CONNS PACED(0/1) -> "req/s p99_ms problems"; paced: every
# connection waits PACE_MS (default 10) between requests.
measure() {
  local script=$work/run.lua
  : > "$script"
  [ -n "$2" ] && cat "$2" >> "$script"
  [ "$4" = 1 ] && echo "function delay() return ${PACE_MS:-10} end" >> "$script"
  wrk_run "$3" "$script" "$1"
}

# measure_target NAME URL LUA: saturation (CONNS connections) and paced (CONNS_PACED) runs;
# fills RPS, P99, PRPS and PP99 [NAME] and warns about non-2xx answers or socket errors.
declare -A RPS P99 PRPS PP99
measure_target() {
  local r p e
  read -r r p e < <(measure "$2" "$3" "$CONNS" 0)
  [ -n "${e:-}" ] && echo "warning: $1 saturation: $e" >&2
  RPS[$1]=$r; P99[$1]=$p
  read -r r p e < <(measure "$2" "$3" "$CONNS_PACED" 1)
  [ -n "${e:-}" ] && echo "warning: $1 paced: $e" >&2
  PRPS[$1]=$r; PP99[$1]=$p
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# median NUMBER...: the median (the mean of the middle two for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# bench_helper NAME: builds `cargo bench --bench NAME` and prints the binary's path.
bench_helper() {
  local bin
  bin=$(cargo bench --locked --bench "$1" --no-run 2>&1 | grep -o "target/release/deps/$1-[0-9a-f]*" | head -n1)
  [ -x "$bin" ] || { echo "cannot find the $1 bench helper" >&2; exit 1; }
  echo "$bin"
}

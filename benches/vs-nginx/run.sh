#!/usr/bin/env bash
# benches/vs-nginx/run.sh: gatehouse with every check on (bearer JWT verified, request
# classified, policy decided, audit trail written with durability "group") against nginx as a
# plain reverse proxy, in one run, interleaved, with one load generator (wrk, one thread).
#
# Run from the project root:   benches/vs-nginx/run.sh
# Knobs (environment, defaults in brackets):
#   ROUNDS [3]   DUR seconds per measurement [10]   TESTS subset of "small tls big handshake idle" [all]
#   WORK scratch dir [/tmp/gatehouse-bench]   BASE_PORT [39080] (uses BASE_PORT..BASE_PORT+7)
#   PIN=0 no CPU pinning [1]; SERVER_CPU [0] (origin + proxies)  CLIENT_CPU [1] (wrk, idle client)
#   SKIP_BUILD=1 use the binaries in target/release   SKIP_INSTALL=1 no apt-get
#   SMALL_CONNS [64]  TLS_CONNS [64]  BIG_CONNS [4]  HANDSHAKE_CONNS [64]  IDLE_CONNS [10000]
#   BIG_PATH [/big.bin]  SMALL_PATH [/api/2.0/clusters/list]
# Everything it starts listens on 127.0.0.1 only and is stopped by PID when it exits.
# Exit status: 0 all measurements valid (targets may still be missed), 1 setup error,
# 2 at least one measurement failed (socket errors, non-2xx responses, missing audit records).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-/tmp/gatehouse-bench}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
TESTS=${TESTS:-small tls big handshake idle}
PIN=${PIN:-1}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-39080}
SMALL_CONNS=${SMALL_CONNS:-64}
TLS_CONNS=${TLS_CONNS:-64}
BIG_CONNS=${BIG_CONNS:-4}
HANDSHAKE_CONNS=${HANDSHAKE_CONNS:-64}
IDLE_CONNS=${IDLE_CONNS:-10000}
SMALL_PATH=${SMALL_PATH:-/api/2.0/clusters/list}
BIG_PATH=${BIG_PATH:-/big.bin}
NOFILE=${NOFILE:-65536}

P_ORIGIN=$BASE_PORT
P_NGINX=$((BASE_PORT + 1))
P_NGINX_TLS=$((BASE_PORT + 2))
P_GW=$((BASE_PORT + 3))
P_GW_TLS=$((BASE_PORT + 4))
P_NGINX_IDLE=$((BASE_PORT + 5))
P_GW_IDLE=$((BASE_PORT + 6))
P_GW_IDLE_TLS=$((BASE_PORT + 7)) # written by bench_setup, never started

BIG_BYTES=$((64 << 20))
# ~100-byte JSON answer of the origin for every path but the big file.
SMALL_BODY='{"clusters":[{"cluster_id":"0101-bench-0001","cluster_name":"bench","state":"RUNNING"}],"ok":true}'

GATEHOUSE=$ROOT/target/release/gatehouse
BENCH_SETUP=$ROOT/target/release/examples/bench_setup
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$WORK/raw/$STAMP
RESULTS=$WORK/results
TSV=$RESULTS/vs-nginx-$STAMP.tsv
META=$RESULTS/vs-nginx-$STAMP.meta
MD=$RESULTS/vs-nginx-$STAMP.md
LUA=$WORK/result.lua
CLK_TCK=$(getconf CLK_TCK)
FAILED=0

log() { printf '[vs-nginx %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
loud() { # a measurement that cannot be trusted
  FAILED=$((FAILED + 1))
  printf '\n[vs-nginx] !!!!!!!!!! MEASUREMENT FAILED: %s !!!!!!!!!!\n\n' "$*" >&2
  printf '%s\n' "$*" >>"$RESULTS/vs-nginx-$STAMP.failures"
}

if [[ $PIN == 1 ]]; then
  SRV=(taskset -c "$SERVER_CPU")
  CLI=(taskset -c "$CLIENT_CPU")
else
  SRV=()
  CLI=()
fi

# ------------------------------------------------------------------ install and build
install_deps() {
  local need=()
  command -v nginx >/dev/null || need+=(nginx)
  command -v wrk >/dev/null || need+=(wrk)
  command -v openssl >/dev/null || need+=(openssl)
  { command -v taskset && command -v flock; } >/dev/null || need+=(util-linux)
  command -v python3 >/dev/null || need+=(python3)
  command -v curl >/dev/null || need+=(curl)
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

build() {
  log "cargo build --release --bin gatehouse --example bench_setup"
  (cd "$ROOT" && cargo build --release --quiet --bin gatehouse --example bench_setup)
}

# ------------------------------------------------------------------ processes (by PID only)
declare -A PIDS=()

start_bg() { # name cmd... ; stdout/stderr to $RAW/name.{out,err}
  local name=$1
  shift
  "$@" >"$RAW/$name.out" 2>"$RAW/$name.err" &
  PIDS[$name]=$!
}

stop() { # name...
  local n pid i
  for n in "$@"; do
    pid=${PIDS[$n]:-}
    if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for n in "$@"; do
    pid=${PIDS[$n]:-}
    [[ -n $pid ]] || continue
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
      ((i == 100)) && { log "$n (pid $pid) ignored SIGTERM for 10 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    done
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$n]"
  done
}

stop_all() {
  local names=("${!PIDS[@]}")
  ((${#names[@]})) && stop "${names[@]}"
  return 0
}
trap 'stop_all' EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_taken() { # name -> did it fail because its port was taken?
  grep -qi 'address already in use' "$RAW/$1.err" "$RAW/$1.out" "$WORK/$1/error.log" 2>/dev/null
}

ready() { # name port
  if [[ $1 == gatehouse* ]]; then
    grep -q '^gatehouse listening data=' "$RAW/$1.out" 2>/dev/null && port_open "$2"
  else
    port_open "$2"
  fi
}

# Starts one server (pinned) and waits until it listens. Ports in the ephemeral range can be
# held for up to 60 s by TIME_WAIT client sockets of an earlier run (a listener cannot take a
# port a client socket without SO_REUSEADDR still holds): then it tries again for up to 90 s.
start_server() { # name port cmd...
  local name=$1 port=$2 attempt i pid
  shift 2
  for attempt in $(seq 1 18); do
    if [[ -d $WORK/$name ]]; then : >"$WORK/$name/error.log"; fi
    start_bg "$name" "${SRV[@]}" "$@"
    pid=${PIDS[$name]}
    for i in $(seq 1 200); do
      ready "$name" "$port" && return 0
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "$name did not listen on 127.0.0.1:$port within 20 s (see $RAW/$name.err)"
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$name]"
    port_taken "$name" || die "$name exited: $(tail -n 5 "$RAW/$name.err" "$RAW/$name.out" "$WORK/$name/error.log" 2>/dev/null)"
    ((attempt == 1)) && log "127.0.0.1:$port is still held by another socket (a TIME_WAIT client socket of an earlier run?): trying again every 5 s for up to 90 s"
    sleep 5
  done
  die "127.0.0.1:$port stayed taken for 90 s: $(ss -tan 2>/dev/null | grep -F "127.0.0.1:$port " | head -n 3 | tr -s ' ')
(ports $BASE_PORT..$((BASE_PORT + 7)) lie in the ephemeral range $(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range); try another BASE_PORT)"
}

start_nginx() { # name port
  start_server "$1" "$2" nginx -p "$WORK/$1" -c "$WORK/$1/nginx.conf" -e "$WORK/$1/error.log"
}

start_gateway() { # name config port
  start_server "$1" "$3" "$GATEHOUSE" serve --config "$2"
}

# ------------------------------------------------------------------ /proc readings
tree_pids() { # pid -> pid and all descendants
  local p=$1 c
  echo "$p"
  # shellcheck disable=SC2013 # the children files hold space-separated PIDs
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}

cpu_ticks() { # utime+stime (fields 14+15 of /proc/PID/stat; all threads) summed over the tree
  local t=0 p s f
  for p in $(tree_pids "$1"); do
    s=$(<"/proc/$p/stat") || continue
    s=${s##*) }             # fields from 3 (state) on; comm may contain spaces
    read -ra f <<<"$s"
    t=$((t + f[11] + f[12])) # field 14 = index 11, field 15 = index 12
  done
  echo "$t"
}

status_kb() { # pid field -> "tree-sum largest" in KiB
  local p v sum=0 max=0
  for p in $(tree_pids "$1"); do
    v=$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null)
    v=${v:-0}
    sum=$((sum + v))
    ((v > max)) && max=$v
  done
  echo "$sum $max"
}

core_ticks() { # "busy total steal" for one CPU from /proc/stat
  awk -v c="cpu$1" '$1 == c {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat
}

audit_records() { # dir -> lines in all trail segments
  local files=("$1"/*.jsonl)
  [[ -e ${files[0]} ]] || { echo 0; return; }
  cat "${files[@]}" | wc -l
}

passive_opens() { # TCP connections accepted so far in this network namespace (all processes)
  awk '$1 == "Tcp:" && $2 ~ /^[0-9]+$/ {print $7}' /proc/net/snmp
}

emit() { # round test target metric value
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TSV"
}

# ------------------------------------------------------------------ configs
write_configs() {
  mkdir -p "$WORK/www" "$RAW" "$RESULTS"
  if [[ ! -f $WORK/www/big.bin || $(stat -c %s "$WORK/www/big.bin") != "$BIG_BYTES" ]]; then
    log "writing $WORK/www/big.bin (64 MiB)"
    head -c "$BIG_BYTES" /dev/urandom >"$WORK/www/big.bin"
  fi

  # The gateways: every check on, one worker each. A fresh trail per run.
  rm -rf "$WORK/gw" "$WORK/gw-idle"
  TOKEN=$("$BENCH_SETUP" "$WORK/gw" "http://127.0.0.1:$P_ORIGIN" "$P_GW" "$P_GW_TLS") || die "bench_setup failed"
  [[ -n $TOKEN ]] || die "bench_setup printed no token"
  if [[ " $TESTS " == *" idle "* ]]; then
    IDLE_TOKEN=$("$BENCH_SETUP" "$WORK/gw-idle" "http://127.0.0.1:$P_ORIGIN" "$P_GW_IDLE" "$P_GW_IDLE_TLS") || die "bench_setup (idle) failed"
  fi
  CA=$WORK/gw/tls/certs/ca.crt
  # nginx-tls serves the gateway's own development certificate and key: same chain, same
  # key type, same handshake work.
  local cert=$WORK/gw/tls/certs/gateway.crt key=$WORK/gw/tls/certs/gateway.key
  [[ -f $cert && -f $key ]] || die "bench_setup wrote no $cert / $key"

  # worker_connections: nginx allocates (and touches) its connection table up front, so it is
  # sized per instance: the load-test proxies need 2 x 64, the idle one 10,000 clients plus
  # upstream connections, the origin whatever the gateways open.
  local name conns
  for name in origin nginx nginx-tls nginx-idle; do
    case $name in
      origin) conns=$((IDLE_CONNS + 4096)) ;;
      nginx-idle) conns=$((IDLE_CONNS + 4096)) ;;
      *) conns=1024 ;;
    esac
    rm -rf "${WORK:?}/$name"
    mkdir -p "$WORK/$name/tmp"
    cat >"$WORK/$name/nginx.conf" <<EOF
# generated by benches/vs-nginx/run.sh
worker_processes 1;
daemon off;
master_process on;
pid $WORK/$name/nginx.pid;
error_log $WORK/$name/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $conns; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/$name/tmp/body;
  proxy_temp_path $WORK/$name/tmp/proxy;
  fastcgi_temp_path $WORK/$name/tmp/fastcgi;
  uwsgi_temp_path $WORK/$name/tmp/uwsgi;
  scgi_temp_path $WORK/$name/tmp/scgi;
EOF
  done

  cat >>"$WORK/origin/nginx.conf" <<EOF
  server {
    listen 127.0.0.1:$P_ORIGIN backlog=4096;
    location = $BIG_PATH { alias $WORK/www/big.bin; default_type application/octet-stream; }
    location / { default_type application/json; return 200 '$SMALL_BODY'; }
  }
}
EOF
  # Plain reverse proxy. proxy_max_temp_file_size 0: the 64 MiB body streams through memory
  # buffers instead of being spooled to disk (the default would make nginx slower, not fairer).
  local proxy="location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffers 8 64k;
      proxy_busy_buffers_size 128k;
      proxy_max_temp_file_size 0;
    }"
  local upstream="upstream origin { server 127.0.0.1:$P_ORIGIN; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }"
  cat >>"$WORK/nginx/nginx.conf" <<EOF
  $upstream
  server {
    listen 127.0.0.1:$P_NGINX backlog=1024;
    $proxy
  }
}
EOF
  cat >>"$WORK/nginx-idle/nginx.conf" <<EOF
  $upstream
  server {
    listen 127.0.0.1:$P_NGINX_IDLE backlog=1024;
    $proxy
  }
}
EOF
  cat >>"$WORK/nginx-tls/nginx.conf" <<EOF
  $upstream
  server {
    listen 127.0.0.1:$P_NGINX_TLS ssl backlog=1024;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    $proxy
  }
}
EOF

  cat >"$LUA" <<'EOF'
-- one machine-readable line at the end of a wrk run
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d bytes=%d duration_us=%d connect=%d read=%d write=%d timeout=%d non2xx=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
EOF
}

# ------------------------------------------------------------------ targets
# name -> "url-base process audit-dir"
declare -A URL=() PROC=() AUDIT=()
define_targets() {
  URL[nginx]=http://127.0.0.1:$P_NGINX
  URL[gatehouse]=http://127.0.0.1:$P_GW
  # TLS targets by name: the client then sends a valid SNI (an IP address in SNI is not
  # allowed, and rustls logs a warning for every handshake that carries one). Host
  # "localhost" is routed to the workspace like 127.0.0.1; the servers listen on 127.0.0.1.
  URL[nginx-tls]=https://localhost:$P_NGINX_TLS
  URL[gatehouse-tls]=https://localhost:$P_GW_TLS
  URL[nginx-idle]=http://127.0.0.1:$P_NGINX_IDLE
  URL[gatehouse-idle]=http://127.0.0.1:$P_GW_IDLE
  PROC[nginx]=nginx PROC[gatehouse]=gatehouse PROC[nginx-tls]=nginx-tls PROC[gatehouse-tls]=gatehouse-tls
  PROC[nginx-idle]=nginx-idle PROC[gatehouse-idle]=gatehouse-idle
  AUDIT[gatehouse]=$WORK/gw/http/audit
  AUDIT[gatehouse-tls]=$WORK/gw/tls/audit
  AUDIT[gatehouse-idle]=$WORK/gw-idle/http/audit
}
test_targets() { # test -> the two targets compared (nginx first)
  case $1 in
    small | big | idle) echo "nginx gatehouse" ;;
    tls | handshake) echo "nginx-tls gatehouse-tls" ;;
  esac
}

# curl one URL: abort unless it answers 200 with the expected number of bytes
check_url() { # target path expected_bytes [extra curl args]
  local target=$1 path=$2 want=$3 out token=$TOKEN
  shift 3
  [[ $target == gatehouse-idle ]] && token=$IDLE_TOKEN
  out=$(curl -sS --cacert "$CA" -o "$RAW/check.body" -w '%{http_code} %{size_download}' \
    -H "Authorization: Bearer $token" "$@" "${URL[$target]}$path" 2>&1) || true
  if [[ $out != "200 $want" ]]; then
    log "sanity check failed: $target ${URL[$target]}$path answered '$out' (want '200 $want'); body: $(head -c 400 "$RAW/check.body" 2>/dev/null)"
    if [[ $target == gatehouse* ]]; then
      log "gateway stderr (last lines): $(tail -n 5 "$RAW/${PROC[$target]}.err")"
      log "the last trail records: $(tail -n 2 "${AUDIT[$target]}"/*.jsonl 2>/dev/null | head -c 1500)"
    fi
    exit 1
  fi
}

sanity() {
  local t
  log "sanity: every target answers 200"
  for t in nginx gatehouse nginx-tls gatehouse-tls; do
    check_url "$t" "$SMALL_PATH" "${#SMALL_BODY}"
    check_url "$t" "$SMALL_PATH" "${#SMALL_BODY}" -H "Connection: close"
  done
  if [[ " $TESTS " == *" idle "* ]]; then
    for t in nginx-idle gatehouse-idle; do check_url "$t" "$SMALL_PATH" "${#SMALL_BODY}"; done
  fi
  for t in nginx gatehouse; do check_url "$t" "$BIG_PATH" "$BIG_BYTES"; done
  cmp -s "$RAW/check.body" "$WORK/www/big.bin" || die "the 64 MiB body through the gateway differs from the origin's file"
  # Warm-up: upstream pools, page cache, allocator.
  for t in nginx gatehouse nginx-tls gatehouse-tls; do
    "${CLI[@]}" wrk -t1 -c"$SMALL_CONNS" -d2s -H "Authorization: Bearer $TOKEN" "${URL[$t]}$SMALL_PATH" >/dev/null 2>&1 || true
  done
}

tls_params() { # port -> "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519"
  openssl s_client -connect "127.0.0.1:$1" -servername localhost -brief </dev/null 2>&1 |
    awk -F': ' '/^Protocol version/{p=$2} /^Ciphersuite/{c=$2} /^(Server Temp Key|Negotiated TLS1.3 group)/{k=$2} END{print p, c, k}'
}

# ------------------------------------------------------------------ one wrk measurement
measure() { # round test target
  local round=$1 test=$2 target=$3 conns path extra=()
  case $test in
    small) conns=$SMALL_CONNS path=$SMALL_PATH ;;
    tls) conns=$TLS_CONNS path=$SMALL_PATH ;;
    big) conns=$BIG_CONNS path=$BIG_PATH ;;
    handshake) conns=$HANDSHAKE_CONNS path=$SMALL_PATH extra=(-H "Connection: close") ;;
  esac
  local pid=${PIDS[${PROC[$target]}]} opid=${PIDS[origin]} audit=${AUDIT[$target]:-}
  local a0=0 a1=0 out rc=0
  [[ -n $audit ]] && a0=$(audit_records "$audit")
  local t0 o0 c0 k0 t1 o1 c1 k1 n0 n1
  n0=$(passive_opens)
  t0=$(cpu_ticks "$pid")
  o0=$(cpu_ticks "$opid")
  c0=$(core_ticks "$SERVER_CPU")
  k0=$(core_ticks "$CLIENT_CPU")
  out=$("${CLI[@]}" wrk -t1 -c"$conns" -d"${DUR}s" --timeout 10s --latency -s "$LUA" \
    -H "Authorization: Bearer $TOKEN" "${extra[@]}" "${URL[$target]}$path" 2>&1) || rc=$?
  t1=$(cpu_ticks "$pid")
  o1=$(cpu_ticks "$opid")
  c1=$(core_ticks "$SERVER_CPU")
  k1=$(core_ticks "$CLIENT_CPU")
  n1=$(passive_opens)
  printf '%s\n' "$out" >"$RAW/r$round-$test-$target.txt"
  if [[ -n $audit ]]; then
    sleep 0.5 # group durability: the writer flushes within milliseconds
    a1=$(audit_records "$audit")
  fi

  local line
  line=$(grep '^RESULT ' <<<"$out" || true)
  if [[ -z $line ]]; then
    loud "r$round $test $target: wrk printed no result (exit $rc): $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    emit "$round" "$test" "$target" failed 1
    return
  fi
  local -A r=()
  local kv
  for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  local secs errors
  secs=$(awk -v d="${r[duration_us]}" 'BEGIN{printf "%.6f", d / 1e6}')
  errors=$((r[connect] + r[read] + r[write] + r[timeout]))
  local m
  for m in requests bytes non2xx p50_us p99_us max_us connect read write timeout; do emit "$round" "$test" "$target" "$m" "${r[$m]}"; done
  emit "$round" "$test" "$target" secs "$secs"
  emit "$round" "$test" "$target" socket_errors "$errors"
  emit "$round" "$test" "$target" tcp_accepted $((n1 - n0))
  emit "$round" "$test" "$target" proxy_cpu_s "$(awk -v a="$t0" -v b="$t1" -v t="$CLK_TCK" 'BEGIN{printf "%.2f", (b - a) / t}')"
  emit "$round" "$test" "$target" origin_cpu_s "$(awk -v a="$o0" -v b="$o1" -v t="$CLK_TCK" 'BEGIN{printf "%.2f", (b - a) / t}')"
  local busy0 tot0 st0 busy1 tot1 st1
  read -r busy0 tot0 st0 <<<"$c0"
  read -r busy1 tot1 st1 <<<"$c1"
  emit "$round" "$test" "$target" server_core_busy_pct "$(awk -v b=$((busy1 - busy0)) -v t=$((tot1 - tot0)) 'BEGIN{printf "%.0f", 100 * b / (t ? t : 1)}')"
  emit "$round" "$test" "$target" server_core_steal_pct "$(awk -v b=$((st1 - st0)) -v t=$((tot1 - tot0)) 'BEGIN{printf "%.1f", 100 * b / (t ? t : 1)}')"
  read -r busy0 tot0 st0 <<<"$k0"
  read -r busy1 tot1 st1 <<<"$k1"
  emit "$round" "$test" "$target" client_core_busy_pct "$(awk -v b=$((busy1 - busy0)) -v t=$((tot1 - tot0)) 'BEGIN{printf "%.0f", 100 * b / (t ? t : 1)}')"

  local bad=0 summary
  summary="$(awk -v n="${r[requests]}" -v s="$secs" 'BEGIN{printf "%.0f req/s", n / s}'), $(awk -v n="${r[bytes]}" -v s="$secs" 'BEGIN{printf "%.1f MB/s", n / s / 1e6}'), p99 $((r[p99_us] / 1000)) ms"
  if ((r[requests] == 0)); then
    loud "r$round $test $target: no request completed (wrk exit $rc)"
    bad=1
  fi
  if ((errors > 0 || r[non2xx] > 0)); then
    loud "r$round $test $target: wrk saw ${r[non2xx]} non-2xx responses and $errors socket errors (connect ${r[connect]}, read ${r[read]}, write ${r[write]}, timeout ${r[timeout]}) in ${r[requests]} requests; see $RAW/r$round-$test-$target.txt"
    bad=1
  fi
  if [[ -n $audit ]]; then
    local recs=$((a1 - a0))
    emit "$round" "$test" "$target" audit_records "$recs"
    summary+=", $recs trail records"
    if ((recs < r[requests])); then
      loud "r$round $test $target: the trail grew by $recs records for ${r[requests]} requests ($audit)"
      bad=1
    fi
  fi
  emit "$round" "$test" "$target" failed "$bad"
  log "r$round $test $target: $summary"
}

# ------------------------------------------------------------------ 10k idle keep-alive connections
measure_idle() { # round target
  local round=$1 target=$2 name port token
  if [[ $target == nginx ]]; then
    name=nginx-idle port=$P_NGINX_IDLE token=$TOKEN
  else
    name=gatehouse-idle port=$P_GW_IDLE token=$IDLE_TOKEN
  fi
  local out rc=0 line
  out=$("${CLI[@]}" python3 "$HERE/idle.py" --port "$port" --path "$SMALL_PATH" \
    --header "Authorization: Bearer $token" --conns "$IDLE_CONNS" --pid "${PIDS[$name]}" \
    --origin-pid "${PIDS[origin]}" --origin-port "$P_ORIGIN" 2>&1) || rc=$?
  printf '%s\n' "$out" >"$RAW/r$round-idle-$target.txt"
  sleep 1 # the server sees the client's 10,000 FINs
  line=$(grep '^IDLE ' <<<"$out" || true)
  if [[ -z $line ]]; then
    loud "r$round idle $target: the idle client printed no result (exit $rc): $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    emit "$round" idle "$target" failed 1
    return
  fi
  local -A r=()
  local kv m bad=0
  for kv in ${line#IDLE }; do r[${kv%%=*}]=${kv#*=}; done
  for m in opened failed non200 closed server_said_close rss_before_kb rss_kb rss_main_kb hwm_kb origin_rss_kb upstream_conns_added open_secs; do
    emit "$round" idle "$target" "$m" "${r[$m]}"
  done
  if ((r[opened] != IDLE_CONNS || r[non200] > 0 || r[closed] > 0)); then
    loud "r$round idle $target: ${r[opened]}/$IDLE_CONNS connections open after one request each, ${r[failed]} failed, ${r[non200]} non-200, ${r[closed]} closed by the server before the reading; $(grep -v '^IDLE ' <<<"$out" | head -n 2 | tr '\n' ' ')"
    bad=1
  fi
  emit "$round" idle "$target" failed "$bad"
  log "r$round idle $target: ${r[opened]} open, RSS $((r[rss_before_kb] / 1024)) -> $((r[rss_kb] / 1024)) MiB, ${r[upstream_conns_added]} more connections to the origin (opened in ${r[open_secs]} s)"
}

peak_rss() { # round: VmHWM of each load-test proxy so far
  local t hwm sum max
  for t in nginx gatehouse nginx-tls gatehouse-tls; do
    [[ -n ${PIDS[${PROC[$t]}]:-} ]] || continue
    hwm=$(status_kb "${PIDS[${PROC[$t]}]}" VmHWM)
    read -r sum max <<<"$hwm"
    emit "$1" peak_rss "$t" hwm_kb "$sum"
    emit "$1" peak_rss "$t" hwm_main_kb "$max"
  done
}

# ------------------------------------------------------------------ main
main() {
  local t
  for t in $TESTS; do
    [[ " small tls big handshake idle " == *" $t "* ]] || die "unknown test '$t' in TESTS (choose from: small tls big handshake idle)"
  done
  [[ ${SKIP_INSTALL:-0} == 1 ]] || install_deps
  for t in nginx wrk openssl python3 curl; do command -v "$t" >/dev/null || die "$t is not installed"; done
  [[ $PIN != 1 ]] || command -v taskset >/dev/null || die "taskset is not installed (util-linux), or set PIN=0"
  [[ ${SKIP_BUILD:-0} == 1 ]] || build
  [[ -x $GATEHOUSE && -x $BENCH_SETUP ]] || die "missing $GATEHOUSE or $BENCH_SETUP (build them, or unset SKIP_BUILD)"

  # File descriptors for 10,000 connections (servers, wrk and the idle client inherit this).
  local hard
  hard=$(ulimit -Hn)
  if [[ $hard != unlimited ]] && ((hard < NOFILE)); then ulimit -Hn "$NOFILE" 2>/dev/null || NOFILE=$hard; fi
  ulimit -Sn "$NOFILE"
  if [[ " $TESTS " == *" idle "* ]] && ((NOFILE < IDLE_CONNS + 512)); then
    die "open-file limit $NOFILE (hard limit $(ulimit -Hn)) is too low for IDLE_CONNS=$IDLE_CONNS; lower IDLE_CONNS or raise the hard limit"
  fi
  if [[ " $TESTS " == *" idle "* ]] && ((NOFILE < 2 * IDLE_CONNS + 1024)); then
    log "note: open-file limit is $NOFILE (hard limit $(ulimit -Hn)); a proxy that holds an upstream connection per idle client needs $((2 * IDLE_CONNS + 1024))"
  fi

  mkdir -p "$WORK"
  exec 9>"$WORK/.lock"
  flock -n 9 || die "another run is using $WORK (set WORK and BASE_PORT to run two at once)"
  local p
  for p in $(seq "$BASE_PORT" $((BASE_PORT + 7))); do
    port_open "$p" && die "127.0.0.1:$p is already in use; set BASE_PORT"
  done

  mkdir -p "$RESULTS" "$RAW"
  printf 'round\ttest\ttarget\tmetric\tvalue\n' >"$TSV"
  write_configs
  define_targets

  start_nginx origin "$P_ORIGIN"
  start_nginx nginx "$P_NGINX"
  start_nginx nginx-tls "$P_NGINX_TLS"
  start_gateway gatehouse "$WORK/gw/http/gatehouse.toml" "$P_GW"
  start_gateway gatehouse-tls "$WORK/gw/tls/gatehouse.toml" "$P_GW_TLS"
  # The idle-connection instances run from the start too: their ports lie in the ephemeral
  # range, and a listener started later can find its port taken by some client socket.
  if [[ " $TESTS " == *" idle "* ]]; then
    start_nginx nginx-idle "$P_NGINX_IDLE"
    start_gateway gatehouse-idle "$WORK/gw-idle/http/gatehouse.toml" "$P_GW_IDLE"
  fi
  log "up: origin :$P_ORIGIN, nginx :$P_NGINX, nginx-tls :$P_NGINX_TLS, gatehouse :$P_GW, gatehouse-tls :$P_GW_TLS (pinning: ${SRV[*]:-none} / client ${CLI[*]:-none})"
  sanity

  local tls_nginx tls_gw commit
  tls_nginx=$(tls_params "$P_NGINX_TLS")
  tls_gw=$(tls_params "$P_GW_TLS")
  commit=$(git -C "$ROOT" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
  cat >"$META" <<EOF
date=$(date -u '+%Y-%m-%d %H:%M UTC')
machine=$(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)
nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(openssl version | cut -d' ' -f1-2)
wrk=$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)
gatehouse=$commit
rounds=$ROUNDS
dur=$DUR
pinning=$([[ $PIN == 1 ]] && echo "origin + proxies on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU" || echo none)
conns=small $SMALL_CONNS, tls $TLS_CONNS, big $BIG_CONNS, handshake $HANDSHAKE_CONNS, idle $IDLE_CONNS
paths=small $SMALL_PATH, big $BIG_PATH
tls=nginx: $tls_nginx; gatehouse: $tls_gw
tests=$TESTS
EOF

  local round test targets order i n
  for round in $(seq 1 "$ROUNDS"); do
    for test in $TESTS; do
      read -ra targets <<<"$(test_targets "$test")"
      n=${#targets[@]}
      # rotate the order of targets each round
      order=()
      for ((i = 0; i < n; i++)); do order+=("${targets[$(((i + round - 1) % n))]}"); done
      for t in "${order[@]}"; do
        if [[ $test == idle ]]; then measure_idle "$round" "$t"; else measure "$round" "$test" "$t"; fi
      done
    done
    peak_rss "$round"
  done

  local a
  for t in gatehouse gatehouse-tls; do
    a=$(audit_records "${AUDIT[$t]}")
    log "trail of $t: $a records in ${AUDIT[$t]} ($(du -sh "${AUDIT[$t]}" | cut -f1))"
  done
  for t in gatehouse gatehouse-tls; do
    if grep -qiE '(^| )(ERROR|WARN)' "$RAW/$t.err" 2>/dev/null; then
      log "note: $t logged warnings/errors (first lines): $(grep -iE '(^| )(ERROR|WARN)' "$RAW/$t.err" | head -n 3)"
    fi
  done
  stop_all

  python3 "$HERE/report.py" "$TSV" "$META" | tee "$MD"
  log "table: $MD; raw rows: $TSV; wrk outputs and server logs: $RAW/"
  if ((FAILED > 0)); then
    log "!!! $FAILED measurement(s) FAILED, listed in $RESULTS/vs-nginx-$STAMP.failures and marked in the table"
    exit 2
  fi
}

main "$@"

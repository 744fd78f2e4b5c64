#!/usr/bin/env bash
# Runs the same XMPP load against rookery, Prosody, ejabberd and the reference TLS relay on this
# machine, one after the other, and prints their figures side by side with the ratio to rookery.
#
#   bench/compare.sh                 # defaults below
#   USERS=2000 IDLE_USERS=10000 DURATION=10 bench/compare.sh
#   SERVERS="rookery prosody" bench/compare.sh
#   SERVERS="rookery rookery-pg rookery-cluster" bench/compare.sh   # the cluster shape
#   SERVERS="rookery rookery-mam" bench/compare.sh   # message archiving off, then on
#   SERVERS="rookery-mam prosody-mam ejabberd-mam" bench/compare.sh   # archiving on everywhere
#   SERVERS="rookery-mam rookery-pg-mam" bench/compare.sh   # rookery archiving to SQLite, to PostgreSQL
#   SERVERS="rookery-s2s prosody-s2s ejabberd-s2s" bench/compare.sh   # two of each, federating
#   SCENARIOS="login" SERVERS="rookery ejabberd" bench/compare.sh   # only some scenarios
#   SM=1 SCENARIOS="chat muc" SERVERS="rookery prosody ejabberd" bench/compare.sh   # clients ack (XEP-0198)
#   SERVERS="rookery-held" bench/compare.sh   # HELD (100,000) idle connections held at once
#   SERVER_CPUS=0,1 GEN_CPUS=2,3 bench/compare.sh   # servers and load generator on cores of their own
#
# Each server runs on its own loopback address with the standard port, in a throwaway
# directory, with TLS (STARTTLS required), SCRAM-SHA-1 accounts, rosters and offline storage,
# message archiving off (rookery-mam: on, every message in both archives), a group chat service
# on conference.localhost, and no traffic shaping or per-occupant message limits. TLS key
# exchange is X25519 everywhere: Debian's Prosody and ejabberd use OpenSSL 3.0, which has no
# post-quantum key exchange, so rookery's (on by default) is turned off for the same handshake. Everything stops when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-1000}              # connected users in the chat scenario
IDLE_USERS=${IDLE_USERS:-5000}    # connections held in the idle scenario
DURATION=${DURATION:-10}          # seconds per measured run
RATES=${RATES:-"1000 2000 5000 10000 15000 20000 30000 40000 50000 60000 70000 80000 90000 100000"}
ROOM_SIZE=${ROOM_SIZE:-100}       # occupants per room in the muc scenario
MUC_RATES=${MUC_RATES:-"10 25 50 100 200 400 800 1200 1600 2400 3200"}   # room messages sent per second (× ROOM_SIZE copies)
REST_RATES=${REST_RATES:-"250 500 1000 2000 4000"}   # REST bridge message posts per second (rookery only)
FED_RATES=${FED_RATES:-"1000 2000 5000 10000 20000 40000 60000 80000"}   # messages per second from one server's users to the other's
SERVERS=${SERVERS:-"rookery prosody ejabberd relay"}
SCENARIOS=${SCENARIOS:-"idle chat muc login rest"}   # which of them measure() runs
LOGIN_LOOPS=${LOGIN_LOOPS:-"16 64"}   # concurrent login loops: each server's best counts
HALF_REPEATS=${HALF_REPEATS:-5}   # chat runs at half of rookery's top rate (its latency target)
HALF_SERVERS=${HALF_SERVERS:-"rookery relay"}   # the labels that make them
KEEP_RESULTS=${KEEP_RESULTS:-}   # a file to keep every run's JSON line in (the table is built from them)
SM=${SM:-0}   # 1: in chat and muc, clients enable stream management (XEP-0198) and answer acks (not the relay)
SERVER_CPUS=${SERVER_CPUS:-}   # e.g. "0,1": the servers, and all they start, run on these CPUs only
GEN_CPUS=${GEN_CPUS:-}         # e.g. "2,3": the load generator runs on these (unset: wherever)
WORK=$(mktemp -d /tmp/rookery-bench.XXXXXX)
# The servers run as their own users and must reach their directories inside.
chmod 755 "$WORK"
RESULTS="$WORK/results.jsonl"
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  ejabberd_stop >/dev/null 2>&1 || true
  sleep 1
  [ -n "$KEEP_RESULTS" ] && [ -f "$RESULTS" ] && cp "$RESULTS" "$KEEP_RESULTS"
  rm -rf "$WORK"
}
trap cleanup EXIT

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
wanted=(openssl)
for s in $SERVERS; do
  case "$s" in
    prosody|ejabberd) wanted+=("$s") ;;
    prosody-mam|ejabberd-mam) wanted+=("${s%-mam}") ;;
    prosody-s2s) wanted+=(prosody) ;;
    ejabberd-s2s) wanted+=(ejabberd) ;;
    rookery-pg|rookery-pg-mam) wanted+=(postgresql) ;;
    rookery-cluster|rookery-held) wanted+=(postgresql redis-server) ;;
  esac
done
for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

cargo build --release --bins -q
BENCH=target/release/rookery-bench
ROOKERY=target/release/rookery
MAXUSERS=$(( USERS > IDLE_USERS ? USERS : IDLE_USERS ))
# Where the machine has cores to spare, the generator gets its own, so that its CPU no longer
# decides when a server's threads run. The script itself moves to the servers' cores: every
# server, database and helper it starts inherits them.
if [ -n "$SERVER_CPUS" ]; then taskset -pc "$SERVER_CPUS" $$ >/dev/null; fi
GEN_PIN=()
if [ -n "$GEN_CPUS" ]; then GEN_PIN=(taskset -c "$GEN_CPUS"); fi
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true

wait_port() {  # host port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1:$2" >&2
  return 1
}

run() {  # label addr[:port][,addr:port…] pid[,pid…] scenario extra-args...; MARK=key marks the lines
  local label=$1 addr=$2 pid=$3 scenario=$4
  shift 4
  [[ "$addr" == *:* ]] || addr="$addr:5222"
  if [ "$SM" = 1 ] && [ "$label" != relay ] && [[ "$scenario" == chat || "$scenario" == muc ]]; then
    set -- "$@" --sm
  fi
  timeout "${RUN_TIMEOUT:-$((DURATION * 3 + 120))}" "${GEN_PIN[@]}" "$BENCH" run --json --label "$label" --server "$addr" \
    --pid "$pid" --scenario "$scenario" --duration "$DURATION" "$@" | mark | tee -a "$RESULTS"
}

mark() {  # adds "$MARK": true to each JSON line, if MARK is set
  if [ -z "${MARK:-}" ]; then cat; return; fi
  python3 -c 'import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        print(json.dumps(dict(json.loads(line), **{sys.argv[1]: True})), flush=True)' "$MARK"
}

wanted_scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# rookery's latency target is a p99 at half of its top chat rate. One 10-second run's p99 on a
# shared two-core machine moves by a factor of ten from run to run, so the rate is run several
# times, for rookery and for the relay beside it: the relay's figure says what the machine
# allowed at that load while the runs were made. The lines are marked so that the table keeps
# them apart from the rate steps.
half_runs() {  # label addr pid
  local label=$1 addr=$2 pid=$3 half
  [[ " $HALF_SERVERS " == *" $label "* ]] && wanted_scenario chat || return 0
  [ "$HALF_REPEATS" -gt 0 ] && [ -s "$WORK/half_rate" ] || return 0
  half=$(cat "$WORK/half_rate")
  for _ in $(seq "$HALF_REPEATS"); do
    MARK=half_max run "$label" "$addr" "$pid" chat --users "$USERS" --rate "$half" \
      --login-rate 1000 || true
  done
}

measure() {  # label addr[,addr…] pid[,pid…]; labels ending in -mam run the chat scenario only
  local label=$1 addr=$2 pid=$3
  if [[ "$label" != *-mam ]] && wanted_scenario idle; then
    run "$label" "$addr" "$pid" idle --users "$IDLE_USERS" --login-rate 2000 || true
  fi
  local top=0
  wanted_scenario chat && for rate in $RATES; do
    out=$(run "$label" "$addr" "$pid" chat --users "$USERS" --rate "$rate" --login-rate 1000) || break
    # Stop raising the rate once the server no longer keeps up.
    python3 bench/table.py --kept-up "$out" || break
    top=$rate
  done
  [ "$label" = rookery ] && [ "$top" -gt 0 ] && echo $((top / 2)) > "$WORK/half_rate"
  half_runs "$label" "$addr" "$pid"
  [[ "$label" == *-mam ]] && return 0
  wanted_scenario muc && for rate in $MUC_RATES; do
    # Occupants of the previous run leave their rooms before the next run joins them.
    sleep 2
    out=$(run "$label" "$addr" "$pid" muc --users "$USERS" --room-size "$ROOM_SIZE" \
      --rate "$rate" --login-rate 1000) || break
    python3 bench/table.py --kept-up "$out" || break
  done
  wanted_scenario login && for loops in $LOGIN_LOOPS; do
    run "$label" "$addr" "$pid" login --users "$USERS" --concurrency "$loops" || true
  done
  [ -n "${HTTP_ADDR:-}" ] && wanted_scenario rest || return 0
  for rate in $REST_RATES; do
    out=$(run "$label" "$addr" "$pid" rest --http "$HTTP_ADDR" --rate "$rate" --concurrency 32) || break
    python3 bench/table.py --kept-up "$out" || break
  done
}

# --- rookery ---------------------------------------------------------------------------------
rookery() {  # [label archive-default]: "rookery never" is the raw routing figure
  local label=${1:-rookery} archive=${2:-never}
  local dir="$WORK/$label"
  mkdir -p "$dir"
  cat > "$dir/rookery.toml" <<EOF
data_dir = "$dir/data"
[listen]
c2s = "127.0.0.2:5222"
c2s_tls = "127.0.0.2:5223"
s2s = "127.0.0.2:5269"
http = "127.0.0.2:5280"
[archive]
default = "$archive"
[muc]
message_rate = 0
[limits]
c2s_bytes_per_second = 0
s2s_bytes_per_second = 0
[tls]
post_quantum = false
EOF
  "$BENCH" provision --kind rookery --target "sqlite://$dir/data/rookery.db" --users "$MAXUSERS"
  RUST_LOG=warn "$ROOKERY" serve --config "$dir/rookery.toml" 2> "$dir/log" &
  PIDS+=($!)
  local pid=$!
  wait_port 127.0.0.2 5222
  HTTP_ADDR=127.0.0.2:5280 measure "$label" 127.0.0.2 "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# --- rookery on PostgreSQL, alone and as a two-node cluster with Redis --------------------------
pg_up() {
  [ -n "${PG_URL:-}" ] && return 0
  local dir="$WORK/pg" bin
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$dir" && chown postgres:postgres "$dir"
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/postgres" -D "$dir/data" -k "$dir" -c listen_addresses=127.0.0.8 -p 5432 \
    -c max_connections=200 2> "$dir/log" &
  PIDS+=($!)
  wait_port 127.0.0.8 5432
  sleep 1
  PG_URL="postgres://postgres@127.0.0.8:5432/postgres"
}

redis_up() {
  [ -n "${REDIS_URL:-}" ] && return 0
  mkdir -p "$WORK/redis"
  redis-server --bind 127.0.0.8 --port 6379 --save '' --appendonly no --dir "$WORK/redis" \
    > "$WORK/redis/log" 2>&1 &
  PIDS+=($!)
  wait_port 127.0.0.8 6379
  REDIS_URL="redis://127.0.0.8:6379/"
}

rookery_node() {  # name addr extra-toml: starts a node in the background, pid in NODE_PID
  local dir="$WORK/$1"
  mkdir -p "$dir"
  printf 'data_dir = "%s"\n[listen]\nc2s = "%s:5222"\nc2s_tls = "%s:5223"\ns2s = "%s:5269"\nhttp = "%s:5280"\n[storage]\nurl = "%s"\n[archive]\ndefault = "%s"\n[muc]\nmessage_rate = 0\n[limits]\nc2s_bytes_per_second = 0\ns2s_bytes_per_second = 0\n[tls]\npost_quantum = false\n%s\n' \
    "$dir/data" "$2" "$2" "$2" "$2" "$PG_URL" "${NODE_ARCHIVE:-never}" "$3" > "$dir/rookery.toml"
  RUST_LOG=warn "$ROOKERY" serve --config "$dir/rookery.toml" 2> "$dir/log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
}

rookery_pg() {  # [label archive-default]
  local label=${1:-rookery-pg} archive=${2:-never}
  pg_up
  "$BENCH" provision --kind rookery --target "$PG_URL" --users "$MAXUSERS"
  NODE_ARCHIVE=$archive rookery_node "$label" 127.0.0.6 ""
  local pid=$NODE_PID
  wait_port 127.0.0.6 5222
  HTTP_ADDR=127.0.0.6:5280 measure "$label" 127.0.0.6 "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

rookery_cluster() {
  pg_up
  redis_up
  "$BENCH" provision --kind rookery --target "$PG_URL" --users "$MAXUSERS"
  rookery_node node1 127.0.0.6 "$(printf '[cluster]\nredis_url = "%s"\nnode = "node1"' "$REDIS_URL")"
  local p1=$NODE_PID
  rookery_node node2 127.0.0.7 "$(printf '[cluster]\nredis_url = "%s"\nnode = "node2"' "$REDIS_URL")"
  local p2=$NODE_PID
  wait_port 127.0.0.6 5222
  wait_port 127.0.0.7 5222
  # Users alternate between the nodes, so about half of all messages cross the cluster bus.
  measure rookery-cluster "127.0.0.6:5222,127.0.0.7:5222" "$p1,$p2"
  kill "$p1" "$p2"; wait "$p1" "$p2" 2>/dev/null || true
}

# --- HELD idle connections at once ------------------------------------------------------------
# One process may open only `ulimit -n` files. Where that is too few for HELD connections, the
# connections are held by a cluster of as many rookery nodes as it takes (on PostgreSQL and
# Redis, as in rookery-cluster), from as many load generator processes: the figure is still
# the memory the nodes hold per connection, with every node's baseline counted.
HELD=${HELD:-100000}
rookery_held() {
  local per nodes addrs="" pids="" k
  per=$(( $(ulimit -n) - 1000 ))
  nodes=$(( (HELD + per - 1) / per ))
  pg_up
  redis_up
  "$BENCH" provision --kind rookery --target "$PG_URL" --users "$HELD"
  for k in $(seq 1 "$nodes"); do
    if [ "$nodes" -eq 1 ]; then
      rookery_node held "127.0.1.$k" ""
    else
      rookery_node "held$k" "127.0.1.$k" \
        "$(printf '[cluster]\nredis_url = "%s"\nnode = "held%s"' "$REDIS_URL" "$k")"
    fi
    addrs+="${addrs:+,}127.0.1.$k:5222"
    pids+="${pids:+,}$NODE_PID"
  done
  for k in $(seq 1 "$nodes"); do wait_port "127.0.1.$k" 5222; done
  echo "rookery-held: $HELD connections over $nodes node(s) (ulimit -n $(ulimit -n))" >&2
  RUN_TIMEOUT=$(( DURATION * 3 + 300 + HELD / 500 )) run rookery-held "$addrs" "$pids" idle \
    --users "$HELD" --login-rate "${HELD_LOGIN_RATE:-500}" --processes "$nodes" || true
  kill ${pids//,/ }; wait ${pids//,/ } 2>/dev/null || true
}

# --- federation: two servers of a kind, USERS/2 users on each, every message crossing s2s -------
# Both sides use the test certificates of certs/test (rookery.test / prosody.test and
# other.test) and verify each other with its test CA, so streams authenticate by SASL EXTERNAL.
CERTS="$PWD/certs/test"

federate() {  # label addr-a domain-a pid-a addr-b domain-b pid-b
  local rate out
  for rate in $FED_RATES; do
    out=$(run "$1" "$2" "$4,$7" federation --domain "$3" --peer-server "$5:5222" \
      --peer-domain "$6" --users "$USERS" --rate "$rate" --login-rate 1000) || break
    python3 bench/table.py --kept-up "$out" || break
  done
}

rookery_s2s() {
  local side domain addr peer peer_addr pids=()
  for side in "rookery.test 127.0.0.2 other.test 127.0.0.9" "other.test 127.0.0.9 rookery.test 127.0.0.2"; do
    read -r domain addr peer peer_addr <<< "$side"
    local dir="$WORK/s2s-$domain"
    mkdir -p "$dir/data"
    cat > "$dir/rookery.toml" <<EOF
domain = "$domain"
data_dir = "$dir/data"
[listen]
c2s = "$addr:5222"
c2s_tls = "$addr:5223"
s2s = "$addr:5269"
http = "$addr:5280"
[tls]
cert = "$CERTS/$domain.pem"
key = "$CERTS/$domain.key"
post_quantum = false
[archive]
default = "never"
[limits]
c2s_bytes_per_second = 0
s2s_bytes_per_second = 0
[s2s]
trust = ["$CERTS/ca.pem"]
[s2s.routes]
"$peer" = "$peer_addr:5269"
EOF
    "$BENCH" provision --kind rookery --target "sqlite://$dir/data/rookery.db" --users $((USERS / 2))
    RUST_LOG=warn "$ROOKERY" serve --config "$dir/rookery.toml" 2> "$dir/log" &
    PIDS+=($!)
    pids+=($!)
    wait_port "$addr" 5222
  done
  federate rookery-s2s 127.0.0.2 rookery.test "${pids[0]}" 127.0.0.9 other.test "${pids[1]}"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}

prosody_s2s() {
  local side domain addr peer peer_addr pids=()
  for side in "prosody.test 127.0.0.3 other.test 127.0.0.9" "other.test 127.0.0.9 prosody.test 127.0.0.3"; do
    read -r domain addr peer peer_addr <<< "$side"
    local dir="$WORK/s2s-$domain"
    mkdir -p "$dir/data"
    cp "$CERTS/$domain.pem" "$dir/cert.pem"; cp "$CERTS/$domain.key" "$dir/key.pem"
    cp "$CERTS/ca.pem" "$dir/ca.pem"
    echo "$peer_addr $peer" > "$dir/hosts"
    cat > "$dir/prosody.cfg.lua" <<EOF
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
interfaces = { "$addr" }
c2s_ports = { 5222 }
legacy_ssl_ports = { }
s2s_ports = { 5269 }
http_ports = { }
https_ports = { }
log = { warn = "$dir/prosody.log" }
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "offline"; "posix" }
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = true
ssl = { key = "$dir/key.pem"; certificate = "$dir/cert.pem"; cafile = "$dir/ca.pem" }
-- libunbound ignores /etc/hosts and asks resolv.conf's nameserver unless told otherwise.
unbound = { resolvconf = false; hoststxt = "$dir/hosts"; forward = { "127.0.0.1" } }
VirtualHost "$domain"
EOF
    "$BENCH" provision --kind prosody --target "$dir/data" --domain "$domain" --users $((USERS / 2))
    chown -R prosody:prosody "$dir"
    setpriv --reuid=prosody --regid=prosody --init-groups \
      prosody -F --config "../..$dir/prosody.cfg.lua" &
    PIDS+=($!)
    pids+=($!)
    wait_port "$addr" 5222
  done
  federate prosody-s2s 127.0.0.3 prosody.test "${pids[0]}" 127.0.0.9 other.test "${pids[1]}"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}

# ejabberd finds its peer through an SRV record put into its resolver's cache at start (it has
# no static routes, and resolves SRV targets with getaddrinfo, which only knows /etc/hosts and
# DNS): the target is the peer's IP address, which needs no lookup.
ejabberd_s2s() {
  local side domain addr peer peer_addr i=0 dirs=() pids=()
  for side in "ejabberd.test 127.0.0.4 other.test 127.0.0.9" "other.test 127.0.0.9 ejabberd.test 127.0.0.4"; do
    read -r domain addr peer peer_addr <<< "$side"
    i=$((i + 1))
    local dir="$WORK/s2s-$domain"
    mkdir -p "$dir/logs" "$dir/spool"
    cat "$CERTS/$domain.pem" "$CERTS/$domain.key" > "$dir/server.pem"
    cp "$CERTS/ca.pem" "$dir/ca.pem"
    cat > "$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=rookerybench-s2s$i@localhost
ERL_DIST_PORT=$((4380 + i))
ERL_MAX_PORTS=250000
ERL_OPTIONS='-kernel inet_dist_use_interface {127,0,0,1} -eval inet_db:add_rr("_xmpp-server._tcp.$peer",in,srv,86400,{0,0,5269,"$peer_addr"})'
EJABBERD_PID_PATH=$dir/ejabberd.pid
EOF
    echo '{resolv_conf, ""}.' > "$dir/inetrc"
    cat > "$dir/ejabberd.yml" <<EOF
hosts: ["$domain"]
loglevel: warning
certfiles: ["$dir/server.pem"]
ca_file: "$dir/ca.pem"
auth_method: internal
auth_password_format: scram
s2s_use_starttls: required
outgoing_s2s_families: [ipv4]
outgoing_s2s_ipv4_address: "$addr"
listen:
  - port: 5222
    ip: "$addr"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: 262144
    shaper: none
    access: all
    backlog: 4096
  - port: 5269
    ip: "$addr"
    module: ejabberd_s2s_in
    shaper: none
  - port: 5280
    ip: "$addr"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
api_permissions:
  "benchmark provisioning":
    from: mod_http_api
    who:
      ip: 127.0.0.0/8
    what: "register"
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
shaper: {}
shaper_rules: {}
modules:
  mod_roster: {}
  mod_disco: {}
  mod_ping: {}
  mod_offline: {}
  mod_http_api: {}
EOF
    chown -R ejabberd:ejabberd "$dir"
    setpriv --reuid=ejabberd --regid=ejabberd --init-groups env HOME="$dir" \
      ejabberdctl --config-dir "$dir" --config "$dir/ejabberd.yml" \
      --ctl-config "$dir/ejabberdctl.cfg" --logs "$dir/logs" --spool "$dir/spool" \
      foreground-quiet > "$dir/console.log" 2>&1 &
    PIDS+=($!)
    dirs+=("$dir")
    wait_port "$addr" 5280
    python3 - "$addr" "$domain" $((USERS / 2)) <<'EOF'
import http.client, json, sys
addr, domain, users = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection(addr, 5280, timeout=30)
for i in range(1, users + 1):
    body = json.dumps({"user": f"bench{i}", "host": domain, "password": "bench"})
    conn.request("POST", "/api/register", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200 and i == 1:
        sys.exit(f"ejabberd registration failed: {r.status}")
EOF
    wait_port "$addr" 5222
    pids+=("$(cat "$dir/ejabberd.pid")")
  done
  federate ejabberd-s2s 127.0.0.4 ejabberd.test "${pids[0]}" 127.0.0.9 other.test "${pids[1]}"
  kill "${pids[@]}" 2>/dev/null || true
  sleep 2
}

# --- Prosody -----------------------------------------------------------------------------------
prosody_run() {  # [label mam]: "prosody-mam 1" archives every message (mod_mam, its default store)
  local label=${1:-prosody} mam=${2:-0} modules='"roster"; "saslauth"; "tls"; "disco"; "ping"; "offline"; "posix"'
  local dir="$WORK/$label"
  [ "$mam" = 1 ] && modules="$modules; \"mam\""
  [ "$SM" = 1 ] && modules="$modules; \"smacks\""
  mkdir -p "$dir/data"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  cat > "$dir/prosody.cfg.lua" <<EOF
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
interfaces = { "127.0.0.3" }
c2s_ports = { 5222 }
legacy_ssl_ports = { }
s2s_ports = { }
http_ports = { }
https_ports = { }
log = { warn = "$dir/prosody.log" }
modules_enabled = { $modules }
default_archive_policy = true
modules_disabled = { "s2s" }
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
ssl = { key = "$dir/key.pem"; certificate = "$dir/cert.pem" }
VirtualHost "localhost"
Component "conference.localhost" "muc"
EOF
  "$BENCH" provision --kind prosody --target "$dir/data" --domain localhost --users "$MAXUSERS"
  chown -R prosody:prosody "$dir"
  # Prosody refuses to drop privileges when started as root; start it as its own user. It
  # reads --config relative to /etc/prosody, hence the climb back to /.
  setpriv --reuid=prosody --regid=prosody --init-groups \
    prosody -F --config "../..$dir/prosody.cfg.lua" &
  PIDS+=($!)
  local pid=$!
  wait_port 127.0.0.3 5222
  measure "$label" 127.0.0.3 "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# --- ejabberd ----------------------------------------------------------------------------------
EJ_NODE="rookerybench@localhost"
ejabberd_ctl() {
  # As its own user, so that ejabberdctl does not go through `su`, which would reset the open
  # file limit to 1024 and cap the connections.
  setpriv --reuid=ejabberd --regid=ejabberd --init-groups env HOME=/var/lib/ejabberd \
    ejabberdctl --config-dir "$WORK/ejabberd" --config "$WORK/ejabberd/ejabberd.yml" \
    --ctl-config "$WORK/ejabberd/ejabberdctl.cfg" --logs "$WORK/ejabberd/logs" \
    --spool "$WORK/ejabberd/spool" --node "$EJ_NODE" "$@"
}
ejabberd_stop() { [ -d "$WORK/ejabberd" ] && ejabberd_ctl stop; }

ejabberd_run() {  # [label mam]: "ejabberd-mam 1" archives every message (mod_mam on mnesia)
  local label=${1:-ejabberd} mam=${2:-0} extra_modules=""
  local dir="$WORK/ejabberd"
  [ "$mam" = 1 ] && extra_modules=$'  mod_mam:\n    default: always'
  [ "$SM" = 1 ] && extra_modules+=$'\n  mod_stream_mgmt: {}'
  rm -rf "$dir"
  mkdir -p "$dir/logs" "$dir/spool"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  cat "$dir/cert.pem" "$dir/key.pem" > "$dir/server.pem"
  cat > "$dir/ejabberd.yml" <<EOF
hosts: ["localhost"]
loglevel: warning
certfiles: ["$dir/server.pem"]
auth_method: internal
auth_password_format: scram
listen:
  - port: 5222
    ip: "127.0.0.4"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: 262144
    shaper: none
    access: all
    backlog: 4096
  - port: 5280
    ip: "127.0.0.4"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
api_permissions:
  "benchmark provisioning":
    from: mod_http_api
    who:
      ip: 127.0.0.0/8
    what: "register"
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
shaper: {}
shaper_rules: {}
modules:
  mod_roster: {}
  mod_disco: {}
  mod_ping: {}
  mod_offline: {}
  mod_http_api: {}
  mod_muc:
    host: "conference.localhost"
    access: all
    access_create: all
    max_users: 1000
    history_size: 0
$extra_modules
EOF
  cat > "$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=$EJ_NODE
INET_DIST_INTERFACE=127.0.0.1
ERL_MAX_PORTS=250000
EOF
  chown -R ejabberd:ejabberd "$dir" 2>/dev/null || true
  ejabberd_ctl start
  ejabberd_ctl started
  wait_port 127.0.0.4 5280
  # `ejabberdctl register` starts a VM per call (about 0.8 s); the HTTP API over one
  # keep-alive connection registers thousands of accounts in seconds.
  python3 - "$MAXUSERS" <<'EOF'
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.4", 5280, timeout=30)
for i in range(1, int(sys.argv[1]) + 1):
    body = json.dumps({"user": f"bench{i}", "host": "localhost", "password": "bench"})
    conn.request("POST", "/api/register", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200 and i == 1:
        sys.exit(f"ejabberd registration failed: {r.status}")
EOF
  wait_port 127.0.0.4 5222
  local pid
  pid=$(pgrep -f "beam.*$EJ_NODE" | head -n 1)
  measure "$label" 127.0.0.4 "$pid"
  ejabberd_stop || true
}

# --- the reference relay -----------------------------------------------------------------------
relay_run() {
  "$BENCH" relay --listen 127.0.0.5:5222 2> "$WORK/relay.log" &
  PIDS+=($!)
  local pid=$!
  wait_port 127.0.0.5 5222
  for rate in $RATES; do
    out=$(run relay 127.0.0.5 "$pid" chat --users "$USERS" --rate "$rate" --login-rate 1000) || break
    python3 bench/table.py --kept-up "$out" || break
  done
  half_runs relay 127.0.0.5 "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for s in $SERVERS; do
  case "$s" in
    rookery) rookery ;;
    rookery-mam) rookery rookery-mam always ;;
    rookery-pg) rookery_pg ;;
    rookery-pg-mam) rookery_pg rookery-pg-mam always ;;
    rookery-cluster) rookery_cluster ;;
    rookery-held) rookery_held ;;
    prosody) prosody_run ;;
    prosody-mam) prosody_run prosody-mam 1 ;;
    ejabberd) ejabberd_run || echo "ejabberd run failed; see $WORK/ejabberd/logs" >&2 ;;
    ejabberd-mam) ejabberd_run ejabberd-mam 1 || echo "ejabberd run failed" >&2 ;;
    relay) relay_run ;;
    rookery-s2s) rookery_s2s ;;
    prosody-s2s) prosody_s2s ;;
    ejabberd-s2s) ejabberd_s2s || echo "ejabberd-s2s run failed; see $WORK/s2s-*/logs" >&2 ;;
    *) echo "unknown server $s" >&2; exit 2 ;;
  esac
done

python3 bench/table.py "$RESULTS"

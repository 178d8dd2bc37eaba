#!/usr/bin/env bash
# A private single-node OpenStack Swift with the S3 API, for island's tests and benchmarks.
#
#   scripts/swift.sh start DIR   start it in DIR (created), on free loopback ports; prints
#                                the S3 endpoint and writes DIR/swift.json and DIR/swift.env
#   scripts/swift.sh stop DIR    stop every process it started (by pid) and keep DIR
#   scripts/swift.sh status DIR  exit 0 if its proxy answers
#
# Needs Debian's swift packages (scripts/install-deps.sh installs them). Everything lives
# in DIR except /etc/swift/swift.conf, whose path Swift hard-codes: it is written once
# if absent (hash prefix/suffix and one default storage policy) and never changed after.
# S3 credentials: access key "test:tester", secret "testing", region "us-east-1".
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
PY=/usr/bin/python3   # Debian's python: it imports Debian's swift modules

stop() {
  [ -f "$dir/pids" ] || return 0
  local pids; pids=$(cat "$dir/pids")
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$dir/pids"
}

case "$cmd" in
  stop) stop; exit 0 ;;
  status)
    port=$(cat "$dir/proxy.port" 2>/dev/null) || exit 1
    exec "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/healthcheck', timeout=2)" 2>/dev/null ;;
  start) ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac

for b in swift-proxy-server swift-object-server swift-container-server swift-account-server memcached; do
  command -v "$b" >/dev/null || { echo "swift.sh: $b is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
stop   # a previous instance in this directory
mkdir -p "$dir/etc" "$dir/devices/d1" "$dir/log" "$dir/run"

if [ ! -f /etc/swift/swift.conf ]; then
  mkdir -p /etc/swift
  cat > /etc/swift/swift.conf <<CONF
[swift-hash]
swift_hash_path_suffix = island-test-suffix
swift_hash_path_prefix = island-test-prefix

[storage-policy:0]
name = Policy-0
default = yes
CONF
fi

# Five free loopback ports: proxy, account, container, object, memcached.
read -r P_PROXY P_ACC P_CON P_OBJ P_MC < <("$PY" - <<'PYEOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket(); s.bind(('127.0.0.1', 0)); socks.append(s)
print(' '.join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PYEOF
)

server_conf() { # name port
  cat > "$dir/etc/$1-server.conf" <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $2
devices = $dir/devices
mount_check = false
disable_fallocate = true
workers = 1
user = root
swift_dir = $dir/etc
log_name = $1-server

[pipeline:main]
pipeline = $1-server

[app:$1-server]
use = egg:swift#$1
CONF
}
server_conf account "$P_ACC"
server_conf container "$P_CON"
server_conf object "$P_OBJ"

cat > "$dir/etc/proxy-server.conf" <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $P_PROXY
workers = 1
user = root
swift_dir = $dir/etc
log_name = proxy-server

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
min_segment_size = 1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$P_MC

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:ratelimit]
use = egg:swift#ratelimit
[filter:copy]
use = egg:swift#copy
[filter:container-quotas]
use = egg:swift#container_quotas
[filter:account-quotas]
use = egg:swift#account_quotas
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
[filter:symlink]
use = egg:swift#symlink
CONF

# Rings: one device per ring, built in one Python process (swift-ring-builder costs ~1 s a call).
"$PY" - "$dir/etc" "$P_ACC" "$P_CON" "$P_OBJ" <<'PYEOF'
import sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], dict(zip(('account', 'container', 'object'), map(int, sys.argv[2:5])))
for name, port in ports.items():
    b = RingBuilder(6, 1, 1)
    b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': port, 'device': 'd1', 'weight': 1})
    b.rebalance()
    b.save(f'{etc}/{name}.builder')
    b.get_ring().save(f'{etc}/{name}.ring.gz')
PYEOF

: > "$dir/pids"
memcached -l 127.0.0.1 -p "$P_MC" -U 0 -u root -m 64 > "$dir/log/memcached.log" 2>&1 &
echo $! >> "$dir/pids"
for s in account container object proxy; do
  setsid "/usr/bin/swift-$s-server" "$dir/etc/$s-server.conf" -v > "$dir/log/$s.log" 2>&1 < /dev/null &
  echo $! >> "$dir/pids"
done
echo "$P_PROXY" > "$dir/proxy.port"

# Wait for the proxy, then prove the backends answer (auth + HEAD of the account).
"$PY" - "$P_PROXY" <<'PYEOF' || { echo "swift.sh: Swift did not come up; logs in $dir/log" >&2; stop; exit 1; }
import sys, time, urllib.request
port = sys.argv[1]
base = f'http://127.0.0.1:{port}'
deadline = time.time() + 60
last = None
while time.time() < deadline:
    try:
        urllib.request.urlopen(base + '/healthcheck', timeout=2)
        req = urllib.request.Request(base + '/auth/v1.0', headers={'X-Auth-User': 'test:tester', 'X-Auth-Key': 'testing'})
        r = urllib.request.urlopen(req, timeout=5)
        token, url = r.headers['X-Auth-Token'], r.headers['X-Storage-Url']
        urllib.request.urlopen(urllib.request.Request(url, method='HEAD', headers={'X-Auth-Token': token}), timeout=5)
        sys.exit(0)
    except Exception as e:
        last = e
        time.sleep(0.2)
print(f'last error: {last}', file=sys.stderr)
sys.exit(1)
PYEOF

cat > "$dir/swift.json" <<JSON
{"endpoint":"http://127.0.0.1:$P_PROXY","region":"us-east-1","accessKeyId":"test:tester","secretAccessKey":"testing","pidFile":"$dir/pids"}
JSON
cat > "$dir/swift.env" <<ENV
ISLAND_TEST_S3_ENDPOINT=http://127.0.0.1:$P_PROXY
ISLAND_TEST_S3_REGION=us-east-1
ISLAND_TEST_S3_ACCESS_KEY=test:tester
ISLAND_TEST_S3_SECRET_KEY=testing
ENV
echo "swift: S3 endpoint http://127.0.0.1:$P_PROXY (region us-east-1, key test:tester / testing); stop with: $0 stop $dir"

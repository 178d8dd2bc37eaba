#!/usr/bin/env bash
# A smoke test of island on another Node.js major than the one the suite ran on (default
# 24, the newest LTS island supports; scripts/test.sh runs it after the whole suite):
#
#   1. fetch that Node (scripts/node-version.sh) and put it first on PATH
#   2. build (tsc) with it, and load the native addon the main build made: it is built
#      against N-API 8 (native/binding.gyp), so one build loads on every supported version
#   3. a quickstart-like path: a daemon on the embedded store, a volume qemu-io writes through
#      the mount, a snapshot, a second daemon (another host, same store) that restores it and
#      reads the data back, detaches, and both daemons stop
#   4. one FUSE test file (test/fuse/qemu.test.ts: qemu-img, qemu-io, restarts, SIGKILL)
#
#   scripts/smoke-node.sh [MAJOR]        (or ISLAND_SMOKE_NODE=MAJOR)
set -euo pipefail
cd "$(dirname "$0")/.."

MAJOR=${1:-${ISLAND_SMOKE_NODE:-24}}
die() {
  echo "smoke: $*" >&2
  exit 1
}

node_bin=$(bash scripts/node-version.sh "$MAJOR")
PATH="$(dirname "$node_bin"):$PATH"
export PATH
echo "smoke: Node $(node --version) ($node_bin)"
npm run --silent build
node -e 'require("./native/build/Release/island_native.node")' || die "the native addon does not load on Node $(node --version)"

dir=$(mktemp -d "${TMPDIR:-/tmp}/island-smoke.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for h in a b; do
    if mountpoint -q "$dir/$h/mnt" 2>/dev/null; then umount -l "$dir/$h/mnt" || true; fi
  done
  rm -rf "$dir"
}
trap cleanup EXIT

# island on host a or b: own data directory, mount, socket and host id; one embedded store.
hostenv() {
  HOSTENV=(ISLAND_DATA_DIR="$dir/$1" ISLAND_MOUNT="$dir/$1/mnt" ISLAND_SOCKET="$dir/$1/island.sock" ISLAND_HOST_ID="smoke-$1" ISLAND_STORE_DIR="$dir/store")
}
on() {
  hostenv "$1"
  shift
  env "${HOSTENV[@]}" node dist/cli/main.js "$@"
}
serve() {
  mkdir -p "$dir/$1"
  hostenv "$1"
  # A simple command in the background: $! is the daemon itself (env execs node), stopped by pid.
  env "${HOSTENV[@]}" node dist/cli/main.js serve >>"$dir/$1/island.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do
    if on "$1" status >/dev/null 2>&1; then return 0; fi
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/$1/island.log" >&2
  die "island serve on host $1 did not start"
}

serve a
on a volume create demo --size 1G >/dev/null
on a attach demo >/dev/null
qemu-io -t none -i threads -c 'write -P 0x5a 0 4M' -c 'write -P 0xa5 512M 1M' -c flush "$dir/a/mnt/demo.qcow2" >/dev/null
qemu-img check "$dir/a/mnt/demo.qcow2" | grep -q 'No errors were found' || die "qemu-img check found errors"
snap=$(on a snapshot create demo --json | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>process.stdout.write(JSON.parse(s).snapshots[0].id))')
echo "smoke: snapshot $snap"

serve b
on b volume create copy --from "$snap" >/dev/null
on b attach copy >/dev/null
out=$(qemu-io -r -c 'read -P 0x5a 0 4M' -c 'read -P 0xa5 512M 1M' "$dir/b/mnt/copy.qcow2")
if grep -q 'Pattern verification failed' <<<"$out" || [ "$(grep -c '^read ' <<<"$out")" -ne 2 ]; then
  echo "$out" >&2
  die "host b did not read back what host a wrote"
fi
on b detach copy >/dev/null
on a detach demo >/dev/null
echo "smoke: quickstart path on Node $(node --version): written, snapshot, restored by another host, read back, detached"

npx tap test/fuse/qemu.test.ts

#!/usr/bin/env bash
# Install everything island needs, build it, start the island daemon on its embedded
# store, and show the main job: a volume attached as a qcow2 file that QEMU uses.
#   ISLAND_DATA_DIR (default /var/lib/island), ISLAND_MOUNT (default /run/island/mnt)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run --silent build
export ISLAND_DATA_DIR="${ISLAND_DATA_DIR:-/var/lib/island}" ISLAND_MOUNT="${ISLAND_MOUNT:-/run/island/mnt}"
export ISLAND_SOCKET="${ISLAND_SOCKET:-$ISLAND_DATA_DIR/island.sock}"
island() { node dist/cli/main.js "$@"; }
mkdir -p "$ISLAND_DATA_DIR"

if ! island status >/dev/null 2>&1; then
  echo "== starting island serve (log: $ISLAND_DATA_DIR/island.log)"
  nohup node dist/cli/main.js serve >> "$ISLAND_DATA_DIR/island.log" 2>&1 &
  echo $! > "$ISLAND_DATA_DIR/island.pid"
  for _ in $(seq 1 100); do island status >/dev/null 2>&1 && break; sleep 0.1; done
fi
island status

vol=demo
if ! island volume show "$vol" >/dev/null 2>&1; then island volume create "$vol" --size 10G; fi
island attach "$vol" 2>/dev/null || true
img="$ISLAND_MOUNT/$vol.qcow2"
echo "== QEMU's tools on $img"
qemu-img info "$img" | head -3
qemu-io -t none -c 'write -P 0x5a 0 4M' -c 'flush' -c 'read -P 0x5a 0 4M' "$img" | grep -E '^(wrote|read)'
qemu-img check "$img" | head -1

echo "== a snapshot (flush the data, seal, upload the changed clusters to the store)"
snap=$(island snapshot create "$vol" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).snapshots[0].id))')
island snapshot show "$snap" | grep -E '^(id|changedClusters|uploadedBytes|consistency):'

echo "== a restore as another host: a second daemon on the same store reads the snapshot lazily"
hostb="$ISLAND_DATA_DIR/quickstart-host-b"
store="${ISLAND_STORE_DIR:-$ISLAND_DATA_DIR/store}"
mkdir -p "$hostb"
islandb() { ISLAND_DATA_DIR="$hostb" ISLAND_MOUNT="$hostb/mnt" ISLAND_SOCKET="$hostb/island.sock" ISLAND_HOST_ID=quickstart-b ISLAND_STORE_DIR="$store" node dist/cli/main.js "$@"; }
ISLAND_DATA_DIR="$hostb" ISLAND_MOUNT="$hostb/mnt" ISLAND_SOCKET="$hostb/island.sock" ISLAND_HOST_ID=quickstart-b ISLAND_STORE_DIR="$store" \
  nohup node dist/cli/main.js serve >> "$hostb/island.log" 2>&1 &
pidb=$!
stop_b() { islandb detach "$copy" >/dev/null 2>&1 || true; kill "$pidb" 2>/dev/null || true; wait "$pidb" 2>/dev/null || true; }
trap stop_b EXIT
for _ in $(seq 1 100); do islandb status >/dev/null 2>&1 && break; sleep 0.1; done
copy="demo-restored-$(date +%s)"
islandb volume create "$copy" --from "$snap" >/dev/null
islandb attach "$copy" >/dev/null
qemu-io -r -c 'read -P 0x5a 0 4M' "$hostb/mnt/$copy.qcow2" | grep -E '^read|Pattern' || true
echo "(host quickstart-b read the snapshot's data back; it now detaches and stops)"
stop_b
trap - EXIT
islandb volume delete "$copy" >/dev/null 2>&1 || true
rm -rf "$hostb"
island status
cat <<MSG

island is running (pid $(cat "$ISLAND_DATA_DIR/island.pid" 2>/dev/null || echo '?')), serving $ISLAND_MOUNT.
  volume file:   $img   (use it as a qcow2 drive, aio=threads, werror=stop,rerror=stop)
  data:          $ISLAND_DATA_DIR   store: $store   log: $ISLAND_DATA_DIR/island.log
  snapshot:      $snap
  try:           alias island='node dist/cli/main.js'
                 island snapshot list $vol      island fsck --deep      island status
                 island volume create web1 --from $snap && island attach web1
  stop:          kill \$(cat $ISLAND_DATA_DIR/island.pid)
MSG

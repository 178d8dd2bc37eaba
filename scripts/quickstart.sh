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
island status
cat <<MSG

island is running (pid $(cat "$ISLAND_DATA_DIR/island.pid" 2>/dev/null || echo '?')), serving $ISLAND_MOUNT.
  volume file:   $img   (use it as a qcow2 drive, aio=threads)
  data:          $ISLAND_DATA_DIR   store: $ISLAND_DATA_DIR/store   log: $ISLAND_DATA_DIR/island.log
  try:           node dist/cli/main.js volume list | status | detach $vol
  stop:          kill \$(cat $ISLAND_DATA_DIR/island.pid)
MSG

#!/usr/bin/env bash
# Install everything island needs, build it, and run island's main job on the embedded
# default store (a directory under the data directory, /var/lib/island unless
# ISLAND_DATA_DIR says otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run --silent build
export ISLAND_DATA_DIR="${ISLAND_DATA_DIR:-/var/lib/island}"
echo "== island on the embedded store in $ISLAND_DATA_DIR/store"
node dist/cli/main.js store selftest

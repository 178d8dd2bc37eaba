#!/usr/bin/env bash
# Install everything island needs, build it, start one private Swift for the whole run,
# and run the whole test suite against it. Extra arguments go to tap (e.g. a test file).
# After the whole suite (not when a test file is named): a smoke test on the newest Node LTS
# island supports (scripts/smoke-node.sh: build, a quickstart-like path, a FUSE test file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run --silent build
swiftdir=$(mktemp -d "${TMPDIR:-/tmp}/island-test-swift.XXXXXX")
trap 'bash scripts/swift.sh stop "$swiftdir"; rm -rf "$swiftdir"' EXIT
bash scripts/swift.sh start "$swiftdir"
export ISLAND_TEST_SWIFT="$swiftdir/swift.json" ISLAND_REQUIRE_SWIFT=1
npx tap "$@"
if [ $# -eq 0 ]; then bash scripts/smoke-node.sh "${ISLAND_SMOKE_NODE:-24}"; fi

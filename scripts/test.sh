#!/usr/bin/env bash
# Install everything island needs, build it, start one private Swift for the whole run,
# and run the whole test suite against it. Extra arguments go to tap (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm run --silent build
swiftdir=$(mktemp -d "${TMPDIR:-/tmp}/island-test-swift.XXXXXX")
trap 'bash scripts/swift.sh stop "$swiftdir"; rm -rf "$swiftdir"' EXIT
bash scripts/swift.sh start "$swiftdir"
export ISLAND_TEST_SWIFT="$swiftdir/swift.json" ISLAND_REQUIRE_SWIFT=1
npx tap "$@"

#!/usr/bin/env bash
# Build island's native addon (native/) into native/build/Release/island_native.node.
# Idempotent: when the addon exists and neither its sources nor the Node version changed
# since the last build, it does nothing (a second run takes a fraction of a second).
#   --force   rebuild anyway
# Needs g++ (or any C compiler as cc), make and python3 (node-gyp runs on Python), and
# Node's headers, which Debian's nodejs and the official tarballs install next to node.
set -euo pipefail
cd "$(dirname "$0")/.."

ADDON=native/build/Release/island_native.node
STAMP=native/build/island-native.stamp

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    *) echo "build-native: unknown argument: $arg (usage: scripts/build-native.sh [--force])" >&2; exit 2 ;;
  esac
done

die() {
  echo "build-native: $*" >&2
  exit 1
}

command -v node >/dev/null 2>&1 || die "node is not on PATH"

# The stamp names everything the addon is built from: its sources, Node's version and the
# platform. Hashing is done by node itself so the script needs nothing else.
stamp=$(node -e '
  const { createHash } = require("node:crypto");
  const { readdirSync, readFileSync } = require("node:fs");
  const h = createHash("sha256");
  h.update(`${process.version} ${process.platform} ${process.arch}\n`);
  // Sources in native/ and its subdirectories (native/fuse/, native/volume/), not the build output.
  const files = readdirSync("native", { recursive: true }).map(String).filter((f) => /\.(c|h|gyp)$/.test(f) && !f.startsWith("build/")).sort();
  for (const f of files) {
    h.update(`${f}\n`).update(readFileSync(`native/${f}`));
  }
  process.stdout.write(h.digest("hex"));
')

if [ "$force" = 0 ] && [ -f "$ADDON" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp" ]; then
  echo "build-native: $ADDON is up to date"
  exit 0
fi

# The toolchain, checked up front so a missing piece is named instead of buried in gyp output.
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v make >/dev/null 2>&1 || missing+=(make)
if ! command -v "${CC:-cc}" >/dev/null 2>&1 || ! command -v "${CXX:-g++}" >/dev/null 2>&1; then missing+=(g++); fi
if [ ${#missing[@]} -gt 0 ]; then
  die "missing build tools: ${missing[*]}. On Debian/Ubuntu: apt-get install -y g++ make python3"
fi

# node-gyp: the project's copy if present, else the one bundled with npm.
gyp=""
if [ -f node_modules/node-gyp/bin/node-gyp.js ]; then
  gyp=node_modules/node-gyp/bin/node-gyp.js
elif npm_bin=$(command -v npm 2>/dev/null); then
  npm_dir=$(dirname "$(dirname "$(readlink -f "$npm_bin")")")
  [ -f "$npm_dir/node_modules/node-gyp/bin/node-gyp.js" ] && gyp="$npm_dir/node_modules/node-gyp/bin/node-gyp.js"
fi
[ -n "$gyp" ] || die "node-gyp not found (neither in node_modules/ nor bundled with npm); run npm ci first"

# Node's headers installed next to the running node, so the build never downloads them.
node_prefix=$(node -p 'require("node:path").resolve(process.execPath, "..", "..")')
if [ -f "$node_prefix/include/node/node_api.h" ] && [ -f "$node_prefix/include/node/common.gypi" ]; then
  nodedir=(--nodedir="$node_prefix")
else
  echo "build-native: no Node headers under $node_prefix/include/node; node-gyp will download them" >&2
  nodedir=()
fi

echo "build-native: building $ADDON"
started=$(date +%s.%N)
if ! log=$(node "$gyp" rebuild -C native "${nodedir[@]}" 2>&1); then
  printf '%s\n' "$log" >&2
  die "node-gyp failed (output above)"
fi
# Warnings from the compiler are worth seeing; gyp's own chatter is not.
printf '%s\n' "$log" | grep -E 'warning:|error:' >&2 || true

node -e 'const a = require(process.argv[1]); if (typeof a.seekData !== "function") throw new Error("unexpected exports")' \
  "$PWD/$ADDON" || die "$ADDON was built but does not load"
printf '%s' "$stamp" > "$STAMP"
echo "build-native: built $ADDON in $(node -p "($(date +%s.%N) - $started).toFixed(1)")s"

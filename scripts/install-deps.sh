#!/usr/bin/env bash
# Install the Debian packages island needs, then its npm dependencies.
# Idempotent: packages already installed are not fetched again, so a second run is fast.
#   --no-npm   only the Debian packages
set -euo pipefail
cd "$(dirname "$0")/.."

# What each package is for:
#   libfuse2 fuse3          FUSE runtime for fuse-native (libfuse.so.2) and fusermount
#   qemu-utils              qemu-img / qemu-io: growing images (volume resize), tests, the qcow2 check
#   qemu-system-x86         qemu-system-x86_64 (QMP-coordinated snapshots, guest tests)
#   swift*, memcached       a private single-node OpenStack Swift with s3api for tests and benchmarks
#   python3-swift           Swift's Python modules (for /usr/bin/python3)
#   cpio busybox-static     building the test guest's initramfs (scripts/guest-image.sh; its
#                           kernel and qemu-guest-agent are fetched there, not installed)
#   e2fsprogs               e2fsck: the guest test checks a frozen snapshot's file system
#   g++ make python3        building island's native addon (node-gyp)
#   fio                     the FUSE data path benchmark (scripts/bench-fuse.ts)
#   libvirt-clients         virsh: island talks to libvirt through it (attach --domain)
#   libvirt-daemon-system   libvirtd and virtlogd with Debian's default QEMU driver configuration
#                           (QEMU as libvirt-qemu) for test/libvirt; started by the test itself
#   python3-cinder          OpenStack Cinder's volume manager and test base: the island driver
#                           (cinder/) is tested against it (test/cinder/)
#   python3-nova            Nova's libvirt volume code: the driver's connection info is checked
#                           to become a qcow2 file disk on island's mount
PKGS=(libfuse2 fuse3 qemu-utils qemu-system-x86 swift swift-proxy swift-object swift-container
      swift-account python3-swift memcached cpio busybox-static e2fsprogs ca-certificates g++ make python3 fio
      libvirt-clients libvirt-daemon-system python3-cinder python3-nova)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packaged services must not start on their own: island starts its own private instances.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # Others may be installing at the same time: wait for dpkg's lock instead of failing.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: Debian packages already installed"
fi

if [ "${1:-}" != "--no-npm" ]; then
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
  bash scripts/build-native.sh
fi

#!/usr/bin/env bash
# Build the test guest: a Debian 12 cloud kernel and a busybox initramfs that boot in a few
# seconds under `qemu-system-x86_64 -accel tcg`. Everything comes from Debian packages fetched
# here (apt-get download, unpacked with dpkg-deb -x; nothing is installed on the host).
#
#   scripts/guest-image.sh DIR
#
# Writes DIR/vmlinuz, DIR/initrd.gz and DIR/agent ("yes" when qemu-guest-agent is in the
# initramfs, "no" otherwise). A second run with the same script and kernel is a no-op.
#
# The guest's /init takes its job from the kernel command line:
#   island.step=write   make an ext2 file system on /dev/vda, write island.files files of
#                       island.mib MiB each, then rewrite four more files in a loop
#                       (snapshots are taken meanwhile) until "stop" arrives on the
#                       virtio-serial port org.island.control, or for island.churn seconds
#                       without one; record everything's sha256 in /SUMS on the disk,
#                       unmount, power off
#   island.step=verify  mount /dev/vda read-only, check every file against /SUMS
# It reports on the serial console with lines starting "island: ": "churn start",
# "churn done", "sum HASH  NAME" (write: what was written; verify: what was read),
# "write done", and "PASS" or "FAIL ...". If the port org.qemu.guest_agent.0 exists
# (virtio-serial), qemu-ga serves it, so guest-fsfreeze-freeze/thaw work.
#
# Needs on the host: apt-get (with Debian 12 sources), dpkg-deb, busybox-static, cpio, gzip
# (scripts/install-deps.sh installs the last three).
set -euo pipefail

DIR=${1:?usage: guest-image.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# The kernel the meta package points at today, e.g. linux-image-6.1.0-57-cloud-amd64.
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
if [ -z "$KPKG" ]; then
  echo "guest-image: apt-cache knows no linux-image-cloud-amd64 (Debian 12 sources missing? run apt-get update)" >&2
  exit 1
fi
KVER=${KPKG#linux-image-}

# The cache key: this script (it holds /init) and the kernel version.
KEY="$(sha256sum "$0" | cut -d' ' -f1) $KPKG"
if [ -f "$DIR/vmlinuz" ] && [ -f "$DIR/initrd.gz" ] && [ -f "$DIR/agent" ] && [ "$(cat "$DIR/key" 2>/dev/null)" = "$KEY" ]; then
  echo "guest-image: $DIR is up to date ($KPKG, agent: $(cat "$DIR/agent"))"
  exit 0
fi

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX=/usr/bin/busybox
# ldd fails on a static executable.
if ! "$BUSYBOX" --list 2>/dev/null | grep -x mke2fs >/dev/null || ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "guest-image: a static busybox is needed (apt-get install busybox-static)" >&2
  exit 1
fi
command -v cpio >/dev/null || { echo "guest-image: cpio is needed (apt-get install cpio)" >&2; exit 1; }

WORK=$(mktemp -d "$DIR/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "guest-image: fetching $KPKG and qemu-guest-agent"
# apt-get download writes into the current directory; _apt cannot write here, so it warns
# that it downloads unsandboxed: harmless.
if ! apt-get download -q "$KPKG" qemu-guest-agent >download.log 2>&1; then
  cat download.log >&2
  echo "guest-image: apt-get download failed (no network or no Debian mirror?)" >&2
  exit 1
fi
dpkg-deb -x "$KPKG"_*.deb kernel
dpkg-deb -x qemu-guest-agent_*.deb agent

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,mnt,run,tmp,lib/modules,var}
ln -s ../run "$ROOT/var/run"
cp "$BUSYBOX" "$ROOT/bin/busybox"

# Modules in load order (insmod resolves nothing by itself); ext4, which also mounts ext2,
# and crc32c are built into this kernel. virtio_console carries the agent's channel.
MODS="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
      drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk
      drivers/char/virtio_console"
MODDIR=kernel/lib/modules/$KVER/kernel
for m in $MODS; do
  f=$(ls "$MODDIR/$m".ko* 2>/dev/null | head -n1)
  [ -n "$f" ] || { echo "guest-image: $m is not in $KPKG" >&2; exit 1; }
  case "$f" in
    *.ko) cp "$f" "$ROOT/lib/modules/" ;;
    *.ko.xz) xz -dc "$f" >"$ROOT/lib/modules/$(basename "$f" .xz)" ;;
    *) echo "guest-image: cannot unpack $f" >&2; exit 1 ;;
  esac
  echo "$(basename "$m")" >>"$ROOT/lib/modules/order"
done

# qemu-ga and the shared libraries ldd finds for it. The host runs the same Debian release
# as the package, so its copies of those libraries fit; a library the host lacks leaves the
# guest without an agent (and the freeze snapshots untested) rather than failing the build.
AGENT=no
QGA=agent/usr/sbin/qemu-ga
if [ -x "$QGA" ] && ! ldd "$QGA" | grep 'not found' >/dev/null; then
  mkdir -p "$ROOT/usr/sbin"
  cp "$QGA" "$ROOT/usr/sbin/qemu-ga"
  for lib in $(ldd "$QGA" | grep -o '/[^ ]*'); do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
  done
  AGENT=yes
else
  echo "guest-image: qemu-ga's libraries are not all on this host; the guest has no agent:" >&2
  ldd "$QGA" >&2 || true
fi

cat >"$ROOT/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "island: $*"; }
finish() { sync; poweroff -f; }
fail() { say "FAIL $*"; finish; }

arg() { # arg NAME DEFAULT: the value of island.NAME= on the kernel command line
  v=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^island\.$1=//p" | tail -n1)
  echo "${v:-$2}"
}

for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m.ko" || fail "insmod $m"
done

n=0
while [ ! -b /dev/vda ]; do
  n=$((n + 1)); [ $n -gt 200 ] && fail "no /dev/vda"
  usleep 50000
done

port() { # port NAME: the device of the virtio-serial port QEMU named NAME, if any
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && echo "/dev/$(basename "$p")"
  done
}

# The agent, when the image has it and QEMU gave it a port.
qga=$(port org.qemu.guest_agent.0)
if [ -x /usr/sbin/qemu-ga ] && [ -n "$qga" ]; then
  qemu-ga -m virtio-serial -p "$qga" -t /run >/dev/null 2>&1 &
  say "agent on $qga"
fi

step_write() {
  files=$(arg files 4); mib=$(arg mib 1); churn=$(arg churn 300)
  mke2fs -F /dev/vda >/dev/null || fail "mke2fs"
  mount -t ext2 /dev/vda /mnt || fail "mount"
  mkdir /mnt/data
  i=1
  while [ $i -le "$files" ]; do
    dd if=/dev/urandom of=/mnt/data/file$i bs=64k count=$((mib * 16)) 2>/dev/null || fail "write file$i"
    i=$((i + 1))
  done
  sync
  # The control port reads end of file while nobody is connected on the host: retry.
  : >/run/control
  ctl=$(port org.island.control)
  if [ -n "$ctl" ]; then
    while :; do cat "$ctl" >>/run/control 2>/dev/null; usleep 200000; done &
    reader=$!
  fi
  say "churn start"
  end=$(($(date +%s) + churn)); n=0
  while [ "$(date +%s)" -lt $end ] && ! grep -q stop /run/control; do
    dd if=/dev/urandom of=/mnt/data/churn$((n % 4)) bs=64k count=$((n % 8 + 1)) conv=fsync 2>/dev/null || fail "churn write"
    n=$((n + 1))
  done
  [ -n "$ctl" ] && kill $reader
  say "churn done after $n rewrites$(grep -q stop /run/control && echo ', told to stop')"
  (cd /mnt/data && sha256sum *) >/mnt/SUMS
  sync
  sed 's/^/island: sum /' /mnt/SUMS
  umount /mnt || fail "umount"
  say "write done"
}

step_verify() {
  mount -t ext2 -o ro /dev/vda /mnt || fail "mount"
  [ -s /mnt/SUMS ] || fail "no /SUMS"
  (cd /mnt/data && sha256sum *) | sed 's/^/island: sum /'
  if (cd /mnt/data && sha256sum -c /mnt/SUMS >/dev/null 2>&1); then
    say "PASS $(wc -l </mnt/SUMS) files"
  else
    (cd /mnt/data && sha256sum -c /mnt/SUMS 2>&1) | grep -v ': OK$' | sed 's/^/island: /'
    say "FAIL checksums"
  fi
  umount /mnt
}

case "$(arg step none)" in
  write) step_write ;;
  verify) step_verify ;;
  *) fail "unknown island.step" ;;
esac
finish
INIT
chmod +x "$ROOT/init"

(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initrd.gz"
cp "kernel/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
mv "$WORK/vmlinuz" "$WORK/initrd.gz" "$DIR/"
echo "$AGENT" >"$DIR/agent"
echo "$KEY" >"$DIR/key"
echo "guest-image: built $DIR ($KPKG, agent: $AGENT, initrd $(du -h "$DIR/initrd.gz" | cut -f1))"

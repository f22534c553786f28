#!/usr/bin/env bash
# Builds the Porthole QEMU guest image into OUT_DIR: rootfs.qcow2 (ext4, no partition table),
# vmlinuz and initrd.img for direct kernel boot, and recipe.sha256.
#
# The image's identity is the sha256 of this file: `porthole machine create --provider qemu`
# looks for images/<sha256>/ and runs this script when it is missing, so any change here is a
# new image and a stale cache can never be used by mistake. The guest agent binary is NOT in
# the image: each machine gets it on a small read-only seed disk, so rebuilding the agent
# never rebuilds the image.
#
# Needs root (debootstrap, chroot), debootstrap, e2fsprogs, qemu-utils and a Debian mirror.
# Takes ~4-6 minutes and ~1.5 GB. Progress lines: "[step/total] what".
#
# The kernel is Debian's generic one, not the cloud flavour: that one has no 9p
# (CONFIG_NET_9P is not set), so a machine's shared workspace could not be mounted.
#
# aarch64 (Apple Silicon with HVF): the same recipe with ARCH=arm64, linux-image-arm64,
# and qemu-system-aarch64 -machine virt; see ARCHITECTURE.md (qemu provider).
set -euo pipefail

OUT=${1:?usage: build.sh OUT_DIR}
MIRROR=${PORTHOLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
ARCH=amd64
DISK_SIZE=8G
# Desktop, browser, terminals, and the shared libraries porthole-agent links against.
PACKAGES="linux-image-amd64 initramfs-tools tigervnc-standalone-server xvfb openbox chromium tmux git ca-certificates
python3 iproute2 procps psmisc x11-utils fonts-dejavu-core e2fsprogs
libavcodec59 libavformat59 libavutil57 libswresample4 libswscale6 libx264-164 libvpx7
libx11-6 libx11-xcb1 libxcb1 libxcb-shm0 libxext6 libxfixes3 libssl3"

[ "$(id -u)" = 0 ] || { echo "build.sh: must run as root (debootstrap and chroot need it)" >&2; exit 1; }
for t in debootstrap mkfs.ext4 qemu-img; do
  command -v $t >/dev/null || { echo "build.sh: $t is not installed (apt-get install debootstrap e2fsprogs qemu-utils)" >&2; exit 1; }
done

here=$(cd "$(dirname "$0")" && pwd)
recipe=$(sha256sum "$here/build.sh" | cut -d' ' -f1)
mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d "$OUT.building.XXXXXX")
root="$work/root"
cleanup() {
  for m in proc sys dev/pts dev; do umount "$root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
step() { echo "[$1/6] $2 ($(date +%T))"; }

step 1 "debootstrap $SUITE ($ARCH, minbase) from $MIRROR"
debootstrap --variant=minbase --arch=$ARCH $SUITE "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

step 2 "install desktop, Chromium, tmux, kernel"
mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"; mount --bind /dev/pts "$root/dev/pts"
cat >"$root/usr/sbin/policy-rc.d" <<'P'
#!/bin/sh
exit 101
P
chmod +x "$root/usr/sbin/policy-rc.d"
# A small initramfs (the generic kernel has its virtio and ext4 drivers as modules; "most"
# would carry every storage and network driver, which slows every cold boot under TCG): only
# what mounting the root disk and the VM's devices need. Written before the kernel is
# installed, so its first initramfs is already this one.
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
echo "MODULES=list" >"$root/etc/initramfs-tools/conf.d/porthole"
printf '%s\n' virtio_pci virtio_blk ext4 virtio_net virtio_console virtio_rng \
  >"$root/usr/share/initramfs-tools/modules.d/porthole"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES \
  >"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; exit 1; }
chroot "$root" apt-get clean
rm -f "$root/usr/sbin/policy-rc.d"
for m in dev/pts dev sys proc; do umount "$root/$m"; done

step 3 "configure the guest"
# PID 1 is a tiny stub: the real init comes from the per-machine seed disk (LABEL=phseed),
# so the boot logic can change without a new image.
cat >"$root/usr/sbin/porthole-init" <<'I'
#!/bin/sh
mkdir -p /porthole
mount -o ro /dev/vdb /porthole || { echo "porthole-init: no seed disk on /dev/vdb" >/dev/console; sleep 5; echo o >/proc/sysrq-trigger; }
exec /porthole/init.sh
I
chmod 755 "$root/usr/sbin/porthole-init"
echo porthole >"$root/etc/hostname"
: >"$root/etc/machine-id"
printf 'nameserver 10.0.2.3\n' >"$root/etc/resolv.conf"
printf '/dev/vda / ext4 rw,relatime 0 1\n' >"$root/etc/fstab"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/*

step 4 "kernel and initramfs"
mkdir -p "$work/out"
cp "$(ls "$root"/boot/vmlinuz-* | sort | tail -1)" "$work/out/vmlinuz"
cp "$(ls "$root"/boot/initrd.img-* | sort | tail -1)" "$work/out/initrd.img"

step 5 "ext4 filesystem ($DISK_SIZE) and qcow2"
mkfs.ext4 -q -L porthole-root -d "$root" "$work/root.raw" "$DISK_SIZE"
qemu-img convert -O qcow2 "$work/root.raw" "$work/out/rootfs.qcow2"
rm -f "$work/root.raw"

step 6 "publish $OUT"
echo "$recipe" >"$work/out/recipe.sha256"
rm -rf "$OUT"
mv "$work/out" "$OUT"
du -sh "$OUT" | sed 's/^/image size: /'

#!/bin/sh
# fetch-linux.sh [DIR] - a Debian kernel and a static busybox for `vmxlab boot-linux`, nothing installed.
#
# Downloads the packages with `apt-get download` (no root needed for the download itself, no
# dependencies pulled, no post-install scripts run) and unpacks them with `dpkg-deb -x` into
# DIR (default: ./linux-guest):
#   linux-image-amd64   -> a metapackage; the kernel package it depends on is resolved with
#                          apt-cache and downloaded: DIR/boot/vmlinuz-*  (bzImage)
#   busybox-static      -> DIR/bin/busybox (statically linked)
# then builds DIR/initramfs.cpio with `vmxlab mkinitramfs`.
#
# Afterwards:
#   vmxlab boot-linux --kernel DIR/boot/vmlinuz-* --initrd DIR/initramfs.cpio
# (see docs/kvm.md, "Booting Linux").
set -eu
DIR=${1:-linux-guest}
PY=${PYTHON:-python3}
ORIG=$(pwd)
mkdir -p "$DIR/debs"
DIR=$(cd "$DIR" && pwd)
cd "$DIR/debs"
# linux-image-amd64 only depends on the versioned kernel package: download that one
KPKG=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
if [ -z "$KPKG" ]; then
    echo "fetch-linux.sh: cannot resolve linux-image-amd64 (run apt-get update?)" >&2
    exit 1
fi
apt-get download linux-image-amd64 "$KPKG" busybox-static
cd ..
for deb in debs/"$KPKG"_*.deb debs/busybox-static_*.deb; do
    dpkg-deb -x "$deb" .
done
rm -rf lib/modules usr/lib/linux   # ~390 MB of modules the boot does not use
KERNEL=$(ls boot/vmlinuz-* | head -n1)
cd "$ORIG"
"$PY" -m vmxlab mkinitramfs --busybox "$DIR/bin/busybox" -o "$DIR/initramfs.cpio"
echo "kernel:    $DIR/$KERNEL"
echo "initramfs: $DIR/initramfs.cpio"
echo "boot it:   $PY -m vmxlab boot-linux --kernel $DIR/$KERNEL --initrd $DIR/initramfs.cpio"

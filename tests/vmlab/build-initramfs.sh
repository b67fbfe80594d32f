#!/bin/bash
# build-initramfs.sh KVER OUT.cpio.gz  -- busybox + virtio/9p/overlay modules + init
set -euo pipefail
KVER=${1:?usage: build-initramfs.sh KVER OUT.cpio.gz}; OUT=${2:?usage: build-initramfs.sh KVER OUT.cpio.gz}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W"/{bin,dev,proc,sys,mods,newroot} "$(dirname "$OUT")"
cp /bin/busybox "$W/bin/busybox"
ln -s busybox "$W/bin/sh"
mknod -m 600 "$W/dev/console" c 5 1
mknod -m 666 "$W/dev/null" c 1 3
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         netfs fscache 9pnet 9pnet_virtio 9p overlay; do
  f=$(modinfo -k "$KVER" -n "$m")
  case $f in
    *.ko) cp "$f" "$W/mods/$m.ko";;
    *.ko.xz) xz -dc "$f" > "$W/mods/$m.ko";;
    *.ko.zst) zstd -qdc "$f" > "$W/mods/$m.ko";;
    *) echo "module $m not found for $KVER ($f)" >&2; exit 1;;
  esac
done
install -m 755 "$HERE/guest-init.sh" "$W/init"
install -m 644 "$HERE/guest-stage2.sh" "$W/stage2.sh"
(cd "$W" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$OUT.tmp.$$"
mv "$OUT.tmp.$$" "$OUT"  # atomic: two runs may build it at once
echo "$OUT"

#!/bin/bash
# make-header-tree.sh DIR: merge Debian's linux-headers-<ver>-common and -<ver>-amd64 into one
# symlink tree that bcc can compile against (BCC_KERNEL_SOURCE). Used for compilation only: every
# struct offset the probes read comes from the running kernel's BTF, never from these headers.
set -euo pipefail
out=${1:?usage: make-header-tree.sh DIR}
flav=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
[ -n "$flav" ] || { echo "make-header-tree: no linux-headers-*-amd64 installed" >&2; exit 1; }
common=${flav%-amd64}-common
[ -d "$common" ] || { echo "make-header-tree: $common missing" >&2; exit 1; }
if [ -e "$out/.source" ] && [ "$(cat "$out/.source")" = "$flav" ]; then exit 0; fi
rm -rf "$out.tmp"; mkdir -p "$(dirname "$out")"
cp -rs "$common" "$out.tmp"
cp -rsf "$flav/." "$out.tmp/"
echo "$flav" > "$out.tmp/.source"
rm -rf "$out"; mv "$out.tmp" "$out"

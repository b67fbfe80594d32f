#!/bin/bash
# Idempotent set-up on Debian 12 as root: apt packages, the generic kernel header tree bcc compiles
# against, the kernel-lab guest kernel, and a virtualenv at .venv with the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

APT_PKGS=(
  python3-venv python3-bpfcc bpfcc-tools bpftool            # the agent: bcc from Debian, never PyPI
  linux-headers-amd64                                        # a generic header tree for compilation only
  qemu-system-x86 busybox-static linux-image-amd64 cpio kmod zstd xz-utils   # kernel lab
  runc                                                       # real containers for identity/e2e tests
  postgresql prometheus-alertmanager                         # real store and alert sink for tests
  bpftrace auditd debootstrap gcc make e2fsprogs             # benchmarks' peers, image replay
  openssl                                                    # certificates (make-certs.sh, TLS tests)
  linux-perf                                                 # bench/lines.py: where programs spend their time
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # postgresql's package starts a cluster on some systems; tests run their own.
fi

# Generic header tree: Debian splits headers into -common and -<flavour>; bcc wants one tree.
KH=${UNLINKWATCH_KERNEL_HEADERS:-/usr/local/share/unlinkwatch/kernel-headers}
"$ROOT/scripts/make-header-tree.sh" "$KH"

# Python: system interpreter (Debian's bcc lives there) with system site packages.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,postgres]"
  rm -f .venv/.installed-*; touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/unlinkwatch --version 2>/dev/null || echo 'unlinkwatch installed'))"

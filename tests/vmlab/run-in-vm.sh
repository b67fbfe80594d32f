#!/bin/bash
# run-in-vm.sh 'COMMAND'
# Boot the Debian 6.1 kernel under QEMU with this host's root filesystem (9p, read-only,
# tmpfs overlay on top) and run COMMAND as root inside it with bash.  COMMAND's stdout+stderr
# stream to our stdout; we exit with COMMAND's exit code (124: VM timed out,
# 125: VM failed before reporting an exit code).
# Env knobs: VM_KVER VM_KERNEL VM_MEM(MiB) VM_SMP VM_ACCEL(tcg|kvm) VM_TIMEOUT(s) VM_CPU VM_TCG_THREAD
#            VM_UPPER (tmpfs size for the writable overlay, default 50%) VM_APPEND
#            VM_CLOCK (the guest's clock options; under tcg "clocksource=tsc tsc=reliable" unless set, empty: the
#            kernel's own choice, an emulated HPET whose every read traps into QEMU)
#            VM_RW_DIR (host dir mounted read-write at the same path in the guest)
#            VM_VERBOSE=1 (also print guest kernel console) VM_TIMING=1 (timings on stderr)
set -u
[ $# -ge 1 ] || { echo "usage: $0 'COMMAND'" >&2; exit 2; }
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
KVER=${VM_KVER:-$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sed "s|/boot/vmlinuz-||" | sort -V | tail -n 1)}
[ -n "$KVER" ] || { echo "run-in-vm: no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)" >&2; exit 125; }
KERNEL=${VM_KERNEL:-/boot/vmlinuz-$KVER}
MEM=${VM_MEM:-2048}
SMP=${VM_SMP:-2}
ACCEL=${VM_ACCEL:-tcg}
TMO=${VM_TIMEOUT:-600}
CACHE=${VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unlinkwatch-vmlab}
mkdir -p "$CACHE"
INITRD=$CACHE/initramfs-$KVER.cpio.gz
T0=$(date +%s.%N)

if [ ! -s "$INITRD" ] || [ "$HERE/guest-init.sh" -nt "$INITRD" ] || [ "$HERE/guest-stage2.sh" -nt "$INITRD" ]; then
  timeout 120 "$HERE/build-initramfs.sh" "$KVER" "$INITRD" >/dev/null || { echo "initramfs build failed" >&2; exit 125; }
fi

# A run killed with SIGKILL cannot clean up: its run dir names its owner, and the next run removes it. A dir with
# no owner yet may be a run starting beside this one (the lab runs two at a time): it goes once a minute old.
for old in "$CACHE"/run.*; do
  [ -d "$old" ] || continue
  owner=$(cat "$old/owner" 2>/dev/null || echo 0)
  if [ "$owner" = 0 ] && [ -z "$(find "$old" -maxdepth 0 -mmin +1)" ]; then continue; fi
  if [ "$owner" = 0 ] || ! kill -0 "$owner" 2>/dev/null; then rm -rf "$old"; fi
done
RUN=$(mktemp -d "$CACHE/run.XXXXXX")
echo $$ > "$RUN/owner"
QPID=
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
printf '%s\n' "$*" > "$RUN/cmd.sh"
pwd > "$RUN/cwd"
RWOPT=()
if [ -n "${VM_RW_DIR:-}" ]; then
  RWD=$(readlink -f "$VM_RW_DIR"); [ -d "$RWD" ] || { echo "VM_RW_DIR $VM_RW_DIR is not a directory" >&2; exit 2; }
  printf '%s\n' "$RWD" > "$RUN/rwdir"
  RWOPT=(-fsdev "local,id=rwdir,path=$RWD,security_model=none" -device virtio-9p-pci,fsdev=rwdir,mount_tag=rwdir)
fi

case $ACCEL in
  kvm) ACC=(-accel kvm -cpu host); CLOCK=${VM_CLOCK-} ;;
  *)   ACC=(-accel tcg,thread=${VM_TCG_THREAD:-multi} -cpu ${VM_CPU:-max}); CLOCK=${VM_CLOCK-clocksource=tsc tsc=reliable} ;;
esac

# ttyS0 = guest kernel console -> file; ttyS1 = COMMAND output -> our stdout. timeout and QEMU die with their
# parent (setpriv --pdeathsig): a killed test or shell never leaves an emulated machine using a core.
setpriv --pdeathsig KILL timeout -k 5 "$TMO" setpriv --pdeathsig KILL qemu-system-x86_64 "${ACC[@]}" -m "$MEM" -smp "$SMP" \
  -nodefaults -no-user-config -display none -vga none -no-reboot \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off vm.upper=${VM_UPPER:-50%} $CLOCK ${VM_APPEND:-}" \
  -serial "file:$RUN/console.log" -chardev stdio,id=out,signal=off -serial chardev:out \
  -fsdev local,id=rootfs,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=rootfs,mount_tag=root \
  -fsdev local,id=vmhost,path="$RUN",security_model=none \
  -device virtio-9p-pci,fsdev=vmhost,mount_tag=vmhost "${RWOPT[@]}" \
  < /dev/null &
QPID=$!
wait "$QPID"; QRC=$?; QPID=
T1=$(date +%s.%N)

if [ "${VM_VERBOSE:-0}" = 1 ]; then echo "----- guest console -----" >&2; cat "$RUN/console.log" >&2; fi
if [ -s "$RUN/rc" ]; then RC=$(cat "$RUN/rc")
elif [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then echo "run-in-vm: VM timed out after ${TMO}s" >&2; RC=124
else echo "run-in-vm: VM exited (qemu rc=$QRC) without an exit code; guest console tail:" >&2
     tail -n 40 "$RUN/console.log" >&2; RC=125; fi
if [ "${VM_TIMING:-0}" = 1 ]; then
  awk -v t0="$T0" -v t1="$T1" -v b="$(cut -d' ' -f1 "$RUN/t_boot" 2>/dev/null)" -v e="$(cut -d' ' -f1 "$RUN/t_end" 2>/dev/null)" \
    'BEGIN{printf "run-in-vm timing: guest-uptime-at-command-start=%ss command=%.2fs host-wall-total=%.2fs\n", b, (e-b), t1-t0}' >&2
fi
exit "$RC"

# Stage 2 (PID 1 after switch_root, run by busybox sh): run the user's command with
# the host userland, record its exit code in the shared dir, power off.
S=/run/vmhost
BB=/run/vm/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
$BB hostname vm 2>/dev/null
$BB ip link set lo up 2>/dev/null   # tests talk to services on loopback
$BB cat /proc/uptime > $S/t_boot
$BB stty -F /dev/ttyS1 raw -echo 2>/dev/null
if [ -s $S/rwdir ]; then   # optional host dir shared read-write at the same path
  RW=$($BB cat $S/rwdir); $BB mkdir -p "$RW"
  $BB mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none rwdir "$RW" || echo "vm: cannot mount $RW" >/dev/ttyS1
fi
cd "$($BB cat $S/cwd 2>/dev/null)" 2>/dev/null || cd /
/bin/bash $S/cmd.sh </dev/null >/dev/ttyS1 2>&1
rc=$?
echo $rc > $S/rc
$BB cat /proc/uptime > $S/t_end
$BB sync
echo o > /proc/sysrq-trigger
$BB sleep 30

#!/bin/bash
# replay-dockerfile.sh [CACHE_DIR] [-- DOCTOR_ARGS...]: prove the Dockerfile without a container engine.
# Replays its FROM/ENV/WORKDIR/COPY/RUN steps in a `debootstrap --variant=minbase bookworm` root (the
# base is cached in CACHE_DIR, default /var/tmp/unlinkwatch-replay), then runs the image's ENTRYPOINT with
# `doctor` inside a chroot that sees the host's /proc, /sys, BTF, cgroups, tracefs and /dev, as the
# DaemonSet's pod does; then both pods from the image on loopback (agent -> collector over mutual TLS)
# until a deleted file comes back from `unlinkwatch query`. Needs root. Exit 0 when all of it worked.
# The build context is the committed tree (git HEAD), so a run is reproducible whatever is being edited;
# UNLINKWATCH_REPLAY_CONTEXT=worktree uses the working tree as it is, as `docker build .` would.
set -euo pipefail
cd "$(dirname "$0")/.."
CONTEXT=$(pwd)
CACHE=${1:-/var/tmp/unlinkwatch-replay}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
DOCTOR_ARGS=("$@")
MIRROR=${UNLINKWATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=$CACHE/base
ROOT=$CACHE/root

die() { echo "replay: $*" >&2; exit 1; }
log() { echo "replay: $(date -u +%H:%M:%S) $*"; }
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, bind mounts)"
# The cache is deleted from, so it must be ours: an absolute path that is new, empty, or marked as a replay cache.
MARK=.unlinkwatch-replay-cache
case $CACHE in /?*) ;; *) die "CACHE_DIR must be an absolute path other than /: $CACHE" ;; esac
CACHE=$(realpath -m "$CACHE")
[ "$CACHE" != / ] || die "CACHE_DIR must not be /"
if [ -e "$CACHE" ] && [ ! -e "$CACHE/$MARK" ] && [ -n "$(ls -A "$CACHE" 2>/dev/null)" ]; then
  die "$CACHE is not empty and not a replay cache (no $MARK): refusing to delete in it"
fi
mkdir -p "$CACHE" && touch "$CACHE/$MARK"
HERE=$(cd "$(dirname "$0")" && pwd)
# What a killed run leaves (bind mounts under the root, the root itself) is recorded for make clean-host.
record() { /usr/bin/python3 "$HERE/clean-host.py" --record "$1" --owner $$ "${@:2}"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Mounts under ROOT, deepest first; never delete ROOT while anything is still mounted in it.
mounts_under() { awk -v r="$1" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r; }
unmount_all() {
  local m
  for m in $(mounts_under "$ROOT"); do umount -l "$m" 2>/dev/null || true; done
}
BG_PIDS=()
cleanup() {
  [ ${#BG_PIDS[@]} -eq 0 ] || kill "${BG_PIDS[@]}" 2>/dev/null || true
  unmount_all
  # the root is made anew by every run; only the base (debootstrap) and the logs stay in the cache
  [ -n "$(mounts_under "$ROOT")" ] || rm -rf --one-file-system "$ROOT"
  rm -rf "$CACHE/context"
  [ -z "${ROOT_REC:-}" ] || rm -f "$ROOT_REC"
}
trap cleanup EXIT

if [ "${UNLINKWATCH_REPLAY_CONTEXT:-head}" = head ]; then
  mkdir -p "$CACHE"
  rm -rf "$CACHE/context" && mkdir "$CACHE/context"
  git archive HEAD | tar -C "$CACHE/context" -xf -
  log "build context: git HEAD $(git rev-parse --short HEAD) ($(git log -1 --format=%s | cut -c1-80))"
  CONTEXT=$CACHE/context
else
  log "build context: working tree $CONTEXT"
fi

# 1. Base: the image's FROM (debian:bookworm-slim) stands in as a minbase debootstrap, cached.
if [ ! -e "$BASE/.unlinkwatch-base-complete" ]; then
  log "debootstrap --variant=minbase bookworm -> $BASE (cached for later runs)"
  rm -rf --one-file-system "$BASE.tmp"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase bookworm "$BASE.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed, see $CACHE/debootstrap.log"
  touch "$BASE.tmp/.unlinkwatch-base-complete"
  mv "$BASE.tmp" "$BASE"
fi
[ -z "$(mounts_under "$ROOT")" ] || die "$ROOT still has mounts; unmount them first"
rm -rf --one-file-system "$ROOT"
ROOT_REC=$(record dir path="$ROOT")   # clean-host unmounts what is below it, then removes it
cp -a "$BASE" "$ROOT"
# The slim image's apt sources (deb822) and a resolver for the build's downloads.
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Build-time only (not image ENV): trust the host's CA set, so pip works where TLS egress is intercepted.
mkdir -p "$ROOT/run/replay"
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/run/replay/host-ca-certificates.crt"
BUILD_ENV=(PIP_CERT=/run/replay/host-ca-certificates.crt)

# 2. The pod's view of the host: /proc (hostPID), /sys with BTF, cgroups and tracefs, /dev.
if ! awk '$2 == "/sys/kernel/tracing" && $3 == "tracefs" { f = 1 } END { exit !f }' /proc/self/mounts; then
  log "mounting tracefs at /sys/kernel/tracing on the host (a node must have it; systemd does this at boot)"
  mount -t tracefs nodev /sys/kernel/tracing
fi
mount --bind /proc "$ROOT/proc"
mount --bind /sys "$ROOT/sys"
mount --bind /sys/kernel/btf "$ROOT/sys/kernel/btf"
mount --rbind /sys/fs/cgroup "$ROOT/sys/fs/cgroup"
mount --make-rslave "$ROOT/sys/fs/cgroup"
mount --bind /sys/kernel/tracing "$ROOT/sys/kernel/tracing"
mount --rbind /dev "$ROOT/dev"
mount --make-rslave "$ROOT/dev"

# 3. Replay the Dockerfile. Docker's defaults for RUN: /bin/sh -c, this PATH, HOME=/root.
declare -A ENVS=([PATH]=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin [HOME]=/root)
WORKDIR=/
ENTRYPOINT=()
env_args() { local k; for k in "${!ENVS[@]}"; do printf '%s=%s\0' "$k" "${ENVS[$k]}"; done; }
in_root() {
  local -a e
  mapfile -d '' e < <(env_args)
  chroot "$ROOT" /usr/bin/env -i "${e[@]}" "$@"
}

# Instructions: comment lines dropped, backslash continuations joined (as Docker's parser does).
mapfile -d '' STEPS < <(python3 - "$CONTEXT/Dockerfile" <<'EOF'
import sys
steps, cur = [], ""
for line in open(sys.argv[1], encoding="utf-8"):
    s = line.rstrip("\n")
    if s.lstrip().startswith("#") or (not s.strip() and not cur):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    steps.append(cur + s)
    cur = ""
if cur.strip():
    steps.append(cur)
sys.stdout.write("".join(s.strip() + "\0" for s in steps))
EOF
)

n=0
for step in "${STEPS[@]}"; do
  n=$((n + 1))
  inst=${step%% *}; rest=${step#* }
  log "step $n/${#STEPS[@]}: ${step:0:160}"
  case "${inst^^}" in
    FROM)
      [ "$rest" = "debian:bookworm-slim" ] || die "FROM $rest: only debian:bookworm-slim is replayable";;
    ENV)
      # KEY=VALUE pairs; values are literal (the Dockerfile avoids $-expansion so the replay stays exact).
      read -r -a pairs <<<"$rest"
      for p in "${pairs[@]}"; do
        [[ $p == *=* ]] || die "ENV $p: use KEY=VALUE"
        [[ $p != *'$'* ]] || die "ENV $p: \$-expansion is not replayed"
        ENVS[${p%%=*}]=${p#*=}
      done;;
    WORKDIR)
      WORKDIR=$rest; mkdir -p "$ROOT$WORKDIR";;
    COPY)
      read -r src dest extra <<<"$rest"
      [ -z "${extra:-}" ] && [ "$src" = "." ] || die "COPY $rest: only 'COPY . DEST' is replayable"
      [[ $dest == /* ]] || dest=$WORKDIR/$dest
      mkdir -p "$ROOT$dest"
      # .dockerignore patterns become tar excludes ("**/" prefixes dropped: tar matches at any depth).
      excl=()
      if [ -f "$CONTEXT/.dockerignore" ]; then
        while IFS= read -r pat; do
          pat=${pat%%#*}; pat=${pat//[[:space:]]/}
          [ -n "$pat" ] || continue
          [[ $pat != !* ]] || die ".dockerignore exception '$pat' is not replayed"
          excl+=("--exclude=./${pat#\*\*/}" "--exclude=${pat#\*\*/}")
        done <"$CONTEXT/.dockerignore"
      fi
      tar -C "$CONTEXT" "${excl[@]}" -cf - . | tar -C "$ROOT$dest" -xf -;;
    RUN)
      [[ $rest != \[* ]] || die "RUN in exec form is not replayed; use the shell form"
      in_root "${BUILD_ENV[@]}" /bin/sh -c "cd '$WORKDIR' && $rest";;
    ENTRYPOINT)
      mapfile -t ENTRYPOINT < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$rest");;
    CMD|LABEL)
      ;;  # metadata only
    *)
      die "instruction $inst is not replayable";;
  esac
done
[ ${#ENTRYPOINT[@]} -gt 0 ] || die "no ENTRYPOINT"
rm -rf "$ROOT/run/replay"

# 4. What the pod would run. As the DaemonSet does: uid 0 with only these capabilities (bounding set,
# nothing inheritable, so root's permitted set is exactly this) and no_new_privs; keep in step with it.
POD_CAPS=(BPF PERFMON SYS_RESOURCE DAC_READ_SEARCH SYS_PTRACE)
caps=$(printf ',+%s' "${POD_CAPS[@]}" | tr '[:upper:]' '[:lower:]')
# In a private mount namespace, also like the pod: a read-only root with a tmpfs /tmp (readOnlyRootFilesystem).
# Prefixes, not functions, so that a background `"${AS_POD[@]}" cmd &` leaves $! on the command itself.
mapfile -d '' IMAGE_ENV < <(env_args)
# setpriv --pdeathsig: the pods die with this script, even when it is killed (unshare and sh exec, never fork).
in_pod_ns=(setpriv --pdeathsig KILL unshare --mount --propagation private -- /bin/sh -c 'r=$1; shift
  mount --rbind "$r" "$r" && mount -o remount,bind,ro "$r" && mount -t tmpfs -o size=256m,mode=1777 tmpfs "$r/tmp" \
    && exec chroot "$r" "$@"' sh "$ROOT" /usr/bin/env -i "${IMAGE_ENV[@]}")
AS_POD=("${in_pod_ns[@]}" setpriv --pdeathsig KILL --bounding-set="-all$caps" --inh-caps=-all --no-new-privs --)
as_pod() { "${AS_POD[@]}" "$@"; }
SMOKE='from bcc import BPF
b = BPF(text="TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat) { return 0; }")
print("compiled and attached syscalls:sys_enter_unlinkat")'

log "image env: $(env_args | tr '\0' ' ')"
log "unlinkwatch --version: $(in_root "${ENTRYPOINT[@]}" --version 2>&1)"
log "import bcc: $(in_root python3 -c 'import bcc, sys; print(bcc.__file__, sys.executable)' 2>&1)"
log "image size: $(du -sh --one-file-system "$ROOT" | cut -f1)"
log "pod capabilities: $(as_pod grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status | tr '\n\t' '  ')"
log "pod root filesystem: $(as_pod /bin/sh -c 'touch /probe-write 2>/dev/null && echo writable || echo read-only')"
log "bcc smoke test with the pod's capabilities: $(as_pod python3 -c "$SMOKE" 2>&1 | tail -n 1)"
log "running, with the pod's capabilities: ${ENTRYPOINT[*]} doctor ${DOCTOR_ARGS[*]}"
set +e
as_pod "${ENTRYPOINT[@]}" doctor "${DOCTOR_ARGS[@]}"
rc=$?
set -e
log "doctor exit status: $rc"
[ $rc -eq 0 ] || exit $rc

# 5. Both pods from the image on loopback, with mutual TLS from scripts/make-certs.sh and the rules
# ConfigMap's rules.yaml: the collector as uid 65532 with no capabilities, the agent as above. A file
# deleted on the host must come back from `unlinkwatch query`.
P_GRPC=$(free_port) P_COLL=$(free_port) P_AGENT=$(free_port)
certs=/etc/unlinkwatch/replay-certs
"$CONTEXT/scripts/make-certs.sh" "$ROOT$certs" >/dev/null
chmod 644 "$ROOT$certs"/*.crt && chown 65532:65532 "$ROOT$certs/collector.key" && chmod 755 "$ROOT$certs"
mkdir -p "$ROOT/etc/unlinkwatch/rules"
python3 -c 'import sys, yaml
cm = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "ConfigMap"][0]
sys.stdout.write(cm["data"]["rules.yaml"])' <"$CONTEXT/deploy/rules-configmap.yaml" >"$ROOT/etc/unlinkwatch/rules/rules.yaml"
AS_COLLECTOR=("${in_pod_ns[@]}" setpriv --pdeathsig KILL --reuid=65532 --regid=65532 --clear-groups --bounding-set=-all
  --inh-caps=-all --no-new-privs --)
tls() { echo --tls-cert "$certs/$1.crt" --tls-key "$certs/$1.key" --tls-ca "$certs/ca.crt"; }
wait_http() {  # URL SECONDS
  local i
  for ((i = 0; i < $2 * 2; i++)); do curl -sf -o /dev/null "$1" && return 0; sleep 0.5; done
  return 1
}
# shellcheck disable=SC2046
"${AS_COLLECTOR[@]}" "${ENTRYPOINT[@]}" collector --listen 127.0.0.1:$P_GRPC --db sqlite:////tmp/events.db \
  --rules /etc/unlinkwatch/rules/rules.yaml --metrics-addr 127.0.0.1:$P_COLL $(tls collector) \
  >"$CACHE/collector.log" 2>&1 &
coll_pid=$!; BG_PIDS+=("$coll_pid")
# shellcheck disable=SC2046
"${AS_POD[@]}" "${ENTRYPOINT[@]}" agent --collector 127.0.0.1:$P_GRPC --tls-server-name unlinkwatch-collector.unlinkwatch.svc \
  --kube off --spool /tmp/spool --metrics-addr 127.0.0.1:$P_AGENT $(tls agent) >"$CACHE/agent.log" 2>&1 &
agent_pid=$!; BG_PIDS+=("$agent_pid")
e2e=1
if wait_http "http://127.0.0.1:$P_COLL/healthz" 30 && wait_http "http://127.0.0.1:$P_AGENT/readyz" 120; then
  log "collector /healthz and agent /readyz answer (uid $(ps -o uid= -p $coll_pid | tr -d ' ') and uid $(ps -o uid= -p $agent_pid | tr -d ' '))"
  d=$(mktemp -d /tmp/unlinkwatch-replay.XXXXXX)
  touch "$d/replay-proof" && rm "$d/replay-proof" && rmdir "$d"
  sleep 3
  # shellcheck disable=SC2046
  found=$(in_root "${ENTRYPOINT[@]}" query --collector 127.0.0.1:$P_GRPC \
    --tls-server-name unlinkwatch-collector.unlinkwatch.svc $(tls agent) --path "$d/replay-proof" --output json 2>&1)
  log "query for $d/replay-proof through the collector: $found"
  grep -q '"op": *"unlink"' <<<"$found" && e2e=0
else
  log "pods did not become ready; logs in $CACHE/collector.log and $CACHE/agent.log"
fi
kill "$agent_pid" "$coll_pid" 2>/dev/null || true
wait "$agent_pid" "$coll_pid" 2>/dev/null || true
log "agent -> collector over mutual TLS: $([ $e2e -eq 0 ] && echo ok || echo FAILED)"
exit $e2e

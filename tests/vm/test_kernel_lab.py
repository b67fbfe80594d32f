"""The kernel tier under Debian's 6.1 kernel in QEMU (tests/vmlab), once per attach mode the live kernel
lacks: kprobe/kretprobe and fentry/fexit, plus tracepoint mode on the older dentry layout (d_subdirs). The guest
boots with BPF LSM active (LSMS), so block rules are enforced there (tests/kernel/test_enforcement*.py).

Each mode runs the files that depend on it (LAB_FILES). Under emulation an agent's start costs 80-100 s (most of
it compiling), so the files whose code every mode shares run once, in fentry mode, the mode this kernel picks:
everything after the entry hooks is the same program in kprobe mode, and tracepoint mode's programs are the live
kernel's, which the kernel tier runs there in full."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_root
from unlinkwatch.runstate import die_with_parent

RUNNER = ROOT / "tests" / "vmlab" / "run-in-vm.sh"


def _lab_missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86 is not installed (make setup installs it)"
    if not glob.glob("/boot/vmlinuz-6.1.*-amd64"):
        return "no Debian 6.1 kernel image in /boot (make setup installs linux-image-amd64)"
    if not Path("/bin/busybox").exists():
        return "busybox-static is not installed (make setup installs it)"
    return None


# Debian builds BPF LSM in but leaves it off; this list turns it on beside the LSMs Debian enables by default
LSMS = "lockdown,capability,yama,apparmor,bpf"
VM_TIMEOUT_S = 1500  # the VM's own limit (run-in-vm.sh); the waits below are longer, so the VM ends first


def _in_lab(mode: str, tests: str) -> str:
    """Runs pytest on `tests` in the guest, attaching in `mode`; returns its output after checking it passed."""
    require_root()
    missing = _lab_missing()
    if missing:
        pytest.skip(missing)
    py = Path(sys.executable)
    cmd = (f"set -o pipefail; cd {ROOT} && UNLINKWATCH_TEST_ATTACH={mode} {py} -m pytest {tests} -q "
           "-p no:cacheprovider -rs 2>&1 | tail -n 40")
    env = {**os.environ, "VM_TIMEOUT": str(VM_TIMEOUT_S), "VM_TIMING": "1", "VM_APPEND": f"lsm={LSMS}"}
    # the runner, its timeout and QEMU each die with their parent, so a killed or timed-out test takes them along
    p = subprocess.run([str(RUNNER), cmd], capture_output=True, text=True, env=env, timeout=VM_TIMEOUT_S + 100,
                       preexec_fn=die_with_parent)
    out = p.stdout + p.stderr
    print(out)  # shown by -ra on failure, and kept in the CI log
    assert p.returncode == 0, f"{tests} in {mode} mode under the 6.1 kernel failed:\n{out[-4000:]}"
    assert " passed" in out and " failed" not in out
    return out


_CAPTURE, _ENFORCE = "tests/kernel/test_capture.py", "tests/kernel/test_enforcement.py"
LAB_FILES = {
    "fentry": ["tests/kernel"],
    # its own entry hooks; the policy's ignore and audit decisions at its exit
    "kprobe": [_CAPTURE, "tests/kernel/test_node_policy.py", _ENFORCE, "tests/kernel/test_destroyed.py"],
    # the older dentry layout (the rename lookup, the walk) and BPF LSM beside syscall tracepoints
    "tracepoint": [_CAPTURE, _ENFORCE],
}


@pytest.mark.timeout(VM_TIMEOUT_S + 200)
@pytest.mark.parametrize("mode", list(LAB_FILES))
def test_the_kernel_tier_passes_under_the_6_1_kernel(mode: str) -> None:
    out = _in_lab(mode, " ".join(LAB_FILES[mode]))
    assert "test_enforcement" not in out  # not skipped: the guest runs BPF LSM


def test_every_kernel_tier_file_runs_in_the_lab() -> None:
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "kernel").glob("test_*.py")}
    listed = {f for fs in LAB_FILES.values() for f in fs}
    assert "tests/kernel" in LAB_FILES["fentry"] and listed - {"tests/kernel"} <= files


@pytest.mark.timeout(VM_TIMEOUT_S + 200)
def test_block_rules_on_runc_pods_are_enforced_under_the_6_1_kernel() -> None:
    out = _in_lab("fentry", "tests/e2e/test_enforcement_pods.py")
    assert "2 passed" in out

"""The kernel tier under Debian's 6.1 kernel in QEMU (tests/vmlab), once per attach mode the live kernel
lacks: kprobe/kretprobe and fentry/fexit, plus tracepoint mode on the older dentry layout (d_subdirs). The guest
boots with BPF LSM active (LSMS), so block rules are enforced there (tests/kernel/test_enforcement*.py).

Each mode runs the files that depend on it (LAB_FILES). Under emulation bcc's compile costs 75-85 s; the session
keeps each compile (tests/conftest.py, agent/probe/objcache.py), so that it is paid once per program variant (with
and without the LSM programs) and a later agent starts in 12-25 s. Still, the files whose code every mode shares
run once, in fentry mode, the mode this kernel picks:
everything after the entry hooks is the same program in kprobe mode, and tracepoint mode's programs are the live
kernel's, which the kernel tier runs there in full. What no kernel or mode changes runs on the live kernel only
(LIVE_ONLY)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
# an agent's first start in a guest takes 80-105 s with the host to itself, and took 151 s in CI while the other
# lane's machine ran (tracepoint mode); later starts take 35-45 s
ATTACH_TIMEOUT_S = 400
VM_TIMEOUT_S = 1500  # the VM's own limit (run-in-vm.sh); the waits below are longer, so the VM ends first


def _lab_command(mode: str, tests: str) -> str:
    py = Path(sys.executable)
    return (f"set -o pipefail; cd {ROOT} && UNLINKWATCH_TEST_ATTACH={mode} "
            f"UNLINKWATCH_TEST_ATTACH_TIMEOUT={ATTACH_TIMEOUT_S} {py} -m pytest {tests} -q "
            "-p no:cacheprovider -rs 2>&1 | tail -n 60")


class LabRuns:
    """The lab's runs, two at a time, each started at once on first use and waited for by its test. One emulated
    machine keeps about one of this host's two cores busy (bcc's compile in the guest, most of an agent's start,
    is one thread), so two lanes take the tier's time from the sum of its runs to about half of it. tests/vm is
    collected last, so nothing else runs beside them. close() kills what still runs: the runner, its timeout and
    QEMU each die with their parent."""

    def __init__(self, jobs: dict[str, tuple[str, str]]) -> None:
        self._procs: list[subprocess.Popen[str]] = []
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lab")
        self._jobs = jobs
        self._runs = {key: self._pool.submit(self._run, mode, tests) for key, (mode, tests) in jobs.items()}

    def _run(self, mode: str, tests: str) -> tuple[int, str]:
        if self._closing.is_set():
            return -1, "not started: the lab tier was stopped"
        env = {**os.environ, "VM_TIMEOUT": str(VM_TIMEOUT_S), "VM_TIMING": "1", "VM_APPEND": f"lsm={LSMS}"}
        # die_with_parent: the VM ends with this worker thread, which outlives it
        proc = subprocess.Popen([str(RUNNER), _lab_command(mode, tests)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=die_with_parent)
        self._procs.append(proc)
        try:
            out, _ = proc.communicate(timeout=VM_TIMEOUT_S + 100)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return proc.returncode, out

    def result(self, key: str) -> str:
        """The output of the run `key` of the jobs, after checking it passed."""
        mode, tests = self._jobs[key]
        rc, out = self._runs[key].result()
        print(out)  # shown by -ra on failure, and kept in the CI log
        assert rc == 0, f"{tests} in {mode} mode under the 6.1 kernel failed:\n{out[-4000:]}"
        assert " passed" in out and " failed" not in out
        return out

    def close(self) -> None:
        self._closing.set()
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


_CAPTURE, _ENFORCE = "tests/kernel/test_capture.py", "tests/kernel/test_enforcement.py"
# What no mode changes: the ring buffer's reader is user space, and the kernel's side of the ring is the same code in
# 6.1 and 6.18 whichever program reserves the record. Under emulation its 400 K deletions took 170 s of the lab.
LIVE_ONLY = {"tests/kernel/test_ring_laps.py",
             # a damaged kept compile is user space's to set aside (objcache.py), in every mode alike; the compile
             # it forces costs 80 s under emulation
             "tests/kernel/test_object_fallback.py",
             # bench.lines reads perf's samples and the kernel's line tables alike in every mode; it compiles too
             "tests/kernel/test_lines_profile.py"}
LAB_FILES = {
    "fentry": ["tests/kernel", *(f"--ignore={f}" for f in sorted(LIVE_ONLY))],
    # its own entry hooks; the policy's ignore and audit decisions at its exit
    "kprobe": [_CAPTURE, "tests/kernel/test_node_policy.py", _ENFORCE, "tests/kernel/test_destroyed.py"],
    # the older dentry layout (the rename lookup, the walk) and BPF LSM beside syscall tracepoints; the directory
    # cache's io_uring tracepoint by its 6.1 name; ext4 as a module, loaded after the agent started
    "tracepoint": [_CAPTURE, _ENFORCE, "tests/kernel/test_dir_cache.py", "tests/kernel/test_destroyed.py"],
}


# key -> (mode, tests); the longest first, so that the other lane takes the rest
JOBS = {mode: (mode, " ".join(files)) for mode, files in LAB_FILES.items()} | {
    "pods": ("fentry", "tests/e2e/test_enforcement_pods.py")}
WAIT_S = 2 * VM_TIMEOUT_S + 300  # a run may wait for the one before it in its lane


@pytest.fixture(scope="module")
def lab() -> Iterator[LabRuns]:
    require_root()
    missing = _lab_missing()
    if missing:
        pytest.skip(missing)
    runs = LabRuns(JOBS)
    yield runs
    runs.close()


@pytest.mark.timeout(WAIT_S)
@pytest.mark.parametrize("mode", list(LAB_FILES))
def test_the_kernel_tier_passes_under_the_6_1_kernel(lab: LabRuns, mode: str) -> None:
    out = lab.result(mode)
    # not skipped: the guest runs BPF LSM, and 6.1's verifier takes tracepoint mode's rename lookup
    skipped = [line for line in out.splitlines()
               if "SKIPPED" in line and ("test_enforcement" in line or "refused the rename lookup" in line)]
    assert not skipped, skipped


def test_every_kernel_tier_file_runs_in_the_lab() -> None:
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "kernel").glob("test_*.py")}
    listed = {f for fs in LAB_FILES.values() for f in fs}
    paths = {f for f in listed if not f.startswith("--")}
    assert "tests/kernel" in LAB_FILES["fentry"] and paths - {"tests/kernel"} <= files
    assert files >= LIVE_ONLY


@pytest.mark.timeout(WAIT_S)
def test_block_rules_on_runc_pods_are_enforced_under_the_6_1_kernel(lab: LabRuns) -> None:
    out = lab.result("pods")
    assert "2 passed" in out

"""Block rules while reloads flip the policy: a check under way at a flip decides with the policy it started with
(agent/bpf/enforce.h, agent/policy/maps.py), so no protected file is deleted in between. This file attaches a probe
of its own and flips the policy as fast as the maps allow, which the agent's reloads (at most one a second) never
do. Like test_enforcement.py it needs BPF LSM (the kernel lab), and skips on a kernel without it, saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from unlinkwatch.agent.policy.image import build
from unlinkwatch.agent.policy.maps import PolicyMaps
from unlinkwatch.agent.policy.model import parse_policy
from unlinkwatch.agent.policy.runtime import bpf_lsm_missing
from unlinkwatch.agent.probe.attach import attach

from tests.conftest import require_root

_MISSING = bpf_lsm_missing()
if _MISSING:
    pytest.skip(f"block rules need BPF LSM, which this kernel cannot run ({_MISSING}); the kernel lab "
                "(tests/vm) runs this under Debian's 6.1 kernel with it", allow_module_level=True)


_UNLINK_LOOP = """
import os, sys, time
path, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
tries = slipped = 0
while time.monotonic() < end:
    tries += 1
    try:
        os.unlink(path)
    except PermissionError:
        continue
    slipped += 1
    open(path, "w").close()
print(tries, slipped)
"""


@pytest.fixture
def root(work: Path) -> Iterator[Path]:
    (work / "flip").mkdir()
    yield work


def test_no_protected_deletion_slips_through_while_reloads_flip_the_policy(root: Path) -> None:
    """Two policies that both protect a file, flipped as fast as the maps allow, while a child tries to delete the
    file in a loop: this process attached the probe, so the child is the one the LSM checks."""
    require_root()
    target = root / "flip" / "target"
    target.write_text("x")
    images = [build(parse_policy(f"""
policy:
  - name: {name}
    action: block
    paths: ["{root}/flip/**"]
    host: true
""", "flip.yaml")) for name in ("one", "two")]
    attached = attach(os.environ.get("UNLINKWATCH_TEST_ATTACH", "auto"), ringbuf_mb=1, lsm=True)
    try:
        assert attached.probe.enforcing
        maps = PolicyMaps(attached.probe.fds)
        maps.load(images[0], {})
        child = subprocess.Popen([sys.executable, "-c", _UNLINK_LOOP, str(target), "8"], stdout=subprocess.PIPE,
                                 text=True)
        flips = 0
        while child.poll() is None:
            maps.load(images[flips % 2], {})
            flips += 1
        tries, slipped = map(int, child.communicate()[0].split())
    finally:
        attached.close()
    assert flips >= 50 and tries > 10 * flips, f"{flips} flips, {tries} tries: too few to prove anything"
    assert slipped == 0, f"{slipped} of {tries} deletions went through during {flips} policy flips"

"""The node policy mounted as Kubernetes mounts a ConfigMap: the file is a symlink through `..data`, and an
update swaps `..data` atomically to a new directory. The agent must take that as a reload."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import require_root
from tests.support.agentproc import attached_agent


def _policy(name: str, root: Path) -> str:
    return f'policy:\n  - {{name: {name}, action: audit, paths: ["{root}/cache/**"], host: true}}\n'


def test_a_swap_of_the_data_symlink_is_in_force_within_2_s(tmp_path: Path) -> None:
    require_root()
    (tmp_path / "cache").mkdir()
    cm = tmp_path / "configmap"
    (cm / "..v1").mkdir(parents=True)
    (cm / "..v1" / "policy.yaml").write_text(_policy("before", tmp_path))
    (cm / "..data").symlink_to("..v1")
    (cm / "policy.yaml").symlink_to("..data/policy.yaml")
    with attached_agent("--policy", str(cm / "policy.yaml")) as a:
        (cm / "..v2").mkdir()
        (cm / "..v2" / "policy.yaml").write_text(_policy("after", tmp_path))
        (cm / "..tmp").symlink_to("..v2")
        os.replace(cm / "..tmp", cm / "..data")
        swapped = time.monotonic()
        for i in range(100):
            f = tmp_path / "cache" / f"v{i}"
            f.touch()
            os.unlink(f)
            (ev,) = a.wait_for(lambda e, p=str(f): e["path"] == p)
            if ev["policy"] == "after":
                break
            assert ev["policy"] == "before"
            assert time.monotonic() - swapped < 2.0, "the swapped policy was not in force within 2 s"
            time.sleep(0.1)
        assert ev["policy"] == "after"

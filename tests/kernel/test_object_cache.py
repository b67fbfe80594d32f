"""The kept compile (agent/probe/objcache.py) on a real kernel: an agent started after another in the same mode
loads the compiled object the first one kept, with no compiler, and records as a compiled one does (every mode:
the BTF-attached programs of fentry and BPF LSM get their attach ids from the running kernel)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.agentproc import agent_with_objects, by_pid, run_deleter


def test_an_agent_loads_the_compile_another_kept_and_records_as_it_does(work: Path) -> None:
    # the session's cache (tests/conftest.py), where earlier tests' agents kept their compiles
    cache = Path(os.environ.get("UNLINKWATCH_OBJECT_CACHE") or work / "objects")
    with agent_with_objects(cache) as first:
        pass
    with agent_with_objects(cache) as second:
        (work / "d").mkdir()
        for name in ("a", "b"):
            (work / "d" / name).touch()
        pid = run_deleter("os.unlink('a')\nos.unlink(os.path.abspath('b'))", cwd=work / "d")
        evs = second.wait_for(by_pid(pid), count=2)
    assert second.info["object"] == "cached", second.info
    assert sorted((e["path"], e["raw_path"]) for e in evs) == [
        (str(work / "d" / "a"), "a"), (str(work / "d" / "b"), str(work / "d" / "b"))]
    assert all(e["result"] == 0 and e["exe"] for e in evs)
    print(f"start-up: {first.info['object']} {first.info['startup_s']} s, cached {second.info['startup_s']} s")

"""The kept compile (agent/probe/objcache.py) on a real kernel: an agent started after another in the same mode
loads the compiled object the first one kept, with no compiler, and records as a compiled one does; an object
that does not load is left aside, and the agent compiles and keeps its own."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.agentproc import AgentProcess, by_pid, run_deleter


@contextmanager
def _agent(cache: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(env={"UNLINKWATCH_OBJECT_CACHE": str(cache)})
    try:
        a.info = a.wait_attached()
        yield a
    finally:
        a.stop()


def _session_cache(tmp: Path) -> Path:
    """The session's cache (tests/conftest.py), where the agents of earlier tests kept their compiles."""
    return Path(os.environ.get("UNLINKWATCH_OBJECT_CACHE") or tmp / "objects")


def test_an_agent_loads_the_compile_another_kept_and_records_as_it_does(work: Path) -> None:
    cache = _session_cache(work)
    with _agent(cache) as first:
        pass
    with _agent(cache) as second:
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


def test_an_object_that_does_not_load_is_left_aside_and_the_agent_compiles(work: Path) -> None:
    cache = work / "objects"
    shutil.copytree(_session_cache(work), cache)  # this mode's object, kept by the test before
    cache.chmod(0o700)
    files = list(cache.glob("*.json"))
    assert files, "no kept object to damage"
    for f in files:  # every program becomes one the verifier refuses: "exit" with r0 never set
        obj = json.loads(f.read_bytes())
        for p in obj["progs"]:
            p["insns"] = base64.b64encode(bytes([0x95, 0, 0, 0, 0, 0, 0, 0])).decode()
        f.write_text(json.dumps(obj))
    with _agent(cache) as agent:
        (work / "x").touch()
        pid = run_deleter(f"os.unlink({str(work / 'x')!r})")
        assert agent.wait_for(by_pid(pid)), "no event from the compiled program"
    assert agent.info["object"] == "compiled", agent.info
    assert any("cached object not loaded" in line for line in agent.log)
    with _agent(cache) as again:  # the compile replaced the damaged object
        pass
    assert again.info["object"] == "cached"

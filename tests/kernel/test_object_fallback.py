"""An object the kernel refuses is left aside: the agent compiles, and keeps its own compile instead. User space
alone decides this, whatever the mode, so it runs on the live kernel only (tests/vm/test_kernel_lab.py, LIVE_ONLY:
under emulation the compile it forces costs 80 s)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.support.agentproc import agent_with_objects, by_pid, run_deleter


def test_an_object_that_does_not_load_is_left_aside_and_the_agent_compiles(work: Path) -> None:
    cache = work / "objects"
    with agent_with_objects(cache):  # compiles (or loads) and keeps this mode's object
        pass
    files = list(cache.glob("*.json"))
    assert files, "no kept object to damage"
    for f in files:  # every program becomes one the verifier refuses: "exit" with r0 never set
        obj = json.loads(f.read_bytes())
        for p in obj["progs"]:
            p["insns"] = base64.b64encode(bytes([0x95, 0, 0, 0, 0, 0, 0, 0])).decode()
        f.write_text(json.dumps(obj))
    with agent_with_objects(cache) as agent:
        (work / "x").touch()
        pid = run_deleter(f"os.unlink({str(work / 'x')!r})")
        assert agent.wait_for(by_pid(pid)), "no event from the compiled program"
    assert agent.info["object"] == "compiled", agent.info
    assert any("cached object not loaded" in line for line in agent.log)
    with agent_with_objects(cache) as again:  # the compile replaced the damaged object
        pass
    assert again.info["object"] == "cached"

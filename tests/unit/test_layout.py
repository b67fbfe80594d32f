"""The layout the code must keep: one import name per module, and the stages' layers (data flows one way,
so a stage imports only the stages after it, never one before; shared modules import no stage)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

from tests.support.imports import ROOT, graph, modules, reaches

AGENT = "unlinkwatch.agent"
COLLECTOR = "unlinkwatch.collector"
# Top to bottom: a module may import modules of its own layer-group or below, never above; the groups of one
# layer never import each other. Modules not listed (metrics, package __init__s) are shared within the side.
AGENT_LAYERS = [["main", "doctor"], ["policy"], ["probe"], ["decode"], ["identity", "placement"], ["ship"]]
COLLECTOR_LAYERS = [["main"], ["server"], ["ingest", "query", "retention"], ["store", "alerts"], ["rules", "sinks"]]
SHARED_LIBRARY = ["codec", "eventjson", "pathglob", "timeparse", "tlsconfig", "errors", "logs", "observability", "pb",
                  "client", "runstate", "kubestub", "yamlnodes"]


def _layer_violations(side: str, layers: list[list[str]]) -> list[str]:
    g = graph()
    rank = {f"{side}.{grp}": (i, grp) for i, layer in enumerate(layers) for grp in layer}

    def where(mod: str) -> tuple[int, str] | None:
        for prefix, r in rank.items():
            if reaches(mod, prefix):
                return r
        return None

    bad = []
    for mod, imports in g.items():
        src = where(mod)
        if src is None:
            continue
        for imp in imports:
            dst = where(imp)
            if dst is not None and dst[1] != src[1] and dst[0] <= src[0]:
                bad.append(f"{mod} imports {imp} ({'a sibling' if dst[0] == src[0] else 'an earlier stage'})")
    return bad


def test_every_module_has_exactly_one_import_name_and_the_top_level_folders_have_none() -> None:
    mods = {m: str(p) for m, p in modules().items()}
    check = (
        "import importlib, importlib.util, json, sys\n"
        "mods = json.loads(sys.argv[1])\n"
        "assert importlib.util.find_spec('agent') is None, 'agent is importable as a top-level package'\n"
        "assert importlib.util.find_spec('collector') is None, 'collector is importable as a top-level package'\n"
        "for name, path in mods.items():\n"
        "    m = importlib.import_module(name)\n"
        "    assert m.__file__ == path, (name, m.__file__, path)\n"
        "paths = set(mods.values())\n"
        "files = [m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None) in paths]\n"
        "assert len(files) == len(set(files)), 'a file was loaded twice, under two names'\n"
    )
    p = subprocess.run([sys.executable, "-c", check, json.dumps(mods)], cwd="/", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    links = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert not [line for line in links.splitlines() if line.startswith("120000")], "symlinks in the tree"


def test_the_package_list_names_every_package_directory() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert packages == listed


def test_the_agent_never_imports_the_collector_nor_the_collector_the_agent() -> None:
    for mod, imports in graph().items():
        for side, other in ((AGENT, COLLECTOR), (COLLECTOR, AGENT)):
            if reaches(mod, side):
                assert not [i for i in imports if reaches(i, other)], mod


def test_only_the_probe_program_imports_bcc() -> None:
    users = sorted(m for m, imports in graph().items() if any(reaches(i, "bcc") for i in imports))
    assert users == [f"{AGENT}.probe.program"]


def test_agent_stages_import_only_the_stages_after_them() -> None:
    assert _layer_violations(AGENT, AGENT_LAYERS) == []


def test_collector_stages_import_only_the_stages_after_them() -> None:
    assert _layer_violations(COLLECTOR, COLLECTOR_LAYERS) == []


def test_shared_modules_import_no_stage_of_the_agent_or_the_collector() -> None:
    for mod, imports in graph().items():
        if any(reaches(mod, f"unlinkwatch.{s}") for s in SHARED_LIBRARY):
            assert not [i for i in imports if reaches(i, AGENT) or reaches(i, COLLECTOR)], mod


def test_the_layer_check_sees_a_violation() -> None:
    """The check itself: a stage importing an earlier one is reported."""
    g = graph()
    assert any(reaches(i, f"{AGENT}.decode") for i in g[f"{AGENT}.probe.attach"])  # allowed: probe -> decode
    assert _layer_violations(AGENT, [["decode"], ["probe"]])  # with the order reversed, it is a violation


def test_no_two_test_files_share_a_name() -> None:
    """The tiers' directories are not packages: pytest imports each test file by its basename, and a second file of
    the same name stops the whole collection."""
    seen: dict[str, str] = {}
    clashes = []
    for f in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = str(f.relative_to(ROOT))
        if f.name in seen:
            clashes.append(f"{seen[f.name]} and {rel}")
        seen.setdefault(f.name, rel)
    assert not clashes, clashes

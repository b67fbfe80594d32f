"""The Dockerfile, statically: what scripts/replay-dockerfile.sh proves by running it, checked on every test run."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPLAYABLE = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "ENTRYPOINT", "CMD", "LABEL"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with comment lines dropped and continuations joined, as Docker parses them."""
    steps: list[tuple[str, str]] = []
    cur = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not cur):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        inst, _, rest = (cur + line).strip().partition(" ")
        steps.append((inst.upper(), rest.strip()))
        cur = ""
    assert not cur.strip(), "Dockerfile ends inside a continuation"
    return steps


def runs() -> list[str]:
    return [rest for inst, rest in instructions() if inst == "RUN"]


def apt_packages() -> set[str]:
    pkgs: set[str] = set()
    for cmd in runs():
        for part in re.split(r"&&|;", cmd):
            words = shlex.split(part)
            if words[:2] == ["apt-get", "install"]:
                pkgs |= {w for w in words[2:] if not w.startswith("-")}
    return pkgs


def test_the_image_is_built_on_debian_bookworm_slim_in_one_stage() -> None:
    froms = [rest for inst, rest in instructions() if inst == "FROM"]
    assert froms == ["debian:bookworm-slim"]
    assert instructions()[0][0] == "FROM"


def test_every_instruction_is_one_the_replay_script_can_replay() -> None:
    for inst, rest in instructions():
        assert inst in REPLAYABLE, inst
        if inst == "RUN":
            assert not rest.startswith("["), "RUN must use the shell form"
            assert not rest.startswith("--"), "RUN flags (--mount, ...) are not replayed"
        if inst == "COPY":
            assert rest.split()[0] == ".", "only COPY . DEST of the build context is replayed"
        if inst == "ENV":
            assert "$" not in rest, "ENV values are literal so the replay needs no expansion"
            assert all("=" in p for p in rest.split()), rest


def test_bcc_comes_from_debian_with_the_tools_the_agent_needs() -> None:
    assert {"python3", "python3-venv", "python3-bpfcc", "bpftool", "linux-headers-amd64"} <= apt_packages()


def test_bcc_is_never_installed_from_pypi() -> None:
    for cmd in runs():
        for part in re.split(r"&&|;", cmd):
            words = shlex.split(part)
            if any(w.endswith("pip") for w in words[:1]) or words[:3] == ["python3", "-m", "pip"]:
                assert not {"bcc", "bpfcc", "pybcc"} & set(words), part


def test_the_generic_header_tree_is_merged_into_the_documented_place() -> None:
    tree = "/usr/local/share/unlinkwatch/kernel-headers"
    assert any(cmd.startswith(f"scripts/make-header-tree.sh {tree}") for cmd in runs())
    env = " ".join(rest for inst, rest in instructions() if inst == "ENV")
    assert f"BCC_KERNEL_SOURCE={tree}" in env


def test_no_host_kernel_headers_or_modules_are_baked_in_or_expected() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "/lib/modules" not in text
    assert "linux-headers-$(uname" not in text


def test_the_project_is_installed_into_a_venv_that_sees_debian_bcc() -> None:
    joined = " ".join(runs())
    assert "python3 -m venv --system-site-packages /opt/unlinkwatch" in joined
    assert "/opt/unlinkwatch/bin/pip install" in joined and "'.[postgres]'" in joined
    assert "/opt/unlinkwatch/bin/python -c 'import bcc'" in joined


def test_one_image_runs_both_agent_and_collector_through_the_unlinkwatch_entrypoint() -> None:
    entry = [rest for inst, rest in instructions() if inst == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["unlinkwatch"]
    env = " ".join(rest for inst, rest in instructions() if inst == "ENV")
    assert re.search(r"\bPATH=/opt/unlinkwatch/bin:", env)


def test_the_image_does_not_force_a_non_root_user_because_the_agent_needs_uid_0() -> None:
    assert "USER" not in {inst for inst, _ in instructions()}


def test_the_build_context_excludes_local_state() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "tests"} <= ignored
    assert not any(p.startswith("!") for p in ignored), "exceptions are not replayed"
    for needed in ("pyproject.toml", "unlinkwatch", "agent", "collector", "proto", "scripts"):
        assert needed not in ignored


@pytest.mark.parametrize("script", ["replay-dockerfile.sh", "make-certs.sh", "make-header-tree.sh"])
def test_the_build_and_deploy_scripts_are_executable(script: str) -> None:
    path = ROOT / "scripts" / script
    assert path.stat().st_mode & 0o111, path

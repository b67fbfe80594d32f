"""Shared test configuration: tiers are markers given by directory (tests/unit -> unit, ...)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agentproc import AgentProcess, attached_agent

ROOT = Path(__file__).resolve().parent.parent
# am_url (a real Alertmanager on loopback); postgres_server (one PostgreSQL cluster for the session)
pytest_plugins = ["tests.support.alertmanager", "tests.support.postgres"]
TIERS = ("unit", "kernel", "vm", "e2e")
_BEFORE = pytest.StashKey["object"]()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def pytest_sessionstart(session: pytest.Session) -> None:
    # SIGTERM and SIGHUP (a time limit, a closed terminal) end the run as Ctrl-C does: fixtures are torn down
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if os.geteuid() == 0 and _whole_suite(session.config):
        from tests.support.leaks import Snapshot, mark_session

        mark_session()
        session.config.stash[_BEFORE] = Snapshot.take()


def _whole_suite(config: pytest.Config) -> bool:
    """The leak check runs when the whole suite does (`make test`): a subset may share the machine with
    another run of it."""
    return not config.args or [Path(a).resolve() for a in config.args] == [ROOT / "tests"]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture is torn down: what the session left on the machine fails it."""
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    from tests.support.leaks import leaks

    found = leaks(before)
    if found:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.stats.setdefault("leaked", []).extend(found)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The leaks, after the slowest tests and just before the short summary: the end of a log names them."""
    found = terminalreporter.stats.get("leaked", [])
    if found:
        terminalreporter.write_sep("=", "the suite left these behind (make clean-host removes them)", red=True)
        for line in found:
            terminalreporter.write_line(f"LEAK {line}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests")
        tier = rel.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session", autouse=True)
def object_cache() -> Iterator[None]:
    """One compile per attach mode and program variant for the session: every agent a test starts loads the
    compiled object kept here (agent/probe/objcache.py) instead of running clang again (2-3 s per start live,
    30-50 s under emulation). A run that sets UNLINKWATCH_OBJECT_CACHE itself (empty: compile every time) keeps
    its own."""
    if os.geteuid() != 0 or "UNLINKWATCH_OBJECT_CACHE" in os.environ:
        yield
        return
    from unlinkwatch import runstate

    with runstate.scratch_dir("uwtest-objcache-") as d:
        os.environ["UNLINKWATCH_OBJECT_CACHE"] = str(d)
        try:
            yield
        finally:
            del os.environ["UNLINKWATCH_OBJECT_CACHE"]


def require_root() -> None:
    """Kernel and e2e tiers need root; CI runs as root, so this only skips on a developer's laptop."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root)")


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    """One agent per test module, attached in the mode the run asks for (a module that needs an agent started
    otherwise defines its own `agent`)."""
    require_root()
    with attached_agent() as a:
        yield a

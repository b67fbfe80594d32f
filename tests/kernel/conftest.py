"""Fixtures of the kernel tier: one agent per test module, attached in the mode the run asks for, and a scratch
directory per test (a module that needs another agent defines its own `agent`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.support.agentproc import AgentProcess, attached_agent


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    require_root()
    with attached_agent() as a:
        yield a


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    d = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    yield d
    shutil.rmtree(d, ignore_errors=True)

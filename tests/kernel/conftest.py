"""Fixtures of the kernel tier: a scratch directory per test, the io_uring helper (the module's agent is
tests/conftest.py's)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    d = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def uring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/support/uring.c built for this run: one io_uring unlink or rename, with no such syscall."""
    exe = tmp_path_factory.mktemp("uring") / "uring"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(ROOT / "tests" / "support" / "uring.c")],
                   check=True)
    return exe

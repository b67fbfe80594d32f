"""Shared test configuration: tiers are markers given by directory (tests/unit -> unit, ...)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.support.alertmanager"]  # the am_url fixture (a real Alertmanager on loopback)
TIERS = ("unit", "kernel", "vm", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests")
        tier = rel.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


def require_root() -> None:
    """Kernel and e2e tiers need root; CI runs as root, so this only skips on a developer's laptop."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root)")

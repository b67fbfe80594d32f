"""Hot reload of the rules file: edits and ConfigMap symlink swaps take effect; a broken file does not."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from unlinkwatch.collector.alerts import AlertEngine
from unlinkwatch.collector.metrics import CollectorMetrics

from tests.support.alertrules import deletion, write_rules
from unlinkwatch.errors import UserError

TMP_RULE = "rules:\n  - {name: tmp-deleted, severity: low, match: {paths: ['/tmp/**']}}\n"


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not reloaded in time"
        time.sleep(0.02)


def rule_names(eng: AlertEngine) -> list[str]:
    return [r.name for r in eng.rules.rules]


def test_a_broken_file_at_start_is_refused_with_one_line(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text("rules:\n  - name: x\n    severity: loud\n    match: {paths: [/etc/**]}\n")
    eng = AlertEngine(str(f), [], CollectorMetrics(), None)
    with pytest.raises(UserError, match=rf"^{f}:3: rule 'x'.severity must be one of"):
        eng.start()


def test_a_broken_edit_keeps_the_previous_rules_and_a_fixed_one_replaces_them(tmp_path: Path) -> None:
    metrics = CollectorMetrics()
    f = write_rules(tmp_path / "rules.yaml")
    eng = AlertEngine(str(f), [], metrics, None, poll_interval_s=0.05)
    eng.start()
    try:
        assert rule_names(eng) == ["etc-deleted"]
        f.write_text("rules:\n  - name: x\n    severity: high\n    match: {paths: [etc]}\n")
        eventually(lambda: metrics.registry.get_sample_value("unlinkwatch_rules_reload_failures_total") == 1)
        assert rule_names(eng) == ["etc-deleted"]
        assert [r.name for r in eng.rules.matching(deletion("/etc/x"))] == ["etc-deleted"]
        f.write_text(TMP_RULE)
        eventually(lambda: rule_names(eng) == ["tmp-deleted"])
        assert metrics.registry.get_sample_value("unlinkwatch_rules_loaded") == 1
        f.unlink()  # a file that vanishes is a failed reload, not an empty rule set
        eventually(lambda: metrics.registry.get_sample_value("unlinkwatch_rules_reload_failures_total") == 2)
        assert rule_names(eng) == ["tmp-deleted"]
    finally:
        eng.close()


def test_a_configmap_update_that_swaps_the_data_symlink_is_picked_up(tmp_path: Path) -> None:
    # the kubelet's layout: rules.yaml -> ..data/rules.yaml, ..data -> ..<timestamp>, swapped by rename
    v1 = tmp_path / "..2024_01_01_00_00_00.1"
    v1.mkdir()
    write_rules(v1 / "rules.yaml")
    (tmp_path / "..data").symlink_to(v1.name)
    (tmp_path / "rules.yaml").symlink_to("..data/rules.yaml")
    eng = AlertEngine(str(tmp_path / "rules.yaml"), [], CollectorMetrics(), None, poll_interval_s=0.05)
    eng.start()
    try:
        assert rule_names(eng) == ["etc-deleted"]
        v2 = tmp_path / "..2024_01_01_00_01_00.2"
        v2.mkdir()
        (v2 / "rules.yaml").write_text(TMP_RULE)
        os.utime(v2 / "rules.yaml", ns=(os.stat(v1 / "rules.yaml").st_mtime_ns,) * 2)  # same mtime: inode tells
        (tmp_path / "..data_tmp").symlink_to(v2.name)
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        (v1 / "rules.yaml").unlink()
        v1.rmdir()
        eventually(lambda: rule_names(eng) == ["tmp-deleted"])
    finally:
        eng.close()

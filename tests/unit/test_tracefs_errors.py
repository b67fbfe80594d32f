"""agent/probe/tracefs.py where the image has no mount(8): one line saying so, nothing left recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from unlinkwatch.agent.probe import tracefs

from unlinkwatch import runstate
from unlinkwatch.errors import UserError


def test_a_missing_mount_binary_is_a_one_line_error_and_leaves_no_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracefs, "_EVENTS", (tmp_path / "none",))
    monkeypatch.setattr(runstate, "STATE_DIR", tmp_path / "state")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError) as e:
        tracefs.ensure()
    assert "\n" not in str(e.value) and "mount: " in str(e.value) and "mount it on the node" in str(e.value)
    assert list((tmp_path / "state").glob("*.json")) == []


def test_a_missing_umount_binary_leaves_tracefs_recorded_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runstate, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(tracefs, "TRACEFS", str(tmp_path / "never-mounted"))  # never the host's, whatever happens
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rec = runstate.record("mount", path=str(tmp_path / "never-mounted"))
    tracefs.release(tracefs.Mounted(rec))
    assert "tracefs left mounted" in caplog.text
    assert len(list((tmp_path / "state").glob("*.json"))) == 1  # clean-host can still undo it
    rec.done()


def test_a_tracepoint_is_found_under_either_place_tracefs_shows_its_events(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "tracing" / "events", tmp_path / "debug" / "events"
    (second / "io_uring" / "io_uring_submit_sqe").mkdir(parents=True)
    first.mkdir(parents=True)
    monkeypatch.setattr(tracefs, "_EVENTS", (first, second))
    assert tracefs.has_event("io_uring", "io_uring_submit_sqe")
    assert not tracefs.has_event("io_uring", "io_uring_submit_req")

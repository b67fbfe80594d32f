"""The chain of attach modes an agent tries, in order, and the ones it skips before compiling anything."""

from __future__ import annotations

import pytest
from unlinkwatch.agent.probe import attach

from unlinkwatch.errors import UserError

REFUSED = "the kernel refuses fentry programs (BPF_PROG_LOAD: Operation not permitted)"


@pytest.fixture(autouse=True)
def kprobes_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attach, "kprobes_available", lambda: True)


def test_fentry_comes_first_where_the_kernel_runs_fentry_programs() -> None:
    chain, skipped = attach.candidates(["do_unlinkat"], "auto")
    assert [c.mode for c in chain] == ["fentry", "kprobe", "tracepoint"] and skipped == []


def test_a_kernel_that_refuses_fentry_programs_leaves_fentry_out_of_the_chain_with_its_reason() -> None:
    chain, skipped = attach.candidates(["do_unlinkat"], "auto", REFUSED)
    assert [c.mode for c in chain] == ["kprobe", "tracepoint"]
    assert [(c.mode, c.unlink_fn, why) for c, why in skipped] == [("fentry", "do_unlinkat", REFUSED)]


def test_asking_for_fentry_where_the_kernel_refuses_it_is_one_clear_error() -> None:
    with pytest.raises(UserError, match=r"--attach fentry: the kernel refuses fentry programs"):
        attach.candidates(["do_unlinkat"], "fentry", REFUSED)


def test_the_tracepoint_mode_is_still_offered_where_the_kernel_has_no_unlink_function_in_btf() -> None:
    chain, skipped = attach.candidates([], "auto", REFUSED)
    assert [c.mode for c in chain] == ["tracepoint"]
    assert {c.mode for c, _ in skipped} == {"fentry", "kprobe"}

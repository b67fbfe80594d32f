from __future__ import annotations

from unlinkwatch.agent.probe.kallsyms import parse

TEXT = """\
ffffffff81000000 T _text
ffffffff82a4c0c0 D rename_lock
ffffffff82a4c100 b mount_lock
ffffffff81234560 T rename_lock_fn
ffffffffc0001000 d rename_lock\t[some_module]
"""


def test_data_symbols_of_the_kernel_image_are_found_by_exact_name() -> None:
    assert parse(TEXT, ("rename_lock", "mount_lock")) == {"rename_lock": 0xFFFFFFFF82A4C0C0,
                                                          "mount_lock": 0xFFFFFFFF82A4C100}


def test_a_function_or_a_module_symbol_of_the_same_name_is_not_taken() -> None:
    text = "ffffffff81234560 T rename_lock\nffffffffc0001000 d rename_lock\t[mod]\n"
    assert parse(text, ("rename_lock",)) == {}


def test_hidden_addresses_and_missing_names_give_nothing() -> None:
    text = "0000000000000000 D rename_lock\n0000000000000000 D mount_lock\n"
    assert parse(text, ("rename_lock", "mount_lock")) == {}
    assert parse(TEXT, ("nothing_here",)) == {}

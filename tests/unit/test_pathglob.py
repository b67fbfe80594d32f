"""The glob semantics of docs/RULES.md, as a table, plus GlobSet agreeing with one regex per glob."""

from __future__ import annotations

import random

import pytest

from unlinkwatch.pathglob import GlobError, GlobSet, compile_matcher, literal_prefix, match

CASES = [
    # glob, path, matches
    ("/etc/passwd", b"/etc/passwd", True),
    ("/etc/passwd", b"/etc/passwd2", False),
    ("/etc/passwd", b"/etc", False),
    ("/etc/*", b"/etc/hosts", True),
    ("/etc/*", b"/etc/.hidden", True),            # * matches dotfiles
    ("/etc/*", b"/etc/ssh/sshd_config", False),   # * stays in one segment
    ("/etc/*", b"/etc", False),
    ("/etc/*", b"/etc/", True),                   # an empty last segment (paths never end in / in practice)
    ("/etc/**", b"/etc", True),                   # a trailing /** matches the directory itself
    ("/etc/**", b"/etc/hosts", True),
    ("/etc/**", b"/etc/ssh/ssh_host_rsa_key", True),
    ("/etc/**", b"/etcetera/x", False),
    ("/etc/**", b"/var/etc/x", False),
    ("/**", b"/", True),
    ("/**", b"/anything/at/all", True),
    ("**", b"relative/too", True),
    ("**/x", b"/x", True),
    ("**/x", b"/a/b/x", True),
    ("**/x", b"x", True),
    ("**/x", b"/a/xx", False),
    ("**/x", b"/a/x/y", False),
    ("**/.ssh/**", b"/root/.ssh/id_rsa", True),
    ("**/.ssh/**", b"/home/u/.ssh", True),
    ("**/.ssh/**", b"/home/u/.sshx/id", False),
    ("/a/**/b", b"/a/b", True),                   # ** spans zero segments too
    ("/a/**/b", b"/a/x/y/z/b", True),
    ("/a/**/b", b"/a/xb", False),
    ("/a/**/b", b"/ab", False),
    ("/a/**b", b"/a/x/yb", True),                 # ** inside a segment spans segments as well
    ("/a/*/b", b"/a/x/b", True),
    ("/a/*/b", b"/a/x/y/b", False),
    ("/a/*/b", b"/a//b", True),
    ("/a/?", b"/a/x", True),
    ("/a/?", b"/a/xy", False),
    ("/a/?", b"/a//", False),                     # ? never matches /
    ("/a/?", "/a/é".encode(), True),              # ? is one character, not one byte
    ("/a/[abc]", b"/a/b", True),
    ("/a/[abc]", b"/a/d", False),
    ("/a/[a-c]x", b"/a/bx", True),
    ("/a/[!a-c]", b"/a/d", True),
    ("/a/[!a-c]", b"/a/b", False),
    ("/a/[^a-c]", b"/a/d", True),
    ("/a/[!a]", b"/a//", False),                  # a class never matches /
    ("/a[/]b", b"/a/b", False),
    ("/a/[]]", b"/a/]", True),                    # ] first in a class is a member
    ("/a/[&~|]", b"/a/~", True),                  # regex set operators are plain members
    ("/a/\\*", b"/a/*", True),                    # \* is a literal star
    ("/a/\\*", b"/a/x", False),
    ("/a/\\x2a", b"/a/*", True),                  # \xNN is a literal byte, never a wildcard
    ("/a/\\x2a", b"/a/x", False),
    ("/t/\\xff*", b"/t/\xffabc", True),           # non-UTF-8 bytes written as \xNN, as paths print
    ("/t/\\xff*", b"/t/abc", False),
    ("/t/*", b"/t/\xff\xfe", True),
    ("/t/caf\\xc3\\xa9", "/t/café".encode(), True),
    ("/t/café", "/t/café".encode(), True),
    ("/a.b", b"/aXb", False),                     # regex metacharacters are literal
    ("/a+(b)", b"/a+(b)", True),
    ("/a/b", b"/A/B", False),                     # case-sensitive
    ("/var/run/secrets/**/..[0-9][0-9][0-9][0-9]_*/**", b"/var/run/secrets/kubernetes.io/serviceaccount/"
     b"..2024_01_01_12_00_00.123456789/token", True),
    ("/var/run/secrets/**/..[0-9][0-9][0-9][0-9]_*/**", b"/var/run/secrets/kubernetes.io/serviceaccount/"
     b"..2024_01_01_12_00_00.123456789", True),
    ("/var/run/secrets/**/..[0-9][0-9][0-9][0-9]_*/**", b"/var/run/secrets/kubernetes.io/serviceaccount/token",
     False),
]


@pytest.mark.parametrize(("glob", "path", "expected"), CASES)
def test_glob_table(glob: str, path: bytes, expected: bool) -> None:
    assert match(glob, path) is expected


@pytest.mark.parametrize("glob", ["/a/[bc", "/a/\\"])
def test_malformed_globs_are_refused_with_a_reason(glob: str) -> None:
    with pytest.raises(GlobError):
        match(glob, b"/a/b")


def test_literal_prefix_stops_at_the_last_slash_before_a_wildcard() -> None:
    assert literal_prefix("/var/lib/kubelet/pods/*/volumes/**") == b"/var/lib/kubelet/pods/"
    assert literal_prefix("/etc/pass*") == b"/etc/"
    assert literal_prefix("/etc/passwd") == b"/etc/passwd"
    assert literal_prefix("**/.ssh/**") == b""


def test_a_matcher_treats_globs_without_wildcards_as_exact_names() -> None:
    m = compile_matcher(["dpkg", "apt*", "update-alternat"])
    assert m(b"dpkg") and m(b"apt-get") and m(b"update-alternat")
    assert not m(b"dpkg-x") and not m(b"xapt")


GLOBS = [g for g, _, _ in CASES] + ["/etc/kubernetes/**", "/*/secret", "/e?c/x", "**/__pycache__/**",
                                    "**/.local/share/fish/fish_history", "*.tmp", "/var/lib/*/x/**"]
SEGMENTS = [b"etc", b"a", b"b", b"x", b"var", b"run", b"secrets", b".ssh", b"t", b"\xff", b"..2024_01_01_x",
            b"kubernetes", b"__pycache__", b".local", b"share", b"fish", b"fish_history", b"e.tmp", b"lib"]


def test_a_globset_finds_exactly_the_globs_a_regex_per_glob_finds() -> None:
    rng = random.Random(7)
    gs = GlobSet((g, i) for i, g in enumerate(GLOBS))
    paths = [path for _, path, _ in CASES]
    for _ in range(5000):
        segs = [rng.choice(SEGMENTS) for _ in range(rng.randint(0, 6))]
        paths.append((b"/" if rng.random() < 0.9 else b"") + b"/".join(segs))
    for path in paths:
        expected = {i for i, g in enumerate(GLOBS) if match(g, path)}
        assert set(gs.tags(path)) == expected, path


def test_globset_candidates_include_every_path_a_glob_matches_and_few_others() -> None:
    rng = random.Random(8)
    paths = [path for _, path, _ in CASES]
    for _ in range(5000):
        segs = [rng.choice(SEGMENTS) for _ in range(rng.randint(0, 6))]
        paths.append((b"/" if rng.random() < 0.9 else b"") + b"/".join(segs))
    for globs in (GLOBS, GLOBS[:5], ["**/.ssh/**", "**/.bash_history"], ["/etc/**"], ["**/*"]):
        gs = GlobSet((g, i) for i, g in enumerate(globs))
        cand = gs.candidates(paths)
        assert cand == sorted(set(cand))
        tagged = [i for i, p in enumerate(paths) if gs.tags(p)]
        assert set(tagged) <= set(cand), globs
        if "**/*" not in globs:
            assert len(cand) - len(tagged) <= len(paths) // 10, globs  # a gate, not a pass-all

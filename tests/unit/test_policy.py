"""The node policy without a kernel: the file's validation, the patterns the kernel can decide, what its maps
hold, and the user-space decision that must agree with the kernel's."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import yaml
from unlinkwatch.agent.policy import image
from unlinkwatch.agent.policy.image import HOST, PENDING, POD, USES, build, cgroup_rules, decide, unknown_rules
from unlinkwatch.agent.policy.model import Pattern, PolicyError, classify, parse_policy
from unlinkwatch.agent.policy.runtime import Enforcement, bpf_lsm_missing, enforcement

from tests.conftest import ROOT
from tests.support.agentproc import unlinkwatch_cmd
from unlinkwatch.pathglob import GlobError, compile_matcher
from unlinkwatch.pb import events_pb2 as pb

GOOD = """
policy:
  - name: quiet-cache
    action: ignore
    paths: ["/var/cache/**", "**/*.tmp"]
    namespaces: ["build-*"]
  - name: protect
    action: block
    paths: ["/etc/shadow", "**/.bash_history"]
    ops: [unlink, rename]
    host: true
    except: {comm: ["logrotate-with-a-long-name"], exe: ["/usr/sbin/logrotate"]}
  - name: web-keys
    action: audit
    paths: ["/srv/keys/**"]
    pod_labels: {app: "web*"}
"""


def test_a_valid_policy_parses_into_rules_in_file_order() -> None:
    p = parse_policy(GOOD, "p.yaml")
    assert p.names() == ["quiet-cache", "protect", "web-keys"]
    protect = p.rules[1]
    assert protect.action == "block" and protect.ops == frozenset({pb.OP_UNLINK, pb.OP_RENAME})
    assert protect.selector.host and protect.selector.selects_all_pods
    assert protect.except_comm == (b"logrotate-with-",) and protect.except_exe == (b"/usr/sbin/logrotate",)
    assert [pt.kind for pt in p.rules[0].paths] == ["prefix", "suffix"]


@pytest.mark.parametrize("glob, kind, value", [
    ("/etc/shadow", "exact", b"/etc/shadow"),
    ("/var/log/audit/**", "prefix", b"/var/log/audit/"),
    ("/**", "prefix", b"/"),
    ("**/.bash_history", "name", b".bash_history"),
    ("**/*.pem", "suffix", b".pem"),
    ("/odd\\*name", "exact", b"/odd*name"),
    ("/bytes\\xff", "exact", b"/bytes\xff"),
])
def test_the_kernel_decides_exact_paths_prefixes_final_names_and_endings(glob: str, kind: str, value: bytes) -> None:
    assert classify(glob) == Pattern(kind, value, glob)


@pytest.mark.parametrize("glob", ["/var/log/*.log", "/a/**/b", "**/x/y", "relative", "/a/b**", "**/[ab].pem",
                                  "/x" * 200])
def test_a_pattern_the_kernel_cannot_decide_is_refused(glob: str) -> None:
    with pytest.raises(GlobError):
        classify(glob)


@pytest.mark.parametrize("text, problem", [
    ("policy: [", "p.yaml:1: YAML:"),
    ("rules: []", "p.yaml:1: the file: unknown key 'rules'"),
    ("policy:\n  - name: a\n    action: deny\n    paths: [/x]", "p.yaml:3: rule 'a'.action: unknown action 'deny'"),
    ("policy:\n  - name: a\n    action: audit\n    paths: [/x]\n    ops: [delete]",
     "p.yaml:5: rule 'a'.ops: unknown op 'delete'"),
    ("policy:\n  - name: a\n    action: audit\n    paths: ['/var/*.log']",
     "p.yaml:4: rule 'a'.paths: '/var/*.log' cannot"),
    ("policy:\n  - name: a\n    action: audit\n    paths: [/x]\n    namespace: [prod]",
     "p.yaml:5: rule #1: unknown key 'namespace'"),
    ("policy:\n  - name: a\n    action: audit\n    paths: [/x]\n    except: {comm: ['rot*']}",
     "p.yaml:5: rule 'a'.except.comm: 'rot*': command names are exact"),
    ("policy:\n  - name: a\n    action: audit\n    paths: [/x]\n  - name: a\n    action: audit\n    paths: [/y]",
     "p.yaml:5: duplicate rule name 'a'"),
])
def test_bad_input_is_refused_with_file_line_and_problem(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml")
    assert str(e.value).startswith(problem) and "\n" not in str(e.value)


def test_the_agent_refuses_a_bad_policy_at_start_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  - name: a\n    action: audit\n    paths: ['/var/*/x']\n")
    p = subprocess.run([*unlinkwatch_cmd(), "agent", "--stdout", "--policy", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:4:" in lines[0] and "Traceback" not in p.stderr


def test_require_enforcement_refuses_to_start_where_block_rules_would_run_as_audit(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("policy:\n  - {name: a, action: block, paths: [/etc/shadow], host: true}\n")
    p = subprocess.run([*unlinkwatch_cmd(), "agent", "--stdout", "--policy", str(policy), "--require-enforcement"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    (line,) = p.stderr.strip().splitlines()
    assert "--require-enforcement" in line and "cannot be enforced" in line


def test_enforcement_is_on_only_where_the_lsm_programs_attached_and_says_why_not(tmp_path: Path) -> None:
    lsm = tmp_path / "lsm"
    assert "unreadable" in bpf_lsm_missing(str(lsm))
    lsm.write_text("lockdown,capability,yama,apparmor")
    assert "not active" in bpf_lsm_missing(str(lsm)) and "lsm=...,bpf" in bpf_lsm_missing(str(lsm))
    lsm.write_text("lockdown,capability,yama,apparmor,bpf\n")
    assert bpf_lsm_missing(str(lsm)) == ""
    policy = parse_policy("policy:\n  - {name: a, action: block, paths: [/x], host: true}\n", "p.yaml")
    assert enforcement(None, "", True) == Enforcement("off")
    assert enforcement(policy, "", True) == Enforcement("enforcing")
    refused = enforcement(policy, "", False, "BPF LSM hook path_unlink refused: Permission denied")
    assert refused == Enforcement("audit-only", "BPF LSM hook path_unlink refused: Permission denied")
    assert enforcement(policy, bpf_lsm_missing(str(tmp_path / "none")), False).reason.endswith("securityfs mounted?)")


def test_each_lpm_entry_carries_the_rules_of_the_shorter_entries_it_extends() -> None:
    p = parse_policy("""
policy:
  - {name: a, action: ignore, paths: ["/var/**"], host: true}
  - {name: b, action: audit, paths: ["/var/lib/db/**", "/var/lib/db/main"], host: true}
  - {name: c, action: audit, paths: ["**/*.db", "**/main.db"], host: true}
""", "p.yaml")
    img = build(p)
    assert img.paths[b"/var/"] == 0b001 and img.paths[b"/var\0"] == 0b001
    assert img.paths[b"/var/lib/db/"] == 0b011 and img.paths[b"/var/lib/db/main\0"] == 0b011
    assert img.names[b"bd."] == 0b100 and img.names[b"bd.niam/"] == 0b100
    assert img.ignore == 0b001 and img.block == 0 and img.ops[1] == 0b111
    assert img.uses == USES["PATHS"] | USES["NAMES"]  # every rule covers every process: no cgroup lookup


def test_the_names_filter_holds_the_head_of_every_name_key_and_few_others() -> None:
    endings = ", ".join(f"'**/*.never{i}'" for i in range(500))
    img = build(parse_policy(f"""
policy:
  - {{name: a, action: audit, paths: ["**/id_rsa", "**/*.pem", "**/k"], host: true}}
  - {{name: b, action: audit, paths: [{endings}]}}
""", "p.yaml"))
    n, bits = image.name_heads(img.names)
    assert n == 2  # "k/", the shortest key
    for key in img.names:
        assert bits >> image.head_bit(key[:n]) & 1
    # without the short name, four bytes: the workload's names ("u-0-1234", key "4321-0-u/") miss it
    n, bits = image.name_heads({k: m for k, m in img.names.items() if k != b"k/"})
    assert n == 4
    misses = sum(not bits >> image.head_bit((f"u-0-{i}"[::-1] + "/").encode()[:n]) & 1 for i in range(1000, 11_000))
    assert misses > 9_900
    assert image.name_heads({}) == (0, 0)
    assert image.name_heads({b"mep.": 1, b"yrotsih_hsab./": 2})[0] == 4
    assert image.name_heads({b"0123456789": 1})[0] == 8  # at most one word


def test_the_directories_holding_an_exact_path_are_listed_for_the_kernel() -> None:
    img = build(parse_policy("""
policy:
  - {name: a, action: audit, paths: ["/var/lib/db/main", "/etc/shadow"], host: true}
  - {name: b, action: ignore, paths: ["/var/cache/**", "**/*.tmp"], host: true}
""", "p.yaml"))
    # a prefix rule's directory itself is an exact entry too ("/var/cache" in "/var/")
    assert img.dirs == frozenset({b"/var/lib/db/", b"/etc/", b"/var/"})


def test_a_deletion_skips_the_lookups_the_policy_has_no_entries_for() -> None:
    img = build(parse_policy(GOOD, "p.yaml"))
    assert img.uses == USES["PATHS"] | USES["NAMES"] | USES["COMMS"] | USES["EXES"] | USES["CGROUPS"]
    host_only = build(parse_policy("policy:\n  - {name: a, action: audit, paths: [/x], host: true}\n", "p"))
    assert host_only.uses == USES["PATHS"]
    pods_only = build(parse_policy("policy:\n  - {name: a, action: audit, paths: ['**/*.pem']}\n", "p"))
    assert pods_only.uses == USES["NAMES"] | USES["CGROUPS"]  # host processes are not covered


def test_selectors_give_each_cgroup_its_rules_and_unknown_ones_fail_closed() -> None:
    p = parse_policy(GOOD, "p.yaml")
    assert cgroup_rules(p, HOST) == 0b010
    assert cgroup_rules(p, POD, "build-7", {}) == 0b011
    assert cgroup_rules(p, POD, "prod", {"app": "web-1"}) == 0b110
    assert cgroup_rules(p, POD, "prod", {"app": "api"}) == 0b010
    assert cgroup_rules(p, PENDING) == 0b110  # no selective ignore before the pod is known; audit and block all
    assert unknown_rules(p) == 0b110


def _canonical_paths(r: random.Random) -> list[bytes]:
    parts = [b"var", b"cache", b"etc", b"shadow", b".bash_history", b"x.tmp", b"srv", b"keys", b"a", b"tmp"]
    return [b"/" + b"/".join(r.choice(parts) for _ in range(r.randint(1, 5))) for _ in range(2000)]


def test_the_user_space_decision_matches_the_globs_the_rules_are_written_in() -> None:
    p = parse_policy(GOOD, "p.yaml")
    r = random.Random(7)
    globs = [compile_matcher([pt.text for pt in rule.paths]) for rule in p.rules]
    every = (1 << len(p.rules)) - 1
    for path in _canonical_paths(r):
        want = next((i for i, g in enumerate(globs) if g(path)), -1)
        assert decide(p, every, pb.OP_UNLINK, path, b"rm", b"/bin/rm") == want, path


def test_a_rename_is_ignored_only_when_both_names_are_and_else_decided_by_what_it_destroyed() -> None:
    p = parse_policy(GOOD, "p.yaml")
    every = 0b111
    assert decide(p, every, pb.OP_RENAME, b"/var/cache/a", b"mv", b"", b"/var/cache/b") == 0
    assert decide(p, every, pb.OP_RENAME, b"/var/cache/a", b"mv", b"", b"/srv/out") == -1
    assert decide(p, every, pb.OP_RENAME, b"/var/cache/a", b"mv", b"", b"/etc/shadow", destroyed=True) == 1
    assert decide(p, every, pb.OP_RENAME, b"/var/cache/a", b"mv", b"", b"/etc/shadow", destroyed=False) == -1
    assert decide(p, every, pb.OP_RENAME, b"/etc/shadow", b"logrotate-with-", b"", b"/x") == -1  # excepted


def test_the_policy_the_deployment_mounts_validates() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "policy-configmap.yaml").read_text())
    p = parse_policy(doc["data"]["policy.yaml"], "deploy/policy-configmap.yaml")
    assert p.names() == ["audit-shell-history"]

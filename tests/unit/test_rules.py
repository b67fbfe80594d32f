"""Rules files: validation errors name file, line and problem; match keys and except forms behave as documented."""

from __future__ import annotations

import textwrap

import pytest
from unlinkwatch.collector.rules import RulesError, RuleSet, load_rules, parse_rules

from unlinkwatch.errors import UserError
from unlinkwatch.pb import events_pb2 as pb


def rules(text: str) -> RuleSet:
    return parse_rules(textwrap.dedent(text), "rules.yaml")


def event(path: str = "/etc/x", *, op: pb.Op.ValueType = pb.OP_UNLINK, result: int = 0, comm: str = "rm",
          exe: str = "/usr/bin/rm", namespace: str = "", labels: dict[str, str] | None = None) -> pb.DeletionEvent:
    ev = pb.DeletionEvent(path=path.encode(), op=op, result=result,
                          process=pb.Process(comm=comm.encode(), exe=exe.encode()))
    if namespace:
        ev.pod.uid, ev.pod.name, ev.pod.namespace = "uid-1", "web-1", namespace
        for k, v in (labels or {}).items():
            ev.pod.labels[k] = v
    return ev


def names(rs: RuleSet, ev: pb.DeletionEvent) -> list[str]:
    return [r.name for r in rs.matching(ev)]


BAD = [
    ("rules: [\n", 2, "YAML"),
    ("", 1, "empty"),
    ("rules: {}\n", 1, "'rules' must be a list"),
    ("ruls: []\n", 1, "unknown key 'ruls'"),
    ("rules:\n  - severity: high\n    match: {paths: [/x]}\n", 2, "missing 'name'"),
    ("rules:\n  - name: a\n    match: {paths: [/x]}\n", 2, "missing 'severity'"),
    ("rules:\n  - name: a\n    severity: urgent\n    match: {paths: [/x]}\n", 3, "severity must be one of"),
    ("rules:\n  - name: a\n    severity: high\n", 2, "missing 'match'"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      pathz: [/x]\n", 5, "unknown key 'pathz'"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      paths: [etc/**]\n", 5, "must start with '/'"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      paths: ['/a/[b']\n", 5, "unclosed '['"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      paths: []\n", 5, "non-empty list"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      ops: [delete]\n", 5, "unknown op 'delete'"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      result: ok\n", 5, "result must be one of"),
    ("rules:\n  - name: a\n    severity: high\n    match: {comm: [x]}\n    except: {}\n", 5, "must not be empty"),
    ("rules:\n  - name: a\n    severity: high\n    match: {comm: [x]}\n  - name: a\n    severity: low\n"
     "    match: {comm: [y]}\n", 5, "duplicate rule name 'a' (first on line 2)"),
    ("rules:\n  - name: a\n    name: b\n    severity: high\n    match: {comm: [x]}\n", 3, "duplicate key 'name'"),
    ("rules:\n  - name: 'a b'\n    severity: high\n    match: {comm: [x]}\n", 2, "rule name"),
    ("fold_window: soon\nrules: []\n", 1, "not a duration"),
    ("fold_samples: 0\nrules: []\n", 1, "fold_samples"),
    ("rules:\n  - name: a\n    severity: high\n    match: {comm: [x]}\n    enabled: maybe\n", 5, "true or false"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      min_size: 1MB\n", 5, "must be a size in bytes"),
    ("rules:\n  - name: a\n    severity: high\n    match:\n      file_types: [regular]\n", 5,
     "unknown type 'regular'"),
]


@pytest.mark.parametrize(("text", "line", "problem"), BAD, ids=[b[2] for b in BAD])
def test_a_bad_rules_file_is_refused_with_file_line_and_problem(text: str, line: int, problem: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(text, "rules.yaml")
    msg = str(err.value)
    assert msg.startswith(f"rules.yaml:{line}: "), msg
    assert problem in msg
    assert "\n" not in msg
    assert isinstance(err.value, UserError)


def test_a_missing_rules_file_is_a_user_error_naming_it(tmp_path: object) -> None:
    with pytest.raises(RulesError, match=r"^/nonexistent/rules.yaml:1: cannot read"):
        load_rules("/nonexistent/rules.yaml")


def test_the_contract_example_loads_and_its_except_keys_each_excuse_on_their_own() -> None:
    rs = rules("""
        rules:
          - name: etc-deleted
            severity: critical
            description: a file under /etc was deleted
            match:
              paths: ["/etc/**"]
              ops: [unlink, rmdir, rename]
              result: success
              namespaces: ["prod-*"]
              pod_labels: {app: web}
              comm: ["*"]
            except:
              comm: ["dpkg", "apt*"]
              paths: ["/etc/ld.so.cache~"]
        """)
    web = {"app": "web"}
    assert names(rs, event("/etc/shadow", namespace="prod-eu", labels=web)) == ["etc-deleted"]
    assert names(rs, event("/etc/shadow", namespace="prod-eu", labels=web, comm="apt-get")) == []
    assert names(rs, event("/etc/ld.so.cache~", namespace="prod-eu", labels=web)) == []
    assert names(rs, event("/etc/shadow", namespace="dev", labels=web)) == []
    assert names(rs, event("/etc/shadow", namespace="prod-eu", labels={"app": "db"})) == []
    assert names(rs, event("/etc/shadow")) == []  # a host process has no namespace
    assert names(rs, event("/etc/shadow", namespace="prod-eu", labels=web, result=-13)) == []


def test_a_list_of_excepts_excuses_only_when_all_keys_of_one_entry_match() -> None:
    rs = rules("""
        rules:
          - name: kubelet-state
            severity: high
            match: {paths: ["/var/lib/kubelet/**"]}
            except:
              - comm: [kubelet]
                ops: [rename]
              - paths: ["/var/lib/kubelet/pods/*/volumes/**/..data"]
        """)
    assert names(rs, event("/var/lib/kubelet/a", comm="kubelet", op=pb.OP_RENAME)) == []
    assert names(rs, event("/var/lib/kubelet/a", comm="kubelet", op=pb.OP_UNLINK)) == ["kubelet-state"]
    assert names(rs, event("/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/t/..data", comm="bash")) == []


def test_volumes_and_host_paths_select_where_the_deleted_file_lived() -> None:
    rs = rules("""
        rules:
          - name: persistent-data
            severity: high
            match: {volumes: ["csi/*", "persistentVolumeClaim/*"]}
          - name: host-logs
            severity: medium
            match: {host_paths: ["/var/log/**"]}
        """)
    ev = event("/data/db/x")
    assert names(rs, ev) == []
    ev.volume, ev.host_path = "csi/pv-9", b"/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv-9/mount/db/x"
    assert names(rs, ev) == ["persistent-data"]
    ev.volume, ev.host_path = "hostPath/varlog", b"/var/log/syslog"
    assert names(rs, ev) == ["host-logs"]


def test_freed_min_size_and_file_types_select_what_was_destroyed_and_never_an_event_where_it_was_not_read(
) -> None:
    rs = rules("""
        rules:
          - name: big-data-gone
            severity: high
            match: {freed: true, min_size: 1Mi}
          - name: still-linked
            severity: low
            match: {freed: false, file_types: [file, symlink]}
        """)
    ev = event("/data/x")
    assert names(rs, ev) == []  # not read: neither freed nor not freed
    ev.file_type, ev.size, ev.nlink, ev.freed = pb.FILE_TYPE_FILE, 1 << 20, 1, True
    assert names(rs, ev) == ["big-data-gone"]
    ev.size = (1 << 20) - 1
    assert names(rs, ev) == []
    ev.nlink, ev.freed = 2, False
    assert names(rs, ev) == ["still-linked"]
    ev.file_type = pb.FILE_TYPE_DIR
    assert names(rs, ev) == []


def test_the_node_policys_verdict_and_rule_select_events() -> None:
    rs = rules("""
        rules:
          - name: would-have-blocked
            severity: high
            match: {action: [would-block, blocked], policy: ["protect-*"]}
          - name: blocked-only
            severity: critical
            match: {action: blocked}
        """)
    ev = event()
    assert names(rs, ev) == []
    ev.action, ev.policy = pb.ACTION_WOULD_BLOCK, "protect-shadow"
    assert names(rs, ev) == ["would-have-blocked"]
    ev.action = pb.ACTION_BLOCKED
    assert names(rs, ev) == ["would-have-blocked", "blocked-only"]
    ev.policy = "audit-keys"
    assert names(rs, ev) == ["blocked-only"]
    with pytest.raises(RulesError, match="unknown action 'deny'"):
        rules("rules:\n  - {name: x, severity: low, match: {action: deny}}\n")


def test_ops_result_comm_and_exe_select_events() -> None:
    rs = rules("""
        rules:
          - name: rmdir-only
            severity: low
            match: {paths: ["/d/**"], ops: [rmdir]}
          - name: failures
            severity: info
            match: {paths: ["/f/**"], result: failure}
          - name: any-result
            severity: info
            match: {paths: ["/a/**"], result: any}
          - name: by-exe
            severity: medium
            match: {exe: ["/tmp/**"]}
          - name: by-comm
            severity: medium
            match: {comm: ["shred", "wipe*"]}
        """)
    assert names(rs, event("/d/x", op=pb.OP_RMDIR)) == ["rmdir-only"]
    assert names(rs, event("/d/x", op=pb.OP_UNLINK)) == []
    assert names(rs, event("/f/x", result=-1)) == ["failures"]
    assert names(rs, event("/f/x")) == []
    assert names(rs, event("/a/x", result=-2)) == ["any-result"] == names(rs, event("/a/x"))
    assert names(rs, event("/home/x", exe="/tmp/.x/dropper")) == ["by-exe"]
    assert names(rs, event("/home/x", comm="wipefs")) == ["by-comm"]
    assert names(rs, event("/home/x", comm="shred", exe="/tmp/shred")) == ["by-exe", "by-comm"]


def test_a_relative_deletion_is_matched_on_the_absolute_path_the_agent_resolved() -> None:
    rs = rules("rules:\n  - {name: shadow, severity: critical, match: {paths: [/etc/shadow]}}\n")
    ev = event("/etc/shadow")
    ev.raw_path = b"shadow"  # `cd /etc && rm shadow`
    assert names(rs, ev) == ["shadow"]


def test_non_utf8_paths_match_globs_written_with_escapes() -> None:
    rs = rules("rules:\n  - {name: odd, severity: low, match: {paths: ['/tmp/\\xff*']}}\n")
    assert names(rs, pb.DeletionEvent(path=b"/tmp/\xffname")) == ["odd"]
    assert names(rs, pb.DeletionEvent(path=b"/tmp/name")) == []


def test_label_values_may_be_numbers_or_globs_and_disabled_rules_are_skipped() -> None:
    rs = rules("""
        fold_window: 500ms
        fold_samples: 3
        rules:
          - {name: tier, severity: low, match: {pod_labels: {tier: 1, app: "web-*"}}}
          - {name: off, severity: low, enabled: false, match: {comm: ["*"]}}
        """)
    assert (rs.fold_window_ns, rs.fold_samples) == (500_000_000, 3)
    assert names(rs, event("/x", namespace="ns", labels={"tier": "1", "app": "web-2"})) == ["tier"]
    assert names(rs, event("/x", namespace="ns", labels={"tier": "2", "app": "web-2"})) == []
    assert [r.name for r in rs.rules] == ["tier"]


def test_yaml_anchors_in_x_keys_share_allowlists() -> None:
    rs = rules("""
        x-pkg: &pkg [dpkg, "apt*"]
        rules:
          - {name: a, severity: low, match: {paths: ["/etc/**"]}, except: {comm: *pkg}}
        """)
    assert names(rs, event("/etc/x", comm="apt")) == []
    assert names(rs, event("/etc/x", comm="vi")) == ["a"]


def renamed(src: str, dst: str, *, replaced: bool = False, flags: int = 0, comm: str = "mv",
            result: int = 0) -> pb.DeletionEvent:
    ev = event(src, op=pb.OP_RENAME, comm=comm, result=result)
    ev.rename_to, ev.rename_flags = dst.encode(), flags
    ev.flags = pb.EVENT_FLAG_REPLACED if replaced else 0
    return ev


def test_a_rename_matches_paths_on_its_source_and_on_a_destination_it_destroyed() -> None:
    rs = rules("""
        rules:
          - name: shadow
            severity: high
            match: {paths: [/etc/shadow]}
            except:
              - {comm: [passwd], ops: [rename]}
        """)
    assert names(rs, renamed("/etc/shadow", "/tmp/x")) == ["shadow"]           # moved away
    assert names(rs, renamed("/tmp/x", "/etc/shadow")) == []                   # moved in, nothing replaced
    assert names(rs, renamed("/tmp/x", "/etc/shadow", replaced=True)) == ["shadow"]
    assert names(rs, renamed("/tmp/x", "/etc/shadow", flags=2)) == ["shadow"]  # RENAME_EXCHANGE
    assert names(rs, renamed("/etc/shadow+", "/etc/shadow", replaced=True, comm="passwd")) == []
    assert names(rs, renamed("/etc/shadow", "/tmp/x", result=-18)) == []       # EXDEV: nothing moved


def test_a_rule_may_match_the_destination_of_a_rename_in_match_and_in_except() -> None:
    rs = rules("""
        rules:
          - name: into-cron
            severity: high
            match: {rename_to: ["/etc/cron.d/**"]}
          - name: home-moved-out
            severity: low
            match: {paths: ["/home/**"]}
            except: {rename_to: ["/home/**"]}
        """)
    assert names(rs, renamed("/tmp/job", "/etc/cron.d/job")) == ["into-cron"]
    assert names(rs, event("/etc/cron.d/job")) == []
    assert names(rs, renamed("/home/a/x", "/home/a/y")) == []
    assert names(rs, renamed("/home/a/x", "/tmp/y")) == ["home-moved-out"]
    assert names(rs, event("/home/a/x")) == ["home-moved-out"]
    evs = [renamed("/tmp/job", "/etc/cron.d/job"), event("/var/x"), renamed("/home/a/x", "/tmp/y")]
    assert [[r.name for r in m] for _, m in rs.matching_batch(evs)] == [["into-cron"], ["home-moved-out"]]


def test_matching_a_batch_finds_renames_by_the_destination_they_destroyed() -> None:
    rs = rules("""
        rules:
          - name: etc
            severity: high
            match: {paths: ["/etc/**"]}
        """)
    evs = [event("/var/a"), renamed("/tmp/new", "/etc/hosts", replaced=True), renamed("/tmp/b", "/etc/motd")]
    assert [(e.rename_to, [r.name for r in m]) for e, m in rs.matching_batch(evs)] == [(b"/etc/hosts", ["etc"])]


def test_the_command_line_selects_and_excuses_with_a_star_that_spans_slashes() -> None:
    rs = rules("""
        rules:
          - name: rm-rf
            severity: high
            match: {paths: ["/**"], args: ["rm -rf *", "rm -fr *"]}
            except: {args: ["* /tmp/*"]}
        """)
    ev = event("/var/lib/postgresql/data/PG_VERSION")
    ev.process.args.extend([b"rm", b"-rf", b"/var/lib/postgresql"])
    assert names(rs, ev) == ["rm-rf"]
    del ev.process.args[:]
    ev.process.args.extend([b"rm", b"-rf", b"/tmp/build"])
    assert names(rs, ev) == []
    del ev.process.args[:]
    ev.process.args.extend([b"rm", b"x"])
    assert names(rs, ev) == []
    with pytest.raises(RulesError, match=r"args: glob .* unclosed"):
        rules("rules:\n  - {name: x, severity: low, match: {args: ['rm [x']}}\n")


def test_ancestors_match_any_parents_comm_or_exe_and_exec_session_selects_sessions() -> None:
    rs = rules("""
        rules:
          - name: from-cron
            severity: medium
            match: {paths: ["/var/**"], ancestors: [cron, "/usr/sbin/anacron"]}
          - name: session
            severity: high
            match: {paths: ["/data/**"], exec_session: true}
            except: {ancestors: ["backup-*"]}
        """)
    ev = event("/var/x")
    ev.ancestry.add(pid=3, comm=b"sh", exe=b"/bin/sh")
    assert names(rs, ev) == []
    ev.ancestry.add(pid=2, comm=b"cron", exe=b"/usr/sbin/cron")
    assert names(rs, ev) == ["from-cron"]
    ev = event("/var/y")
    ev.ancestry.add(pid=2, comm=b"anacron", exe=b"/usr/sbin/anacron")
    assert names(rs, ev) == ["from-cron"]
    ev = event("/data/db")
    assert names(rs, ev) == []
    ev.exec_session = True
    assert names(rs, ev) == ["session"]
    ev.ancestry.add(pid=9, comm=b"backup-agent")
    assert names(rs, ev) == []
    with pytest.raises(RulesError, match=r"exec_session must be true or false"):
        rules("rules:\n  - {name: x, severity: low, match: {exec_session: maybe}}\n")

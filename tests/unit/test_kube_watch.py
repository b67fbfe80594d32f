"""The pod watcher against the in-process API stand-in, driven by the real kubernetes client."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unlinkwatch.agent.identity.kube import PodIndex, PodWatcher

from unlinkwatch.kubestub import FakeKubeAPI, make_pod, wait_until

CID = "c" * 64
NODE = "node-a"


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI().start()
    yield fake
    fake.stop()


def watcher(kubeconfig: Path | str, index: PodIndex | None = None, timeout: int = 30) -> PodWatcher:
    w = PodWatcher(NODE, index or PodIndex(), str(kubeconfig), watch_timeout_seconds=timeout,
                   backoff_max_seconds=0.2)
    w.start()
    return w


def test_lists_then_watches_only_this_nodes_pods(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.add_pod(make_pod("before", containers=[("app", "busybox:1.36", CID)]))
    api.add_pod(make_pod("elsewhere", node="node-b"))
    w = watcher(api.write_kubeconfig(tmp_path / "kc"))
    try:
        assert w.synced.wait(10)
        assert {p.name for p in w.index.pods.values()} == {"before"}
        assert w.index.container(CID) is not None
        api.add_pod(make_pod("after", containers=[("app", "busybox:1.36", "d" * 64)]))
        api.add_pod(make_pod("other-node-later", node="node-b"))
        assert wait_until(lambda: w.index.container("d" * 64) is not None)
        assert "other-node-later" not in {p.name for p in w.index.pods.values()}
        assert all("fieldSelector=spec.nodeName%3Dnode-a" in r for r in api.requests if r.startswith("/api/v1/pods"))
    finally:
        w.stop()


def test_a_container_id_learnt_from_a_later_status_update_is_indexed(api: FakeKubeAPI, tmp_path: Path) -> None:
    pod = make_pod("starting", containers=[("app", "busybox:1.36", "")])
    api.add_pod(pod)
    w = watcher(api.write_kubeconfig(tmp_path / "kc"))
    try:
        assert w.synced.wait(10)
        started = make_pod("starting", uid=pod["metadata"]["uid"], containers=[("app", "busybox:1.36", CID)],
                           init_containers=[("init", "busybox:1.36", "e" * 64)])
        api.add_pod(started)
        assert wait_until(lambda: w.index.container(CID) is not None and w.index.container("e" * 64) is not None)
        found = w.index.container("e" * 64)
        assert found is not None and found[1].name == "init"
    finally:
        w.stop()


def test_deleted_pods_stay_resolvable_in_the_deleted_pod_cache(api: FakeKubeAPI, tmp_path: Path) -> None:
    pod = make_pod("short", containers=[("app", "busybox:1.36", CID)])
    api.add_pod(pod)
    w = watcher(api.write_kubeconfig(tmp_path / "kc"))
    try:
        assert w.synced.wait(10)
        api.delete_pod("default", "short")
        uid = pod["metadata"]["uid"]
        assert wait_until(lambda: (p := w.index.pod(uid)) is not None and p.deleted_at > 0)
        assert w.index.container(CID) is not None
    finally:
        w.stop()


@pytest.mark.parametrize("as_http", [False, True], ids=["error event", "http status"])
def test_a_410_gone_makes_the_watcher_list_again_and_notice_deletions_it_missed(
        api: FakeKubeAPI, tmp_path: Path, as_http: bool) -> None:
    api.gone_as_http = as_http
    keep, lost = make_pod("keep"), make_pod("lost")
    api.add_pod(keep)
    api.add_pod(lost)
    w = watcher(api.write_kubeconfig(tmp_path / "kc"), timeout=1)
    try:
        assert w.synced.wait(10)
        assert wait_until(lambda: api.watches_served >= 1)
        time.sleep(0.2)  # the watch is open and waiting when the API goes away
        api.stop()  # the watcher misses a deletion and a creation while the API is away
        api.pods.pop(("default", "lost"))
        api.rv += 5
        api.pods[("default", "new")] = dict(make_pod("new"), metadata=dict(make_pod("new")["metadata"],
                                                                             resourceVersion=str(api.rv)))
        api.compact(expire_watches=False)
        api.start()
        assert wait_until(lambda: w.lists >= 2, timeout=15)
        assert wait_until(lambda: "new" in {p.name for p in w.index.pods.values()})
        gone = w.index.pod(lost["metadata"]["uid"])
        assert gone is not None and gone.deleted_at > 0
        kept = w.index.pod(keep["metadata"]["uid"])
        assert kept is not None and kept.deleted_at == 0
    finally:
        w.stop()


def test_an_expired_watch_mid_stream_re_lists(api: FakeKubeAPI, tmp_path: Path) -> None:
    w = watcher(api.write_kubeconfig(tmp_path / "kc"))
    try:
        assert w.synced.wait(10)
        assert wait_until(lambda: api.watches_served >= 1)
        api.compact()  # open watches get {"type": "ERROR", "object": Status 410}
        assert wait_until(lambda: w.lists >= 2)
        api.add_pod(make_pod("after-relist"))
        assert wait_until(lambda: "after-relist" in {p.name for p in w.index.pods.values()})
    finally:
        w.stop()


def test_bookmarks_advance_the_resource_version(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.bookmark_interval = 0.1
    w = watcher(api.write_kubeconfig(tmp_path / "kc"))
    try:
        assert w.synced.wait(10)
        api.add_pod(make_pod("other", node="node-b"))  # moves the server's version, not ours to see
        assert wait_until(lambda: w.bookmarks >= 1 and w.resource_version == str(api.rv))
    finally:
        w.stop()


def test_an_api_down_at_start_is_picked_up_when_it_comes_back_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    api = FakeKubeAPI().start()
    kc = api.write_kubeconfig(tmp_path / "kc")
    api.stop()
    api.add_pod(make_pod("waiting"))
    caplog.set_level(logging.WARNING, logger="unlinkwatch.agent.kube")
    w = watcher(kc)
    try:
        assert wait_until(lambda: w.errors >= 3, timeout=15)
        assert not w.synced.is_set()
        api.start()
        assert w.synced.wait(15)
        assert "waiting" in {p.name for p in w.index.pods.values()}
        assert len([r for r in caplog.records if r.name == "unlinkwatch.agent.kube"]) == 1
    finally:
        w.stop()
        api.stop()


@pytest.mark.parametrize("failure", [401, 403, 500, "garbage"])
def test_a_failing_api_is_logged_once_and_the_watcher_recovers(
        api: FakeKubeAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture, failure: int | str) -> None:
    api.fail_with = failure
    api.add_pod(make_pod("eventually"))
    caplog.set_level(logging.WARNING, logger="unlinkwatch.agent.kube")
    w = watcher(api.write_kubeconfig(tmp_path / "kc"))
    try:
        assert wait_until(lambda: w.errors >= 3)
        lines = [r.getMessage() for r in caplog.records if r.name == "unlinkwatch.agent.kube"]
        assert len(lines) == 1 and "\n" not in lines[0]
        if failure != "garbage":
            assert str(failure) in lines[0]
        api.fail_with = None
        assert w.synced.wait(10)
        assert "eventually" in {p.name for p in w.index.pods.values()}
    finally:
        w.stop()


def test_a_wrong_token_is_an_http_401_from_the_stand_in(api: FakeKubeAPI, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="unlinkwatch.agent.kube")
    w = watcher(api.write_kubeconfig(tmp_path / "kc", token="wrong"))
    try:
        assert wait_until(lambda: w.errors >= 2)
        assert any("401" in r.getMessage() for r in caplog.records)
    finally:
        w.stop()


def test_a_malformed_kubeconfig_is_one_clear_line_and_no_crash(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    kc = tmp_path / "kc"
    kc.write_text("clusters: [this is: not {valid")
    caplog.set_level(logging.WARNING, logger="unlinkwatch.agent.kube")
    w = watcher(kc)
    try:
        assert wait_until(lambda: len(caplog.records) >= 1)
        assert w._thread is not None and w._thread.is_alive()
        msg = caplog.records[0].getMessage()
        assert "cannot load Kubernetes config" in msg and "\n" not in msg
    finally:
        w.stop()

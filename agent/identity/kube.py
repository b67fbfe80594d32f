"""Pod metadata for this node: one list+watch, indexes by pod UID and container ID, a deleted-pod cache."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .claims import ClaimResolver, pod_claims
from .owners import OwnerResolver

log = logging.getLogger("unlinkwatch.agent.kube")

MAX_CONTAINER_IDS_PER_POD = 64  # old ids of restarted containers are kept, but not without bound


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    image: str


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    name: str
    namespace: str
    workload: str
    labels: Mapping[str, str] = field(default_factory=dict)
    containers: Mapping[str, ContainerInfo] = field(default_factory=dict)  # by container id
    deleted_at: float = 0.0  # monotonic time of deletion; 0 while the pod exists
    volumes: Mapping[str, str] = field(default_factory=dict)  # name -> its type, the pod spec's key (emptyDir)
    host_paths: Mapping[str, bytes] = field(default_factory=dict)  # hostPath volumes: name -> the host's path
    # volumes on a claim: name -> "persistentVolumeClaim/<claim>" or "ephemeral/<name>" (the claim <pod>-<name>)
    claims: Mapping[str, str] = field(default_factory=dict)
    pvs: Mapping[str, str] = field(default_factory=dict)  # the bound PV's name -> the volume's name


def strip_runtime(container_id: str) -> str:
    """'containerd://<id>' -> '<id>' (also cri-o://, docker://)."""
    return container_id.split("://", 1)[-1]


def _statuses(status: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        yield from status.get(key) or []


def pod_info(pod: Mapping[str, Any], workload: str, previous: PodInfo | None = None,
             pvs: Mapping[str, str] | None = None) -> PodInfo:
    """Pod object (dict, as the API serves it) -> PodInfo; keeps ids of containers that restarted. `pvs`: the PV
    bound to each claim volume that has one (PV name -> volume name)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    images: dict[str, str] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            images[str(c.get("name", ""))] = str(c.get("image", ""))
    containers: dict[str, ContainerInfo] = dict(previous.containers) if previous else {}
    for st in _statuses(pod.get("status") or {}):
        name = str(st.get("name", ""))
        image = images.get(name) or str(st.get("image", ""))
        ids = [st.get("containerID")]
        last = (st.get("lastState") or {}).get("terminated") or {}
        ids.append(last.get("containerID"))
        for raw in ids:
            if isinstance(raw, str) and raw:
                cid = strip_runtime(raw)
                containers.pop(cid, None)
                containers[cid] = ContainerInfo(cid, name, image)
    while len(containers) > MAX_CONTAINER_IDS_PER_POD:
        containers.pop(next(iter(containers)))
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    volumes: dict[str, str] = {}
    host_paths: dict[str, bytes] = {}
    for v in spec.get("volumes") or []:
        name = str(v.get("name", ""))
        kind = next((k for k in v if k != "name"), "")
        volumes[name] = kind
        if kind == "hostPath":
            host_paths[name] = str((v.get("hostPath") or {}).get("path", "")).encode()
    claims = {name: label for name, (_claim, label) in pod_claims(pod).items()}
    return PodInfo(uid=str(meta.get("uid", "")), name=str(meta.get("name", "")),
                   namespace=str(meta.get("namespace", "")), workload=workload,
                   labels=MappingProxyType(labels), containers=MappingProxyType(containers),
                   volumes=MappingProxyType(volumes), host_paths=MappingProxyType(host_paths),
                   claims=MappingProxyType(claims), pvs=MappingProxyType(dict(pvs or {})))


class PodIndex:
    """Pods by UID and container ID. Readers never lock: each update swaps in a new immutable PodInfo."""

    def __init__(self, retention_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.pods: dict[str, PodInfo] = {}
        self.by_container: dict[str, str] = {}  # container id -> pod uid
        self.generation = 0

    def upsert(self, info: PodInfo) -> None:
        with self._lock:
            self.pods[info.uid] = info
            for cid in info.containers:
                self.by_container[cid] = info.uid
            self.generation += 1

    def delete(self, uid: str) -> None:
        """Keep a deleted pod for the retention period so late events still resolve."""
        with self._lock:
            info = self.pods.get(uid)
            if info is not None and not info.deleted_at:
                self.pods[uid] = _replace_deleted(info, self._clock())
                self.generation += 1

    def replace_all(self, infos: Iterable[PodInfo]) -> None:
        """After a (re-)list: pods missing from it were deleted while we were not watching."""
        fresh = {i.uid: i for i in infos}
        for info in fresh.values():
            self.upsert(info)
        for uid, info in list(self.pods.items()):
            if uid not in fresh and not info.deleted_at:
                self.delete(uid)

    def live_count(self) -> int:
        return sum(1 for i in list(self.pods.values()) if not i.deleted_at)

    def pod(self, uid: str) -> PodInfo | None:
        return self.pods.get(uid)

    def container(self, container_id: str) -> tuple[PodInfo, ContainerInfo] | None:
        uid = self.by_container.get(container_id)
        info = self.pods.get(uid) if uid else None
        c = info.containers.get(container_id) if info else None
        return (info, c) if info is not None and c is not None else None

    def sweep(self) -> int:
        """Forget pods deleted longer ago than the retention period."""
        now = self._clock()
        with self._lock:
            gone = [u for u, i in self.pods.items() if i.deleted_at and now - i.deleted_at >= self.retention_seconds]
            for uid in gone:
                info = self.pods.pop(uid)
                for cid in info.containers:
                    if self.by_container.get(cid) == uid:
                        del self.by_container[cid]
            if gone:
                self.generation += 1
        return len(gone)


def _replace_deleted(info: PodInfo, now: float) -> PodInfo:
    return PodInfo(info.uid, info.name, info.namespace, info.workload, info.labels, info.containers, now)


class RateLimitedLog:
    """At most one line per key per interval: a broken API must not flood the log."""

    def __init__(self, interval_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval_seconds
        self._clock = clock
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def warning(self, key: str, msg: str, *args: object) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        self._last[key] = now
        log.warning(msg, *args)
        return True


class ApiUnavailable(Exception):
    """No API client can be built (no in-cluster environment, malformed kubeconfig)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent  # nothing is configured at all: retrying cannot help


def _k8s() -> Any:
    """The kubernetes package, untyped: its partial annotations do not cover what is used here."""
    import kubernetes.client
    import kubernetes.config
    import kubernetes.watch.watch

    return kubernetes


def api_client(kubeconfig: str | None) -> Any:
    """A kubernetes ApiClient from --kubeconfig, else in-cluster, else $KUBECONFIG; no global config touched."""
    k = _k8s()
    client, config = k.client, k.config
    cfg = client.Configuration()
    cfg.retries = 0  # the watcher backs off by itself; urllib3's retries would only add log noise
    try:
        path = kubeconfig or (None if os.environ.get("KUBERNETES_SERVICE_HOST") else os.environ.get("KUBECONFIG"))
        if path:
            return config.new_client_from_config(config_file=path, client_configuration=cfg, persist_config=False)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(configuration=cfg)
    except Exception as e:  # the client raises ConfigException, yaml errors, TypeError, KeyError...
        raise ApiUnavailable(f"cannot load Kubernetes config ({kubeconfig or 'in-cluster'}): "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    raise ApiUnavailable("no Kubernetes API configured (not in a cluster, no --kubeconfig)", permanent=True)


def make_fetch(api: Any, timeout: float = 5.0) -> Callable[[str, str, str], Mapping[str, Any] | None]:
    """fetch(kind, ns, name) for OwnerResolver and ClaimResolver: ReplicaSets, Jobs and claims, None on any
    failure."""
    client = _k8s().client
    apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    readers = {"ReplicaSet": apps.read_namespaced_replica_set, "Job": batch.read_namespaced_job,
               "PersistentVolumeClaim": core.read_namespaced_persistent_volume_claim}

    def fetch(kind: str, ns: str, name: str) -> Mapping[str, Any] | None:
        reader = readers.get(kind)
        if reader is None:
            return None
        try:
            resp = reader(name, ns, _preload_content=False, _request_timeout=timeout)
            obj = json.loads(resp.data)
        except Exception as e:  # forbidden, not found, down, garbage: fall back to the name's shape
            log.debug("owner lookup %s %s/%s failed: %s", kind, ns, name, e)
            return None
        return obj if isinstance(obj, dict) else None

    return fetch


class _Gone(Exception):
    """The resource version is too old (410): the watch cannot resume, so list again."""


class PodWatcher:
    """One list+watch of this node's pods on a background thread; reconnects with backoff, re-lists on 410."""

    def __init__(self, node: str, index: PodIndex, kubeconfig: str | None = None, *,
                 watch_timeout_seconds: int = 240, backoff_max_seconds: float = 30.0,
                 log_interval_seconds: float = 300.0,
                 client_factory: Callable[[str | None], Any] = api_client) -> None:
        self.node = node
        self.index = index
        self.kubeconfig = kubeconfig
        self.watch_timeout = watch_timeout_seconds
        self.backoff_max = backoff_max_seconds
        self.limiter = RateLimitedLog(log_interval_seconds)
        self._factory = client_factory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self._core: Any = None
        self._owners: OwnerResolver | None = None
        self._claims: ClaimResolver | None = None
        self.synced = threading.Event()  # set once the first list has been indexed
        self.connected = False
        self.lists = 0
        self.bookmarks = 0
        self.errors = 0
        self.resource_version: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kube-pod-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):  # already released or closed: nothing to wake
                resp.shutdown()  # wakes the blocked read of a long watch at once
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                if self._core is None:
                    self._connect()
                if self.resource_version is None:
                    self.resource_version = self._list()
                self._watch(self.resource_version)
                delay = 0.5
                continue
            except _Gone:
                self.resource_version = None  # too old: list again, at once
                continue
            except ApiUnavailable as e:
                if e.permanent:
                    log.warning("%s: pod names stay unknown (use --kube off to silence this)", e)
                    return
                self.limiter.warning("config", "%s; pod names stay unknown until it is fixed", e)
            except Exception as e:  # 401/403/500, refused connections, garbage: log, back off, keep going
                if self._stop.is_set():
                    break  # stop() cut the watch short
                status = getattr(e, "status", None)
                if status == 410:
                    self.resource_version = None
                    continue
                self.errors += 1
                what = f"HTTP {status} {getattr(e, 'reason', '')}".strip() if status else _brief(e)
                self.limiter.warning(f"api:{status or type(e).__name__}",
                                     "Kubernetes API: %s; pod names may be late, retrying with backoff", what)
            self.connected = False
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max)
        self.connected = False

    def _connect(self) -> None:
        client = _k8s().client
        api = self._factory(self.kubeconfig)
        self._core = client.CoreV1Api(api)
        fetch = make_fetch(api)
        self._owners = OwnerResolver(fetch)
        self._claims = ClaimResolver(fetch)

    def _selector(self) -> str:
        return f"spec.nodeName={self.node}"

    def _info(self, pod: Mapping[str, Any]) -> PodInfo:
        assert self._owners is not None
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        assert self._claims is not None
        return pod_info(pod, self._owners.workload(pod), self.index.pod(uid), self._claims.pvs(pod))

    def _list(self) -> str:
        resp = self._core.list_pod_for_all_namespaces(field_selector=self._selector(), _preload_content=False,
                                                      _request_timeout=(5, 60))
        data = json.loads(resp.data)
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ValueError("pod list is not a PodList")
        self.index.replace_all(self._info(p) for p in data["items"] if isinstance(p, dict))
        self.lists += 1
        self.connected = True
        self.synced.set()
        return str((data.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, rv: str) -> None:
        """Follow changes from rv until the server ends the watch; self.resource_version tracks progress."""
        iter_resp_lines = _k8s().watch.watch.iter_resp_lines
        resp = self._core.list_pod_for_all_namespaces(
            field_selector=self._selector(), watch=True, resource_version=rv, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout, _preload_content=False,
            _request_timeout=(5, self.watch_timeout + 15))
        self._resp = resp
        self.connected = True
        try:
            if self._stop.is_set():
                return  # stop() came while the request was being made: it could not wake us
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                if line.strip():
                    self.resource_version = self._apply(json.loads(line), self.resource_version or rv)
        finally:
            self._resp = None
            resp.release_conn()

    def _apply(self, ev: Any, rv: str) -> str:
        if not isinstance(ev, dict) or not isinstance(ev.get("object"), dict):
            raise ValueError("watch event is not {type, object}")
        typ, obj = ev.get("type"), ev["object"]
        if typ == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ValueError(f"watch error {obj.get('code')}: {obj.get('message', '')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if typ == "BOOKMARK":
            self.bookmarks += 1
        elif typ in ("ADDED", "MODIFIED"):
            self.index.upsert(self._info(obj))
        elif typ == "DELETED":
            info = self._info(obj)
            self.index.upsert(info)
            self.index.delete(info.uid)
        return new_rv


def _brief(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}"

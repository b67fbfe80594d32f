"""An in-process Kubernetes API on 127.0.0.1 speaking the real list/watch protocol (pods of a node by
fieldSelector, any namespaced object by GET, watches with resourceVersion, bookmarks and 410 Gone): the
demo's cluster, and the API server of the tests (none is available to them). Not for production."""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

Obj = dict[str, Any]
# Namespaced objects served by GET: URL prefix per (apiVersion, plural).
GROUPS = {"apps/v1": "/apis/apps/v1", "batch/v1": "/apis/batch/v1", "v1": "/api/v1"}


def status_obj(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeKubeAPI:
    """Pods of every node (served with fieldSelector spec.nodeName) plus any namespaced object, by GET."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.cond = threading.Condition()
        self.rv = 1000
        self.pods: dict[tuple[str, str], Obj] = {}
        self.objects: dict[tuple[str, str, str, str], Obj] = {}  # (prefix, ns, plural, name)
        self.events: list[tuple[int, str, Obj]] = []
        self.compacted_rv = 0  # watches asking for an older version get 410 Gone
        self.gone_as_http = False  # 410 as an HTTP status instead of an ERROR event in a 200 stream
        self.bookmark_interval: float | None = None
        self.fail_with: int | str | None = None  # 401/403/500/... or "garbage" for every request
        self.fail_prefix = ""  # only requests whose path starts with this fail
        self.requests: list[str] = []
        self.watches_served = 0
        self.expirations = 0  # bumped to end every open watch with an ERROR 410
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeKubeAPI:
        api = self

        class Handler(_Handler):
            fake = api

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server, self._stopping = server, False
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections and open watches end (start() again brings it back up)."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
               "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
               "users": [{"name": "agent", "user": {"token": token or self.token}}],
               "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}]}
        path.write_text(json.dumps(cfg))
        return path

    # --- state -----------------------------------------------------------------------------
    def _bump(self, typ: str, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, typ, copy.deepcopy(obj)))
        self.cond.notify_all()

    def add_pod(self, pod: Obj) -> None:
        with self.cond:
            m = pod["metadata"]
            key = (m["namespace"], m["name"])
            typ = "MODIFIED" if key in self.pods else "ADDED"
            self.pods[key] = copy.deepcopy(pod)
            self._bump(typ, self.pods[key])

    def delete_pod(self, namespace: str, name: str) -> None:
        with self.cond:
            pod = self.pods.pop((namespace, name))
            self._bump("DELETED", pod)

    def add_object(self, obj: Obj, plural: str) -> None:
        m = obj["metadata"]
        with self.cond:
            self.objects[(GROUPS[obj["apiVersion"]], m["namespace"], plural, m["name"])] = copy.deepcopy(obj)

    def compact(self, expire_watches: bool = True) -> None:
        """Forget history: older resource versions now answer 410; open watches end with an ERROR 410."""
        with self.cond:
            self.compacted_rv = self.rv
            if expire_watches:
                self.expirations += 1
                self.cond.notify_all()

    # --- serving -----------------------------------------------------------------------------
    def node_pods(self, node: str | None) -> list[Obj]:
        return [copy.deepcopy(p) for p in self.pods.values() if node is None or p["spec"].get("nodeName") == node]


def _node_of(query: dict[str, list[str]]) -> str | None:
    for sel in query.get("fieldSelector", []):
        for term in sel.split(","):
            k, _, v = term.partition("=")
            if k == "spec.nodeName":
                return v.lstrip("=")
    return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _send_json(self, code: int, obj: Any, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        fake = self.fake
        url = urlparse(self.path)
        q = parse_qs(url.query)
        fake.requests.append(self.path)
        if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
            return self._send_json(401, status_obj(401, "Unauthorized", "Unauthorized"))
        if fake.fail_with is not None and url.path.startswith(fake.fail_prefix):
            if fake.fail_with == "garbage":
                return self._send_json(200, None, raw=b"<html>this is not JSON{")
            code = int(fake.fail_with)
            return self._send_json(code, status_obj(code, "Failure", f"injected {code}"))
        if url.path == "/api/v1/pods":
            if q.get("watch", ["false"])[0].lower() in ("true", "1"):
                return self._watch(q)
            with fake.cond:
                items = fake.node_pods(_node_of(q))
                rv = fake.rv
            return self._send_json(200, {"kind": "PodList", "apiVersion": "v1",
                                         "metadata": {"resourceVersion": str(rv)}, "items": items})
        parts = url.path.split("/")
        # /api/v1/namespaces/NS/PLURAL/NAME or /apis/G/V/namespaces/NS/PLURAL/NAME
        if len(parts) >= 6 and parts[-4] == "namespaces":
            prefix = "/".join(parts[:-4])
            ns, plural, name = parts[-3], parts[-2], parts[-1]
            with fake.cond:
                obj = fake.pods.get((ns, name)) if plural == "pods" else fake.objects.get((prefix, ns, plural, name))
                obj = copy.deepcopy(obj)
            if obj is not None:
                return self._send_json(200, obj)
            return self._send_json(404, status_obj(404, "NotFound", f'{plural} "{name}" not found'))
        return self._send_json(404, status_obj(404, "NotFound", "the server could not find the requested resource"))

    def _chunk(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, q: dict[str, list[str]]) -> None:
        fake = self.fake
        node = _node_of(q)
        rv_s = q.get("resourceVersion", [""])[0]
        timeout = float(q.get("timeoutSeconds", ["1800"])[0])
        bookmarks = q.get("allowWatchBookmarks", ["false"])[0].lower() in ("true", "1")
        with fake.cond:
            fake.watches_served += 1
            start_rv = int(rv_s) if rv_s not in ("", "0") else None
            too_old = start_rv is not None and start_rv < fake.compacted_rv
            gone_http = fake.gone_as_http
            expire_gen = fake.expirations
            initial = [("ADDED", p) for p in fake.node_pods(node)] if start_rv is None else []
            sent_rv = start_rv if start_rv is not None else fake.rv
        gone = status_obj(410, "Expired", f"too old resource version: {rv_s} ({fake.compacted_rv})")
        if too_old and gone_http:
            return self._send_json(410, gone)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + (fake.bookmark_interval or 1e9)
        try:
            if too_old:
                self._chunk({"type": "ERROR", "object": gone})
                return self._end()
            for typ, obj in initial:
                self._chunk({"type": typ, "object": obj})
            while True:
                with fake.cond:
                    pending = [(r, t, o) for r, t, o in fake.events if r > sent_rv
                               and (node is None or o["spec"].get("nodeName") == node)]
                    if not pending:
                        sent_rv = max(sent_rv, fake.rv)
                        now = time.monotonic()
                        if (fake._stopping or now >= deadline or fake.expirations != expire_gen):
                            break
                        fake.cond.wait(timeout=max(0.0, min(deadline, next_bookmark) - now))
                        pending = [(r, t, o) for r, t, o in fake.events if r > sent_rv
                                   and (node is None or o["spec"].get("nodeName") == node)]
                    if fake._stopping:
                        self.close_connection = True  # the server went down: the connection just drops
                        return
                for r, t, o in pending:
                    self._chunk({"type": t, "object": o})
                    sent_rv = r
                if bookmarks and time.monotonic() >= next_bookmark:
                    self._chunk({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {
                        "resourceVersion": str(max(sent_rv, fake.rv))}}})
                    next_bookmark = time.monotonic() + (fake.bookmark_interval or 1e9)
            if fake.expirations != expire_gen:
                self._chunk({"type": "ERROR", "object": gone})
            self._end()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# --- schema-valid objects -------------------------------------------------------------------------

def owner_ref(api_version: str, kind: str, name: str) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": str(uuid.uuid4()),
            "controller": True, "blockOwnerDeletion": True}


def make_pod(name: str, namespace: str = "default", node: str = "node-a", uid: str | None = None,
             containers: list[tuple[str, str, str]] | None = None, owner: Obj | None = None,
             labels: dict[str, str] | None = None, init_containers: list[tuple[str, str, str]] | None = None) -> Obj:
    """A Pod as the API serves it; containers are (name, image, container id or '' when not started yet)."""
    containers = containers if containers is not None else [("app", "busybox:1.36", "")]
    meta: Obj = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                 "labels": labels or {}, "creationTimestamp": "2024-05-01T10:00:00Z"}
    if owner is not None:
        meta["ownerReferences"] = [owner]

    def statuses(cs: list[tuple[str, str, str]]) -> list[Obj]:
        return [{"name": n, "image": img, "imageID": f"docker.io/library/{img}@sha256:{'0' * 64}",
                 "ready": bool(cid), "restartCount": 0, "started": bool(cid),
                 **({"containerID": f"containerd://{cid}", "state": {"running": {
                     "startedAt": "2024-05-01T10:00:01Z"}}} if cid else
                    {"state": {"waiting": {"reason": "ContainerCreating"}}})} for n, img, cid in cs]

    spec: Obj = {"nodeName": node, "containers": [{"name": n, "image": img} for n, img, _ in containers]}
    status: Obj = {"phase": "Running", "qosClass": "Burstable", "containerStatuses": statuses(containers)}
    if init_containers:
        spec["initContainers"] = [{"name": n, "image": img} for n, img, _ in init_containers]
        status["initContainerStatuses"] = statuses(init_containers)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def _workload_meta(name: str, namespace: str, owner: Obj | None) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return meta


def make_replicaset(name: str, namespace: str = "default", deployment: str | None = None) -> Obj:
    owner = owner_ref("apps/v1", "Deployment", deployment) if deployment else None
    sel = {"matchLabels": {"app": name}}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": _workload_meta(name, namespace, owner),
            "spec": {"replicas": 1, "selector": sel, "template": {"metadata": {"labels": {"app": name}},
                                                                  "spec": {"containers": [
                                                                      {"name": "app", "image": "busybox:1.36"}]}}}}


def make_job(name: str, namespace: str = "default", cronjob: str | None = None) -> Obj:
    owner = owner_ref("batch/v1", "CronJob", cronjob) if cronjob else None
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _workload_meta(name, namespace, owner),
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "job", "image": "busybox:1.36"}]}}}}


def wait_until(cond: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll cond() until it is true or the timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())

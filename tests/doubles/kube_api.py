#!/usr/bin/env python3
"""A Kubernetes API double that the real `kubernetes` Python client talks to (stdlib + PyYAML only).

It serves, over plain HTTP on loopback (the client accepts `http://` server URLs):

    GET  /version
    GET  /api/v1/nodes[/NAME]                         list, get, ?watch=true; DELETE /api/v1/nodes/NAME
    GET  /api/v1/[namespaces/NS/]pods[/NAME]          list, get, watch; labelSelector, fieldSelector
    GET  /apis/apps/v1/[namespaces/NS/]deployments[/NAME]
    GET  /api/v1/[namespaces/NS/]events               fieldSelector involvedObject.name=...
    GET  /api/v1/namespaces[/NAME], POST /api/v1/namespaces
    GET/POST/PUT /api/v1/namespaces/NS/secrets[/NAME]
    GET/POST/PUT /api/v1/namespaces/NS/configmaps[/NAME]
    GET  /api/v1/namespaces/NS/pods/NAME/log          text/plain; ?container= (required when the pod has
                                                       more than one, as the real API answers 400),
                                                       ?tailLines=N; from the pod's `logs: {container: text}`

Watches stream `{"type": ..., "object": ...}` lines (chunked) from a resourceVersion, honour
`timeoutSeconds`, and answer a too-old resourceVersion with an ERROR 410 event, like the real server.

A scenario (YAML/JSON file or dict) describes objects whose state changes with time:

    nodes:       [{name: node1, ready_after: 3}]           # ready_after: null = never Ready
    deployments: [{namespace: kube-system, name: coredns, available_after: 1}]
    configmaps:  [{namespace: azure-arc, name: azure-clusterconfig, data: {AZURE_RESOURCE_NAME: x}}]
    pods:        [{namespace: azure-arc, name: config-agent-1, labels: {app: x}, ready_after: 2}
                  {namespace: azure-arc, name: cluster-metadata, fail: {reason: CrashLoopBackOff,
                   message: "back-off restarting", after: 0.5},
                   events: [{reason: BackOff, message: "x509: certificate signed by unknown authority"}],
                   containers: [manager], logs: {manager: "E0101 ... error: x509: ..."}}]
    faults:      [{path: "^/api/v1/nodes", status: 500, count: 2},     # the first 2 matching requests
                  {path: "watch=true", drop_after: 0.2, count: 1},     # close a watch stream early
                  {path: "^/apis/apps", delay: 0.5}]                    # slow responses
    token: "..."                                                       # require this bearer token

Times count from when the object was added, or from `since` (a `time.monotonic()` reading of this machine,
top-level in the scenario) when that is earlier: the systemctl double passes the moment it was exec'd, the
moment real systemd would have started K3s, so its own interpreter start is not counted as K3s's.
Objects and faults can be added while the server runs through `POST /_double/objects` and
`POST /_double/faults` (same shape as the scenario); the request log is at `GET /_double/requests`.
`python3 kube_api.py --port 0 --scenario FILE --kubeconfig PATH` runs it standalone (prints the URL,
stops on SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import base64
import copy
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

JSON = dict[str, Any]
TICK = 0.02
HISTORY_LIMIT = 5000
VERSION: JSON = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.6+k3s1",
    "gitCommit": "1829eaae5250b9e3ed1c1bf2d2e5c4dc1e8d9a34",
    "gitTreeState": "clean",
    "buildDate": "2024-10-22T00:00:00Z",
    "goVersion": "go1.22.8",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Obj:
    """One stored object: kind, identity, the scenario spec and when it was added."""

    kind: str
    namespace: str
    name: str
    spec: JSON
    added: float
    rv: int = 0
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=_now_iso)
    last: str = ""  # JSON of the last rendered state, to detect time-driven changes

    def elapsed(self) -> float:
        return time.monotonic() - self.added


def _after(spec: JSON, key: str, elapsed: float) -> bool:
    value = spec.get(key, 0)
    return value is not None and elapsed >= float(value)


def _meta(obj: Obj) -> JSON:
    meta: JSON = {
        "name": obj.name,
        "uid": obj.uid,
        "resourceVersion": str(obj.rv),
        "creationTimestamp": obj.created,
        "labels": dict(obj.spec.get("labels") or {}),
    }
    if obj.namespace:
        meta["namespace"] = obj.namespace
    return meta


def render(obj: Obj) -> JSON:
    """The object as the API returns it, at this moment of its scenario."""
    t = obj.elapsed()
    if obj.kind == "Node":
        return _render_node(obj, t)
    if obj.kind == "Pod":
        return _render_pod(obj, t)
    if obj.kind == "Deployment":
        return _render_deployment(obj, t)
    if obj.kind == "Event":
        return _render_event(obj)
    if obj.kind == "Namespace":
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": _meta(obj),
            "status": {"phase": "Active"},
        }
    if obj.kind == "Secret":
        body = {k: v for k, v in obj.spec.items() if k in ("data", "type")}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(obj), **body}
    if obj.kind == "ConfigMap":
        data = {k: str(v) for k, v in (obj.spec.get("data") or {}).items()}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(obj), "data": data}
    raise ValueError(obj.kind)


def _render_node(obj: Obj, t: float) -> JSON:
    ready = _after(obj.spec, "ready_after", t)
    cond = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else obj.spec.get("reason", "KubeletNotReady"),
        "message": "kubelet is posting ready status"
        if ready
        else obj.spec.get("message", "container runtime network not ready"),
        "lastHeartbeatTime": obj.created,
        "lastTransitionTime": obj.created,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _meta(obj),
        "spec": {"podCIDR": "10.42.0.0/24"},
        "status": {"conditions": [cond]},
    }


def _render_pod(obj: Obj, t: float) -> JSON:
    spec = obj.spec
    names = spec.get("containers") or [obj.name.rsplit("-", 1)[0] or "main"]
    fail: JSON = spec.get("fail") or {}
    failing = bool(fail) and _after(fail, "after", t)
    ready = not fail and _after(spec, "ready_after", t)
    statuses = []
    for cname in names:
        image = f"mcr.microsoft.com/double/{cname}:1.0"
        status: JSON = {"name": cname, "image": image, "imageID": "", "ready": ready, "restartCount": 0}
        if ready:
            status["state"] = {"running": {"startedAt": obj.created}}
            status["started"] = True
        elif failing:
            reason = fail["reason"]
            status["state"] = {"waiting": {"reason": reason, "message": fail.get("message", "")}}
            if reason == "CrashLoopBackOff":
                status["restartCount"] = 1 + int(t)
                status["lastState"] = {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": fail.get("message", ""),
                        "startedAt": obj.created,
                        "finishedAt": obj.created,
                    }
                }
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        statuses.append(status)
    cond_ready = "True" if ready else "False"
    conditions = [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": cond_ready},
        {"type": "Ready", "status": cond_ready},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(obj),
        "spec": {"containers": [{"name": n, "image": f"mcr.microsoft.com/double/{n}:1.0"} for n in names]},
        "status": {
            "phase": "Running" if ready or failing else "Pending",
            "conditions": conditions,
            "containerStatuses": statuses,
        },
    }


def _render_deployment(obj: Obj, t: float) -> JSON:
    replicas = int(obj.spec.get("replicas", 1))
    available = _after(obj.spec, "available_after", t)
    labels = obj.spec.get("labels") or {"k8s-app": obj.name}
    status: JSON = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
            }
        ],
    }
    if available:
        status.update(readyReplicas=replicas, availableReplicas=replicas)
    else:
        status["unavailableReplicas"] = replicas
    meta = _meta(obj)
    meta["generation"] = 1
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": obj.name}]}},
        },
        "status": status,
    }


def _render_event(obj: Obj) -> JSON:
    spec = obj.spec
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": _meta(obj),
        "involvedObject": {
            "kind": spec.get("kind", "Pod"),
            "name": spec["object"],
            "namespace": obj.namespace,
        },
        "reason": spec.get("reason", ""),
        "message": spec.get("message", ""),
        "type": spec.get("type", "Warning"),
        "count": 1,
        "firstTimestamp": obj.created,
        "lastTimestamp": obj.created,
    }


def _lookup(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _selector_terms(text: str) -> list[tuple[str, str, str | None]]:
    terms: list[tuple[str, str, str | None]] = []
    for raw in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", raw)
        if match:
            terms.append((match[1], "!=" if match[2] == "!=" else "=", match[3]))
        elif raw.startswith("!"):
            terms.append((raw[1:], "absent", None))
        else:
            terms.append((raw, "exists", None))
    return terms


def matches(doc: JSON, label_selector: str, field_selector: str) -> bool:
    """Whether `doc` matches a labelSelector and a fieldSelector (equality, inequality, existence)."""
    labels = doc["metadata"].get("labels") or {}
    for key, op, value in _selector_terms(label_selector):
        if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value):
            return False
        if (op == "exists" and key not in labels) or (op == "absent" and key in labels):
            return False
    for key, op, value in _selector_terms(field_selector):
        actual = _lookup(doc, key)
        actual = "" if actual is None else str(actual)
        if (op == "=" and actual != value) or (op == "!=" and actual == value):
            return False
    return True


@dataclass
class Fault:
    """An injected fault for requests whose path+query matches `path` (a regex)."""

    path: str
    method: str | None = None
    status: int | None = None
    delay: float = 0.0
    drop_after: float | None = None
    count: int | None = None  # None: every matching request

    def take(self) -> bool:
        if self.count is None:
            return True
        if self.count <= 0:
            return False
        self.count -= 1
        return True


class Store:
    """Objects, the event history that watches replay, and injected faults. Thread-safe."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: list[tuple[int, str, str, JSON]] = []  # (rv, type, kind, object)
        self.rv = itertools.count(100)
        self.current_rv = 99
        self.faults: list[Fault] = []
        self.requests: list[JSON] = []
        self.token: str | None = None

    # -- mutation -------------------------------------------------------------------------------------
    def _record(self, obj: Obj, etype: str) -> None:
        obj.rv = next(self.rv)
        self.current_rv = obj.rv
        doc = render(obj)
        obj.last = json.dumps(doc.get("status"), sort_keys=True)
        self.history.append((obj.rv, etype, obj.kind, doc))
        del self.history[:-HISTORY_LIMIT]
        self.cond.notify_all()

    def put(self, kind: str, namespace: str, name: str, spec: JSON, since: float | None = None) -> Obj:
        """Add or replace an object (ADDED or MODIFIED event); its times count from `since` if earlier."""
        with self.cond:
            key = (kind, namespace, name)
            if namespace and kind != "Namespace" and ("Namespace", "", namespace) not in self.objects:
                self._record(self._new("Namespace", "", namespace, {}), "ADDED")
            old = self.objects.get(key)
            obj = self._new(kind, namespace, name, spec)
            if since is not None:
                obj.added = min(obj.added, since)
            if old is not None:
                obj.uid, obj.created = old.uid, old.created
            self.objects[key] = obj
            self._record(obj, "MODIFIED" if old else "ADDED")
            return obj

    def delete(self, kind: str, namespace: str, name: str) -> JSON | None:
        """Remove an object (DELETED event); its last rendering, None when there was none."""
        with self.cond:
            obj = self.objects.pop((kind, namespace, name), None)
            if obj is None:
                return None
            self._record(obj, "DELETED")
            return render(obj)

    @staticmethod
    def _new(kind: str, namespace: str, name: str, spec: JSON) -> Obj:
        return Obj(kind, namespace, name, copy.deepcopy(spec), time.monotonic())

    def load(self, scenario: JSON) -> None:
        """Add the objects and faults of a scenario (see the module docstring)."""
        since = scenario.get("since")
        for spec in scenario.get("nodes") or []:
            self.put("Node", "", spec["name"], spec, since)
        for spec in scenario.get("deployments") or []:
            self.put("Deployment", spec.get("namespace", "default"), spec["name"], spec, since)
        for spec in scenario.get("pods") or []:
            ns = spec.get("namespace", "default")
            self.put("Pod", ns, spec["name"], spec, since)
            for i, event in enumerate(spec.get("events") or []):
                self.put("Event", ns, f"{spec['name']}.{i}", {**event, "object": spec["name"]})
        for spec in scenario.get("events") or []:
            ns = spec.get("namespace", "default")
            self.put("Event", ns, spec.get("name") or f"{spec['object']}.{uuid.uuid4().hex[:8]}", spec)
        for ns in scenario.get("namespaces") or []:
            self.put("Namespace", "", ns, {})
        for spec in scenario.get("configmaps") or []:
            self.put("ConfigMap", spec.get("namespace", "default"), spec["name"], spec)
        with self.cond:
            for fault in scenario.get("faults") or []:
                self.faults.append(Fault(**fault))
            if "token" in scenario:
                self.token = scenario["token"]

    def tick(self) -> None:
        """Emit MODIFIED for every object whose time-driven state changed."""
        with self.cond:
            for obj in list(self.objects.values()):
                if obj.kind in ("Node", "Pod", "Deployment"):
                    status = json.dumps(render(obj).get("status"), sort_keys=True)
                    if status != obj.last:
                        self._record(obj, "MODIFIED")

    # -- queries --------------------------------------------------------------------------------------
    def select(self, kind: str, namespace: str | None, label: str, fields: str) -> list[JSON]:
        with self.cond:
            docs = [
                render(o)
                for o in self.objects.values()
                if o.kind == kind and (namespace is None or o.namespace == namespace)
            ]
        return [d for d in docs if matches(d, label, fields)]

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        with self.cond:
            obj = self.objects.get((kind, namespace, name))
            return render(obj) if obj else None

    def fault_for(self, method: str, target: str) -> Fault | None:
        with self.cond:
            for fault in self.faults:
                if (fault.method in (None, method)) and re.search(fault.path, target) and fault.take():
                    return fault
        return None


ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/api/v1/nodes(?:/(?P<name>[^/]+))?$"), "Node"),
    (re.compile(r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?pods(?:/(?P<name>[^/]+))?$"), "Pod"),
    (
        re.compile(r"^/apis/apps/v1/(?:namespaces/(?P<ns>[^/]+)/)?deployments(?:/(?P<name>[^/]+))?$"),
        "Deployment",
    ),
    (re.compile(r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?events(?:/(?P<name>[^/]+))?$"), "Event"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?$"), "Secret"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps(?:/(?P<name>[^/]+))?$"), "ConfigMap"),
    (re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?$"), "Namespace"),
]
LIST_KIND = {"Node": "NodeList", "Pod": "PodList", "Deployment": "DeploymentList", "Event": "EventList"}


LOG_ROUTE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")


def status_doc(code: int, reason: str, message: str) -> JSON:
    """A `metav1.Status` failure body."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    """One request; `server.store` holds the state."""

    protocol_version = "HTTP/1.1"
    # K3s's API server is Go, whose TCP connections have no Nagle delay (net.TCPConn.SetNoDelay: "The
    # default is true"). Headers and body are separate writes here: with Nagle on, an answer can wait for
    # the client's delayed ACK (40 ms), a stall real K3s never has.
    disable_nagle_algorithm = True
    server: KubeServer

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the request log is kept in the store instead.
        return

    # -- plumbing -------------------------------------------------------------------------------------
    def _send(self, code: int, body: JSON) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> JSON:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        doc = json.loads(raw or b"{}")
        return doc if isinstance(doc, dict) else {}

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        store = self.server.store
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/") or "/"
        with store.cond:
            store.requests.append({"method": method, "path": path, "query": query, "time": time.time()})
        try:
            if path.startswith("/_double/"):
                self._admin(method, path)
                return
            if store.token and self.headers.get("Authorization") != f"Bearer {store.token}":
                self._send(401, status_doc(401, "Unauthorized", "Unauthorized"))
                return
            fault = store.fault_for(method, self.path)
            if fault and fault.delay:
                time.sleep(fault.delay)
            if fault and fault.status:
                self._send(fault.status, status_doc(fault.status, "InternalError", "injected fault"))
                return
            self._api(method, path, query, fault)
        except (BrokenPipeError, ConnectionResetError):
            return

    # -- admin ----------------------------------------------------------------------------------------
    def _admin(self, method: str, path: str) -> None:
        store = self.server.store
        if method == "POST" and path in ("/_double/objects", "/_double/faults"):
            store.load(self._body())
            self._send(200, {"ok": True})
        elif method == "GET" and path == "/_double/requests":
            with store.cond:
                self._send(200, {"requests": list(store.requests)})
        elif method == "GET" and path == "/_double/objects":
            with store.cond:
                docs = [render(o) for o in store.objects.values()]
            self._send(200, {"items": docs})
        else:
            self._send(404, status_doc(404, "NotFound", f"no admin route {method} {path}"))

    # -- API ------------------------------------------------------------------------------------------
    def _api(self, method: str, path: str, query: dict[str, str], fault: Fault | None) -> None:
        store = self.server.store
        if path == "/version":
            self._send(200, VERSION)
            return
        log = LOG_ROUTE.match(path)
        if log is not None and method == "GET":
            self._pod_log(log["ns"], log["name"], query)
            return
        for pattern, kind in ROUTES:  # noqa: B007 - `kind` is used after the loop
            match = pattern.match(path)
            if match:
                break
        else:
            self._send(404, status_doc(404, "NotFound", f"the server could not find {path}"))
            return
        ns = match.groupdict().get("ns")
        name = match.groupdict().get("name")
        if method in ("POST", "PUT"):
            self._write(method, kind, ns or "", name)
            return
        if method == "DELETE":
            gone = store.delete(kind, ns or "", name) if name is not None and kind == "Node" else None
            if gone is None:
                self._send(404, status_doc(404, "NotFound", f'{kind.lower()}s "{name}" not found'))
            else:
                # The real API answers a delete with the object or a Status; the client reads a V1Status.
                details = {"name": name, "kind": "nodes", "uid": gone["metadata"].get("uid")}
                self._send(200, {**status_doc(200, "", ""), "status": "Success", "details": details})
            return
        if name is not None:
            doc = store.get(kind, ns or "", name)
            if doc is None:
                plural = kind.lower() + "s"
                self._send(404, status_doc(404, "NotFound", f'{plural} "{name}" not found'))
            else:
                self._send(200, doc)
            return
        label, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        if query.get("watch") in ("true", "1"):
            self._watch(kind, ns, label, fields, query, fault)
            return
        with store.cond:
            items = store.select(kind, ns, label, fields)
            rv = store.current_rv
        api_version = "apps/v1" if kind == "Deployment" else "v1"
        self._send(
            200,
            {
                "apiVersion": api_version,
                "kind": LIST_KIND.get(kind, kind + "List"),
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _pod_log(self, ns: str, name: str, query: dict[str, str]) -> None:
        """The real API's rules (pkg/registry/core/pod/strategy.go LogLocation): 404 for an unknown pod,
        400 when the pod has several containers and none is named, or the named one is not in the pod."""
        store = self.server.store
        pod = store.get("Pod", ns, name)
        if pod is None:
            self._send(404, status_doc(404, "NotFound", f'pods "{name}" not found'))
            return
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container")
        if not container and len(names) > 1:
            message = f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
            self._send(400, status_doc(400, "BadRequest", message))
            return
        container = container or names[0]
        if container not in names:
            message = f"container {container} is not valid for pod {name}"
            self._send(400, status_doc(400, "BadRequest", message))
            return
        with store.cond:
            obj = store.objects.get(("Pod", ns, name))
            logs = (obj.spec.get("logs") or {}) if obj is not None else {}
        lines = str(logs.get(container, "")).splitlines(keepends=True)
        tail = query.get("tailLines")
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) > 0 else []
        body = "".join(lines).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _write(self, method: str, kind: str, ns: str, name: str | None) -> None:
        store = self.server.store
        body = self._body()
        meta = body.get("metadata") or {}
        name = name or meta.get("name")
        if not name:
            self._send(422, status_doc(422, "Invalid", "metadata.name: Required value"))
            return
        if kind not in ("Secret", "ConfigMap", "Namespace"):
            self._send(405, status_doc(405, "MethodNotAllowed", f"the double does not write {kind}"))
            return
        exists = store.get(kind, ns, name) is not None
        if method == "POST" and exists:
            self._send(409, status_doc(409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists'))
            return
        if method == "PUT" and not exists:
            self._send(404, status_doc(404, "NotFound", f'{kind.lower()}s "{name}" not found'))
            return
        spec: JSON = {"labels": meta.get("labels") or {}}
        if kind == "Secret":
            data = dict(body.get("data") or {})
            for key, value in (body.get("stringData") or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            spec.update(data=data, type=body.get("type", "Opaque"))
        if kind == "ConfigMap":
            spec["data"] = dict(body.get("data") or {})
        obj = store.put(kind, ns if kind != "Namespace" else "", name, spec)
        with store.cond:
            doc = render(obj)
        self._send(201 if method == "POST" else 200, doc)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(
        self, kind: str, ns: str | None, label: str, fields: str, query: dict[str, str], fault: Fault | None
    ) -> None:
        timeout = float(query.get("timeoutSeconds") or 1800)
        end = time.monotonic() + timeout
        if fault and fault.drop_after is not None:
            end = min(end, time.monotonic() + fault.drop_after)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in self._events(kind, ns, label, fields, query.get("resourceVersion", ""), end):
            self._chunk(line)
            if self.server.stopping.is_set():
                break
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    def _events(
        self, kind: str, ns: str | None, label: str, fields: str, rv_text: str, end: float
    ) -> Iterator[bytes]:
        store = self.server.store
        gone: JSON | None = None
        with store.cond:
            if rv_text in ("", "0"):
                since = store.current_rv
                initial = store.select(kind, ns, label, fields)
            else:
                since = int(rv_text)
                initial = []
                oldest = store.history[0][0] if store.history else 0
                if since < oldest - 1:
                    gone = status_doc(410, "Expired", f"too old resource version: {since} ({oldest})")
        if gone is not None:
            yield json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
            return
        for doc in initial:
            yield json.dumps({"type": "ADDED", "object": doc}).encode() + b"\n"
        while not self.server.stopping.is_set():
            with store.cond:
                pending = [
                    (rv, etype, doc)
                    for rv, etype, k, doc in store.history
                    if rv > since
                    and k == kind
                    and (ns is None or doc["metadata"].get("namespace") == ns)
                    and matches(doc, label, fields)
                ]
                if store.history:
                    since = max(since, store.history[-1][0])
                if not pending:
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                    store.cond.wait(min(left, 0.5))
                    continue
            for _rv, etype, doc in pending:
                yield json.dumps({"type": etype, "object": doc}).encode() + b"\n"
            if time.monotonic() >= end:
                return


class KubeServer(ThreadingHTTPServer):
    """The double's HTTP server; `start()` runs it and the time ticker in daemon threads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, scenario: JSON | None = None) -> None:
        super().__init__((host, port), Handler)
        self.store = Store()
        self.stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        if scenario:
            self.store.load(scenario)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> KubeServer:
        """Serve in the background; returns self."""
        serve = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        ticker = threading.Thread(target=self._tick, daemon=True)
        self._workers = [serve, ticker]
        for thread in self._workers:
            thread.start()
        return self

    def _tick(self) -> None:
        while not self.stopping.wait(TICK):
            self.store.tick()

    def stop(self) -> None:
        """Stop serving, end open watches, close the socket."""
        self.stopping.set()
        with self.store.cond:
            self.store.cond.notify_all()
        self.shutdown()
        self.server_close()
        for thread in self._workers:
            thread.join(timeout=2)

    def write_kubeconfig(self, path: Path, mode: int = 0o600, token: str | None = None) -> Path:
        """Write a kubeconfig shaped like k3s's `/etc/rancher/k3s/k3s.yaml` that points at this server."""
        return write_kubeconfig(path, self.url, mode=mode, token=token or self.store.token)


def write_kubeconfig(path: Path, server: str, mode: int = 0o600, token: str | None = None) -> Path:
    """A k3s-shaped kubeconfig (cluster/context/user `default`), with token auth or none."""
    user: JSON = {"token": token} if token else {}
    doc = {
        "apiVersion": "v1",
        "clusters": [{"cluster": {"server": server}, "name": "default"}],
        "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
        "current-context": "default",
        "kind": "Config",
        "preferences": {},
        "users": [{"name": "default", "user": user}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.chmod(tmp, mode)
    tmp.replace(path)
    return path


def load_scenario(path: Path) -> JSON:
    """Read a scenario file (YAML or JSON)."""
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise SystemExit(f"{path}: a scenario must be a mapping")
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run the double standalone until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scenario", type=Path)
    parser.add_argument("--kubeconfig", type=Path, help="write a k3s-shaped kubeconfig here")
    parser.add_argument("--kubeconfig-mode", default="600", help="octal mode of the kubeconfig")
    parser.add_argument("--url-file", type=Path, help="write the server URL here once listening")
    args = parser.parse_args(argv)
    scenario = load_scenario(args.scenario) if args.scenario else {}
    server = KubeServer(args.host, args.port, scenario).start()
    if args.kubeconfig:
        server.write_kubeconfig(args.kubeconfig, mode=int(args.kubeconfig_mode, 8))
    if args.url_file:
        args.url_file.write_text(server.url + "\n")
    print(server.url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

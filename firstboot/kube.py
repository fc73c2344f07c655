"""The Kubernetes side of the k3s, arc and flux steps, through the `kubernetes` client.

- `client_from(path)`: an ApiClient from a kubeconfig (k3s writes `/etc/rancher/k3s/k3s.yaml`).
- `wait_until(...)`: list, then follow a watch from the list's resourceVersion until a predicate holds
  over the objects seen, or a deadline passes. Never a sleep loop: a dropped or expired watch is
  re-listed; API errors and refused connections (k3s still starting) are retried until the deadline.
- `node_ready`, `deployment_available`, `pod_ready`: the predicates; `diagnose_pods`: why pods are not
  Ready, from their container statuses and events, with certificate and DNS failures named as such.
- `wait_pods(ctx, namespace, ...)`: the arc and flux steps' wait for a namespace's pods, failing transiently
  with that diagnosis (here, not in a step: a step never imports another step).
"""

from __future__ import annotations

import gc
import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from firstboot.step import Context, TransientFailure


class LazyModule:
    """A module imported on first attribute access.

    The `kubernetes` package takes a good part of a second to import (its generated API classes seconds
    more): loading the step modules must not pay it on every `firstboot run`, `status` or `doctor`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


if TYPE_CHECKING:
    from kubernetes import client as client
else:
    client = LazyModule("kubernetes.client")


def api_errors() -> tuple[type[BaseException], ...]:
    """What a Kubernetes API call raises when the server is down, refuses or errs (for `except`)."""
    # urllib3 (with requests) loads with the client, after K3s was started, not when the step imports.
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError, KubeUnavailable)


LOG = logging.getLogger(__name__)

KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
# Longest single watch request: bounds how late a cancelled step notices it.
WATCH_CHUNK_SECONDS = 5.0
ERROR_BACKOFF_SECONDS = 0.5

CERT_PATTERN = re.compile(
    r"x509|certificate|tls: failed to verify|unknown authority|tls: handshake|SSL", re.IGNORECASE
)
DNS_PATTERN = re.compile(
    r"no such host|dial tcp: lookup|server misbehaving|name resolution|could not resolve|"
    r"Temporary failure in name|NXDOMAIN|lookup .* on .*:53",
    re.IGNORECASE,
)


_PREWARM_LOCK = threading.Lock()
_prewarm_thread: threading.Thread | None = None


def _import_apis() -> None:
    # Attribute access imports the (large, generated) API modules: ~2-3 s of CPU on first use.
    for name in ("CoreV1Api", "AppsV1Api"):
        getattr(client, name)
    # Those modules live as long as the process: move them out of the collector's sight, or every full
    # collection (and the one at exit, ~0.8 s) walks their hundreds of thousands of objects.
    gc.freeze()


def shared_http_stack() -> None:
    """Import requests (and with it urllib3, idna, charset_normalizer, certifi) in the calling thread.

    Both the kubernetes client and the Azure SDK import it; two threads importing it at once can meet a
    partially initialised `requests.utils` (its modules import each other) and fail with ImportError. Each
    prewarm imports it first, in the step's own thread, before its background thread starts.
    """
    import requests  # noqa: F401 - imported for its side effect (module cache)


def prewarm() -> None:
    """Import the client's API classes in a background thread (once per process).

    Steps call this before they start waiting on something slow (K3s starting, `az connectedk8s connect`),
    so the seconds the generated client takes to import overlap that wait instead of adding to it.
    """
    global _prewarm_thread
    with _PREWARM_LOCK:
        if _prewarm_thread is None:
            shared_http_stack()
            _prewarm_thread = threading.Thread(target=_import_apis, name="kube-prewarm", daemon=True)
            _prewarm_thread.start()


class KubeUnavailable(Exception):
    """The kubeconfig cannot be read or names no usable cluster."""


def client_from(path: Path) -> client.ApiClient:
    """An ApiClient built from the kubeconfig at `path` (a fresh Configuration; no global state)."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        api: client.ApiClient = config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
        return api
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        raise KubeUnavailable(f"cannot load kubeconfig {path}: {exc}") from None


# -- predicates ---------------------------------------------------------------------------------------------
def _condition(obj: Any, kind: str) -> Any:
    for cond in (obj.status.conditions if obj.status else None) or []:
        if cond.type == kind:
            return cond
    return None


def node_ready(node: Any) -> bool:
    """The node's Ready condition is True."""
    cond = _condition(node, "Ready")
    return cond is not None and cond.status == "True"


def deployment_available(dep: Any) -> bool:
    """At least one replica available and the Available condition True."""
    status = dep.status
    cond = _condition(dep, "Available")
    return bool(status and (status.available_replicas or 0) >= 1) and (cond is None or cond.status == "True")


def pod_ready(pod: Any) -> bool:
    """Ready, or finished successfully (a completed job pod is not a problem)."""
    if pod.status and pod.status.phase == "Succeeded":
        return True
    cond = _condition(pod, "Ready")
    return cond is not None and cond.status == "True"


# -- waiting ------------------------------------------------------------------------------------------------
@dataclass
class WaitResult:
    """How a wait ended: `ok`, the objects last seen (by name), and the last API error when there was one."""

    ok: bool
    objects: dict[str, Any]
    error: str | None = None


def _key(obj: Any) -> str:
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else str(meta.name)


def wait_until(
    list_call: Callable[..., Any],
    done: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    args: tuple[Any, ...] = (),
    **list_kwargs: Any,
) -> WaitResult:
    """Watch the objects `list_call(**list_kwargs)` returns until `done(objects)` or `timeout` seconds.

    `list_call` is a typed list function of the client (`CoreV1Api.list_node`, ...; not a lambda: the
    watch finds the type to deserialize from its docstring), called with `args` (the namespace) and
    `list_kwargs` (selectors). `on_change` sees the objects after each event (progress lines).
    """
    import urllib3.exceptions
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    cancel = cancel or threading.Event()
    deadline = time.monotonic() + timeout
    objects: dict[str, Any] = {}
    error: str | None = None
    while not cancel.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            listing = list_call(*args, _request_timeout=max(1.0, min(remaining, 30.0)), **list_kwargs)
            objects = {_key(o): o for o in listing.items or []}
            error = None
            if done(objects):
                return WaitResult(True, objects)
            if on_change:
                on_change(objects)
            chunk = max(1, int(min(remaining, WATCH_CHUNK_SECONDS)))
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            for event in stream.stream(  # type: ignore[no-untyped-call]
                list_call,
                *args,
                resource_version=listing.metadata.resource_version,
                timeout_seconds=chunk,
                _request_timeout=chunk + 5,
                **list_kwargs,
            ):
                obj = event["object"]
                if event["type"] == "DELETED":
                    objects.pop(_key(obj), None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    objects[_key(obj)] = obj
                if done(objects):
                    stream.stop()  # type: ignore[no-untyped-call]
                    return WaitResult(True, objects)
                if on_change:
                    on_change(objects)
                if cancel.is_set() or time.monotonic() >= deadline:
                    stream.stop()  # type: ignore[no-untyped-call]
                    break
        except ApiException as exc:
            error = f"API error {exc.status}: {exc.reason}"
            LOG.debug("waiting: %s", error)
            cancel.wait(min(ERROR_BACKOFF_SECONDS, max(0.0, deadline - time.monotonic())))
        except urllib3.exceptions.ReadTimeoutError:
            # A watch that saw nothing for its whole chunk: list again.
            continue
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            error = f"cannot reach the API server: {exc}"
            LOG.debug("waiting: %s", error)
            cancel.wait(min(ERROR_BACKOFF_SECONDS, max(0.0, deadline - time.monotonic())))
    return WaitResult(False, objects, error)


# -- diagnosis ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodProblem:
    """Why one pod is not Ready."""

    pod: str
    reason: str
    detail: str
    category: str  # certificate, dns, image, crash, pending

    def line(self) -> str:
        """`ns/pod: Reason (category failure: detail)`."""
        what = {
            "certificate": "certificate failure",
            "dns": "DNS failure",
            "image": "image pull failure",
            "crash": "crashing",
        }.get(self.category, "not ready")
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.pod}: {self.reason} ({what}{detail})"


def classify(text: str, reason: str = "") -> str:
    """certificate / dns / image / crash / pending, from a status reason and its messages."""
    if CERT_PATTERN.search(text):
        return "certificate"
    if DNS_PATTERN.search(text):
        return "dns"
    if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        return "image"
    if reason in ("CrashLoopBackOff", "Error", "RunContainerError", "CreateContainerError"):
        return "crash"
    return "pending"


def _container_texts(pod: Any) -> tuple[str, list[str]]:
    reason = ""
    texts: list[str] = []
    statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
    for cs in statuses:
        if cs.ready:
            continue
        waiting = cs.state.waiting if cs.state else None
        terminated = cs.state.terminated if cs.state else None
        last = cs.last_state.terminated if cs.last_state else None
        for part in (waiting, terminated):
            if part is not None:
                reason = reason or (part.reason or "")
                if part.message:
                    texts.append(part.message)
        if last is not None and last.message:
            texts.append(last.message)
    return reason, texts


def diagnose_pods(
    core: client.CoreV1Api, namespace: str, pods: Iterable[Any], limit_events: int = 20
) -> list[PodProblem]:
    """A PodProblem for every pod that is not Ready, with the reasons from its status and events."""
    problems = []
    for pod in pods:
        if pod_ready(pod):
            continue
        name = pod.metadata.name
        reason, texts = _container_texts(pod) if pod.status else ("", [])
        try:
            events = core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.name={name}",
                limit=limit_events,
                _request_timeout=10,
            ).items
        except api_errors() as exc:
            LOG.debug("events of %s: %s", name, exc)
            events = []
        texts += [e.message for e in events if e.message and e.type != "Normal"]
        reason = reason or (pod.status.phase if pod.status and pod.status.phase else "NotReady")
        joined = " | ".join(dict.fromkeys(texts))
        category = classify(joined, reason)
        # The most telling message first: the one that names the category.
        pattern = {"certificate": CERT_PATTERN, "dns": DNS_PATTERN}.get(category)
        best = next((t for t in texts if pattern and pattern.search(t)), texts[0] if texts else "")
        problems.append(PodProblem(f"{namespace}/{name}", reason, best[:300], category))
    return problems


def recent_log(core: Any, namespace: str, pod: str, container: str, lines: int, timeout: int = 10) -> str:
    """The last `lines` lines of one container's log (doctor's agent errors, the support bundle)."""
    text = core.read_namespaced_pod_log(
        pod, namespace, container=container, tail_lines=lines, _request_timeout=timeout
    )
    return str(text)


REMEDIES = {
    "certificate": (
        "a certificate is rejected: if a TLS-intercepting proxy is in the path, put its CA in "
        "proxy.ca_bundle_pem (and `--proxy-cert`); check the clock (`firstboot doctor`, time link)"
    ),
    "dns": (
        "pods cannot resolve Azure names: check /etc/rancher/k3s/resolv.conf and dns.pod_upstream_servers, "
        "then `kubectl -n kube-system rollout restart deploy/coredns`"
    ),
    "image": "images cannot be pulled from mcr.microsoft.com: check the proxy and firewall "
    "(connectivity link)",
    "crash": "read the pod logs: `kubectl -n {ns} logs {pod} --previous`",
    "pending": "look at `kubectl -n {ns} describe pod {pod}` for scheduling or volume problems",
}


def remedy_for(problems: list[PodProblem]) -> str:
    """One remedy for the most significant category among `problems`."""
    for category in ("certificate", "dns", "image", "crash", "pending"):
        hit = next((p for p in problems if p.category == category), None)
        if hit is not None:
            ns, _, pod = hit.pod.partition("/")
            return REMEDIES[category].format(ns=ns, pod=pod)
    return "check the pods with `kubectl get pods -A`"


def wait_pods(ctx: Context, namespace: str, timeout: float, what: str) -> None:
    """Watch `namespace` until it has pods and all are Ready; TransientFailure naming those that are not."""
    try:
        api = client_from(ctx.path(KUBECONFIG))
    except KubeUnavailable as exc:
        raise TransientFailure(str(exc), "check k3s: `firstboot doctor`") from None
    with api:
        core = client.CoreV1Api(api)
        ctx.progress(f"waiting for the {namespace} pods to be Ready")
        result = wait_until(
            core.list_namespaced_pod,
            lambda pods: bool(pods) and all(pod_ready(p) for p in pods.values()),
            timeout=timeout,
            cancel=ctx.cancel,
            args=(namespace,),
        )
        if result.ok:
            return
        if not result.objects:
            detail = result.error or "no pods were created"
            raise TransientFailure(
                f"{what}: no pods in {namespace} ({detail})",
                f"check `kubectl -n {namespace} get deploy,pods` and `kubectl get events -n {namespace}`",
            )
        problems = diagnose_pods(core, namespace, result.objects.values())
    lines = "; ".join(p.line() for p in problems)
    raise TransientFailure(f"{what}: {len(problems)} pod(s) not Ready: {lines}", remedy_for(problems))

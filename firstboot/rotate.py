"""`firstboot rotate`: take a newer generation of secrets that `builder rotate` wrote into guestinfo.

Run by `arcbake-rotate.timer` once onboarding is done (a boot before that is `firstboot run`'s business:
its metadata step takes the newest generation too). Order matters, so a bad set changes nothing:

1. read `guestinfo.arcbake.secrets`; nothing there, or a generation not newer than the one held: done
   (the key is overwritten with `---` either way, as the metadata step does);
2. on the server that onboarded the cluster: sign in to Entra ID with the new service principal material
   (`arm.sign_in`: a Resource Manager token through the Azure SDK, no az process); rejected credentials
   fail here, with the old set in force;
3. replace each Flux configuration's Git credentials Secret in the cluster (kubernetes client);
4. take the set (`secretstore.accept`: 0600, bound to the instance id, the old values overwritten) and
   retire its values again (onboarding is done: only the generation is kept);
5. report: `generation` in status.json and `guestinfo.arcbake.status`.

On servers every run also refreshes `nodes_ready` in the status (the cluster's Ready nodes as this
server's API sees them): `builder rollout` waits there for a replaced agent's node. A server also
deletes the Nodes `builder rollout` names in `guestinfo.arcbake.nodes-delete` (`ID:name,name`; their VMs
are powered off, about to be replaced), then clears the key and reports them in `nodes_deleted` with the
request's id in `nodes_delete_id` (rollout waits for its own id: the status keeps the last report and
refreshes `updated`, so a name alone could confirm an older request). K3s keeps each
node's password in the Secret `<node>.node-password.k3s` and refuses a node that joins under that name
with another password until the Node is deleted (k3s-io/k3s `pkg/nodepassword`), and a replacement is a
new machine with a new password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from firstboot import kube, metadata, proxyenv, secretstore
from firstboot.contract import (
    KEY_NODES_DELETE,
    KEY_SECRETS,
    KEY_STATUS,
    MAX_NODES_REPORTED,
    REDACTED_VALUE,
    NodesDeleteRequest,
    Role,
    State,
    Status,
)
from firstboot.kube import client
from firstboot.sources import SourceError
from firstboot.state import StateStore
from firstboot.step import Context, StepFailure

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RotateResult:
    """What a rotation did; `ok` False means the new set was refused (the old one stays in force)."""

    ok: bool
    generation: int | None
    message: str
    remedy: str | None = None


def _ready_nodes(ctx: Context) -> list[str] | None:
    """Names of the cluster's Ready nodes (None when the API cannot be asked)."""
    errors: tuple[type[BaseException], ...] = (kube.KubeUnavailable, *kube.api_errors())
    try:
        with kube.client_from(ctx.path(kube.KUBECONFIG)) as api:
            nodes = client.CoreV1Api(api).list_node(_request_timeout=15).items
    except errors as exc:
        LOG.warning("cannot list the cluster's nodes: %s", exc)
        return None
    names = [str(n.metadata.name) for n in nodes if n.metadata and n.metadata.name and kube.node_ready(n)]
    return sorted(names)[:MAX_NODES_REPORTED]


def pending_nodes_delete(raw: str | None) -> NodesDeleteRequest | None:
    """The request in the KEY_NODES_DELETE value `raw`; None when there is none (absent, cleared, or
    invalid: ignored with a warning). The tests' guest player, which plays servers, runs this too."""
    if raw is None or raw.strip() in ("", REDACTED_VALUE):
        return None
    try:
        return NodesDeleteRequest.parse(raw)
    except ValueError as exc:
        LOG.warning("%s ignored: %s", KEY_NODES_DELETE, exc)
        return None


def carry_out_nodes_delete(request: NodesDeleteRequest, delete_node: Callable[[str], None]) -> None:
    """Delete the request's Nodes with `delete_node` (absent ones count as deleted); its errors propagate
    (the request is kept for the next run). The guest player passes K3s's node-password double."""
    for name in request.names:
        delete_node(name)
        LOG.info("node %s deleted for its replacement", name)


def nodes_delete_report(request: NodesDeleteRequest) -> dict[str, object]:
    """The Status fields that confirm `request` (rollout waits for its id there)."""
    return {"nodes_deleted": list(request.names), "nodes_delete_id": request.request_id}


def _delete_requested_nodes(ctx: Context) -> NodesDeleteRequest | None:
    """Carry out the pending request on the cluster's API, then clear the key; None when there was no
    request or the API could not delete them all (kept for the next run)."""
    from kubernetes.client.exceptions import ApiException

    try:
        raw = metadata.read_value(ctx.source, KEY_NODES_DELETE)
    except (metadata.MetadataError, SourceError) as exc:
        LOG.warning("cannot read %s: %s", KEY_NODES_DELETE, exc)
        return None
    request = pending_nodes_delete(raw)
    if request is None:
        return None
    errors: tuple[type[BaseException], ...] = (kube.KubeUnavailable, *kube.api_errors())
    try:
        with kube.client_from(ctx.path(kube.KUBECONFIG)) as api:
            core = client.CoreV1Api(api)

            def delete(name: str) -> None:
                try:
                    core.delete_node(name, _request_timeout=15)
                except ApiException as exc:
                    if exc.status != 404:
                        raise

            carry_out_nodes_delete(request, delete)
    except errors as exc:
        LOG.warning("cannot delete nodes %s: %s", ", ".join(request.names), exc)
        return None
    try:
        ctx.source.set(KEY_NODES_DELETE, REDACTED_VALUE)
    except (OSError, SourceError) as exc:
        LOG.warning(
            "cannot clear %s (tolerated: deleting again is harmless before the join): %s",
            KEY_NODES_DELETE,
            exc,
        )
    return request


def _apply(ctx: Context) -> None:
    """Steps 2 and 3 for the new set in `ctx.secrets` (StepFailure when it is refused)."""
    from firstboot import arm
    from firstboot.steps import flux

    config = ctx.require_config()
    if not config.onboards_cluster or config.arc is None:
        return
    # Rejected material (AADSTS...) fails here, before anything is replaced.
    arm.sign_in(ctx)
    secrets = ctx.secrets
    for cfg in config.flux.configurations:
        cred = secrets.git.get(cfg.name) if secrets is not None else None
        if cred is not None:
            flux.write_git_secret(ctx, cfg, cred)
            LOG.info("rotate: Git credentials of Flux configuration %s replaced", cfg.name)


def rotate(ctx: Context) -> RotateResult:
    """Take a newer generation of secrets, if there is one (see the module doc)."""
    store = StateStore(ctx.root)
    config = metadata.load_config(ctx.source)
    ctx.config = config
    ctx.env = {**ctx.env, **proxyenv.proxy_environment(config.proxy, config.k3s)}
    ctx.instance_id = ctx.instance_id or metadata.instance_id(ctx.source, ctx.root)
    held = secretstore.read(ctx.root, ctx.instance_id)
    held_generation = held.secrets.generation if held else None
    # Without persisting: the newer of the held set and the one in guestinfo (nothing is written yet).
    newest = metadata.load_secrets(ctx.source, ctx.root, ctx.instance_id, persist=False)
    newer = held is None or newest.generation > (held_generation or 0)
    incoming = newest if newer and metadata.read_value(ctx.source, KEY_SECRETS) is not None else None
    result: RotateResult
    if incoming is None:
        # The same or an older generation (a replay): overwritten with `---` as the metadata step does.
        metadata.load_secrets(ctx.source, ctx.root, ctx.instance_id, persist=True)
        result = RotateResult(True, held_generation, f"no newer secrets (generation {held_generation} held)")
    else:
        ctx.secrets = incoming
        try:
            _apply(ctx)
        except StepFailure as exc:
            result = RotateResult(
                False,
                held_generation,
                f"secrets generation {incoming.generation} refused: {exc.message}",
                exc.remedy,
            )
        else:
            metadata.load_secrets(ctx.source, ctx.root, ctx.instance_id, persist=True)
            if store.done_instance() == ctx.instance_id:
                secretstore.retire(ctx.root, ctx.instance_id)
            result = RotateResult(
                True, incoming.generation, f"secrets generation {incoming.generation} in use"
            )
    _report(ctx, store, result, config.k3s.role is Role.SERVER)
    return result


def _report(ctx: Context, store: StateStore, result: RotateResult, server: bool) -> None:
    current = store.read_status() or Status(state=State.DONE)
    update: dict[str, object] = {"updated": datetime.now(UTC), "generation": result.generation}
    if server:
        request = _delete_requested_nodes(ctx)
        if request is not None:
            update.update(nodes_delete_report(request))
        nodes = _ready_nodes(ctx)
        if nodes is not None:
            update["nodes_ready"] = nodes
    if not result.ok:
        update.update(state=State.FAILED, step="rotate", message=result.message, remedy=result.remedy)
    elif current.step == "rotate":
        # A refused rotation that is now fixed: back to the onboarding's own outcome.
        update.update(state=State.DONE, step=None, message=result.message, remedy=None)
    status = current.model_copy(update=update)
    store.write_status(status)
    try:
        ctx.source.set(KEY_STATUS, status.to_json())
    except (OSError, SourceError) as exc:
        LOG.warning("cannot write %s (tolerated): %s", KEY_STATUS, exc)
    (LOG.info if result.ok else LOG.error)("rotate: %s", result.message)

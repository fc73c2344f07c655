"""Inventory lookups by name, with `NotFoundError` messages that name the missing object and where it
was looked for. Bulk reads go through the PropertyCollector (one round trip for a whole folder)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from builder.vsphere import rawprops
from builder.vsphere._vmomi import ManagedObject, vim, vmodl
from builder.vsphere.connection import NotFoundError, Session, VSphereError

LOG = logging.getLogger(__name__)


PC = vmodl.query.PropertyCollector


def _retrieve(session: Session, spec: Any) -> list[tuple[Any, dict[str, Any]]]:
    """One RetrievePropertiesEx, then ContinueRetrievePropertiesEx while vCenter pages the result."""
    collector = session.content.propertyCollector
    out: list[tuple[Any, dict[str, Any]]] = []
    result = collector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
    while result is not None:
        for obj in result.objects:
            if obj.missingSet and not obj.propSet:
                continue  # deleted since it was named (reportMissingObjectsInResults)
            out.append((obj.obj, {p.name: p.val for p in (obj.propSet or [])}))
        if not result.token:
            break
        result = collector.ContinueRetrievePropertiesEx(result.token)
    return out


def collect(
    session: Session, root: Any, vimtype: type, props: Sequence[str]
) -> list[tuple[Any, dict[str, Any]]]:
    """Every object of `vimtype` under `root`, with the named properties, through a ContainerView."""
    view = session.content.viewManager.CreateContainerView(root, [vimtype], True)
    try:
        spec = PC.FilterSpec(
            objectSet=[
                PC.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        PC.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
                    ],
                )
            ],
            propSet=[PC.PropertySpec(type=vimtype, pathSet=list(props), all=False)],
        )
        return _retrieve(session, spec)
    finally:
        view.Destroy()


def _vm_traversal(start: Any, skip: bool = True) -> Any:
    # From `start` (a datacenter, or the root folder) through datacenter folders -> datacenters -> their
    # vmFolder -> every nested folder and vApp -> VMs and templates; host, datastore and network folders
    # are not entered. A traversal costs one round trip; a ContainerView costs three (create, retrieve,
    # destroy).
    folders = PC.SelectionSpec(name="folders")
    dc_vms = PC.SelectionSpec(name="dcVms")
    vapps = PC.SelectionSpec(name="vapps")
    return PC.ObjectSpec(
        obj=start,
        skip=skip,
        selectSet=[
            PC.TraversalSpec(
                name="dcVms", type=vim.Datacenter, path="vmFolder", skip=False, selectSet=[folders]
            ),
            PC.TraversalSpec(
                name="folders",
                type=vim.Folder,
                path="childEntity",
                skip=False,
                selectSet=[folders, dc_vms, vapps],
            ),
            PC.TraversalSpec(name="vapps", type=vim.VirtualApp, path="vm", skip=False),
        ],
    )


def datacenter_vms(session: Session, dc: Any, props: Sequence[str]) -> list[tuple[Any, dict[str, Any]]]:
    """Every VM and template of `dc` with the named properties, in one PropertyCollector query."""
    spec = PC.FilterSpec(
        objectSet=[_vm_traversal(dc)],
        propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=list(props), all=False)],
    )
    return _retrieve(session, spec)


def properties(
    session: Session, objs: Sequence[Any], vimtype: type, props: Sequence[str]
) -> dict[Any, dict[str, Any]]:
    """The named properties of each of `objs` (all of `vimtype`), in one PropertyCollector query.

    An object deleted meanwhile is left out of the answer instead of failing the whole query.
    """
    if not objs:
        return {}
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=o, skip=False) for o in objs],
        propSet=[PC.PropertySpec(type=vimtype, pathSet=list(props), all=False)],
        reportMissingObjectsInResults=True,
    )
    return dict(_retrieve(session, spec))


def _by_name(session: Session, root: Any, vimtype: type, name: str) -> list[Any]:
    return [obj for obj, props in collect(session, root, vimtype, ["name"]) if props.get("name") == name]


def datacenter(session: Session, name: str) -> Any:
    """The datacenter called `name`."""
    # A datacenter at the root (the usual case) is one FindByInventoryPath; one inside folders is searched.
    direct = session.content.searchIndex.FindByInventoryPath(inventoryPath=name) if "/" not in name else None
    if isinstance(direct, vim.Datacenter):
        return direct
    found = _by_name(session, session.content.rootFolder, vim.Datacenter, name)
    if not found:
        raise NotFoundError(f"datacenter {name!r} not found on {session.creds.server}")
    return found[0]


def _one(session: Session, dc: Any, root: Any, vimtype: type, name: str, kind: str) -> Any:
    found = _by_name(session, root, vimtype, name)
    if not found:
        raise NotFoundError(f"{kind} {name!r} not found in datacenter {dc.name!r}")
    if len(found) > 1:
        LOG.debug("%d objects of kind %s are named %r; using the first", len(found), kind, name)
    return found[0]


def cluster(session: Session, dc: Any, name: str) -> Any:
    """The cluster (ClusterComputeResource) called `name` in `dc`."""
    return _one(session, dc, dc.hostFolder, vim.ClusterComputeResource, name, "cluster")


def host(session: Session, dc: Any, name: str) -> Any:
    """The ESXi host called `name` in `dc`."""
    return _one(session, dc, dc.hostFolder, vim.HostSystem, name, "host")


def resource_pool(session: Session, dc: Any, name: str) -> Any:
    """The resource pool called `name` in `dc`."""
    return _one(session, dc, dc.hostFolder, vim.ResourcePool, name, "resource pool")


def datastore(session: Session, dc: Any, name: str) -> Any:
    """The datastore called `name` in `dc`."""
    return _one(session, dc, dc.datastoreFolder, vim.Datastore, name, "datastore")


def network(session: Session, dc: Any, name: str) -> Any:
    """The network or distributed port group called `name` in `dc`."""
    return _one(session, dc, dc.networkFolder, vim.Network, name, "network")


def folder(session: Session, dc: Any, path: str | None) -> Any:
    """The VM folder at `path` ("a/b", relative to the datacenter's VM folder); the root when empty."""
    current = dc.vmFolder
    for part in [p for p in (path or "").split("/") if p]:
        children = [c for c in current.childEntity if isinstance(c, vim.Folder) and c.name == part]
        if not children:
            raise NotFoundError(f"VM folder {path!r} not found in datacenter {dc.name!r}")
        current = children[0]
    return current


def vms_by_name(session: Session, dc: Any, names: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """VMs and templates of `dc` by name (a list: vSphere, and the simulator, allow duplicate names)."""
    wanted = set(names) if names is not None else None
    out: dict[str, list[Any]] = {}
    for obj, props in datacenter_vms(session, dc, ["name"]):
        name = props.get("name", "")
        if wanted is None or name in wanted:
            out.setdefault(name, []).append(obj)
    return out


def datacenter_and_vms(
    session: Session, datacenter_name: str, names: Iterable[str]
) -> tuple[Any, dict[str, list[Any]]]:
    """The datacenter called `datacenter_name` and its VMs and templates called `names`, by name, in ONE
    PropertyCollector query from the root folder (`datacenter()` then `vms_by_name()` take two or more).

    The answer holds every datacenter's name and vmFolder, each folder's children and each VM's name;
    which VMs belong to the datacenter is worked out here by walking down from its vmFolder (VM names
    are unique per datacenter only). A datacenter at the root wins over a namesake inside a folder."""
    root = session.content.rootFolder
    spec = PC.FilterSpec(
        objectSet=[_vm_traversal(root, skip=False)],
        propSet=[
            PC.PropertySpec(type=vim.Folder, pathSet=["childEntity"], all=False),
            PC.PropertySpec(type=vim.Datacenter, pathSet=["name", "vmFolder"], all=False),
            PC.PropertySpec(type=vim.VirtualApp, pathSet=["vm"], all=False),
            PC.PropertySpec(type=vim.VirtualMachine, pathSet=["name"], all=False),
        ],
    )
    try:
        # Read raw: pyVmomi's decoder spends more on the names of 1,000 VMs than the query takes.
        props = dict(rawprops.retrieve(session, spec))
    except rawprops.Unsupported as exc:
        LOG.debug("reading through pyVmomi instead: %s", exc)
        props = {rawprops.ref(o): {k: _plain(v) for k, v in p.items()} for o, p in _retrieve(session, spec)}
    at_root = set(props.get(rawprops.ref(root), {}).get("childEntity") or [])
    dcs = [r for r, p in props.items() if r[0] == "Datacenter" and p.get("name") == datacenter_name]
    if not dcs:
        raise NotFoundError(f"datacenter {datacenter_name!r} not found on {session.creds.server}")
    dc = sorted(dcs, key=lambda r: r not in at_root)[0]
    stub = session.content.propertyCollector._stub
    wanted = set(names)
    out: dict[str, list[Any]] = {}
    pending = [props[dc].get("vmFolder")]
    seen: set[rawprops.Ref] = set()
    while pending:
        here = pending.pop()
        if here is None or here in seen:
            continue
        seen.add(here)
        if here[0] == "VirtualMachine":
            name = str(props.get(here, {}).get("name", ""))
            if name in wanted:
                out.setdefault(name, []).append(vim.VirtualMachine(here[1], stub))
            continue
        children = props.get(here, {})
        # Reversed onto the stack: VMs come out in the server's order (status takes the last namesake).
        pending.extend(reversed(children.get("childEntity") or children.get("vm") or []))
    return vim.Datacenter(dc[1], stub), out


def _plain(value: Any) -> Any:
    # pyVmomi's values as rawprops gives them: managed objects as Refs (a list of them too).
    if isinstance(value, ManagedObject):
        return rawprops.ref(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def vm(session: Session, dc: Any, name: str, kind: str = "VM") -> Any:
    """The VM (or template, with kind="template") called `name` in `dc`; exactly one must exist."""
    found = vms_by_name(session, dc, [name]).get(name, [])
    if not found:
        raise NotFoundError(f"{kind} {name!r} not found in datacenter {dc.name!r}")
    if len(found) > 1:
        raise VSphereError(f"{kind} {name!r} is ambiguous: {len(found)} VMs have that name in {dc.name!r}")
    return found[0]


@dataclass(frozen=True)
class Placement:
    """Resolved objects for a clone: where it runs, which datastore and folder, and its network."""

    datacenter: Any
    pool: Any
    host: Any | None
    datastore: Any | None
    folder: Any
    network: Any | None


def placement(
    session: Session,
    *,
    datacenter_name: str,
    cluster_name: str | None = None,
    host_name: str | None = None,
    resource_pool_name: str | None = None,
    datastore_name: str | None = None,
    folder_path: str | None = None,
    network_name: str | None = None,
) -> Placement:
    """Resolve placement names; the first missing object raises NotFoundError naming it."""
    dc = datacenter(session, datacenter_name)
    host_obj = None
    if resource_pool_name:
        pool = resource_pool(session, dc, resource_pool_name)
    elif cluster_name:
        pool = cluster(session, dc, cluster_name).resourcePool
    elif host_name:
        host_obj = host(session, dc, host_name)
        pool = host_obj.parent.resourcePool
    else:
        raise VSphereError("placement needs a cluster, a host or a resource pool")
    if host_name and host_obj is None:
        host_obj = host(session, dc, host_name)
    ds = datastore(session, dc, datastore_name) if datastore_name else None
    net = network(session, dc, network_name) if network_name else None
    return Placement(dc, pool, host_obj, ds, folder(session, dc, folder_path), net)


class PlacementNames(Protocol):
    """The placement block of an image spec (`vsphere:`) or a fleet file (`placement:`)."""

    @property
    def datacenter(self) -> str: ...
    @property
    def cluster(self) -> str | None: ...
    @property
    def host(self) -> str | None: ...
    @property
    def resource_pool(self) -> str | None: ...
    @property
    def datastore(self) -> str | None: ...
    @property
    def folder(self) -> str: ...
    @property
    def network(self) -> str | None: ...


def placement_of(session: Session, names: PlacementNames) -> Placement:
    """`placement()` for a spec's or a fleet's placement block."""
    return placement(
        session,
        datacenter_name=names.datacenter,
        cluster_name=names.cluster,
        host_name=names.host,
        resource_pool_name=names.resource_pool,
        datastore_name=names.datastore,
        folder_path=names.folder,
        network_name=names.network,
    )

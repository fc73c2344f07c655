"""Keep the newest N templates of an image; delete older ones unless VMs are linked to them.

"Linked" means either of:

1. a linked clone: a VM whose virtual disk backing chain (`backing.parent`, recursively) has a file in
   the template's own directory; deleting the template would break that VM's disks;
2. a deployed clone: a VM whose extraConfig `arcbake.source.template_uuid` (written by `builder deploy`)
   is the template's instance UUID. A full clone does not need its template's disks, but the template is
   what `deploy --replace` and audits go back to, so it stays while such a VM exists.

Templates of the image are the templates (not VMs) whose name matches the image spec's template name
pattern; "newest" is by the date/timestamp in the name, then by creation time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from builder.vsphere import vm as vmops
from builder.vsphere._vmomi import vim
from builder.vsphere.connection import Session, VSphereError
from builder.vsphere.inventory import collect

LOG = logging.getLogger(__name__)

KEY_SOURCE_UUID = "arcbake.source.template_uuid"


@dataclass
class RetentionResult:
    """What retention kept and removed, by template name."""

    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept_linked: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kept": self.kept,
            "removed": self.removed,
            "kept_linked": self.kept_linked,
            "errors": self.errors,
        }


def _vm_dir(path: str) -> str:
    # "[LocalDS_0] tpl-1/tpl-1.vmx" -> "[LocalDS_0] tpl-1/"
    return path.rsplit("/", 1)[0] + "/" if "/" in path else path


def _disk_chain(devices: list[Any]) -> list[str]:
    files: list[str] = []
    for dev in devices or []:
        if isinstance(dev, vim.vm.device.VirtualDisk):
            backing = dev.backing
            while backing is not None:
                name = getattr(backing, "fileName", None)
                if name:
                    files.append(str(name))
                backing = getattr(backing, "parent", None)
    return files


def _stamp(name: str, pattern: re.Pattern[str]) -> str:
    digits = re.findall(r"\d{8,14}", name)
    return max(digits) if digits else ""


def apply(session: Session, dc: Any, pattern: re.Pattern[str], keep: int) -> RetentionResult:
    """Delete templates matching `pattern` beyond the newest `keep`, never one with linked VMs."""
    if keep < 1:
        raise VSphereError("retention must keep at least one template")
    props = ["name", "config.template", "config.instanceUuid", "config.files.vmPathName", "config.createDate"]
    rows = collect(session, dc.vmFolder, vim.VirtualMachine, props)
    templates = [(obj, p) for obj, p in rows if p.get("config.template") and pattern.match(p.get("name", ""))]
    templates.sort(
        key=lambda t: (_stamp(t[1]["name"], pattern), str(t[1].get("config.createDate") or ""), t[1]["name"]),
        reverse=True,
    )
    result = RetentionResult(kept=[p["name"] for _, p in templates[:keep]])
    old = templates[keep:]
    if not old:
        return result
    users = collect(
        session,
        dc.vmFolder,
        vim.VirtualMachine,
        ["name", "config.template", "config.extraConfig", "config.hardware.device"],
    )
    for obj, p in old:
        name = p["name"]
        uuid = str(p.get("config.instanceUuid") or "")
        tdir = _vm_dir(str(p.get("config.files.vmPathName") or ""))
        linked = []
        for other, q in users:
            if other == obj:
                continue
            extra = {str(o.key): str(o.value) for o in (q.get("config.extraConfig") or [])}
            chain = _disk_chain(q.get("config.hardware.device") or [])
            if (uuid and extra.get(KEY_SOURCE_UUID) == uuid) or (
                tdir and any(f.startswith(tdir) for f in chain)
            ):
                linked.append(str(q.get("name")))
        if linked:
            LOG.info("keeping template %s: linked VMs %s", name, ", ".join(sorted(linked)))
            result.kept_linked[name] = sorted(linked)
            continue
        try:
            vmops.wait(obj.Destroy_Task(), f"deleting old template {name!r}")
        except VSphereError as exc:
            result.errors.append(str(exc))
            continue
        LOG.info("deleted old template %s", name)
        result.removed.append(name)
    return result

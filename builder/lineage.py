"""`builder templates SPEC`: the lineage of an image's published templates, from what each build recorded.

`builder build` records on the template (extraConfig, non-guestinfo keys, see
`render_context.LINEAGE_KEYS`): variant, build time, K3s version and spec sha256. A template built before
those keys existed is read from its `guestinfo.arcbake.image` line (`VARIANT k3s=VERSION spec=HASH16`).
"Clones" counts the VMs whose `arcbake.source.template_uuid` (written by `builder deploy`) is the
template's instance UUID: what retention keeps a template for.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from builder import fleetvms
from builder.spec import ImageSpec
from builder.texttable import aligned
from builder.vsphere import inventory
from builder.vsphere.connection import Session

_LEGACY = re.compile(r"^(?P<variant>\S+) k3s=(?P<k3s>\S+) spec=(?P<spec>[0-9a-f]+)$")


@dataclass
class TemplateRow:
    """One published template of the image."""

    name: str
    built: str
    k3s_version: str
    spec_sha256: str
    clones: int
    current_spec: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        return asdict(self)


def _recorded(extra: dict[str, str]) -> dict[str, str]:
    got = {
        "built": extra.get("arcbake.image.built", ""),
        "k3s_version": extra.get("arcbake.image.k3s_version", ""),
        "spec_sha256": extra.get("arcbake.image.spec_sha256", ""),
    }
    legacy = _LEGACY.match(extra.get("guestinfo.arcbake.image", ""))
    if legacy:
        got["k3s_version"] = got["k3s_version"] or legacy["k3s"]
        got["spec_sha256"] = got["spec_sha256"] or legacy["spec"]
    return got


def lineage(session: Session, spec: ImageSpec) -> list[TemplateRow]:
    """The image's templates (name matching the spec's pattern), newest first, with their clone counts."""
    from builder.render_context import spec_digest

    dc = inventory.datacenter(session, spec.vsphere.datacenter)
    records = fleetvms.read_all(session, dc)
    pattern = spec.template_name_regex()
    digest = spec_digest(spec)
    clones: dict[str, int] = {}
    for rec in records:
        if not rec.is_template and rec.source_uuid:
            clones[rec.source_uuid] = clones.get(rec.source_uuid, 0) + 1
    rows = []
    for rec in records:
        if not rec.is_template or not pattern.match(rec.name):
            continue
        got = _recorded(rec.extra)
        rows.append(
            TemplateRow(
                name=rec.name,
                built=got["built"] or rec.created,
                k3s_version=got["k3s_version"] or "?",
                spec_sha256=got["spec_sha256"] or "?",
                clones=clones.get(rec.instance_uuid or "", 0),
                current_spec=bool(got["spec_sha256"]) and digest.startswith(got["spec_sha256"]),
            )
        )
    rows.sort(key=lambda r: (r.built, r.name), reverse=True)
    return rows


def table(rows: list[TemplateRow]) -> str:
    """Aligned text: template, built, K3s, spec (16 hex, `*` when it is the spec as it is now), clones."""
    header = ("TEMPLATE", "BUILT", "K3S", "SPEC", "CLONES")
    body = [
        (r.name, r.built, r.k3s_version, r.spec_sha256[:16] + ("*" if r.current_spec else ""), str(r.clones))
        for r in rows
    ]
    return aligned(header, body)

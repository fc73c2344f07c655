"""`builder build SPEC`: render, validate, Packer init/validate/build, publish, retention, manifest.

1. load the spec (exit 3 when invalid) and log in to vSphere (one-line errors before anything runs);
2. render the build dir and run every validator found on it (exit 4 when one rejects);
3. assemble the guest wheelhouse when the build provisions a guest (`builder.wheelhouse`);
4. `packer init` (>= 1.7), `packer validate`, `packer build -machine-readable` (credentials as
   `PKR_VAR_*` environment only);
5. publish: Packer converts the VM to a template and/or imports it into the content library (the spec's
   `publish`); we look the result up and read its vSphere identity;
6. retention: keep the newest `publish.keep` templates of this image, never one with linked VMs;
7. write `DIR/manifest.json`.

Ctrl-C during the Packer build is forwarded to Packer (it deletes its VM); we then delete any VM of the
build's name that is still not a template, and exit 130.
"""

from __future__ import annotations

import hashlib
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from builder import packer as pk
from builder.checksums import refuse_placeholders
from builder.events import NULL, Recorder
from builder.guestinfo import BUILD_ACCESS_KEYS
from builder.spec import ImageSpec, load_spec
from builder.validators import Outcome
from builder.vsphere import inventory, retention
from builder.vsphere import vm as vmops
from builder.vsphere.connection import Credentials, NotFoundError, Session, VSphereError, connect
from builder.vsphere.library import RestClient
from firstboot import subp

LOG = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
LOG_NAME = "packer-build.log"
# Where packer/build.pkr.hcl's image-suite provisioner has pytest write its JUnit (relative to DIR).
IMAGE_SUITE_JUNIT = "image-suite.junit.xml"


class ValidationFailedError(Exception):
    """A rendered artifact was rejected by a validator (exit 4); the message lists which and why."""


@dataclass
class BuildOptions:
    """Knobs of one build."""

    out_dir: Path
    on_error: str = "cleanup"
    timeout: float = pk.DEFAULT_BUILD_TIMEOUT
    run_validators: bool = True
    now: datetime | None = None
    quiet: bool = False
    validator_names: list[str] | None = field(default=None)
    # JUnit file: one case per validator and per image-suite check (written on failure too).
    junit: Path | None = None
    recorder: Recorder = NULL


def _git(spec_path: Path) -> dict[str, Any] | None:
    """The commit of the spec when it lives in a git work tree (None otherwise)."""
    cwd = spec_path.parent

    def git(*args: str) -> str:
        return subp.run(["git", *args], timeout=30, cwd=cwd, description="git").stdout.strip()

    try:
        if git("rev-parse", "--is-inside-work-tree") != "true":
            return None
        head = git("rev-parse", "HEAD")
        spec_commit = git("log", "-1", "--format=%H", "--", spec_path.name)
        dirty = bool(git("status", "--porcelain", "--", spec_path.name))
    except subp.ProcessExecutionError as exc:
        LOG.debug("no git information for %s: %s", spec_path, exc)
        return None
    return {"commit": head, "spec_commit": spec_commit or None, "spec_dirty": dirty}


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _arcbake_version() -> str:
    try:
        return dist_version("arcbake")
    except PackageNotFoundError:
        return "unknown"


def _validate(
    out_dir: Path, names: list[str] | None, rec: Recorder, collected: list[Outcome]
) -> list[dict[str, object]]:
    from builder.validators import Status, run_validators

    with rec.step("validators"):
        outcomes = run_validators(out_dir, only=names, recorder=rec)
    collected.extend(outcomes)
    failed = [o for o in outcomes if o.status is Status.FAILED]
    for outcome in outcomes:
        LOG.info("validator %s: %s %s", outcome.name, outcome.status.value, outcome.message.splitlines()[:1])
    if failed:
        detail = "; ".join(
            f"{o.name}: {o.message.strip().splitlines()[-1] if o.message.strip() else 'rejected'}"
            for o in failed
        )
        raise ValidationFailedError(f"rendered build dir rejected by {detail}")
    return [o.to_dict() for o in outcomes]


def write_junit(path: Path, out_dir: Path, outcomes: list[Outcome]) -> None:
    """validators + the image suite's cases (Packer's pytest writes IMAGE_SUITE_JUNIT when it ran)."""
    from builder import junit

    suites = [junit.Suite("arcbake validators", junit.validator_cases(outcomes))]
    suite_file = out_dir / IMAGE_SUITE_JUNIT
    if suite_file.is_file():
        try:
            suites.append(junit.Suite("arcbake image suite", junit.read_cases(suite_file, "image.")))
        except ET.ParseError as exc:
            LOG.warning("cannot read the image suite's JUnit file %s: %s", suite_file, exc)
    try:
        junit.write(path, suites)
    except OSError as exc:
        LOG.error("cannot write the JUnit file %s: %s", path, exc.strerror)


def _wheelhouse(spec: ImageSpec, out_dir: Path) -> list[str]:
    if spec.build.communicator == "none":
        # Offline builds (simulator, tests) run no provisioner: nothing would install the wheels.
        LOG.info("communicator none: no guest to install firstboot into, wheelhouse left empty")
        return []
    from builder import wheelhouse

    try:
        wheels = wheelhouse.assemble(out_dir / "wheelhouse")
    except wheelhouse.WheelhouseError as exc:
        raise pk.PackerError(f"assembling the guest wheelhouse: {exc}") from None
    return [w.name for w in wheels]


def _cleanup_after_interrupt(session: Session, dc: Any, vm_name: str) -> None:
    for obj in inventory.vms_by_name(session, dc, [vm_name]).get(vm_name, []):
        if obj.config is not None and obj.config.template:
            continue
        LOG.warning("deleting the half-built VM %s left after the interrupt", vm_name)
        vmops.destroy(obj, vm_name)


def build(spec_path: Path, environ: Mapping[str, str], options: BuildOptions) -> dict[str, Any]:
    """Run the whole build; return the manifest (also written to `DIR/manifest.json`).

    With `options.junit`, the JUnit file is written however the build ends (validators that ran, and
    the image suite's checks when Packer ran them)."""
    outcomes: list[Outcome] = []
    try:
        return _build(spec_path, environ, options, outcomes)
    finally:
        if options.junit is not None:
            write_junit(options.junit, options.out_dir.absolute(), outcomes)


def _build(
    spec_path: Path, environ: Mapping[str, str], options: BuildOptions, outcomes: list[Outcome]
) -> dict[str, Any]:
    from builder.render import SecretEnvError, packer_secret_env, render
    from builder.render_context import spec_digest

    started = datetime.now(UTC)
    spec = load_spec(spec_path)
    refuse_placeholders(spec, spec_path)  # before any vCenter login: the spec is wrong, not the world
    creds = Credentials.from_env(environ)
    packer = pk.find_packer(environ)
    base_env = pk.child_env(environ, {})
    packer_version = pk.version(packer, base_env)
    rec = options.recorder
    with connect(creds) as session:
        with rec.step("preflight", announce=False):
            dc = _preflight(session, spec)
        out_dir = options.out_dir.absolute()
        with rec.step("render", label=f"render {spec.os.variant} into {out_dir}") as step:
            rendered = render(spec, out_dir, now=options.now, packer=packer_version)
            step.fields["template"] = rendered.vm_name
        vm_name = rendered.vm_name
        (out_dir / IMAGE_SUITE_JUNIT).unlink(missing_ok=True)
        validators = (
            _validate(out_dir, options.validator_names, rec, outcomes) if options.run_validators else []
        )
        with rec.step("wheelhouse", label="assemble the guest wheelhouse") as step:
            wheels = _wheelhouse(spec, out_dir)
            step.fields["wheels"] = len(wheels)
        try:
            secret_vars = {**pk.vsphere_vars(environ), **packer_secret_env(spec, environ)}
        except SecretEnvError as exc:
            raise pk.PackerError(str(exc)) from None
        public = ("PKR_VAR_vsphere_server", "PKR_VAR_vsphere_insecure")
        secrets = [v for k, v in secret_vars.items() if k not in public]
        env = pk.child_env(environ, secret_vars)
        workdir = out_dir / "packer"
        if inventory.vms_by_name(session, dc, [vm_name]).get(vm_name):
            raise VSphereError(f"a VM or template named {vm_name!r} already exists in datacenter {dc.name!r}")
        if packer_version >= (1, 7, 0):
            with rec.step("packer init"):
                pk.init(packer, workdir, env, secrets)
        with rec.step("packer validate"):
            pk.validate(packer, workdir, rendered.packer_only, env, secrets)
        shown_version = ".".join(map(str, packer_version))
        LOG.info("packer %s build %s", shown_version, rendered.packer_only)
        try:
            with rec.step("packer build", label=f"packer {shown_version} build {rendered.packer_only}"):
                outcome = pk.build(
                    packer,
                    workdir,
                    only=rendered.packer_only,
                    env=env,
                    secrets=secrets,
                    log_path=out_dir / LOG_NAME,
                    timeout=options.timeout,
                    on_error=options.on_error,
                    progress=pk.Progress(quiet=options.quiet, recorder=rec),
                )
        except KeyboardInterrupt:
            _cleanup_after_interrupt(session, dc, vm_name)
            raise
        with rec.step("publish", announce=False):
            if spec.build_access_by_guestinfo:
                _forget_build_access(session, dc, spec, vm_name)
            published = _published(session, dc, spec, vm_name)
        with rec.step("retention", announce=False):
            kept = retention.apply(session, dc, spec.template_name_regex(), spec.publish.keep)
        if kept.errors:
            LOG.warning("retention: %s", "; ".join(kept.errors))
    ended = datetime.now(UTC)
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "template": published,
        "vcenter": {"server": creds.server, "datacenter": spec.vsphere.datacenter},
        "spec": {
            "path": str(spec_path),
            "sha256": spec_digest(spec),
            "file_sha256": _file_sha256(spec_path),
            "git": _git(spec_path.absolute()),
        },
        "os": {"distro": spec.os.distro.value, "major": spec.os.major, "variant": spec.os.variant},
        "k3s": {"version": spec.k3s.version, "sha256": spec.k3s.sha256.model_dump()},
        "azure": {"cli_version": spec.azure.cli_version, "extensions": spec.azure.extensions.model_dump()},
        "packer": {
            "version": ".".join(map(str, packer_version)),
            "only": rendered.packer_only,
            "on_error": options.on_error,
            "artifacts": [a.__dict__ for a in outcome.artifacts],
            "log": LOG_NAME,
        },
        "wheelhouse": wheels,
        "validators": validators,
        "retention": {"keep": spec.publish.keep, **kept.as_dict()},
        "arcbake_version": _arcbake_version(),
        "started": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "duration_seconds": round((ended - started).total_seconds(), 3),
    }
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    path.chmod(0o644)
    return manifest


def _preflight(session: Session, spec: ImageSpec) -> Any:
    """Resolve every inventory name of the spec before rendering: a missing one is a one-line error."""
    where = inventory.placement_of(session, spec.vsphere)
    if spec.source.clone is not None:
        inventory.vm(session, where.datacenter, spec.source.clone.template, kind="source template")
    if spec.publish.content_library is not None:
        rest = RestClient(session.creds)
        try:
            rest.library_id(spec.publish.content_library.name)
        finally:
            rest.close()
    return where.datacenter


def _forget_build_access(session: Session, dc: Any, spec: ImageSpec, vm_name: str) -> None:
    """Remove the build's guestinfo meta-data/user-data (the build key) from the powered-off VM Packer left,
    then make it the template: Packer's own convert would have kept them for every later clone."""
    found = inventory.vms_by_name(session, dc, [vm_name]).get(vm_name, [])
    if not found:
        raise NotFoundError(f"Packer finished but VM {vm_name!r} is not in datacenter {dc.name!r}")
    vm = found[0]
    vmops.remove_extra_config(vm, BUILD_ACCESS_KEYS, f"removing the build key from {vm_name!r}")
    if spec.publish.convert_to_template:
        vmops.power_off(vm, vm_name)
        vm.MarkAsTemplate()


def _published(session: Session, dc: Any, spec: ImageSpec, vm_name: str) -> dict[str, Any]:
    """Find what Packer published and read its identity."""
    found = inventory.vms_by_name(session, dc, [vm_name]).get(vm_name, [])
    info: dict[str, Any] = {"name": vm_name, "moid": None, "instance_uuid": None, "is_template": False}
    if found:
        obj = found[0]
        info.update(
            moid=obj._moId,
            instance_uuid=str(obj.config.instanceUuid),
            bios_uuid=str(obj.config.uuid),
            is_template=bool(obj.config.template),
            path=str(obj.config.files.vmPathName),
        )
    elif spec.publish.convert_to_template:
        raise NotFoundError(f"Packer finished but template {vm_name!r} is not in datacenter {dc.name!r}")
    if spec.publish.convert_to_template and not info["is_template"]:
        raise VSphereError(f"Packer finished but {vm_name!r} is not a template")
    library = spec.publish.content_library
    if library is not None:
        item = library.item or vm_name
        rest = RestClient(session.creds)
        try:
            lib_id = rest.library_id(library.name)
            ids = rest.item_ids(lib_id, item)
        finally:
            rest.close()
        if not ids:
            raise NotFoundError(
                f"Packer finished but item {item!r} is not in content library {library.name!r}"
            )
        info["content_library"] = {
            "library": library.name,
            "library_id": lib_id,
            "item": item,
            "item_id": ids[-1],
            "ovf": library.ovf,
        }
    return info

"""Render an image spec into the build dir of ARCHITECTURE.md.

```
DIR/packer/      static HCL of packer/ (plugins.pkr.hcl only for Packer >= 1.7), arcbake.auto.pkrvars.json
DIR/http/ks.cfg  the kickstart of the variant
DIR/rootfs/      files placed in the guest at the same absolute paths
DIR/scripts/     NN-*.sh provisioning scripts, in the order Packer runs them
DIR/wheelhouse/  empty; `builder build` fills it with the firstboot wheels for the guest
DIR/tests/image/ the testinfra suite Packer runs against the VM before sealing
DIR/image-expect.json  what that suite expects (K3s version, NTP servers, ports...)
DIR/arcbake-build.json  Packer -only source, template name, spec digest (for validators and the driver)
```

Everything is rendered into a temporary sibling directory and moved into place at the end, so a failure
leaves nothing half-applied. No credential is ever rendered: Packer gets them as `PKR_VAR_*` environment
(`packer_secret_env`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from builder import render_context
from builder.assets import packer_dir, templates_dir
from builder.spec import ImageSpec
from firstboot import quoting, subp
from firstboot.fsutil import make_dirs

LOG = logging.getLogger(__name__)

PKRVARS_NAME = "arcbake.auto.pkrvars.json"
PLUGINS_FILE = "plugins.pkr.hcl"
EXPECT_NAME = "image-expect.json"
# Marks a directory as ours, so re-rendering may replace it but a random directory is never deleted.
MARKER = Path("packer") / PKRVARS_NAME

# A checkout has the suite at tests/image; a wheel carries it under builder/_data (pyproject force-include).
IMAGE_TESTS_DIRS = (
    Path(__file__).resolve().parent / "_data" / "image-tests",
    Path(__file__).resolve().parent.parent / "tests" / "image",
)


class RenderError(Exception):
    """The build dir cannot be written (existing foreign directory, I/O error, template error)."""


class SecretEnvError(Exception):
    """An environment variable the spec names is not set."""


@dataclass(frozen=True)
class RenderResult:
    """What `render` wrote."""

    out_dir: Path
    vm_name: str
    packer_only: str
    files: list[Path] = field(default_factory=list)
    plugins_included: bool = True
    warnings: list[str] = field(default_factory=list)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - kickstart, shell and config files, never HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # One quoting function per target format (firstboot.quoting): `{{ value | shell }}`, `| systemd_env`,
    # `| yaml_str`, `| kickstart`, `| json_str`.
    env.filters.update(quoting.FILTERS)
    return env


def packer_version(timeout: float = 30) -> tuple[int, int, int] | None:
    """The installed Packer's version from `packer version`, or None when Packer is not installed."""
    try:
        result = subp.run(["packer", "version"], timeout=timeout, description="packer version")
    except subp.ProcessExecutionError as exc:
        if exc.not_found:
            return None
        first = (str(exc).strip().splitlines() or ["failed"])[0]
        raise RenderError(f"cannot tell the Packer version: {first}") from None
    return render_context.parse_packer_version(result.stdout)


def packer_secret_env(spec: ImageSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """`PKR_VAR_*` values Packer must receive as environment only (never argv, never a file).

    RHEL: the organisation and activation key from the variables named in `rhsm`. SSH builds: the
    private key path from `build.ssh_private_key_file_env`. Raises SecretEnvError naming what is missing.
    """
    out: dict[str, str] = {}
    missing: list[str] = []
    if spec.rhsm is not None:
        for name, var in (
            (spec.rhsm.org_env, "PKR_VAR_rhsm_org"),
            (spec.rhsm.activation_key_env, "PKR_VAR_rhsm_activation_key"),
        ):
            value = environ.get(name, "")
            if value:
                out[var] = value
            else:
                missing.append(name)
    if spec.build.communicator == "ssh":
        name = spec.build.ssh_private_key_file_env
        value = environ.get(name, "")
        if value:
            out["PKR_VAR_ssh_private_key_file"] = value
        else:
            missing.append(name)
    if missing:
        raise SecretEnvError(
            "environment variable(s) not set: " + ", ".join(missing) + " (named by the image spec)"
        )
    return out


# Every directory and file of the build dir gets an explicit mode: under the umask 000 of common CI
# container executors, mkdir and copyfile would make them world-writable (and systemd would then warn
# about our own unit).
def _write(path: Path, text: str, mode: int = 0o644) -> None:
    make_dirs(path.parent)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _copy(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    dest.chmod(0o644)


def _render_tree(env: jinja2.Environment, ctx: dict[str, Any], stage: Path) -> list[Path]:
    written: list[Path] = []
    for item in render_context.file_plan(ctx["spec"]):
        text = env.get_template(item.template).render(ctx)
        target = stage / item.dest
        _write(target, text, item.mode)
        written.append(target)
    return written


def _copy_packer(stage: Path, include_plugins: bool) -> list[Path]:
    dest = stage / "packer"
    make_dirs(dest)
    out = []
    for src in sorted(packer_dir().glob("*.pkr.hcl")):
        if src.name == PLUGINS_FILE and not include_plugins:
            continue
        _copy(src, dest / src.name)
        out.append(dest / src.name)
    return out


def _copy_image_tests(stage: Path) -> list[Path]:
    found = [d for d in IMAGE_TESTS_DIRS if (d / "test_image.py").is_file()]
    if not found:
        return []
    dest = stage / "tests" / "image"
    make_dirs(dest)
    out = []
    for src in sorted(found[0].glob("*.py")):
        _copy(src, dest / src.name)
        out.append(dest / src.name)
    return out


def _os_reason(exc: OSError) -> str:
    """`Read-only file system (/x/y)`: the reason and the path it concerns, on one line."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror}{where}" if exc.strerror else str(exc)


def _prepare_target(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise RenderError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
            raise RenderError(f"{out_dir} is not empty and not an arcbake build dir; refusing to replace it")


def _swap_into_place(stage: Path, out_dir: Path) -> None:
    # Keep what `builder build` added to an earlier render (wheelhouse, manifest) out of the new tree:
    # the new render is complete on its own; the old one is removed only after the rename succeeded.
    old: Path | None = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    try:
        stage.rename(out_dir)
    except OSError:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def render(
    spec: ImageSpec,
    out_dir: Path,
    *,
    now: datetime | None = None,
    packer: tuple[int, int, int] | None = None,
    detect_packer: bool = True,
) -> RenderResult:
    """Write the build dir for `spec` into `out_dir` (replacing an earlier render there).

    `packer` is the Packer version the build dir is for (plugins.pkr.hcl only from 1.7); by default it
    is detected with `packer version`, and a missing Packer means "current Packer" (plugins included).
    """
    now = now or datetime.now(UTC)
    out_dir = Path(out_dir).absolute()
    if packer is None and detect_packer:
        packer = packer_version()
    include_plugins = packer is None or packer >= (1, 7, 0)
    try:
        _prepare_target(out_dir)
        make_dirs(out_dir.parent)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.render-", dir=out_dir.parent))
    except OSError as exc:
        # A read-only file system, a path under a file or /proc, a name too long: one line, nothing written.
        raise RenderError(f"cannot write the build dir {out_dir}: {_os_reason(exc)}") from None
    try:
        ctx = render_context.build_context(spec, now)
        env = _environment()
        files = _render_tree(env, ctx, stage)
        files += _copy_packer(stage, include_plugins)
        tests = _copy_image_tests(stage)
        files += tests
        pkrvars = render_context.pkrvars(spec, ctx, run_image_tests=bool(tests))
        _write(stage / MARKER, json.dumps(pkrvars, indent=2, sort_keys=True) + "\n")
        _write(stage / EXPECT_NAME, json.dumps(ctx["expect"], indent=2, sort_keys=True) + "\n")
        info = render_context.build_info(spec, ctx)
        _write(stage / render_context.BUILD_INFO_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")
        make_dirs(stage / "wheelhouse")
        stage.chmod(0o755)
        _swap_into_place(stage, out_dir)
    except jinja2.TemplateError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise RenderError(f"template error: {exc}") from None
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise RenderError(f"cannot write the build dir {out_dir}: {_os_reason(exc)}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    warnings = [] if tests else ["tests/image not found: the build will skip the image test suite"]
    final = [out_dir / p.relative_to(stage) for p in files]
    final += [out_dir / MARKER, out_dir / EXPECT_NAME, out_dir / render_context.BUILD_INFO_NAME]
    LOG.info("rendered %s into %s", spec.os.variant, out_dir)
    return RenderResult(
        out_dir=out_dir,
        vm_name=ctx["vm_name"],
        packer_only=render_context.packer_only(spec),
        files=sorted(final),
        plugins_included=include_plugins,
        warnings=warnings,
    )

"""builder templates: the lineage of what `builder build` (real Packer, the simulator) published."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.vcsim import VcsimHandle

from builder.build import BuildOptions, build
from builder.cli import cli
from integration.vsphere_helpers import REPO, SECRET_ENV, fleet_file

pytestmark = pytest.mark.integration

DEMO_IMAGE = REPO / "examples" / "demo-image.yaml"


@pytest.mark.slow
@pytest.mark.allow_subp("packer", "git")
def test_templates_lineage_from_build_records(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    env = {**os.environ, **fresh_vcsim.env()}
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    first = build(DEMO_IMAGE, env, BuildOptions(tmp_path / "b1", run_validators=False, now=t0, quiet=True))
    second = build(
        DEMO_IMAGE,
        env,
        BuildOptions(tmp_path / "b2", run_validators=False, now=t0 + timedelta(days=31), quiet=True),
    )
    runner = CliRunner()
    fleet = fleet_file(tmp_path, "lin", template=first["template"]["name"])
    deployed = runner.invoke(cli, ["deploy", str(fleet)], env={**fresh_vcsim.env(), **SECRET_ENV})
    assert deployed.exit_code == 0, deployed.output

    result = runner.invoke(
        cli, ["templates", str(DEMO_IMAGE), "--format", "json"], env=fresh_vcsim.env(), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["templates"]
    assert [(r["name"], r["built"], r["clones"]) for r in rows] == [
        (second["template"]["name"], "2026-04-01T12:00:00Z", 0),
        (first["template"]["name"], "2026-03-01T12:00:00Z", 3),
    ]
    for row in rows:
        assert row["k3s_version"] == first["k3s"]["version"]
        assert row["spec_sha256"] == first["spec"]["sha256"] and row["current_spec"] is True

    text = runner.invoke(cli, ["templates", str(DEMO_IMAGE)], env=fresh_vcsim.env())
    assert text.exit_code == 0
    assert text.stdout.splitlines()[0].split() == ["TEMPLATE", "BUILT", "K3S", "SPEC", "CLONES"]
    assert text.stdout.splitlines()[2].split()[-1] == "3"

"""az signs in beside K3s's start (the arc step's `begin`), and the sign-in does not outlive a run that
ends before the arc step runs.

`firstboot run` (the program) against the onboarding world: the az double logs each call's exec and exit
on the monotonic clock (`az-times.log`), the status records each step's start and end (UTC), and K3s takes
3 s to have its node Ready (the systemctl and Kubernetes API doubles). The credential files are those
`firstboot.azcli.credential_files` removes: what az keeps of a service principal after `az login`.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from doubles.harness import read_jsonl
from doubles.world import Latencies, World, onboarding_world, run_once

from firstboot import azcli
from firstboot.step import Context

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _az_times(world: World, command: str) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(world.workdir / "az" / "az-times.log") if e["argv"][:1] == [command]]


def _step_window(world: World, step: str, offset: float) -> tuple[float, float]:
    """(start, end) of the step's last run on this process's monotonic clock (`offset`: monotonic - wall)."""
    (timing,) = [t for t in world.status()["steps"] if t["step"] == step][-1:]
    start, end = (datetime.fromisoformat(timing[k]).timestamp() + offset for k in ("started", "ended"))
    return start, end


def _credentials(world: World) -> list[Path]:
    return azcli.credential_files(Context(root=world.root, source=None))  # type: ignore[arg-type]


@pytest.mark.allow_subp(all=True)
def test_az_signs_in_while_k3s_starts_not_after(
    preflight_world: Any, guest_root: Path, tmp_path: Path
) -> None:
    lat = Latencies(node=3.0, coredns=3.0)
    with onboarding_world(preflight_world, guest_root, tmp_path / "world", lat) as world:
        offset = time.monotonic() - time.time()
        result = run_once(world)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "step arc: begun before resources" in result.stderr
        (login,) = _az_times(world, "login")
        (connect,) = _az_times(world, "connectedk8s")
        k3s_start, k3s_end = _step_window(world, "k3s", offset)
        arc_start, _ = _step_window(world, "arc", offset)
        # Signed in and done while the k3s step still waited for the node (3 s), not in the arc step. (The
        # sign-in waits for the Azure SDK's import and token in the background: on a loaded machine up to
        # a second after K3s's start.)
        assert login["ended"] < k3s_end, (login, k3s_start, k3s_end)
        assert connect["started"] >= arc_start - 0.05
        assert [a[0] for a in world.az_calls()] == ["login", "connectedk8s", "logout"]
        assert _credentials(world) == []


@pytest.mark.allow_subp(all=True)
@pytest.mark.fault(
    "K3s fails to start after az signed in beside its start",
    "the run fails at k3s and signs az out (abandon): no service principal credential stays on disk",
)
def test_a_k3s_failure_signs_out_what_the_early_sign_in_left(
    preflight_world: Any, guest_root: Path, tmp_path: Path
) -> None:
    with onboarding_world(preflight_world, guest_root, tmp_path / "world") as world:
        env = {"SYSTEMCTL_DOUBLE_FAIL": "k3s", "ARCBAKE_TIME_SCALE": "0.02"}
        result = run_once(world, extra_env=env)
        assert result.returncode == 1, result.stderr[-3000:]
        status = world.status()
        assert status["state"] == "failed" and status["step"] == "k3s", status
        assert [a[0] for a in world.az_calls()] == ["login", "logout"]
        assert _credentials(world) == []
        assert not world.stamped("arc")

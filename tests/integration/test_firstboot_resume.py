"""Resume: `firstboot run` (the program) killed with SIGKILL inside and between every step, then run again
until it finishes: it reaches `done`; the az double's log shows `connectedk8s connect` once, and the ARM
double saw the Flux extension's PUT and each Flux configuration's PUT once.

One chain: each run is killed at the next kill point it reaches; stamps persist, so the next run starts
further on. Only the firstboot process is killed (its `az` children run in their own sessions and finish,
as they would when the service's main process crashes): a re-run must wait for what they create, never
create it a second time. Real components: chronyd, dnsmasq, the TLS server and CONNECT proxy of the
preflight world; doubles: Kubernetes API, ARM + Entra ID (the SDK's requests), systemctl, az.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from doubles.arm_double import cluster_id
from doubles.world import World, onboarding_world, run_once

from firstboot import steps

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KillPoint = tuple[str, Callable[[World], bool]]
LOCAL_STEPS = ("metadata", "hostname", "dns", "time", "proxy", "connectivity", "resources")


def _running(step: str, fragment: str = "") -> Callable[[World], bool]:
    def reached(world: World) -> bool:
        status = world.status()
        inside = status.get("state") == "running" and status.get("step") == step
        return (inside and fragment in status.get("message", "")) or world.stamped(step)

    return reached


def _az(*words: str) -> Callable[[World], bool]:
    return lambda world: bool(world.az_calls(*words))


def _put(kind: str) -> Callable[[World], bool]:
    return lambda world: bool(world.arm_writes(kind))


def _stamped(step: str) -> Callable[[World], bool]:
    return lambda world: world.stamped(step)


def kill_points() -> list[KillPoint]:
    """Inside and after every step, in order; the slow steps are entered at their interesting moments."""
    points: list[KillPoint] = []
    for step in LOCAL_STEPS:
        points += [(f"inside {step}", _running(step)), (f"after {step}", _stamped(step))]
    points += [
        ("inside k3s: just started", lambda w: (w.workdir / "systemctl.log").exists()),
        ("inside k3s: waiting for the node", _running("k3s", "waiting for node")),
        ("after k3s", _stamped("k3s")),
        ("inside arc: signing in", _az("login")),
        ("inside arc: connectedk8s connect running", _az("connectedk8s", "connect")),
        ("inside arc: waiting for the agents", _running("arc", "azure-arc pods")),
        ("after arc", _stamped("arc")),
        ("inside flux: extension being created", _put("extensions")),
        ("inside flux: waiting for the controllers", _running("flux", "flux-system pods")),
        ("inside flux: configuration being created", _put("fluxConfigurations")),
        ("after flux", _stamped("flux")),
    ]
    assert [
        p for p in steps.ORDER if not any(name.endswith(p) or f" {p}" in name for name, _ in points)
    ] == []
    return points


def run_until_killed(world: World, name: str, reached: Callable[[World], bool], log: Any) -> int | None:
    """Start `firstboot run`; SIGKILL it once `reached(world)`. None when killed, else its exit code."""
    log.write(f"\n===== run until: {name} =====\n")
    log.flush()
    proc = subprocess.Popen(world.argv("-v"), env=world.env, stdout=log, stderr=log, text=True)
    try:
        while proc.poll() is None:
            if reached(world):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                log.write(f"\n===== killed: {name} =====\n")
                log.flush()
                return None
            time.sleep(0.005)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.allow_subp(all=True)
@pytest.mark.fault(
    "firstboot killed with SIGKILL inside and after each of the ten steps (25 kill points)",
    "each re-run resumes at the first unstamped step; done; connect, extension, Flux create once each",
)
def test_killed_inside_and_between_every_step_resumes_and_creates_once(
    preflight_world: Any, guest_root: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    killed: list[str] = []
    with onboarding_world(preflight_world, guest_root, tmp_path / "world") as world:
        log_path = tmp_path / "runs.log"
        with log_path.open("w") as log:
            points = kill_points()
            for index, (name, reached) in enumerate(points):
                code = run_until_killed(world, name, reached, log)
                # After the last stamp only milliseconds remain before the run exits: a busy machine may
                # not get the kill in; that run must then have finished cleanly.
                if code == 0 and index == len(points) - 1:
                    continue
                assert code is None, f"the run ended ({code}) before kill point {name!r}: {log_path}"
                killed.append(name)
        final = run_once(world)
        assert final.returncode == 0, final.stderr[-3000:]
        assert world.status()["state"] == "done"
        connects = world.az_calls("connectedk8s", "connect")
        extensions = world.arm_writes("extensions")
        names = [r.path.rsplit("/", 1)[1] for r in world.arm_writes("fluxConfigurations")]
        # Every resource was created exactly once, and the orphaned az calls of killed runs completed.
        assert len(connects) == 1, connects
        assert len(extensions) == 1, extensions
        assert names == ["cluster-config"]
        state = json.loads((tmp_path / "world" / "az" / "az-state.json").read_text())
        assert state["clusters"]["rg-edge/arc-node1"]["provisioningState"] == "Succeeded"
        arc = world.config["arc"]
        cluster = world.arm.resource(cluster_id(arc["subscription_id"], "rg-edge", "arc-node1"))
        assert cluster is not None and cluster["properties"]["provisioningState"] == "Succeeded"
        # k3s: started on every attempt that reached the step (idempotent), never failed.
        assert "k3s.service" in (tmp_path / "world" / "systemctl.log").read_text()
    assert len(killed) >= len(kill_points()) - 1
    elapsed = time.monotonic() - started
    assert elapsed < 170, f"kill matrix took {elapsed:.0f} s"

"""Nothing is downloaded at first boot but the Arc agents: every CONNECT that `firstboot run` (the program)
makes through the configured proxy goes to a documented Azure endpoint (firstboot.steps.dns: the list the
dns and connectivity steps preflight, and the README's), and no helm, kubectl or kubelogin download
happens: `az connectedk8s connect` gets the image's helm and K3s's kubectl (HELM_CLIENT_PATH /
KUBECTL_CLIENT_PATH). The control shows the proxy log would catch those downloads: the az double does what
connectedk8s does without the variables (Azure/azure-cli-extensions src/connectedk8s/azext_connectedk8s/
_utils.py: helm from MCR, `az aks install-cli` for kubectl from dl.k8s.io and kubelogin from GitHub).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from doubles.world import SP_SECRET, onboarding_world, run_once

from firstboot.contract import OnboardingConfig
from firstboot.endpoints import endpoints

pytestmark = [pytest.mark.integration]
DOWNLOAD_HOSTS = ("dl.k8s.io:443", "github.com:443", "objects.githubusercontent.com:443")


@pytest.mark.allow_subp(all=True)
def test_first_boot_reaches_only_documented_endpoints(
    preflight_world: Any, guest_root: Path, tmp_path: Path
) -> None:
    proxy = preflight_world.proxy
    with onboarding_world(preflight_world, guest_root, tmp_path / "world") as world:
        run = run_once(world)
        assert run.returncode == 0, run.stderr[-3000:]
        seen = list(proxy.requests)
        connect_env = [e for e in _az_envs(world) if e["argv"][:2] == ["connectedk8s", "connect"]]

        # The control: connectedk8s without the two variables reaches for the download hosts.
        env = {**world.env, "HTTPS_PROXY": proxy.url}
        for key in ("HELM_CLIENT_PATH", "KUBECTL_CLIENT_PATH"):
            env.pop(key, None)
        argv = [
            "az",
            "connectedk8s",
            "connect",
            "-n",
            "other",
            "-g",
            "rg-edge",
            "--kube-config",
            str(world.root / "etc/rancher/k3s/k3s.yaml"),
        ]
        # firstboot signed az out after its connect: the control signs in first.
        secret_file = tmp_path / "sp-secret"
        secret_file.write_text(SP_SECRET)
        arc = world.config["arc"]
        login = ["az", "login", "--service-principal", "-u", arc["client_id"], "-p", f"@{secret_file}"]
        login += ["--tenant", arc["tenant_id"]]
        signed_in = subprocess.run(login, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert signed_in.returncode == 0, signed_in.stderr
        before = len(proxy.requests)
        control = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        fetched = proxy.requests[before:]

    config = OnboardingConfig.model_validate(world.config)
    documented = {f"{e.host}:{e.port}" for e in endpoints(config, environ={})}
    assert seen, "the run made no CONNECT at all: the proxy is not in the path"
    assert set(seen) <= documented, sorted(set(seen) - documented)
    # mcr.microsoft.com is documented (the agents' images): the run reached it no more often than any
    # other endpoint the preflight checks, i.e. never for a helm download.
    counts = Counter(seen)
    assert counts["mcr.microsoft.com:443"] == counts["management.azure.com:443"], counts
    assert not set(seen) & set(DOWNLOAD_HOSTS)
    assert len(connect_env) == 1
    assert Path(connect_env[0]["env"]["HELM_CLIENT_PATH"]).is_file()
    assert Path(connect_env[0]["env"]["KUBECTL_CLIENT_PATH"]).is_file()
    # The control reached for helm on MCR and for kubectl beyond the documented list, and failed there.
    assert "mcr.microsoft.com:443" in fetched and "dl.k8s.io:443" in fetched, (fetched, control.stderr)
    assert control.returncode == 1 and "Failed to download kubectl client" in control.stderr


def _az_envs(world: Any) -> list[dict[str, Any]]:
    from doubles.harness import read_jsonl

    return read_jsonl(world.workdir / "az" / "az-argv.log")

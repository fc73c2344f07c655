"""The doubles themselves: the Kubernetes API double as a standalone program with the real client, and the
az double's documented exit codes, JSON output and faults (what the k3s/arc/flux tests and H5's guest
rely on)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from doubles.harness import DOUBLES, az_env, doubles_path

from firstboot import kube
from firstboot.kube import client


def test_kube_double_standalone_with_the_real_client(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "nodes": [{"name": "node1", "ready_after": 0.3}],
                "pods": [{"namespace": "azure-arc", "name": "config-agent-1", "ready_after": 0.2}],
                "token": "double-token",
            }
        )
    )
    kubeconfig = tmp_path / "etc/rancher/k3s/k3s.yaml"
    argv = [sys.executable, str(DOUBLES / "kube_api.py"), "--port", "0", "--scenario", str(scenario)]
    proc = subprocess.Popen(
        [*argv, "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
        doc = yaml.safe_load(kubeconfig.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == url
        assert doc["users"][0]["user"] == {"token": "double-token"}
        with kube.client_from(kubeconfig) as api:
            core = client.CoreV1Api(api)
            result = kube.wait_until(
                core.list_node,
                lambda objs: kube.node_ready(objs["node1"]) if "node1" in objs else False,
                timeout=5,
            )
            assert result.ok
            pods = kube.wait_until(
                core.list_namespaced_pod,
                lambda objs: bool(objs) and all(kube.pod_ready(p) for p in objs.values()),
                timeout=5,
                args=("azure-arc",),
            )
            assert pods.ok
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kube_double_rejects_a_wrong_token(tmp_path: Path) -> None:
    from doubles.kube_api import KubeServer, write_kubeconfig

    server = KubeServer(scenario={"token": "right"}).start()
    try:
        path = write_kubeconfig(tmp_path / "k.yaml", server.url, token="wrong")
        with kube.client_from(path) as api, pytest.raises(client.ApiException) as info:
            client.CoreV1Api(api).list_node()
        assert info.value.status == 401
    finally:
        server.stop()


def az(
    tmp_path: Path, *args: str, config: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **az_env(tmp_path, config or {}), "PATH": doubles_path()}
    return subprocess.run(["az", *args], env=env, capture_output=True, text=True, timeout=20)


def test_az_double_exit_codes_and_json(tmp_path: Path) -> None:
    version = az(tmp_path, "version")
    assert version.returncode == 0 and "connectedk8s" in json.loads(version.stdout)["extensions"]
    assert az(tmp_path, "connectedk8s", "show", "-n", "c", "-g", "rg").returncode == 1  # not signed in
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    login = az(tmp_path, "login", "--service-principal", "-u", "app", "-p", f"@{secret}", "--tenant", "t",
               config={"secret": "s3cret"})  # fmt: skip
    assert login.returncode == 0 and json.loads(login.stdout)[0]["user"]["type"] == "servicePrincipal"
    missing = az(tmp_path, "connectedk8s", "show", "-n", "c", "-g", "rg")
    assert missing.returncode == 3
    assert "(ResourceNotFound)" in missing.stderr and missing.stderr.startswith("ERROR: ")
    assert az(tmp_path, "connectedk8s", "frobnicate").returncode == 2
    # Options the pinned connectedk8s does not define (data/az_connectedk8s_params.json): refused as az does.
    undefined = az(tmp_path, "connectedk8s", "connect", "-n", "c", "-g", "rg", "--kubeconfig", "k")
    assert undefined.returncode == 2 and "unrecognized arguments: --kubeconfig" in undefined.stderr
    assert az(tmp_path, "connectedk8s", "show", "-n", "c", "-g", "rg", "--kube-config", "k").returncode == 2
    bad = az(tmp_path, "login", "--service-principal", "-u", "app", "-p", "wrong", "--tenant", "t",
             config={"secret": "s3cret"})  # fmt: skip
    assert bad.returncode == 1 and "AADSTS7000215" in bad.stderr
    log = [json.loads(line)["argv"] for line in (tmp_path / "az-argv.log").read_text().splitlines()]
    assert log[0] == ["version"] and len(log) == 8


def test_az_double_logs_what_it_cost_beyond_its_latency(tmp_path: Path) -> None:
    """The overhead bench charges firstboot with wall time minus the simulated latencies minus what the
    double itself cost (its interpreter start and work): AZ_DOUBLE_TIMES must bracket the call."""
    before = time.monotonic()
    login = az(tmp_path, "login", "--service-principal", "-u", "a", "-p", "x", "--tenant", "t",
               config={"latency": {"login": 0.3}})  # fmt: skip
    bad = az(tmp_path, "connectedk8s", "frobnicate")
    after = time.monotonic()
    assert login.returncode == 0 and bad.returncode == 2
    times = [json.loads(line) for line in (tmp_path / "az-times.log").read_text().splitlines()]
    assert [t["argv"][0] for t in times] == ["login", "connectedk8s"]  # a refused call is logged too
    assert [t["slept"] for t in times] == [0.3, 0]
    first, second = times
    assert before <= first["started"] < first["ended"] <= second["started"] < second["ended"] <= after
    # The double's own share: positive, and the latency is not part of it.
    assert 0 < first["ended"] - first["started"] - first["slept"] < (after - before) - 0.3


def test_az_double_keeps_the_sp_secret_on_disk_until_logout(tmp_path: Path) -> None:
    """As az does (azure-cli auth/identity.py, cited in the double): a service principal sign-in saves its
    secret in service_principal_entries.json and a token in msal_token_cache.json in AZURE_CONFIG_DIR;
    `az logout` removes both entries but leaves the files."""
    config_dir = tmp_path / "azure-config"
    store, cache = config_dir / "service_principal_entries.json", config_dir / "msal_token_cache.json"
    login = az(tmp_path, "login", "--service-principal", "-u", "app", "-p", "s3cret-value", "--tenant", "t")
    assert login.returncode == 0, login.stderr
    entry = {"client_id": "app", "tenant": "t", "client_secret": "s3cret-value"}
    assert json.loads(store.read_text()) == [entry]
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    tokens = json.loads(cache.read_text())["AccessToken"]
    assert [t["client_id"] for t in tokens.values()] == ["app"]
    out = az(tmp_path, "logout", "--username", "app")
    assert out.returncode == 0, out.stderr
    assert store.exists() and json.loads(store.read_text()) == []
    assert cache.exists() and json.loads(cache.read_text())["AccessToken"] == {}
    assert "s3cret-value" not in store.read_text() + cache.read_text()
    again = az(tmp_path, "logout")
    assert again.returncode == 1 and "There are no active accounts." in again.stderr


def test_az_double_faults(tmp_path: Path) -> None:
    codes = [az(tmp_path, "login", "--service-principal", "-u", "a", "-p", "x", "--tenant", "t").returncode]
    faults = [{"command": "connectedk8s show", "mode": "transient", "times": 2}]
    for _ in range(3):
        result = az(tmp_path, "connectedk8s", "show", "-n", "c", "-g", "rg", config={"faults": faults})
        codes.append(result.returncode)
    assert codes == [0, 1, 1, 3]
    assert "ServiceUnavailable" in result.stderr or "ResourceNotFound" in result.stderr
    rg = az(tmp_path, "connectedk8s", "show", "-n", "c", "-g", "rg", config={"resource_groups": ["other"]})
    assert rg.returncode == 1 and "(ResourceGroupNotFound)" in rg.stderr
    env = {**os.environ, **az_env(tmp_path, {"faults": [{"command": "connectedk8s", "mode": "hang"}]})}
    env["PATH"] = doubles_path()
    hung = subprocess.Popen(["az", "connectedk8s", "show", "-n", "c", "-g", "rg"], env=env)
    with pytest.raises(subprocess.TimeoutExpired):
        hung.wait(timeout=1.5)
    hung.kill()
    hung.wait()

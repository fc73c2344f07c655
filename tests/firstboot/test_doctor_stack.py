"""doctor's full stack and its support bundle, against the Kubernetes API double, the az double (after a
real arc step) and the timedatectl/journalctl/firewall-cmd/systemctl doubles on PATH (through subp)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles.arm_double import ArmDouble
from doubles.harness import (
    GIT_KEY,
    K3S_TOKEN,
    SP_SECRET,
    arc_pods,
    az_ctx,
    cluster_scenario,
    kube_double,
    make_secrets,
)
from doubles.kube_api import KubeServer
from fixtures.firstboot_plugin import Pki

from firstboot import bundle, doctor, kube, secretstore, stackchecks
from firstboot.step import Context
from firstboot.steps import arc, flux

pytestmark = pytest.mark.allow_subp("az", "systemctl", "timedatectl", "firewall-cmd", "journalctl")
kube._import_apis()

# K3s's own Corefile (k3s-io/k3s manifests/coredns.yaml, v1.31): forwards to the resolv.conf K3s passes.
COREFILE = """.:53 {
    errors
    health
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    hosts /etc/coredns/NodeHosts {
      ttl 60
      reload 15s
      fallthrough
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}
import /etc/coredns/custom/*.server
"""
HEALTHY: dict[str, Any] = {
    "timedatectl": {"NTP": "yes", "NTPSynchronized": "yes"},
    "firewalld": {
        "zones": {
            "trusted": {"target": "ACCEPT", "sources": ["10.42.0.0/16", "10.43.0.0/16"]},
            "public": {"target": "default", "services": ["ssh"], "ports": ["6443/tcp", "10250/tcp"]},
        }
    },
}


@pytest.fixture
def cluster() -> Iterator[KubeServer]:
    scenario = cluster_scenario(0, 0)
    scenario["configmaps"] = [{"namespace": "kube-system", "name": "coredns", "data": {"Corefile": COREFILE}}]
    with kube_double(scenario) as server:
        yield server


def host(ctx: Context, tmp_path: Path, state: dict[str, Any], chronyd: str = "active") -> None:
    """Point the host-tool doubles of `ctx` at `state` (chronyd's unit state in the systemctl double)."""
    (tmp_path / "host.json").write_text(json.dumps(state))
    (tmp_path / "units.json").write_text(json.dumps({"chronyd": chronyd}))
    ctx.env = {
        **ctx.env,
        "HOSTTOOLS_DOUBLE_STATE": str(tmp_path / "host.json"),
        "SYSTEMCTL_DOUBLE_STATE": str(tmp_path / "units.json"),
    }


@pytest.fixture
def ctx(tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki) -> Context:
    """A connected server (real arc step against the doubles) on a healthy host."""
    context = az_ctx(tmp_path, cluster, {"arc_pods": arc_pods(0.0)}, arm=arm, ca=pki.ca.cert)
    arc.run(context)
    # Onboarding in progress: the secrets are held, so doctor reads Azure with the service principal.
    assert context.secrets is not None
    secretstore.accept(context.root, context.instance_id, context.secrets)
    host(context, tmp_path, HEALTHY)
    return context


def by_name(ctx: Context) -> dict[str, Any]:
    return {f.step: f.result for f in doctor.diagnose(ctx, [], stackchecks.CHECKS)}


def arm_session(ctx: Context) -> Any:
    from firstboot import arm

    return arm.session(ctx)


def test_a_healthy_stack_is_all_ok_but_flux_which_is_not_installed_yet(ctx: Context) -> None:
    results = by_name(ctx)
    assert list(results) == [c.name for c in stackchecks.CHECKS]
    for name in ("timedatectl", "chronyd", "firewall", "coredns", "arc-agents"):
        assert results[name].ok, (name, results[name])
    assert not results["flux-extension"].ok
    assert results["flux-extension"].message == "the Flux extension is not installed"
    flux.ensure_extension(ctx, arm_session(ctx), ctx.require_config())
    assert by_name(ctx)["flux-extension"].ok


@pytest.mark.parametrize(
    ("name", "state", "chronyd", "message", "remedy"),
    [
        ("timedatectl", {"timedatectl": {"NTP": "no", "NTPSynchronized": "no"}}, "active",
         "NTP is off", "timedatectl set-ntp true"),
        ("timedatectl", {"timedatectl": {"NTP": "yes", "NTPSynchronized": "no"}}, "active",
         "not synchronised yet", "chronyc sources -v"),
        ("chronyd", HEALTHY, "failed", "chronyd is failed", "systemctl enable --now chronyd"),
        ("chronyd", HEALTHY, "inactive", "chronyd is inactive", "systemctl enable --now chronyd"),
        ("firewall", {"firewalld": {"running": False}}, "active", "firewalld is not running",
         "systemctl enable --now firewalld"),
        ("firewall", {"firewalld": {"zones": {"trusted": {"sources": ["10.42.0.0/16"]}, "public": {}}}},
         "active", "lacks the K3s range(s) 10.43.0.0/16", "--zone=trusted --add-source=10.43.0.0/16"),
        ("firewall", {"firewalld": {"zones": {**HEALTHY["firewalld"]["zones"], "public": {"ports": []}}}},
         "active", "does not open 6443/tcp", "--add-port=6443/tcp"),
    ],
)  # fmt: skip
def test_host_links_report_the_problem_and_the_remedy(
    ctx: Context, tmp_path: Path, name: str, state: dict[str, Any], chronyd: str, message: str, remedy: str
) -> None:
    host(ctx, tmp_path, state, chronyd)
    result = by_name(ctx)[name]
    assert not result.ok and result.conclusive
    assert message in result.message and remedy in (result.remedy or "")


def test_a_missing_tool_is_inconclusive(ctx: Context) -> None:
    ctx.env = {**ctx.env, "PATH": "/nonexistent"}
    result = by_name(ctx)["timedatectl"]
    assert not result.ok and not result.conclusive and "installed" in (result.remedy or "")


@pytest.mark.parametrize(
    ("configmaps", "message", "remedy"),
    [
        ([{"name": "coredns-custom",
           "data": {"upstream.override": "forward . 8.8.8.8\n", "log.override": "log"}}],
         "coredns-custom sets forward in upstream.override", "dns.pod_upstream_servers"),
        ([{"name": "coredns",
           "data": {"Corefile": COREFILE.replace("    forward . /etc/resolv.conf\n", "")}}],
         "has no forward", "delete the ConfigMap"),
    ],
)  # fmt: skip
def test_coredns_configmaps(
    ctx: Context, cluster: KubeServer, configmaps: list[dict[str, Any]], message: str, remedy: str
) -> None:
    for cm in configmaps:
        cluster.store.put("ConfigMap", "kube-system", cm["name"], {"data": cm["data"]})
    result = by_name(ctx)["coredns"]
    assert not result.ok and message in result.message and remedy in (result.remedy or "")


def test_coredns_custom_without_forward_is_fine(ctx: Context, cluster: KubeServer) -> None:
    cluster.store.put("ConfigMap", "kube-system", "coredns-custom", {"data": {"log.override": "log\n"}})
    assert by_name(ctx)["coredns"].ok


def test_no_coredns_configmap(tmp_path: Path, arm: ArmDouble, pki: Pki) -> None:
    with kube_double(cluster_scenario(0, 0)) as server:
        context = az_ctx(tmp_path, server, {}, arm=arm, ca=pki.ca.cert)
        host(context, tmp_path, HEALTHY)
        result = by_name(context)["coredns"]
    assert not result.ok and "no coredns ConfigMap" in result.message


def test_arc_agent_errors_come_with_their_recent_log_lines(ctx: Context, cluster: KubeServer) -> None:
    log = "I1202 starting\nE1202 error: x509: certificate signed by unknown authority\nI1202 retrying\n"
    cluster.store.put(
        "Pod",
        "azure-arc",
        "cluster-metadata-operator-5d9f",
        {"containers": ["manager", "proxy"], "logs": {"manager": log},
         "fail": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}},
    )  # fmt: skip
    result = by_name(ctx)["arc-agents"]
    assert not result.ok
    assert "azure-arc/cluster-metadata-operator-5d9f: CrashLoopBackOff" in result.message
    assert "manager: E1202 error: x509: certificate signed by unknown authority" in result.message
    assert "I1202 retrying" not in result.message
    assert "certificate" in (result.remedy or "")
    # The log route enforces the real API's container rule: both containers were asked by name.
    logs = [r for r in cluster.store.requests if r["path"].endswith("/log")]
    assert sorted(r["query"]["container"] for r in logs) == ["manager", "proxy"]


def test_without_held_secrets_azure_reads_are_inconclusive(ctx: Context) -> None:
    secretstore.retire(ctx.root, ctx.instance_id)
    result = by_name(ctx)["flux-extension"]
    assert not result.ok and not result.conclusive
    assert "not read from Azure" in result.message and "builder rotate" in (result.remedy or "")


def test_flux_extension_failed_names_the_error_and_the_delete(ctx: Context, arm: ArmDouble) -> None:
    flux.ensure_extension(ctx, arm_session(ctx), ctx.require_config())
    for doc in arm.state.resources.values():
        if doc["type"] == "Microsoft.KubernetesConfiguration/extensions":
            doc["properties"].update(provisioningState="Failed", errorMessage="helm install timed out")
    result = by_name(ctx)["flux-extension"]
    assert not result.ok and result.message == "the Flux extension is Failed: helm install timed out"
    assert "az k8s-extension delete --name flux" in (result.remedy or "")


# -- the bundle ---------------------------------------------------------------------------------------------
PEM = (
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQx3kLrQ9PlantedCertLineOne0000\n"
    "MAoGCCqGSM49BAMCMBIxEDAOBgNVBAMMB3BsYW50ZWRTecondLine\n-----END CERTIFICATE-----\n"
)
FILE_ONLY_TOKEN = "token-only-in-the-file-Qp7w"
HELD_ONLY_SECRET = "held-generation-secret-Vb2k"


def _plant(ctx: Context, tmp_path: Path, cluster: KubeServer) -> list[str]:
    """Secret values where a careless bundle would pick them up; returns every value that must not leak."""
    # guestinfo holds an older generation than the instance's file: doctor uses the newer, the bundle
    # redacts both.
    older = make_secrets(k3s_token=K3S_TOKEN, generation=3).revealed()
    ctx.source.set("guestinfo.arcbake.secrets", json.dumps(older))
    secretstore.accept(
        ctx.root, ctx.instance_id,
        make_secrets(sp_secret=HELD_ONLY_SECRET, sp_certificate_pem=PEM, generation=7),
    )  # fmt: skip
    token = ctx.path("/var/lib/arcbake/k3s-token")
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(FILE_ONLY_TOKEN + "\n")
    pem_line = PEM.splitlines()[1]
    journal = {
        "arcbake-firstboot.service": [
            f"INFO firstboot.steps.arc: az login --password {SP_SECRET}",
            f"ERROR held secret {HELD_ONLY_SECRET} rejected; cert line {pem_line}",
        ],
        "k3s": [f'level=info msg="token {K3S_TOKEN} / {FILE_ONLY_TOKEN}"'],
        "chronyd": ["Selected source 127.0.0.1"],
    }
    host(ctx, tmp_path, {**HEALTHY, "journal": journal})
    config = ctx.path("/etc/rancher/k3s/config.yaml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"selinux: true\n# token: {K3S_TOKEN}\n")
    cluster.store.put(
        "Pod", "flux-system", "source-controller-7f8c",
        {"ready_after": 0, "containers": ["manager"], "logs": {"manager": f"git auth with {GIT_KEY}\n"}},
    )  # fmt: skip
    return [SP_SECRET, GIT_KEY, K3S_TOKEN, FILE_ONLY_TOKEN, HELD_ONLY_SECRET, pem_line, PEM.splitlines()[2]]


def _members(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {
            m.name.removeprefix("arcbake-bundle/"): tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_bundle_holds_the_stack_with_every_secret_value_redacted(
    ctx: Context, tmp_path: Path, cluster: KubeServer
) -> None:
    leaks = _plant(ctx, tmp_path, cluster)
    findings = doctor.diagnose(ctx, [], stackchecks.CHECKS)
    report = {"healthy": all(f.result.ok for f in findings), "checks": [f.as_dict() for f in findings]}
    old = os.umask(0)
    try:
        out = bundle.write(tmp_path / "b.tar.gz", bundle.collect(ctx, report), bundle.secret_values(ctx))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o600
    members = _members(out)
    for name in ("doctor.json", "MANIFEST.txt", "journal/firstboot.log", "journal/k3s.log",
                 "journal/chronyd.log", "commands/timedatectl-show.txt",
                 "commands/firewall-cmd-list-all-trusted.txt", "files/etc/rancher/k3s/config.yaml",
                 "pods/flux-system/source-controller-7f8c_manager.log"):  # fmt: skip
        assert name in members, sorted(members)
    assert any(n.startswith("pods/azure-arc/") for n in members)
    assert json.loads(members["doctor.json"])["checks"][0]["step"] == "timedatectl"
    assert "10.42.0.0/16" in members["commands/firewall-cmd-list-all-trusted.txt"]
    assert "az login --password ***" in members["journal/firstboot.log"]
    # Never collected: the kubeconfig (client key), the secrets file, the token file.
    assert not [n for n in members if n.endswith(("k3s.yaml", "secrets.json", "k3s-token"))]
    everything = "\n".join([*members, *members.values()])
    for value in leaks:
        assert value not in everything, value
    raw = out.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert all(m.mode == 0o600 for m in tar.getmembers())


@pytest.mark.allow_subp("az", "systemctl", "timedatectl", "firewall-cmd", "journalctl", "chronyc")
def test_cli_doctor_bundle_writes_0600_and_names_it(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from doubles.harness import DictSource
    from fixtures.guestinfo import write_metadata

    from firstboot import cli

    assert isinstance(ctx.source, DictSource)
    meta = write_metadata(
        tmp_path / "meta.json", ctx.require_config().model_dump(mode="json"),
        secrets={"sp_secret": SP_SECRET}, instance_id="iid-test",
    )  # fmt: skip
    for key, value in ctx.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ARCBAKE_TIME_SCALE", "0.01")
    os.umask(0o022)
    target = tmp_path / "support.tar.gz"
    code = cli.main(["doctor", "--root", str(ctx.root), "--source", f"file:{meta}", "--format", "json",
                     "--bundle", str(target)])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert code == (0 if doc["healthy"] else 1)
    assert doc["bundle"] == str(target)
    assert target.stat().st_mode & 0o777 == 0o600
    assert SP_SECRET not in "".join(_members(target).values())

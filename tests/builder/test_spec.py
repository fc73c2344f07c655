"""Image spec: parametrised (yaml, path, line, message) error tables, and the derived values."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from spec_base import BASE, variant

from builder.spec import MIN_DISK_GIB, ImageSpec, SpecError, load_spec, parse_spec, spec_warnings
from firstboot import located_yaml, sizing
from firstboot.located_yaml import InputError, Issue, load_located
from firstboot.steps import resources


def parse(text: str) -> ImageSpec:
    return parse_spec(load_located(text, "spec.yaml"))


def issues_of(text: str) -> list[Issue]:
    # YAML problems surface as InputError (SpecError's base) before the models run.
    with pytest.raises(InputError) as info:
        parse(text)
    return info.value.issues


def test_base_is_valid() -> None:
    spec = parse(BASE)
    assert spec.os.variant == "rocky9"
    assert str(spec.k3s.cluster_cidr) == "10.42.0.0/16"
    assert [str(s) for s in spec.dns.pod_upstream_servers] == ["1.1.1.1", "1.0.0.1"]
    assert spec.hardware.firmware.value == "efi"


# (case id, yaml, dotted path, line, message fragment)
ERRORS = [
    ("distro", variant("distro: rocky", "distro: debian"), "os.distro", 2, "'rocky' or 'rhel'"),
    ("major", variant("major: 9", "major: 7"), "os.major", 3, "8 or 9"),
    (
        "k3s-latest",
        variant("version: v1.31.4+k3s1", "version: latest"),
        "k3s.version",
        14,
        "exact K3s release",
    ),
    (
        "k3s-channel",
        variant("version: v1.31.4+k3s1", "version: stable"),
        "k3s.version",
        14,
        "exact K3s release",
    ),
    ("k3s-range", variant("version: v1.31.4+k3s1", "version: '>=v1.31'"), "k3s.version", 14, "exact K3s"),
    ("k3s-no-suffix", variant("version: v1.31.4+k3s1", "version: v1.31.4"), "k3s.version", 14, "exact K3s"),
    (
        "sha-short",
        variant("binary: " + "a" * 64, "binary: abc123"),
        "k3s.sha256.binary",
        16,
        "64 lowercase hex",
    ),
    (
        "sha-upper",
        variant("binary: " + "a" * 64, "binary: " + "A" * 64),
        "k3s.sha256.binary",
        16,
        "64 lowercase",
    ),
    ("sha-int", variant("binary: " + "a" * 64, "binary: 12345"), "k3s.sha256.binary", 16, "must be a string"),
    (
        "sha-missing",
        variant("    install_script: " + "c" * 64 + "\n", ""),
        "k3s.sha256.install_script",
        15,
        "required key is missing",
    ),
    (
        "ntp-empty",
        variant("ntp_servers: [ntp.example.org]", "ntp_servers: []"),
        "time.ntp_servers",
        20,
        "at least 1",
    ),
    (
        "ntp-missing",
        variant("  ntp_servers: [ntp.example.org]\n", "  makestep: {limit: 3}\n"),
        "time.ntp_servers",
        19,
        "required key is missing",
    ),
    (
        "unknown-key",
        variant("  network: VM Network\n", "  network: VM Network\n  netwrk: x\n"),
        "vsphere.netwrk",
        12,
        "unknown key (allowed: datacenter, cluster, host, resource_pool, datastore",
    ),
    (
        "vsphere-password",
        variant("  network: VM Network\n", "  network: VM Network\n  password: hunter2\n"),
        "vsphere.password",
        12,
        "credentials never go into the spec",
    ),
    (
        "vsphere-user",
        variant("  network: VM Network\n", "  network: VM Network\n  user: admin\n"),
        "vsphere.user",
        12,
        "credentials never go into the spec",
    ),
    (
        "name-no-date",
        variant("template_name: rocky9-k3s-{date}", "template_name: rocky9-k3s"),
        "vsphere.template_name",
        12,
        "{date} or {timestamp}",
    ),
    (
        "name-bad-placeholder",
        variant("template_name: rocky9-k3s-{date}", "template_name: rocky9-{when}"),
        "vsphere.template_name",
        12,
        "unknown placeholder",
    ),
    (
        "name-bad-chars",
        variant("template_name: rocky9-k3s-{date}", "template_name: 'rocky 9/{date}'"),
        "vsphere.template_name",
        12,
        "only letters",
    ),
    (
        "cluster-and-host",
        variant("  cluster: DC0_C0\n", "  cluster: DC0_C0\n  host: DC0_H0\n"),
        "vsphere",
        7,
        "exactly one of cluster or host",
    ),
    (
        "iso-and-clone",
        variant(
            "    template: DC0_H0_VM0\n", "    template: DC0_H0_VM0\n  iso: {datastore_path: '[ds] a.iso'}\n"
        ),
        "source",
        4,
        "exactly one of source.iso or source.clone",
    ),
    (
        "iso-url-no-checksum",
        variant("  clone:\n    template: DC0_H0_VM0\n", "  iso:\n    url: https://x.example/a.iso\n"),
        "source.iso",
        5,
        "needs a checksum",
    ),
    (
        "cpus-low",
        variant("build:\n", "hardware: {cpus: 1}\nbuild:\n"),
        "hardware.cpus",
        28,
        "greater than or equal to 2",
    ),
    (
        "memory-low",
        variant("build:\n", "hardware: {memory_mib: 2048}\nbuild:\n"),
        "hardware.memory_mib",
        28,
        "greater than or equal to 4096",
    ),
    (
        "disk-low",
        variant("build:\n", "hardware: {disk_gib: 20}\nbuild:\n"),
        "hardware.disk_gib",
        28,
        "firstboot's resources check needs (the image takes up to 8 GiB): give at least 28",
    ),
    (
        "dns-outside",
        variant("  version: v1.31.4+k3s1\n", "  version: v1.31.4+k3s1\n  cluster_dns: 10.44.0.10\n"),
        "k3s",
        13,
        "outside service_cidr",
    ),
    (
        "cidr-overlap",
        variant("  version: v1.31.4+k3s1\n", "  version: v1.31.4+k3s1\n  cluster_cidr: 10.43.0.0/17\n"),
        "k3s",
        13,
        "overlaps service_cidr",
    ),
    (
        "cidr-invalid",
        variant("  version: v1.31.4+k3s1\n", "  version: v1.31.4+k3s1\n  service_cidr: 10.43.0.1/16\n"),
        "k3s.service_cidr",
        15,
        "not a valid IPv4 network",
    ),
    (
        "disable-unknown",
        variant("  version: v1.31.4+k3s1\n", "  version: v1.31.4+k3s1\n  disable: [coredns]\n"),
        "k3s.disable.0",
        15,
        "traefik",
    ),
    (
        "selinux-off",
        variant("  version: v1.31.4+k3s1\n", "  version: v1.31.4+k3s1\n  selinux: false\n"),
        "k3s.selinux",
        15,
        "True",
    ),
    (
        "resolver-bad",
        variant("build:\n", "dns: {pod_upstream_servers: [1.1.1.1, dns.example]}\nbuild:\n"),
        "dns.pod_upstream_servers.1",
        28,
        "not a valid IPv4 or IPv6",
    ),
    (
        "profile-bad",
        variant("build:\n", "firewall: {profile: cluster}\nbuild:\n"),
        "firewall.profile",
        28,
        "'single-node', 'multi-node' or 'ha-etcd'",
    ),
    (
        "port-range",
        variant("build:\n", "firewall: {extra_ports: [{port: 9000-8000}]}\nbuild:\n"),
        "firewall.extra_ports.0.port",
        28,
        "low-high",
    ),
    (
        "trusted-missing-cidr",
        variant("build:\n", "firewall: {trusted_sources: [10.42.0.0/16]}\nbuild:\n"),
        "",
        1,
        "must include the k3s CIDRs 10.43.0.0/16",
    ),
    (
        "proxy-credentials",
        variant("build:\n", "proxy: {http_proxy: 'http://bob:pw@proxy:3128'}\nbuild:\n"),
        "proxy.http_proxy",
        28,
        "proxy credentials may not be written",
    ),
    (
        "proxy-ca-not-pem",
        variant("build:\n", "proxy: {ca_bundle_pem: 'hello'}\nbuild:\n"),
        "proxy.ca_bundle_pem",
        28,
        "PEM",
    ),
    ("rhsm-on-rocky", variant("build:\n", "rhsm: {}\nbuild:\n"), "", 1, "rhsm applies to rhel only"),
    ("rhel-no-rhsm", variant("distro: rocky", "distro: rhel"), "", 1, "rhel needs an rhsm section"),
    (
        "rhsm-org-value",
        variant("distro: rocky", "distro: rhel").replace("build:\n", "rhsm: {org_env: '12345678'}\nbuild:\n"),
        "rhsm.org_env",
        28,
        "never the secret value itself",
    ),
    (
        "rhsm-key-value",
        variant("distro: rocky", "distro: rhel").replace(
            "build:\n", "rhsm: {activation_key_env: my-activation-key}\nbuild:\n"
        ),
        "rhsm.activation_key_env",
        28,
        "never the secret value itself",
    ),
    (
        "rhsm-password-key",
        variant("distro: rocky", "distro: rhel").replace(
            "build:\n", "rhsm:\n  activation_key: abc\nbuild:\n"
        ),
        "rhsm.activation_key",
        29,
        "credentials never go into the spec",
    ),
    (
        "private-key-in-build",
        variant("  communicator: none\n", "  communicator: none\n  ssh_private_key: abc\n"),
        "build.ssh_private_key",
        30,
        "credentials never go into the spec",
    ),
    (
        "az-not-exact",
        variant("cli_version: 2.67.0", "cli_version: latest"),
        "azure.cli_version",
        22,
        "exact version X.Y.Z",
    ),
    (
        "az-ext-float",
        variant("connectedk8s: 1.10.5", "connectedk8s: 1.10"),
        "azure.extensions.connectedk8s",
        24,
        "must be a string",
    ),
    (
        "publish-nowhere",
        variant("build:\n", "publish: {convert_to_template: false}\nbuild:\n"),
        "publish",
        28,
        "publish nowhere",
    ),
    (
        # hashicorp/packer-plugin-vsphere builder/vsphere/{iso,clone}/config.go (content_library_destination):
        # "The import doesn't work if convert_to_template is set to true."
        "library-and-convert",
        variant("build:\n", "publish: {convert_to_template: true, content_library: {name: lib1}}\nbuild:\n"),
        "publish",
        28,
        "cannot be combined with convert_to_template: true",
    ),
    (
        "keep-zero",
        variant("build:\n", "publish: {keep: 0}\nbuild:\n"),
        "publish.keep",
        28,
        "greater than or equal to 1",
    ),
    (
        "communicator",
        variant("communicator: none", "communicator: winrm"),
        "build.communicator",
        29,
        "'ssh' or 'none'",
    ),
    (
        "ssh-iso-no-key",
        variant("  clone:\n    template: DC0_H0_VM0\n", "  iso:\n    datastore_path: '[ds] a.iso'\n").replace(
            "communicator: none", "communicator: ssh"
        ),
        "",
        1,
        "needs build.ssh_public_key",
    ),
    ("schema-version", "schema_version: 2\n" + BASE, "schema_version", 1, "1"),
    ("not-a-mapping", "- a\n- b\n", "", 1, "must be a YAML mapping"),
    # Issue 8: YAML booleans are not numbers, option-like host names never reach the kickstart.
    (
        "keep-true",
        variant("build:\n", "publish: {keep: true}\nbuild:\n"),
        "publish.keep",
        28,
        "valid integer",
    ),
    (
        "ntp-option",
        variant("ntp_servers: [ntp.example.org]", "ntp_servers: ['--help']"),
        "time.ntp_servers.0",
        20,
        "not starting with '-'",
    ),
    (
        "proxy-injection",
        variant("build:\n", "proxy: {http_proxy: \"http://p:3128';touch${IFS}/tmp/x;'\"}\nbuild:\n"),
        "proxy.http_proxy",
        28,
        "must be http(s)://host[:port]",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "line", "fragment"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_error_table(text: str, path: str, line: int, fragment: str) -> None:
    issues = issues_of(text)
    matching = [i for i in issues if i.path == path]
    assert matching, f"no issue at {path!r}: {[str(i) for i in issues]}"
    assert any(fragment in i.message for i in matching), [str(i) for i in matching]
    assert matching[0].line == line, str(matching[0])
    assert str(matching[0]).startswith(f"spec.yaml:{line}: ")


def test_every_error_at_once() -> None:
    text = (
        variant("distro: rocky", "distro: debian")
        .replace("version: v1.31.4+k3s1", "version: latest")
        .replace("ntp_servers: [ntp.example.org]", "ntp_servers: []")
        .replace("cli_version: 2.67.0", "cli_version: newest")
    )
    paths = [i.path for i in issues_of(text)]
    assert paths == ["os.distro", "k3s.version", "time.ntp_servers", "azure.cli_version"]


def test_missing_sections_point_at_the_parent() -> None:
    issues = issues_of("os: {distro: rocky, major: 9}\n")
    assert {i.path for i in issues} == {"source", "vsphere", "k3s", "time", "azure"}
    assert {i.line for i in issues} == {1}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("os:\n  distro: [rocky\n", 3, "YAML syntax error"),
        ("os:\n  distro: rocky\n major: 9\n", 3, "YAML syntax error"),
        ("os: {distro: rocky}\nos: {major: 9}\n", 2, "duplicate key"),
        ("a: 'unterminated\n", 2, "YAML syntax error"),
        ("os:\n  distro: rocky\n\tmajor: 9\n", 3, "YAML syntax error"),
    ],
)
def test_yaml_errors_have_lines(text: str, line: int, fragment: str) -> None:
    issues = issues_of(text)
    assert len(issues) == 1
    assert issues[0].line == line
    assert fragment in issues[0].message


def test_yaml_is_composed_by_libyaml_with_the_same_lines() -> None:
    # The dev environment's PyYAML wheel carries libyaml; its nodes keep their lines like PyYAML's own.
    assert yaml.__with_libyaml__ and located_yaml._LOADER is yaml.CSafeLoader
    located = load_located("a:\n  b: 1\n  c:\n    - x\n    - y\n", "f.yaml")
    assert located.data == {"a": {"b": 1, "c": ["x", "y"]}}
    lines = {(): 1, ("a",): 1, ("a", "b"): 2, ("a", "c"): 3, ("a", "c", 0): 4, ("a", "c", 1): 5}
    assert located.lines == lines


def test_what_libyaml_refuses_is_read_as_pure_pyyaml_reads_it() -> None:
    # A lone surrogate escape in JSON: libyaml rejects it, PyYAML (as before the C loader) reads it.
    assert load_located('{"a": "\\ud800"}', "f.json").data == {"a": "\ud800"}


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    path.write_text(variant("major: 9", "major: 10"), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:3: os.major: Input should be 8 or 9"


def test_unreadable_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)


def test_small_hardware_warns_but_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "image.yaml"
    path.write_text(BASE, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        spec = load_spec(path)
    assert spec.hardware.cpus == 2
    assert spec_warnings(spec) == [
        "hardware.cpus: 2 is below the recommended 4",
        "hardware.memory_mib: 4096 is below the recommended 8192",
    ]
    assert "below the recommended 4" in caplog.text
    big = parse(variant("build:\n", "hardware: {cpus: 4, memory_mib: 8192}\nbuild:\n"))
    assert spec_warnings(big) == []


def test_template_name_and_prune_pattern() -> None:
    spec = parse(variant("rocky9-k3s-{date}", "'{os}-k3s-{k3s}-{timestamp}'"))
    now = datetime(2026, 11, 26, 5, 7, tzinfo=UTC)
    name = spec.template_name(now)
    assert name == "rocky9-k3s-v1-31-4-k3s1-202611260507"
    pattern = spec.template_name_regex()
    assert pattern.match(name)
    assert not pattern.match("rhel9-k3s-v1-31-4-k3s1-202611260507")
    assert not pattern.match("rocky9-k3s-v1-31-4-k3s1-2026112605")


def test_no_proxy_is_completed() -> None:
    spec = parse(
        variant("build:\n", "proxy: {https_proxy: 'http://proxy:3128', no_proxy: [.corp]}\nbuild:\n")
    )
    no_proxy = spec.proxy_environment["NO_PROXY"].split(",")
    assert no_proxy[-1] == ".corp"
    assert {"10.42.0.0/16", "10.43.0.0/16", ".svc", ".cluster.local", "localhost"} <= set(no_proxy)
    assert spec.proxy_environment["no_proxy"] == spec.proxy_environment["NO_PROXY"]


def test_content_library_alone_does_not_convert() -> None:
    spec = parse(variant("build:\n", "publish: {content_library: {name: lib1}}\nbuild:\n"))
    assert spec.publish.convert_to_template is False and spec.publish.content_library is not None
    assert parse(BASE).publish.convert_to_template is True


def test_defaults_line_up_with_the_onboarding_contract() -> None:
    from firstboot.contract import DnsConfig, K3sConfig

    spec = parse(BASE)
    contract = K3sConfig()
    assert spec.k3s.cluster_cidr == contract.cluster_cidr
    assert spec.k3s.service_cidr == contract.service_cidr
    assert spec.k3s.cluster_dns == contract.cluster_dns
    assert [str(s) for s in spec.dns.pod_upstream_servers] == [
        str(s) for s in DnsConfig().pod_upstream_servers
    ]


IMAGE_EXAMPLES = sorted(
    p for p in (Path(__file__).resolve().parents[2] / "examples").glob("*.yaml") if "fleet" not in p.name
)


def test_examples_cover_every_variant() -> None:
    assert {p.stem for p in IMAGE_EXAMPLES} >= {"rocky8", "rocky9", "rhel8", "rhel9", "demo-image"}


@pytest.mark.parametrize("path", IMAGE_EXAMPLES, ids=[p.stem for p in IMAGE_EXAMPLES])
def test_image_examples_are_valid(path: Path) -> None:
    assert isinstance(load_spec(path), ImageSpec)


def test_default_disk_leaves_a_clone_what_firstboot_checks() -> None:
    """The old default (20 GiB) failed every clone's resources check; spec and firstboot now share one
    source (firstboot/sizing.py)."""
    spec = parse(BASE)
    free_gib = spec.hardware.disk_gib - sizing.IMAGE_FOOTPRINT_GIB
    clone = resources.Resources(2, 4 << 30, free_gib * resources.GIB, Path("/var/lib/rancher"))
    assert resources.evaluate(clone)[0] == []
    # The smallest disk the spec accepts leaves exactly what the check demands.
    assert MIN_DISK_GIB - sizing.IMAGE_FOOTPRINT_GIB == sizing.MIN_FREE_DISK_GIB


# Rocky keeps only the newest point release of each major under download.rockylinux.org/pub; superseded
# ones move to dl.rockylinux.org/vault/rocky/<release>/, which keeps every release
# (https://wiki.rockylinux.org/rocky/version: 9.5 superseded; 8.10 is the last Rocky 8 release).
ROCKY_PUB_RELEASES = {"8.10"}
SPEC_FILES = [*IMAGE_EXAMPLES, Path(__file__).resolve().parents[2] / "templates/init/image-spec.yaml"]


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.stem for p in SPEC_FILES])
def test_example_urls_resolve_for_the_pinned_release(path: Path) -> None:
    spec = load_spec(path)
    text = path.read_text()
    iso = spec.source.iso
    if iso is not None and iso.url and "rockylinux.org" in iso.url:
        release = re.search(r"/rocky/(\d+\.\d+)/isos/", iso.url)
        assert release, iso.url
        base = iso.url.rsplit("/", 1)[0]
        if release.group(1) in ROCKY_PUB_RELEASES:
            assert base.startswith("https://download.rockylinux.org/pub/rocky/"), iso.url
        else:
            assert base.startswith("https://dl.rockylinux.org/vault/rocky/"), iso.url
        assert iso.checksum == f"file:{base}/CHECKSUM"
    if spec.k3s.sha256.binary.startswith("2b1a3e4a"):  # the examples' placeholder
        # Where the real values come from, at the spec's own K3s release.
        assert (
            f"k3s/releases/download/{spec.k3s.url_version}/sha256sum-amd64.txt" in text or "demo" in path.stem
        )

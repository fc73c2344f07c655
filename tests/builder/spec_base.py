"""A minimal valid image spec (line numbers matter: the error tables refer to them)."""

from __future__ import annotations

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64

BASE = f"""\
os:
  distro: rocky
  major: 9
source:
  clone:
    template: DC0_H0_VM0
vsphere:
  datacenter: DC0
  cluster: DC0_C0
  datastore: LocalDS_0
  network: VM Network
  template_name: rocky9-k3s-{{date}}
k3s:
  version: v1.31.4+k3s1
  sha256:
    binary: {SHA_A}
    airgap_images: {SHA_B}
    install_script: {SHA_C}
time:
  ntp_servers: [ntp.example.org]
azure:
  cli_version: 2.67.0
  extensions:
    connectedk8s: 1.10.5
    k8s_extension: 1.6.3
    k8s_configuration: 2.2.0
  helm: {{version: v3.16.3, sha256: {SHA_A}}}
build:
  communicator: none
"""


def variant(old: str, new: str) -> str:
    """BASE with one exact, unique snippet replaced."""
    assert BASE.count(old) == 1, f"snippet not unique in BASE: {old!r}"
    return BASE.replace(old, new)

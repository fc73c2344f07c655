"""The Azure test seams have one reader (`firstboot.arm.Endpoints`), used by builder's Day 2 as well.

Both refuse a seam that is not https on loopback: the environment must not send a service principal's
secret (builder's AZURE_CLIENT_SECRET, a clone's sp_secret) to another host.
"""

from __future__ import annotations

import pytest

from builder.azure_arm import AzureError, AzureSettings
from firstboot.arm import ARM_ENDPOINT, Endpoints
from firstboot.step import PermanentFailure

SP = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s3cr3t-value"}

REFUSED = [
    ("ARCBAKE_ARM_ENDPOINT", "https://management.example.com"),
    ("ARCBAKE_ARM_ENDPOINT", "http://127.0.0.1:8443"),
    ("ARCBAKE_AZURE_AUTHORITY", "https://10.0.0.5"),
    ("ARCBAKE_AZURE_AUTHORITY", "https://user:pw@127.0.0.1"),
]


@pytest.mark.parametrize(("name", "value"), REFUSED)
def test_builder_refuses_non_loopback_seam(name: str, value: str) -> None:
    with pytest.raises(AzureError) as info:
        AzureSettings.from_env({**SP, name: value})
    message = str(info.value)
    assert name in message and "loopback" in message
    assert "s3cr3t-value" not in message and "pw@" not in message


@pytest.mark.parametrize(("name", "value"), REFUSED)
def test_firstboot_refuses_the_same(name: str, value: str) -> None:
    with pytest.raises(PermanentFailure, match=name):
        Endpoints.from_env({name: value})


def test_builder_loopback_seams_reach_the_sdk_arguments() -> None:
    env = {
        **SP,
        "ARCBAKE_ARM_ENDPOINT": "https://127.0.0.1:8443",
        "ARCBAKE_AZURE_AUTHORITY": "https://localhost:8443",
        "ARCBAKE_AZURE_CA_BUNDLE": "/tmp/ca.pem",
    }
    settings = AzureSettings.from_env(env)
    assert settings.endpoints == Endpoints("https://127.0.0.1:8443", "https://localhost:8443", "/tmp/ca.pem")
    kwargs = settings.client_kwargs()
    assert kwargs["base_url"] == "https://127.0.0.1:8443"
    assert kwargs["connection_verify"] == "/tmp/ca.pem"
    assert "s3cr3t-value" not in repr(settings)


def test_builder_defaults_to_azure() -> None:
    settings = AzureSettings.from_env(SP)
    assert settings.client_kwargs()["base_url"] == ARM_ENDPOINT
    assert "connection_verify" not in settings.client_kwargs()

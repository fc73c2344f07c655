"""rawprops reads RetrievePropertiesEx answers itself: the value types it decodes, what it leaves to pyVmomi
(`Unsupported`: structured values, a document type declaration, a fault), paging by token. The answers
are vSphere's wire shape (vim25 namespace, xsi:type on every value); tests/integration/test_vsphere_bulk.py
compares it with pyVmomi's decoder on the simulator."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from builder.vsphere import rawprops

ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    '<soapenv:Body><{m}Response xmlns="urn:vim25"><returnval>{body}</returnval></{m}Response>'
    "</soapenv:Body></soapenv:Envelope>"
)


def _object(moid: str, props: str) -> str:
    return f'<objects><obj type="VirtualMachine">{moid}</obj>{props}</objects>'


def _prop(name: str, val: str) -> str:
    return f"<propSet><name>{name}</name>{val}</propSet>"


def _option(key: str, value: str, kind: str = "xsd:string") -> str:
    value_xml = f'<value xsi:type="{kind}">{value}</value>'
    return f'<OptionValue xsi:type="OptionValue"><key>{key}</key>{value_xml}</OptionValue>'


class _Session:
    """A session whose stub answers each call with the next canned body (and records the methods)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list[tuple[str, str]]) -> None:
        self.calls: list[str] = []
        stub = SimpleNamespace(SerializeRequest=lambda mo, info, args: b"<request/>")
        self.content = SimpleNamespace(propertyCollector=SimpleNamespace(_stub=stub))
        bodies = iter(answers)

        def post(stub: Any, method: str, body: bytes | str) -> bytes:
            self.calls.append(method)
            m, text = next(bodies)
            return ENVELOPE.format(m=m, body=text).encode()

        monkeypatch.setattr(rawprops, "post", post)


def _vm(moid: str) -> Any:
    from builder.vsphere._vmomi import vim

    return vim.VirtualMachine(moid)


KEYS = {"guestinfo.arcbake.status", "k.bool", "k.int"}


def test_values_by_type_and_only_the_wanted_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = (
        '<val xsi:type="ArrayOfOptionValue">'
        + _option("guestinfo.arcbake.status", "  a &lt;b&gt; &amp; \u00e9 ")
        + _option("other", "not read")
        + _option("k.bool", "true", "xsd:boolean")
        + _option("k.int", "42", "xsd:int")
        + _option("guestinfo.arcbake.status", "last wins")
        + "</val>"
    )
    body = _object(
        "vm-1",
        _prop("config.extraConfig", extra)
        + _prop("config.template", '<val xsi:type="xsd:boolean">false</val>')
        + _prop("runtime.powerState", '<val xsi:type="VirtualMachinePowerState">poweredOn</val>'),
    )
    session = _Session(monkeypatch, [("RetrievePropertiesEx", body)])
    vm = _vm("vm-1")
    out = rawprops.vm_properties(session, [vm], ["config.extraConfig"], KEYS)
    assert out == {
        vm: {
            # str() of what pyVmomi decodes: True for an xsd:boolean, 42 for an xsd:int
            "config.extraConfig": {"guestinfo.arcbake.status": "last wins", "k.bool": "True", "k.int": "42"},
            "config.template": False,
            "runtime.powerState": "poweredOn",
        }
    }


def test_pages_by_token_and_leaves_out_deleted_vms(monkeypatch: pytest.MonkeyPatch) -> None:
    power = _prop("runtime.powerState", '<val xsi:type="VirtualMachinePowerState">poweredOff</val>')
    missing = (
        "<missingSet><path>runtime.powerState</path>"
        '<fault><fault xsi:type="ManagedObjectNotFound"/></fault></missingSet>'
    )
    answers = [
        ("RetrievePropertiesEx", "<token>t1</token>" + _object("vm-1", power)),
        ("ContinueRetrievePropertiesEx", _object("vm-2", power) + _object("vm-3", missing)),
    ]
    session = _Session(monkeypatch, answers)
    vms = [_vm("vm-1"), _vm("vm-2"), _vm("vm-3")]
    out = rawprops.vm_properties(session, vms, ["runtime.powerState"], KEYS)
    assert session.calls == ["RetrievePropertiesEx", "ContinueRetrievePropertiesEx"]
    assert out == {vms[0]: {"runtime.powerState": "poweredOff"}, vms[1]: {"runtime.powerState": "poweredOff"}}


@pytest.mark.parametrize(
    "body",
    [
        # A structured property value (not an OptionValue array): pyVmomi decodes it.
        _object("vm-1", _prop("config", '<val xsi:type="VirtualMachineConfigInfo"><name>x</name></val>')),
        # A structured extraConfig value.
        _object(
            "vm-1",
            _prop(
                "config.extraConfig",
                '<val xsi:type="ArrayOfOptionValue"><OptionValue><key>k.int</key>'
                '<value xsi:type="Other"><a>1</a></value></OptionValue></val>',
            ),
        ),
    ],
)
def test_what_it_does_not_decode_is_left_to_pyvmomi(monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    session = _Session(monkeypatch, [("RetrievePropertiesEx", body)])
    with pytest.raises(rawprops.Unsupported):
        rawprops.vm_properties(session, [_vm("vm-1")], ["config"], KEYS)


def test_a_fault_or_a_dtd_is_left_to_pyvmomi(monkeypatch: pytest.MonkeyPatch) -> None:
    session = _Session(monkeypatch, [("SomethingElse", "")])
    with pytest.raises(rawprops.Unsupported, match="no RetrievePropertiesExResponse"):
        rawprops.vm_properties(session, [_vm("vm-1")], ["name"], KEYS)

    def dtd(stub: Any, method: str, body: bytes | str) -> bytes:
        return b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'

    monkeypatch.setattr(rawprops, "post", dtd)
    with pytest.raises(rawprops.Unsupported, match="document type declaration"):
        rawprops.vm_properties(session, [_vm("vm-1")], ["name"], KEYS)


def _array(*options: str) -> bytes:
    return ('<val xsi:type="ArrayOfOptionValue">' + "".join(options) + "</val>").encode()


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        # Unwanted keys dropped, wanted kept, the rest of the document untouched.
        (_array(_option("other", "x"), _option("k.int", "1"), _option("b", "<")), [b"k.int"]),
        # A key written with a reference is left for the parser (it may spell a wanted key).
        (_array(_option("k&#46;int", "1"), _option("other", "x")), [b"k&#46;int"]),
    ],
)
def test_drop_options(body: bytes, kept: list[bytes]) -> None:
    out = rawprops.drop_options(body, KEYS)
    assert out.count(b"<OptionValue ") == len(kept)
    assert all(b"<key>" + k + b"</key>" in out for k in kept)
    assert out.startswith(b'<val xsi:type="ArrayOfOptionValue">') and out.endswith(b"</val>")


@pytest.mark.parametrize(
    "body",
    [
        _array(_option("other", "x")) + b"<!-- <OptionValue> -->",
        _array(_option("other", "<![CDATA[</OptionValue>]]>")),
        _array(_option("other", "x")) + b"<?pi <OptionValue ?>",
        _array(
            "<OptionValue><key>a</key><value><OptionValue><key>b</key></OptionValue></value></OptionValue>"
        ),
        _array("<OptionValueX><key>other</key></OptionValueX>"),
        _array('<OptionValue><key xsi:type="xsd:string">other</key></OptionValue>'),
        _array("<OptionValue><key>other</key>"),
    ],
    ids=["comment", "cdata", "pi", "nested", "other-element", "key-attribute", "unclosed"],
)
def test_drop_options_leaves_what_it_cannot_cut_exactly(body: bytes) -> None:
    assert rawprops.drop_options(body, KEYS) == body

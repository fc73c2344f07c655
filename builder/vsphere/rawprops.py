"""RetrievePropertiesEx whose answer is read by ElementTree's C parser instead of pyVmomi's decoder.

pyVmomi decodes a SOAP answer element by element in Python (an expat callback, a type lookup and a data
object per element): for `builder status` of 1,000 VMs, their whole `config.extraConfig` (a dozen and
more entries each on a clone, many more on a real VM) is ~56,000 elements and most of the command's time.
vSphere can filter a keyed array by path (`config.extraConfig["guestinfo.x"]`) but govmomi's simulator
(0.24, what the tests run) answers such a path with nothing (the VM comes back without the property), and
`summary.config` carries no extraConfig; so the whole array is asked for, the OptionValue elements of
other keys are cut from the answer before it is parsed, and only the wanted keys are kept.

The request is pyVmomi's own serialisation, sent on the stub's connection with its session cookie and
API version. The answer is read only as far as this module understands it: properties whose value is a
simple type (string, boolean, integer, enumeration) or an array of OptionValue. Anything else, and any
fault, raises `Unsupported`: the caller asks again through pyVmomi, which decodes or raises as always.
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from builder.vsphere._vmomi import vim, vmodl

PC = vmodl.query.PropertyCollector
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_V = "{urn:vim25}"
_INTEGERS = ("xsd:int", "xsd:long", "xsd:short", "xsd:byte")


class Unsupported(Exception):
    """The answer holds something this reader does not decode (or a fault): ask through pyVmomi."""


def post(stub: Any, method: str, body: bytes | str) -> bytes:
    """One SOAP POST on the stub's connection (session cookie, API version); the answer's body.

    `builder.vsphere.roundtrips` counts the calls made here beside pyVmomi's own."""
    headers = {
        "Cookie": stub.cookie,
        "SOAPAction": stub.versionId,
        "Content-Type": "text/xml; charset=UTF-8",
        "Accept-Encoding": "gzip, deflate",
    }
    conn = stub.GetConnection()
    try:
        conn.request("POST", stub.path, body, headers)
        resp = conn.getresponse()
        data: bytes = resp.read()
    except BaseException:
        conn.close()
        stub.DropConnections()
        raise
    stub.ReturnConnection(conn)
    if resp.status != 200:
        raise Unsupported(f"{method}: HTTP {resp.status}")
    encoding = (resp.getheader("Content-Encoding") or "identity").lower()
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    return data


_OPEN, _CLOSE, _KEY, _END_KEY = b"<OptionValue", b"</OptionValue>", b"<key>", b"</key>"


def drop_options(body: bytes, keys: Collection[str]) -> bytes:
    """`body` without the OptionValue elements whose key is not one of `keys` (before parsing: a VM's
    extraConfig is mostly other keys, and building a tree of them costs more than reading the rest).

    Exact, not a guess at XML: outside comments, CDATA and processing instructions (whose presence
    returns `body` unchanged), `<` stands only for markup, and OptionValue elements do not nest (one that
    does, or a prefixed or otherwise unexpected form, returns `body` unchanged too: the parser then reads
    all of it)."""
    prolog = body.find(b"?>") + 2 if body.startswith(b"<?xml") else 0
    if b"<!--" in body or b"<![CDATA[" in body or body.find(b"<?", prolog) >= 0:
        return body
    wanted = {k.encode() for k in keys}
    kept: list[bytes] = []
    pos = 0
    while (start := body.find(_OPEN, pos)) >= 0:
        end = body.find(_CLOSE, start)
        if end < 0:
            return body
        end += len(_CLOSE)
        element = body[start:end]
        key_at = element.find(_KEY)
        key_end = element.find(_END_KEY, key_at)
        named = element[len(_OPEN) : len(_OPEN) + 1] in (b" ", b">")
        if not named or key_at < 0 or key_end < 0 or element.find(_OPEN, len(_OPEN)) >= 0:
            return body
        kept.append(body[pos:start])
        key = element[key_at + len(_KEY) : key_end]
        if b"&" in key or key in wanted:  # a key with a reference is left for the parser to read
            kept.append(element)
        pos = end
    kept.append(body[pos:])
    return b"".join(kept)


def _call(session: Any, method: str, args: list[Any], keys: Collection[str]) -> ET.Element:
    collector = session.content.propertyCollector
    stub = collector._stub
    info = PC._GetMethodInfo(method)
    body = post(stub, method, stub.SerializeRequest(collector, info, args))
    # SOAP forbids a document type declaration; refusing one leaves no entity for the parser to expand
    # (text content holds `<` only escaped, so the marker cannot come from a value).
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise Unsupported(f"{method}: the answer carries a document type declaration")
    root = ET.fromstring(drop_options(body, keys))  # noqa: S314 (no DTD, see above; vCenter's answer to this session)
    returnval = root.find(f".//{_V}{method}Response")
    if returnval is None:
        raise Unsupported(f"{method}: no {method}Response in the answer")
    return returnval


def _simple(val: ET.Element) -> Any:
    kind = val.get(_XSI_TYPE, "")
    text = val.text or ""
    if kind == "xsd:boolean":
        return text.strip() in ("true", "1")
    if kind in _INTEGERS:
        return int(text)
    return text


def _options(val: ET.Element, keys: Collection[str]) -> dict[str, str]:
    # The same text `vm.options()` makes of pyVmomi's OptionValue (str() of the decoded value); a key
    # given twice keeps its last entry, as there.
    out: dict[str, str] = {}
    for option in val:
        key = option.findtext(f"{_V}key", "")
        if key not in keys:
            continue
        value = option.find(f"{_V}value")
        if value is None:
            out[key] = ""
        elif len(value):
            raise Unsupported(f"extraConfig {key}: a structured value")
        else:
            out[key] = str(_simple(value))
    return out


Ref = tuple[str, str]  # (type, moid) of a managed object: ("VirtualMachine", "vm-42")


def _value(name: str, val: ET.Element, keys: Collection[str]) -> Any:
    kind = val.get(_XSI_TYPE)
    if kind == "ArrayOfOptionValue":
        return _options(val, keys)
    if kind == "ManagedObjectReference":
        return (val.get("type", ""), val.text or "")
    if kind == "ArrayOfManagedObjectReference":
        return [(ref.get("type", ""), ref.text or "") for ref in val]
    if len(val):
        raise Unsupported(f"property {name}: type {kind}")
    return _simple(val)


def _objects(returnval: ET.Element, keys: Collection[str]) -> Iterator[tuple[Ref, dict[str, Any]]]:
    for result in returnval.iter(f"{_V}returnval"):
        for obj in result.iter(f"{_V}objects"):
            ref_el = obj.find(f"{_V}obj")
            if ref_el is None:
                raise Unsupported("an object without obj")
            props: dict[str, Any] = {}
            for prop in obj.iter(f"{_V}propSet"):
                name = prop.findtext(f"{_V}name", "")
                val = prop.find(f"{_V}val")
                if val is not None:
                    props[name] = _value(name, val, keys)
            missing = obj.find(f"{_V}missingSet") is not None
            if props or not missing:
                yield (ref_el.get("type", ""), ref_el.text or ""), props


def retrieve(session: Any, spec: Any, keys: Collection[str] = ()) -> list[tuple[Ref, dict[str, Any]]]:
    """RetrievePropertiesEx of `spec` (then ContinueRetrievePropertiesEx while vCenter pages): each object
    as its `Ref` with its properties; references as `Ref`s, OptionValue arrays as {key: text} of `keys`
    only. An object deleted meanwhile is left out.

    Raises `Unsupported` for an answer it does not decode (the caller then reads through pyVmomi)."""
    out: list[tuple[Ref, dict[str, Any]]] = []
    answer = _call(session, "RetrievePropertiesEx", [[spec], PC.RetrieveOptions()], keys)
    while True:
        out.extend(_objects(answer, keys))
        token = answer.findtext(f"{_V}returnval/{_V}token")
        if not token:
            return out
        answer = _call(session, "ContinueRetrievePropertiesEx", [token], keys)


def ref(obj: Any) -> Ref:
    """The `Ref` of a pyVmomi managed object."""
    return (str(obj._wsdlName), str(obj._moId))


def vm_properties(
    session: Any, vms: Sequence[Any], props: Sequence[str], keys: Collection[str]
) -> dict[Any, dict[str, Any]]:
    """The named properties of `vms` in one PropertyCollector query (more only while vCenter pages),
    OptionValue arrays as {key: text} of `keys` only. A VM deleted meanwhile is left out.

    Raises `Unsupported` for an answer it does not decode (the caller then reads through pyVmomi)."""
    by_ref = {ref(vm): vm for vm in vms}
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=vm, skip=False) for vm in vms],
        propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=list(props), all=False)],
        reportMissingObjectsInResults=True,
    )
    return {by_ref[r]: values for r, values in retrieve(session, spec, keys) if r in by_ref}

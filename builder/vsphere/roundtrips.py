"""Count SOAP round trips: every call pyVmomi makes, methods and property reads alike, goes through
`SoapStubAdapter.InvokeMethod`, and the bulk reads whose answers builder decodes itself go through
`rawprops.post`; wrapping those two counts them all (login and logout included).

Used by `bench/fleet_deploy.py` and the tests that hold `builder status` to its round-trip budget; the
count is per method name (`RetrievePropertiesEx`, `Fetch` for a single property read, ...).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyVmomi.SoapAdapter import SoapStubAdapter

from builder.vsphere import rawprops


class RoundTrips:
    """SOAP calls seen while counting, by method name (thread-safe: deploy clones on a pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_method: Counter[str] = Counter()

    def add(self, method: str) -> None:
        """Record one call of `method`."""
        with self._lock:
            self.by_method[method] += 1

    @property
    def total(self) -> int:
        """All calls seen."""
        with self._lock:
            return sum(self.by_method.values())

    def __str__(self) -> str:
        with self._lock:
            parts = ", ".join(f"{m} {n}" for m, n in sorted(self.by_method.items()))
        return f"{self.total} ({parts})"


@contextmanager
def counting() -> Iterator[RoundTrips]:
    """Count every SOAP round trip made in this process until the block ends."""
    seen = RoundTrips()
    original: Any = SoapStubAdapter.InvokeMethod

    def invoke(self: Any, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:
        # A property read is sent as the pseudo-method "Fetch" named after the property.
        name = str(getattr(info, "wsdlName", "") or getattr(info, "name", "?"))
        seen.add(f"Fetch {args[0]}" if name == "Fetch" and args else name)
        return original(self, mo, info, args, outerStub)

    original_post = rawprops.post

    def post(stub: Any, method: str, body: bytes | str) -> bytes:
        seen.add(method)
        return original_post(stub, method, body)

    SoapStubAdapter.InvokeMethod = invoke  # type: ignore[method-assign]
    rawprops.post = post
    try:
        yield seen
    finally:
        SoapStubAdapter.InvokeMethod = original  # type: ignore[method-assign]
        rawprops.post = original_post


def main(argv: list[str]) -> int:
    """`python -m builder.vsphere.roundtrips ARGS`: run `builder ARGS` in this process, counting its SOAP
    round trips (the whole command: login and logout included); then one JSON line on stderr with the
    exit code, the round trips by method and the modules loaded (bench/fleet_deploy.py and the tests read it).
    """
    from builder.cli import main as builder_main

    sys.argv = ["builder", *argv]
    code: object = 0
    with counting() as seen:
        try:
            builder_main()
        except SystemExit as exc:
            code = exc.code
    report = {"code": code, "round_trips": dict(seen.by_method), "modules": sorted(sys.modules)}
    sys.stderr.write("\n" + json.dumps(report) + "\n")
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

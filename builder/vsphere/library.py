"""Content library lookups over the vSphere Automation REST API (`/rest`, also served by the simulator).

Packer imports the template into the library (`content_library_destination`); builder checks before the
build that the library exists, and reads the new item's id afterwards for the manifest. Same credentials
and TLS rules as the SOAP session; the password is only ever in the Authorization header.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import urllib.error
import urllib.request
from typing import Any

from builder.vsphere.connection import Credentials, NotFoundError, VSphereError

LOG = logging.getLogger(__name__)
TIMEOUT = 30


class RestClient:
    """A logged-in `/rest` session."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        host = f"[{creds.host}]" if ":" in creds.host else creds.host
        self.base = f"https://{host}:{creds.port}/rest"
        self.context = ssl._create_unverified_context() if creds.insecure else ssl.create_default_context()  # noqa: S323
        token = base64.b64encode(f"{creds.user}:{creds.password}".encode()).decode()
        self.session = str(
            self._call("POST", "/com/vmware/cis/session", headers={"Authorization": f"Basic {token}"})
        )

    def _call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if getattr(self, "session", None):
            hdrs["vmware-api-session-id"] = self.session
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as resp:  # noqa: S310
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise VSphereError(
                    f"vCenter {self.creds.server}: REST login failed for user {self.creds.user!r}"
                ) from None
            raise VSphereError(
                f"vCenter {self.creds.server}: REST {method} {path.split('?')[0]}: HTTP {exc.code}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise VSphereError(f"vCenter {self.creds.server}: REST API unreachable ({reason})") from None
        return json.loads(payload)["value"] if payload else None

    def close(self) -> None:
        """Log out of the REST session."""
        try:
            self._call("DELETE", "/com/vmware/cis/session")
        except VSphereError as exc:
            LOG.debug("REST logout: %s", exc)

    def library_id(self, name: str) -> str:
        """The id of the content library `name`."""
        ids = self._call("POST", "/com/vmware/content/library?~action=find", {"spec": {"name": name}}) or []
        if not ids:
            raise NotFoundError(f"content library {name!r} not found on {self.creds.server}")
        return str(ids[0])

    def item_ids(self, library: str, item: str) -> list[str]:
        """Ids of the items called `item` in the library with id `library`."""
        spec = {"spec": {"name": item, "library_id": library}}
        return [
            str(i) for i in self._call("POST", "/com/vmware/content/library/item?~action=find", spec) or []
        ]

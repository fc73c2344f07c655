"""A vSphere session from `VSPHERE_SERVER` / `VSPHERE_USER` / `VSPHERE_PASSWORD` / `VSPHERE_INSECURE`.

Every failure becomes a one-line `VSphereError` naming what failed (the server, the user, the object),
never the password: the message is built here from known fields, and anything pyvmomi says is redacted
before it is quoted.

The session is two SOAP round trips (RetrieveServiceContent, Login) and one to log out. pyVim's
SmartConnect takes more: an HTTP GET of vimServiceVersions.xml to pick the API version, a second
RetrieveServiceContent (and `Disconnect` a third before Logout). Here the stub starts at an old API
version every vCenter accepts for RetrieveServiceContent, then moves to the newest version pyVmomi knows
that is not newer than the server's `about.apiVersion`, which the service content carries anyway.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from xml.parsers.expat import ExpatError

from builder.vsphere._vmomi import VIM_VERSIONS, SoapStubAdapter, vim, vmodl
from firstboot.subp import redact

LOG = logging.getLogger(__name__)

DEFAULT_PORT = 443
# A DNS name, an IPv4 address or (inside brackets) an IPv6 address: nothing a URL or a shell would interpret.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|[0-9A-Fa-f:.]+")
CONNECT_TIMEOUT = 30
# What pyVim's Connect uses before it knows better (vSphere 5.5): accepted by every supported vCenter.
BASE_VERSION = "vim.version.version9"


class VSphereError(Exception):
    """A vSphere operation failed; the message is one line, names the object and holds no secret."""


class ConnectionLostError(VSphereError):
    """The connection to vCenter broke in the middle of an operation (vCenter restarted, network down)."""


# What pyVmomi lets through when the server goes away mid-call (a dropped connection, a refused
# reconnect, a timeout, a TLS failure); `lost()` turns them into one line.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
    http.client.HTTPException,
)


def lost(server: str, exc: BaseException, during: str) -> ConnectionLostError:
    """The one-line error for a transport failure while doing `during`."""
    return ConnectionLostError(f"vCenter {server}: connection lost while {during} ({fault_message(exc)})")


class NotFoundError(VSphereError):
    """A named inventory object (datacenter, datastore, network, template, VM, ...) does not exist."""


@dataclass(frozen=True)
class Credentials:
    """Where and how to log in. `password` never appears in repr, logs or messages."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    insecure: bool = False

    @property
    def server(self) -> str:
        """`host:port` as shown in messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Credentials:
        """Read VSPHERE_SERVER (host or host:port), VSPHERE_USER, VSPHERE_PASSWORD, VSPHERE_INSECURE."""
        missing = [k for k in ("VSPHERE_SERVER", "VSPHERE_USER", "VSPHERE_PASSWORD") if not environ.get(k)]
        if missing:
            raise VSphereError(f"set {', '.join(missing)} (vSphere connection; see README)")
        host, port = parse_server(environ["VSPHERE_SERVER"])
        insecure = environ.get("VSPHERE_INSECURE", "").strip().lower() in ("1", "true", "yes")
        return cls(host, port, environ["VSPHERE_USER"], environ["VSPHERE_PASSWORD"], insecure)


def parse_server(value: str) -> tuple[str, int]:
    """`vc.example.com`, `vc:8443`, `[::1]:8989` or `https://vc:8443/sdk` -> (host, port).

    The value is never quoted back: it may hold credentials (`https://user:pw@vc`), which are refused
    without echoing them, and every other message names only the part that is wrong.
    """
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in text:
        raise VSphereError(
            "VSPHERE_SERVER holds credentials (user@ or user:password@ before the host); refusing it: give "
            "only the host or host:port, and the credentials in VSPHERE_USER and VSPHERE_PASSWORD"
        )
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host or not _HOST.fullmatch(host):
        raise VSphereError("VSPHERE_SERVER names no valid host (expected host, host:port or [IPv6]:port)")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise VSphereError(f"VSPHERE_SERVER host {host} has an invalid port (expected 1-65535)")
    return host, int(port_text)


def fault_message(exc: BaseException) -> str:
    """The short text of a vSphere fault or an exception, on one line."""
    msg = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    return " ".join(str(msg).split())


class Session:
    """A logged-in vSphere session. Use as a context manager; `close()` logs out."""

    def __init__(self, si: Any, content: Any, creds: Credentials) -> None:
        self.si = si
        self.creds = creds
        self.content: Any = content

    def close(self) -> None:
        """Log out (one round trip: sessions left open pile up on vCenter until they time out); errors
        while logging out are logged, not raised."""
        try:
            self.content.sessionManager.Logout()
        except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
            LOG.debug("logout from %s failed: %s", self.creds.server, fault_message(exc))
        finally:
            self.si._stub.DropConnections()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def api_version(server_version: str) -> str:
    """The newest pyVmomi vim25 version not newer than the server's `about.apiVersion` ("8.0.3.0",
    "6.5"); BASE_VERSION when the server's is not a dotted number or older than every known one."""
    wanted = _numbers(server_version)
    if wanted is None:
        return BASE_VERSION
    for name, version_id in VIM_VERSIONS:
        have = _numbers(version_id)
        if have is not None and _padded(have, wanted) <= _padded(wanted, have):
            return name
    return BASE_VERSION


def _numbers(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return a + (0,) * max(0, len(b) - len(a))


def _ssl_context(creds: Credentials) -> ssl.SSLContext:
    if not creds.insecure:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(creds: Credentials, timeout: int = CONNECT_TIMEOUT) -> Session:
    """Log in to vSphere; every failure is a one-line VSphereError naming the server (and user)."""
    where = f"vCenter {creds.server}"
    LOG.debug("connecting to %s as %s (TLS verification %s)", where, creds.user, not creds.insecure)
    try:
        stub = SoapStubAdapter(
            host=creds.host,
            port=creds.port,
            version=BASE_VERSION,
            path="/sdk",
            sslContext=_ssl_context(creds),
            httpConnectionTimeout=timeout,
            connectionPoolTimeout=-1,
        )
        si = vim.ServiceInstance("ServiceInstance", stub)
        content = si.RetrieveContent()
        stub.ComputeVersionInfo(api_version(str(content.about.apiVersion or "")))
        content.sessionManager.Login(creds.user, creds.password, None)
    except vim.fault.InvalidLogin:
        raise VSphereError(
            f"{where}: login failed for user {creds.user!r}: wrong user name or password"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        reason = redact(exc.verify_message or "certificate not trusted", [creds.password])
        raise VSphereError(
            f"{where}: TLS certificate not trusted ({reason}); add its CA to the system trust store, "
            "or set VSPHERE_INSECURE=1 for a lab"
        ) from None
    except (ConnectionRefusedError, TimeoutError) as exc:
        raise VSphereError(f"{where}: unreachable ({_reason(exc, creds)})") from None
    except socket.gaierror as exc:
        raise VSphereError(f"{where}: host name does not resolve ({_reason(exc, creds)})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise VSphereError(f"{where}: unreachable ({_reason(exc, creds)})") from None
    except ExpatError as exc:
        raise VSphereError(f"{where}: no vSphere SDK answers at /sdk ({_reason(exc, creds)})") from None
    except vmodl.MethodFault as exc:
        raise VSphereError(f"{where}: login failed: {_reason(exc, creds)}") from None
    return Session(si, content, creds)


def _reason(exc: BaseException, creds: Credentials) -> str:
    return redact(fault_message(exc), [creds.password])

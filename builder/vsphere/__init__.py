"""vSphere operations over pyvmomi: connection from `VSPHERE_*`, inventory lookups, clone, guestinfo
(extraConfig), power, templates and retention. Works against a real vCenter and the bundled simulator."""

from builder.vsphere.connection import Credentials, Session, VSphereError, connect

__all__ = ["Credentials", "Session", "VSphereError", "connect"]

"""pyVmomi's names, typed as Any: pyVmomi builds its types at run time, so static checking of calls into
it adds nothing but noise; our own functions around them stay fully typed."""

from typing import Any

import pyVmomi
import pyVmomi.SoapAdapter
import pyVmomi.VmomiSupport

_pyvmomi: Any = pyVmomi
vim: Any = _pyvmomi.vim
vmodl: Any = _pyvmomi.vmodl
SoapStubAdapter: Any = _pyvmomi.SoapAdapter.SoapStubAdapter
ManagedObject: Any = _pyvmomi.VmomiSupport.ManagedObject
# pyVmomi's vim25 API versions, newest first, with their version ids ("8.0.3.0", "6.5", ...).
VIM_VERSIONS: list[tuple[str, str]] = [
    (v, _pyvmomi.VmomiSupport.versionIdMap[v])
    for v in _pyvmomi.VmomiSupport.GetServiceVersions("vim25")
    if v.startswith("vim.version.")
]

"""pyVmomi's names, typed as Any: pyVmomi builds its types at run time, so static checking of calls into
it adds nothing but noise; our own functions around them stay fully typed."""

from typing import Any

import pyVmomi
from pyVim import connect as _connect

vim: Any = pyVmomi.vim
vmodl: Any = pyVmomi.vmodl
SmartConnect: Any = _connect.SmartConnect
Disconnect: Any = _connect.Disconnect

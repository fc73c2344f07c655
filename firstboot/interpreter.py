"""What `firstboot run` asks of the Python interpreter on the path to K3s's start and at its exit.

Start-up builds about 40,000 objects that live as long as the process (modules, pydantic's validators
and schemas): the cyclic collector, run every 700 allocations, walks them again and again while they are
built and frees nothing (17 ms of collections before the steps run, measured with `gc.callbacks`; the
whole start-up is on the critical path, as K3s starts only after it). So collection is held until every
step module is loaded, then those objects are frozen out of later collections and collection resumes.

At exit the interpreter tears down every module and object it holds (the Azure SDK, the Kubernetes
client: 0.02 s here, `bench/firstboot_overhead.py`'s "last status to process end" 0.036 -> 0.016 s) after
the last status is written: nothing in that teardown is the onboarding's, so the console script flushes
what it wrote and ends the process at once.
"""

from __future__ import annotations

import gc
import os
import sys

_held = False


def hold_collection() -> None:
    """Stop cyclic garbage collection until `release_collection` (start-up only)."""
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True


def release_collection() -> None:
    """Start-up is over: freeze what it built (never collected again) and resume collection, if held."""
    global _held
    if _held:
        gc.freeze()
        gc.enable()
        _held = False


def exit_at_once(code: int) -> None:
    """Flush the log and standard streams, then end the process without the interpreter's teardown.

    Only for the console script after its command returned: every file firstboot writes is closed (and
    fsynced, firstboot.fsutil) by then, and its threads are joined or daemons with nothing to finish.
    """
    import logging  # here: the CLI imports this module, and `firstboot status` loads no logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            # Its reader is gone (`firstboot run | head`) or it is closed: the rest has nowhere to go, and
            # the run's exit code is still the answer.
            continue
    os._exit(code)

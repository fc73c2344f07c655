"""A `systemctl` double for tests and the bench (stdlib only); `tests/doubles/systemctl` is its executable.

Records every argv (one JSON line) in `SYSTEMCTL_DOUBLE_LOG`. `enable --now UNIT` / `start UNIT` marks the
unit active (state in `SYSTEMCTL_DOUBLE_STATE`) and, for `k3s`, copies `SYSTEMCTL_DOUBLE_KUBECONFIG` (a
kubeconfig the Kubernetes API double wrote) to `SYSTEMCTL_DOUBLE_ROOT/etc/rancher/k3s/k3s.yaml` with mode
`SYSTEMCTL_DOUBLE_KUBECONFIG_MODE` (octal, default 600), after `SYSTEMCTL_DOUBLE_DELAY` seconds (in a
detached child, like K3s writing it once its API is up). When `SYSTEMCTL_DOUBLE_SCENARIO` names a JSON
scenario, it is posted to the API double (`/_double/objects`) when k3s goes from inactive to active, so
"node Ready after N s" counts from the start of k3s. `SYSTEMCTL_DOUBLE_FAIL=UNIT` fails starting that
unit the way systemd does. `is-active UNIT` answers from the state.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path


def _log(argv: list[str]) -> None:
    path = os.environ.get("SYSTEMCTL_DOUBLE_LOG")
    if path:
        with Path(path).open("a") as fh:
            fh.write(json.dumps({"argv": argv, "time": time.time()}) + "\n")


def _state() -> tuple[Path | None, dict[str, str]]:
    raw = os.environ.get("SYSTEMCTL_DOUBLE_STATE")
    if not raw:
        return None, {}
    path = Path(raw)
    return path, json.loads(path.read_text()) if path.exists() else {}


def _post_scenario(kubeconfig: str) -> None:
    scenario = os.environ.get("SYSTEMCTL_DOUBLE_SCENARIO")
    if not scenario:
        return
    import re
    import urllib.request

    match = re.search(r"server:\s*(\S+)", Path(kubeconfig).read_text())
    if not match:
        return
    req = urllib.request.Request(  # noqa: S310 - the loopback URL of the API double
        match[1].rstrip("/") + "/_double/objects", data=Path(scenario).read_bytes(), method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=5) as resp:
        resp.read()


def _start_k3s(first_start: bool) -> None:
    src = os.environ.get("SYSTEMCTL_DOUBLE_KUBECONFIG")
    root = os.environ.get("SYSTEMCTL_DOUBLE_ROOT")
    if not src or not root:
        return
    delay = float(os.environ.get("SYSTEMCTL_DOUBLE_DELAY", "0") or 0)
    mode = int(os.environ.get("SYSTEMCTL_DOUBLE_KUBECONFIG_MODE", "600"), 8)
    if first_start:
        _post_scenario(src)
    if delay > 0:
        if os.fork() != 0:
            return
        # Detached like a started service: do not hold the caller's output pipes open.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    time.sleep(delay)
    dest = Path(root) / "etc/rancher/k3s/k3s.yaml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(".k3s.yaml.tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(mode)
    tmp.replace(dest)
    if delay > 0:
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tests/doubles/systemctl`."""
    args = sys.argv[1:] if argv is None else argv
    _log(args)
    words = [a for a in args if not a.startswith("-")]
    if not words:
        return 0
    verb, units = words[0], [u.removesuffix(".service") for u in words[1:]]
    path, state = _state()
    if verb in ("enable", "start", "restart") and ("start" in verb or "--now" in args):
        for unit in units:
            if unit == os.environ.get("SYSTEMCTL_DOUBLE_FAIL"):
                print(
                    f"Job for {unit}.service failed because the control process exited with error code.\n"
                    f'See "systemctl status {unit}.service" and "journalctl -xeu {unit}.service" '
                    "for details.",
                    file=sys.stderr,
                )
                return 1
            first_start = state.get(unit) != "active"
            state[unit] = "active"
            if unit == "k3s":
                _start_k3s(first_start)
    elif verb == "is-active":
        active = all(state.get(u) == "active" for u in units)
        print("\n".join(state.get(u, "inactive") for u in units))
        return 0 if active else 3
    if path is not None:
        path.write_text(json.dumps(state))
    return 0

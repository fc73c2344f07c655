"""Doubles of `timedatectl`, `journalctl` and `firewall-cmd` for doctor and its bundle (stdlib only).

State comes from the JSON file named by `HOSTTOOLS_DOUBLE_STATE` (missing: a healthy host):

    {"timedatectl": {"NTP": "yes", "NTPSynchronized": "no", "Timezone": "UTC"},
     "firewalld": {"running": true, "default_zone": "public",
                   "zones": {"trusted": {"sources": ["10.42.0.0/16"]}, "public": {"ports": ["6443/tcp"]}}},
     "journal": {"arcbake-firstboot.service": ["line", ...], "k3s": ["..."]}}

Each double accepts only the options the real tool defines that doctor could plausibly pass, and answers the
way the real one does otherwise:
- timedatectl (systemd src/timedate/timedatectl.c): verb `show` prints `Property=value` lines (all, or
  those of `-p/--property=`); an unknown verb: `Unknown command verb 'X'.`, exit 1;
- journalctl (systemd src/journal/journalctl.c): `-u/--unit` (repeatable), `-n/--lines`, `-o/--output`,
  `-b`, `--no-pager`; lines of the named units, the last N; none: `-- No entries --`;
- firewall-cmd (firewalld 1.3 src/firewall/command.py print_zone_policy_info, errors.py): `--list-all
  [--zone=Z]` prints the zone block (`  sources: ...`, `  ports: ...`); firewalld stopped: `FirewallD is
  not running`, exit 252 (NOT_RUNNING); an unknown zone: `Error: INVALID_ZONE: Z`, exit 112.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

TIMEDATE_DEFAULTS = {
    "Timezone": "UTC",
    "LocalRTC": "no",
    "CanNTP": "yes",
    "NTP": "yes",
    "NTPSynchronized": "yes",
    "TimeUSec": "Wed 2026-12-02 17:00:00 UTC",
    "RTCTimeUSec": "Wed 2026-12-02 17:00:00 UTC",
}
ZONE_KEYS = (
    "target", "icmp-block-inversion", "interfaces", "sources", "services", "ports", "protocols",
    "forward", "masquerade", "forward-ports", "source-ports", "icmp-blocks", "rich rules",
)  # fmt: skip


def _state() -> dict[str, Any]:
    path = os.environ.get("HOSTTOOLS_DOUBLE_STATE")
    if not path or not Path(path).exists():
        return {}
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def timedatectl(args: list[str]) -> int:
    props: list[str] = []
    verbs: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in ("-p", "--property"):
            props.append(next(it, ""))
        elif arg.startswith("--property="):
            props.append(arg.split("=", 1)[1])
        elif arg in ("--no-pager", "--no-ask-password"):
            continue
        elif arg.startswith("-"):
            print(f"timedatectl: unrecognized option '{arg}'", file=sys.stderr)
            return 1
        else:
            verbs.append(arg)
    verb = verbs[0] if verbs else "status"
    if verb != "show":
        print(f"Unknown command verb '{verb}'.", file=sys.stderr)
        return 1
    values = {**TIMEDATE_DEFAULTS, **(_state().get("timedatectl") or {})}
    for key, value in values.items():
        if not props or key in props:
            print(f"{key}={value}")
    return 0


def journalctl(args: list[str]) -> int:
    units: list[str] = []
    lines: int | None = None
    it = iter(args)
    for arg in it:
        if arg in ("-u", "--unit"):
            units.append(next(it, ""))
        elif arg.startswith("--unit="):
            units.append(arg.split("=", 1)[1])
        elif arg in ("-n", "--lines"):
            lines = int(next(it, "10"))
        elif arg in ("-o", "--output"):
            next(it, "")
        elif arg in ("-b", "--boot", "--no-pager", "-q", "--quiet"):
            continue
        else:
            print(f"journalctl: unrecognized option '{arg}'", file=sys.stderr)
            return 1
    journal: dict[str, list[str]] = _state().get("journal") or {}
    found: list[str] = []
    for unit in units or list(journal):
        found += journal.get(unit, []) + journal.get(unit.removesuffix(".service"), [])
    if lines is not None:
        found = found[-lines:] if lines > 0 else []
    print("\n".join(found) if found else "-- No entries --")
    return 0


def firewall_cmd(args: list[str]) -> int:
    zone = None
    list_all = False
    for arg in args:
        if arg == "--list-all":
            list_all = True
        elif arg.startswith("--zone="):
            zone = arg.split("=", 1)[1]
        else:
            print(f"firewall-cmd: error: unrecognized arguments: {arg}", file=sys.stderr)
            return 2
    if not list_all:
        print("firewall-cmd: error: no action given", file=sys.stderr)
        return 2
    fw = _state().get("firewalld") or {}
    if not fw.get("running", True):
        print("FirewallD is not running")
        return 252
    zones: dict[str, dict[str, Any]] = fw.get("zones") or {"public": {}, "trusted": {}}
    zone = zone or fw.get("default_zone", "public")
    if zone not in zones:
        print(f"Error: INVALID_ZONE: {zone}", file=sys.stderr)
        return 112
    info = zones[zone]
    print(f"{zone} (active)")
    for key in ZONE_KEYS:
        value = info.get(key, [])
        print(f"  {key}: {' '.join(value) if isinstance(value, list) else value}")
    return 0


TOOLS = {"timedatectl": timedatectl, "journalctl": journalctl, "firewall-cmd": firewall_cmd}


def main(tool: str) -> int:
    return TOOLS[tool](sys.argv[1:])

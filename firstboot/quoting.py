"""One quoting function per target format: every value arcbake writes into a file another program parses
goes through the function for that file's format. Patterns in the models already keep out what a target
would interpret; quoting makes the written text mean exactly the value even so.

- POSIX shell (`/etc/profile.d/*.sh`, provisioning scripts; sh, bash `source`): `shell`
- systemd environment file (`k3s.service.env`; `EnvironmentFile=`, systemd.exec(5)): `systemd_env`
- YAML scalar (K3s config, cloud-init; Go yaml, PyYAML): `yaml_str`
- kickstart token (`timesource --ntp-server=`, `sshkey`; pykickstart's `shlex.split(line, comments=True)`):
  `kickstart`
- JSON (Packer's `*.pkrvars.json`, JSON files in the guest): `json_str`

Builder registers each as a Jinja2 filter of the same name; firstboot calls them directly. A value no
quoting can carry (a NUL byte anywhere, a line break where the format is line-based) raises
`Unquotable`: the models refuse such values first, so this is a guard, not a user-facing error.
"""

from __future__ import annotations

import json
import re


class Unquotable(ValueError):
    """The value cannot be written in this format (a NUL, or a line break in a line-based format)."""


_LINE_BREAKS = ("\n", "\r")
_SPLITLINES = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def _refuse(value: str, what: str, chars: tuple[str, ...]) -> None:
    for char in chars:
        if char in value:
            raise Unquotable(f"a {what} value cannot hold {char!r}")


def shell(value: str) -> str:
    """A POSIX shell word meaning exactly `value`: single quotes, each `'` written as `'\\''`. Inside
    single quotes nothing is special (no `$`, backquote, backslash or glob), so no other escaping exists."""
    _refuse(value, "shell", ("\0",))
    return "'" + value.replace("'", "'\\''") + "'"


# systemd's env-file parser (src/basic/env-file.c, parse_env_file_internal): inside double quotes a
# backslash escapes only these four characters (SHELL_NEED_ESCAPE) and a backslash-newline is dropped.
_SYSTEMD_ESCAPE = ('"', "\\", "`", "$")


def systemd_env(value: str) -> str:
    """The right-hand side of `NAME=...` in an `EnvironmentFile=`: double quotes, `" \\ ` $` escaped.
    Line breaks are refused: the format is line-based (a newline inside quotes survives systemd but not
    the many tools that read these files line by line)."""
    _refuse(value, "systemd environment", ("\0", *_LINE_BREAKS))
    return '"' + "".join("\\" + c if c in _SYSTEMD_ESCAPE else c for c in value) + '"'


def _yaml_printable(code: int) -> bool:
    # YAML 1.1 c-printable minus the line breaks (NEL, LS, PS), which double quotes would fold.
    return (
        code in (0x09,)
        or 0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    ) and code not in (0x2028, 0x2029, 0xFEFF)


def yaml_str(value: str) -> str:
    """A YAML double-quoted scalar meaning exactly `value` (YAML 1.1 and 1.2 escapes only)."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\t":
            out.append("\\t")
        elif 0xD800 <= code <= 0xDFFF:
            raise Unquotable("a YAML value cannot hold a lone surrogate")
        elif _yaml_printable(code):
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


# Characters shlex.split leaves alone outside quotes (shlex.quote's own safe set).
_KS_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def kickstart(value: str) -> str:
    """A kickstart token (or the value after `--option=`) meaning exactly `value`: pykickstart splits a
    command line with `shlex.split(line, comments=True)`, POSIX rules, so single quotes carry anything
    but a line break (a kickstart command is one line), and no token may start with `-` (an option to
    pykickstart's argparse whatever the quoting). Plain words stay bare, as people write them."""
    # pykickstart splits the file with str.splitlines(), which ends a line at more than \n and \r.
    _refuse(value, "kickstart", ("\0", *_LINE_BREAKS, *_SPLITLINES))
    if value.startswith("-"):
        # pykickstart's argparse reads a token starting with '-' as an option, quoted or not.
        raise Unquotable("a kickstart value cannot start with '-'")
    if _KS_BARE.fullmatch(value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def json_str(value: object) -> str:
    """JSON text of `value` (Packer's `*.pkrvars.json`, JSON files in the guest)."""
    return json.dumps(value, ensure_ascii=True)


# Jinja2 filter name -> function, for builder's template environment.
FILTERS = {
    "shell": shell,
    "systemd_env": systemd_env,
    "yaml_str": yaml_str,
    "kickstart": kickstart,
    "json_str": json_str,
}

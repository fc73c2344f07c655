"""One quoting function per target format (firstboot.quoting), round-tripped through the real reader of
that format where it runs here: bash `source` for shell, PyYAML for YAML, pykickstart for kickstart; and
systemd's EnvironmentFile parser (a double of env-file.c, tests/doubles/systemd_envfile.py) for systemd
environment files. Hostile strings: quotes, `$(...)`, backquotes, `${IFS}`, globs, backslashes, comment
and option characters, Unicode line separators, control characters."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from doubles import systemd_envfile
from hypothesis import given, settings
from hypothesis import strategies as st
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL9, makeVersion

from firstboot import quoting
from property.counting import count, scaled
from property.strategies import hostile_text as TEXT

ONE_LINE = TEXT.map(lambda s: "".join(s.splitlines()).replace("\0", ""))


@pytest.mark.fault("hostile value written into a shell file", "bash `source` reads it back unchanged")
@settings(max_examples=scaled(30))
@given(values=st.lists(TEXT.map(lambda s: s.replace("\0", "")), min_size=1, max_size=20))
def test_shell_round_trip_through_bash(values: list[str]) -> None:
    count("quoting: shell (bash source)")
    script = "".join(f"V{i}={quoting.shell(v)}\n" for i, v in enumerate(values))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "env.sh"
        path.write_text(script, encoding="utf-8", errors="surrogateescape")
        names = " ".join(f'"$V{i}"' for i in range(len(values)))
        result = subprocess.run(
            [
                "bash",
                "--norc",
                "--noprofile",
                "-c",
                f'set -eu; . "$1"; printf "%s\\0" {names}',
                "bash",
                str(path),
            ],
            capture_output=True,
            timeout=30,
            check=True,
            cwd=tmp,
        )
    assert result.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1] == values


@given(value=ONE_LINE)
def test_systemd_env_round_trip(value: str) -> None:
    count("quoting: systemd environment file")
    text = f"# comment\nNAME={quoting.systemd_env(value)}\nOTHER=x\n"
    assert systemd_envfile.parse(text) == {"NAME": value, "OTHER": "x"}


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b"])
def test_line_based_formats_refuse_line_breaks(value: str) -> None:
    for quote in (quoting.systemd_env, quoting.kickstart):
        with pytest.raises(quoting.Unquotable):
            quote(value)


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_kickstart_refuses_what_splitlines_splits_on(char: str) -> None:
    # pykickstart reads a file with str.splitlines(): these end a kickstart line too.
    with pytest.raises(quoting.Unquotable):
        quoting.kickstart(f"a{char}b")


@given(value=TEXT.filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
def test_yaml_round_trip(value: str) -> None:
    count("quoting: YAML scalar")
    document = f"key: {quoting.yaml_str(value)}\nlist:\n  - {quoting.yaml_str(value)}\n"
    assert yaml.safe_load(document) == {"key": value, "list": [value]}


@settings(max_examples=scaled(40))
@given(value=ONE_LINE.filter(lambda s: s.strip() != ""))
def test_kickstart_round_trip_through_pykickstart(value: str) -> None:
    count("quoting: kickstart (pykickstart)")
    if value.startswith("-"):
        with pytest.raises(quoting.Unquotable):
            quoting.kickstart(value)
        return
    handler = makeVersion(RHEL9)
    KickstartParser(handler).readKickstartFromString(
        f"sshkey --username=arcbake {quoting.kickstart(value)}\n"
    )
    assert handler.sshkey.sshUserList[0].key == value


def test_kickstart_option_value_stays_one_token() -> None:
    # `--ntp-server=` then a value with a space and a quote: one option, the whole value.
    handler = makeVersion(RHEL9)
    value = "ntp.example.org --x 'y"
    KickstartParser(handler).readKickstartFromString(f"timesource --ntp-server={quoting.kickstart(value)}\n")
    assert [s.ntp_server for s in handler.timesource.dataList()] == [value]

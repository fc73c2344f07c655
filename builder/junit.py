"""JUnit XML for CI (`--junit PATH` on validate and build): one test case per validator and per check of
the image suite, a failure carrying the tool's own message.

The layout is the one GitLab, GitHub and Jenkins read (and junitparser parses): `<testsuites>` holding
one `<testsuite>` per group, `<testcase classname name time>` with `<failure message>` or `<skipped>`.
Text is stripped of the characters XML 1.0 cannot hold (a tool's ANSI escapes, NUL).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.validators import Outcome, Status

_NOT_XML = re.compile(r"[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MESSAGE_CAP = 200


@dataclass(frozen=True)
class Case:
    """One test case."""

    classname: str
    name: str
    status: Status
    message: str = ""
    output: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Suite:
    """One `<testsuite>`."""

    name: str
    cases: Sequence[Case]


def _clean(text: str) -> str:
    return _NOT_XML.sub("", _ANSI.sub("", text))


def validator_cases(outcomes: Iterable[Outcome]) -> list[Case]:
    """One case per validator: passed, failed (the tool's message) or skipped (tool not installed)."""
    return [
        Case("arcbake.validators", o.name, o.status, o.message, f"{o.tool}: {o.message}", o.seconds)
        for o in outcomes
    ]


def read_cases(path: Path, classname_prefix: str = "") -> list[Case]:
    """The test cases of a JUnit file another tool wrote (the image suite's pytest --junitxml)."""
    root = ET.parse(path).getroot()  # noqa: S314 - a file our own build wrote, not network input
    cases: list[Case] = []
    for case in root.iter("testcase"):
        status = Status.PASSED
        message = ""
        for tag in ("failure", "error"):
            found = case.find(tag)
            if found is not None:
                status = Status.FAILED
                message = (found.get("message") or "") + ("\n" + found.text if found.text else "")
        skipped = case.find("skipped")
        if skipped is not None and status is Status.PASSED:
            status, message = Status.SKIPPED, skipped.get("message") or ""
        cases.append(
            Case(
                classname_prefix + (case.get("classname") or ""),
                case.get("name") or "",
                status,
                message.strip(),
                "",
                float(case.get("time") or 0.0),
            )
        )
    return cases


def write(path: Path, suites: Sequence[Suite]) -> None:
    """Write the JUnit file (parents created), replacing any earlier one."""
    root = ET.Element("testsuites")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    total_time = 0.0
    for suite in suites:
        failures = sum(c.status is Status.FAILED for c in suite.cases)
        skipped = sum(c.status is Status.SKIPPED for c in suite.cases)
        seconds = sum(c.seconds for c in suite.cases)
        node = ET.SubElement(
            root,
            "testsuite",
            name=suite.name,
            tests=str(len(suite.cases)),
            failures=str(failures),
            errors="0",
            skipped=str(skipped),
            time=f"{seconds:.3f}",
        )
        totals["tests"] += len(suite.cases)
        totals["failures"] += failures
        totals["skipped"] += skipped
        total_time += seconds
        for case in suite.cases:
            element = ET.SubElement(
                node, "testcase", classname=case.classname, name=case.name, time=f"{case.seconds:.3f}"
            )
            text = _clean(case.message)
            first = text.strip().splitlines()[0] if text.strip() else case.status.value
            if case.status is Status.FAILED:
                ET.SubElement(element, "failure", message=first[:MESSAGE_CAP], type="rejected").text = text
            elif case.status is Status.SKIPPED:
                ET.SubElement(element, "skipped", message=first[:MESSAGE_CAP])
            if case.output:
                ET.SubElement(element, "system-out").text = _clean(case.output)
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("skipped", str(totals["skipped"]))
    root.set("time", f"{total_time:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)

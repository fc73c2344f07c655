"""builder report: the page's content (every VM and step, failures with remedies, median and slowest),
escaping of guest text, and the page in headless Chromium: rendered, complete, and requesting nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fixtures import browser

from builder.report import render_html, step_stats
from builder.status import NO_REPORT, VmStatus
from firstboot.contract import StepOutcome, StepTiming
from firstboot.steps import ORDER

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
STEPS = list(ORDER)
HOSTILE = '<script>alert(1)</script><img src="http://127.0.0.1:9/x.png">\x1b[31m\x1b]0;owned\x07\u202e'


def vm(name: str, durations: dict[str, float], *, offset: float = 0.0, fail: str | None = None) -> VmStatus:
    timings = []
    t = T0 + timedelta(seconds=offset)
    for step, seconds in durations.items():
        outcome = StepOutcome.FAILED if step == fail else StepOutcome.DONE
        attempts = 3 if step == "time" else 1
        timings.append(
            StepTiming(
                step=step, started=t, ended=t + timedelta(seconds=seconds), attempts=attempts, outcome=outcome
            )
        )
        t += timedelta(seconds=seconds)
    state = "failed" if fail else "done"
    row = VmStatus(name, state, step=fail, message="onboarded" if not fail else HOSTILE, power="poweredOn")
    row.remedy = f"open UDP 123 to {HOSTILE}" if fail else None
    row.updated = t.isoformat()
    row.steps = [x.model_dump(mode="json") for x in timings]
    return row


def fleet() -> list[VmStatus]:
    base = {s: 2.0 + i for i, s in enumerate(STEPS)}
    slow = {**base, "k3s": 95.0}
    broken = {s: base[s] for s in STEPS[:4]}
    return [
        vm("edge-01", base),
        vm("edge-02", slow, offset=3),
        vm("edge-03", broken, offset=1, fail="dns"),
        VmStatus("edge-04", NO_REPORT, power="poweredOn"),
    ]


class _Dom(HTMLParser):
    """Elements with their attributes, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:|//)", re.I)


def external_references(dom: _Dom) -> list[str]:
    """Attribute values that would load something from elsewhere (URLs with a scheme or //host)."""
    found = []
    for tag, attrs in dom.elements:
        for name, value in attrs.items():
            loads = name in ("src", "href", "xlink:href", "action", "data", "poster", "srcset")
            if loads and value and EXTERNAL.match(value):
                found.append(f"{tag} {name}={value}")
        if tag in ("script", "iframe", "object", "embed", "link", "img", "base"):
            found.append(f"<{tag}>")
    style = "".join(dom.text)
    found += re.findall(r"url\(|@import", style)
    return found


def test_step_stats_median_and_slowest() -> None:
    stats = {s.step: s for s in step_stats(fleet())}
    assert list(stats) == STEPS
    assert stats["k3s"].runs == 2 and stats["k3s"].slowest_vm == "edge-02" and stats["k3s"].slowest == 95.0
    assert stats["k3s"].median == pytest.approx((9.0 + 95.0) / 2)
    assert stats["time"].runs == 3 and stats["dns"].runs == 2  # edge-03's failed dns run is not timed


def test_page_escapes_guest_text_and_references_nothing() -> None:
    page = render_html("demo <fleet>", fleet(), now=T0 + timedelta(minutes=5))
    assert "<script>" not in page and "\x1b" not in page
    # Whole OSC sequences and bidi overrides go (builder.guesttext.clean), not just their ESC.
    assert "]0;owned" not in page and "\u202e" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=&quot;http://127.0.0.1:9/x.png&quot;&gt;" in page
    assert "demo &lt;fleet&gt;" in page
    dom = parse(page)
    assert external_references(dom) == []
    csp = [a for t, a in dom.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html("demo", fleet(), now=T0 + timedelta(minutes=5)), encoding="utf-8")
    png = tmp_path / "report.png"
    browser.screenshot(page, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    dom = parse(browser.dump_dom(page))
    rows = {a["data-vm"]: a for t, a in dom.elements if t == "tr" and "vm" in (a.get("class") or "")}
    assert list(rows) == ["edge-01", "edge-02", "edge-03", "edge-04"]
    assert rows["edge-03"]["data-state"] == "failed" and rows["edge-04"]["data-state"] == "no report"
    bars = [a["data-step"] for t, a in dom.elements if t == "g" and a.get("class") == "run"]
    assert bars.count("k3s") == 2 and bars.count("metadata") == 3 and len(bars) == 10 + 10 + 4
    step_rows = [a["data-step"] for t, a in dom.elements if t == "tr" and a.get("class") == "step"]
    assert step_rows == STEPS
    failures = [a["data-vm"] for t, a in dom.elements if t == "tr" and a.get("class") == "failure"]
    assert failures == ["edge-03"]
    text = " ".join(dom.text)
    assert "open UDP 123 to <script>alert(1)</script>" in text  # shown as text, never run
    assert not any(t == "script" for t, _ in dom.elements)
    assert external_references(dom) == []

    # Nothing leaves the page: the net log of the load has no request of the page's own. The same check
    # sees the request of a page that does load an image.
    assert browser.page_requests(page, tmp_path) == set()
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/x.png">', encoding="utf-8")
    assert browser.page_requests(leaky, tmp_path) == {"http://127.0.0.1:9/x.png"}

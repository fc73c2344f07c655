"""`builder report FLEET -o report.html`: one self-contained page of where a fleet's onboarding time went.

- a timeline per VM: one bar per step run (start to end, coloured by outcome, attempts in its tooltip),
  on one time axis for the whole fleet;
- the failed steps with their message and remedy;
- per step: how many VMs ran it, the fleet's median and the slowest VM.

Self-contained: inline CSS and SVG, no script, no font, no image, no link; a Content-Security-Policy
meta tag (`default-src 'none'`) forbids the browser any request. Every guest-provided string (step
names, messages, remedies) is untrusted: control characters are dropped and everything is HTML-escaped,
attributes included.
"""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

from builder import guesttext
from builder.status import FINAL, VmStatus
from firstboot import contract

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'"
TIMELINE_WIDTH = 760
BAR_HEIGHT = 18
COLOURS = {"done": "#2e7d32", "failed": "#c62828", "running": "#f9a825"}


def esc(value: object) -> str:
    """Guest text made safe for HTML text and quoted attributes."""
    return html.escape(guesttext.clean(str(value)), quote=True)


@dataclass(frozen=True)
class Run:
    """One step run of one VM, in seconds from the fleet's first start."""

    vm: str
    step: str
    offset: float
    seconds: float | None
    attempts: int
    outcome: str


@dataclass(frozen=True)
class StepStats:
    """The fleet's figures for one step (its completed runs only)."""

    step: str
    runs: int
    median: float
    slowest_vm: str
    slowest: float


def _runs(rows: list[VmStatus], now: datetime) -> tuple[dict[str, list[Run]], float]:
    timings = {row.name: row.timings() for row in rows}
    starts = [t.started for ts in timings.values() for t in ts]
    origin = min(starts) if starts else now
    ends = [t.ended or now for ts in timings.values() for t in ts]
    span = max(((e - origin).total_seconds() for e in ends), default=0.0)
    out: dict[str, list[Run]] = {}
    for name, ts in timings.items():
        out[name] = [
            Run(
                name,
                t.step,
                (t.started - origin).total_seconds(),
                t.seconds,
                t.attempts,
                t.outcome.value,
            )
            for t in ts
        ]
    return out, max(span, 1.0)


def step_stats(rows: list[VmStatus]) -> list[StepStats]:
    """Per step, over the VMs that completed it: count, median and slowest (its newest completed run)."""
    per_step: dict[str, dict[str, float]] = {}
    order: list[str] = []
    for row in rows:
        for t in row.timings():
            if t.outcome is not contract.StepOutcome.DONE or t.seconds is None:
                continue
            if t.step not in per_step:
                per_step[t.step] = {}
                order.append(t.step)
            per_step[t.step][row.name] = t.seconds  # the newest run of the step wins
    stats = []
    for step in order:
        by_vm = per_step[step]
        slowest_vm = max(by_vm, key=lambda vm: by_vm[vm])
        stats.append(
            StepStats(step, len(by_vm), statistics.median(by_vm.values()), slowest_vm, by_vm[slowest_vm])
        )
    return stats


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes} min {secs:02d} s"


def _timeline(runs: list[Run], span: float) -> str:
    scale = TIMELINE_WIDTH / span
    parts = [
        f'<svg class="timeline" width="{TIMELINE_WIDTH}" height="{BAR_HEIGHT + 4}" '
        f'viewBox="0 0 {TIMELINE_WIDTH} {BAR_HEIGHT + 4}" role="img">'
    ]
    for run in runs:
        x = run.offset * scale
        seconds = run.seconds if run.seconds is not None else span - run.offset
        width = max(2.0, seconds * scale)
        tries = f", {run.attempts} attempts" if run.attempts > 1 else ""
        tip = f"{run.step}: {run.outcome}, {_seconds(run.seconds)}{tries}"
        colour = COLOURS.get(run.outcome, "#757575")
        parts.append(
            f'<g class="run" data-step="{esc(run.step)}" data-outcome="{esc(run.outcome)}">'
            f"<title>{esc(tip)}</title>"
            f'<rect x="{x:.1f}" y="2" width="{width:.1f}" height="{BAR_HEIGHT}" rx="2" fill="{colour}"/>'
        )
        if width >= 7 * len(run.step) + 6:
            parts.append(f'<text x="{x + 3:.1f}" y="{BAR_HEIGHT - 2}">{esc(run.step)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #616161; margin-bottom: 12px; }
table { border-collapse: collapse; } th, td { text-align: left; padding: 4px 10px; vertical-align: top; }
th { background: #f5f5f5; border-bottom: 1px solid #ddd; } tr + tr td { border-top: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { font-weight: 600; } .state-done { color: #2e7d32; } .state-failed { color: #c62828; }
.state-running { color: #b26a00; }
.timeline text { font: 11px system-ui, sans-serif; fill: #fff; pointer-events: none; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 14px; vertical-align: -1px; }
.remedy { color: #37474f; } .empty { color: #757575; font-style: italic; }
"""


def render_html(fleet: str, rows: list[VmStatus], now: datetime | None = None) -> str:
    """The whole page."""
    now = now or datetime.now(UTC)
    runs, span = _runs(rows, now)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    summary = ", ".join(f"{n} {esc(state)}" for state, n in counts.items())
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>arcbake report: fleet {esc(fleet)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Fleet {esc(fleet)}: where the onboarding time went</h1>",
        f'<div class="meta">{len(rows)} VM(s): {summary}. Generated {esc(now.isoformat(timespec="seconds"))};'
        f" time axis {esc(_seconds(span))} from the first step started.</div>",
        '<div class="legend">'
        + "".join(f'<span style="background:{c}"></span>{esc(k)}' for k, c in COLOURS.items())
        + "</div>",
        "<h2>Timeline per VM</h2>",
        '<table id="timeline"><tr><th>VM</th><th>state</th><th>step</th><th>onboarding</th>'
        "<th>steps</th></tr>",
    ]
    for row in rows:
        vm_runs = runs[row.name]
        total = None
        if vm_runs and row.state in FINAL:
            last = max(r.offset + (r.seconds or 0.0) for r in vm_runs)
            total = last - min(r.offset for r in vm_runs)
        timeline = _timeline(vm_runs, span) if vm_runs else '<span class="empty">no step reported</span>'
        out.append(
            f'<tr class="vm" data-vm="{esc(row.name)}" data-state="{esc(row.state)}">'
            f"<td>{esc(row.name)}</td>"
            f'<td class="state state-{esc(row.state.replace(" ", "-"))}">{esc(row.state)}</td>'
            f'<td>{esc(row.step or "-")}</td><td class="num">{esc(_seconds(total))}</td>'
            f"<td>{timeline}</td></tr>"
        )
    out.append("</table>")

    failed = [row for row in rows if row.state == contract.State.FAILED.value]
    out.append("<h2>Failed steps</h2>")
    if failed:
        out.append('<table id="failures"><tr><th>VM</th><th>step</th><th>message</th><th>remedy</th></tr>')
        for row in failed:
            out.append(
                f'<tr class="failure" data-vm="{esc(row.name)}"><td>{esc(row.name)}</td>'
                f"<td>{esc(row.step or '-')}</td><td>{esc(row.message)}</td>"
                f'<td class="remedy">{esc(row.remedy or "-")}</td></tr>'
            )
        out.append("</table>")
    else:
        out.append('<p class="empty" id="failures">No VM reported a failed step.</p>')

    out.append("<h2>Per step: the fleet's median and slowest</h2>")
    stats = step_stats(rows)
    if stats:
        out.append(
            '<table id="steps"><tr><th>step</th><th>VMs</th><th>median</th><th>slowest</th><th>VM</th></tr>'
        )
        for st in stats:
            out.append(
                f'<tr class="step" data-step="{esc(st.step)}"><td>{esc(st.step)}</td>'
                f'<td class="num">{st.runs}</td><td class="num">{esc(_seconds(st.median))}</td>'
                f'<td class="num">{esc(_seconds(st.slowest))}</td><td>{esc(st.slowest_vm)}</td></tr>'
            )
        out.append("</table>")
    else:
        out.append('<p class="empty" id="steps">No step has completed yet.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"

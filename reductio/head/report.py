"""A job report from the job log: one self-contained HTML page, no server, no scripts.

It shows each step with its totals and a bar chart (inline SVG) of the
seconds each worker spent on it, for people who would rather look than read.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from typing import List

from reductio.errors import ReductioError

_BAR, _GAP, _LABEL, _WIDTH = 18, 10, 260, 480
_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d")


def read_log(path: str) -> List[dict]:
    """The step records of a JSON-lines job log."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ReductioError(f"no job log at {path}; set reductio: log: {path} in config and run the job") from None
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as err:
        raise ReductioError(f"{path} line {err.lineno}: not a job log line") from None


def write_report(path: str, page: str) -> None:
    """Write the page to ``path`` as a new file readable by its owner only (0600, as the job log), replacing
    what was there; a symbolic link at ``path`` is refused, never followed."""
    target = Path(os.path.expanduser(path))
    if target.is_symlink():
        raise ReductioError(f"report output {target} is a symbolic link; give the path of the file itself")
    if target.is_dir():
        raise ReductioError(f"report output {target} is a folder; give a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=".reductio-report-", dir=target.parent)  # made 0600
    except OSError as err:
        raise ReductioError(f"cannot write the report into {target.parent}: {err.strerror or err}") from None
    try:
        with open(handle, "w", encoding="utf-8") as out:
            out.write(page)
        os.replace(scratch, target)  # replaces whatever name is there; follows no link
    except OSError as err:
        raise ReductioError(f"cannot write the report {target}: {err.strerror or err}") from None
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def render(records: List[dict]) -> str:
    """The HTML page for these step records."""
    steps = [r for r in records if not r.get("skipped")]
    workers = sorted({name for r in steps for name in _per_worker(r)})
    colour = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(workers)}
    chart = _chart(steps, workers, colour)
    legend = " ".join(f'<span class="key" style="background:{colour[w]}"></span>{html.escape(w)}' for w in workers)
    rows = "\n".join(_row(r) for r in records)
    total = sum(r.get("seconds", 0) for r in steps)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>reductio job report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
td:first-child, th:first-child, td.text {{ text-align: left; }}
.key {{ display: inline-block; width: 1em; height: 1em; margin: 0 0.3em 0 1em; vertical-align: middle; }}
</style></head>
<body>
<h1>reductio job report</h1>
<p>{len(steps)} step(s) run, {len(records) - len(steps)} skipped as up to date; {total:.1f} s in all.</p>
<h2>Seconds per step and worker</h2>
<p>{legend}</p>
{chart}
<h2>Steps</h2>
<table id="steps">
<tr><th>step</th><th>target</th><th>seconds</th><th>CPU seconds</th>\
<th>lines in</th><th>lines out</th><th>bytes out</th><th>user counters</th></tr>
{rows}
</table>
</body></html>
"""


def _chart(steps: List[dict], workers: List[str], colour: dict) -> str:
    longest = max((c.get("seconds", r.get("seconds", 0)) for r in steps for c in _per_worker(r).values()), default=0)
    scale = _WIDTH / longest if longest else 0
    parts, y = [], 0
    for record in steps:
        label = f"{record['step']} → {record.get('target', '')}"
        parts.append(f'<text x="0" y="{y + 14}" font-size="13">{html.escape(label)}</text>')
        for name, counters in _per_worker(record).items():
            seconds = counters.get("seconds", record.get("seconds", 0))
            width = max(1, round(seconds * scale))
            parts.append(f'<rect class="bar" x="{_LABEL}" y="{y}" width="{width}" height="{_BAR - 2}"'
                         f' fill="{colour[name]}"><title>{html.escape(name)}: {seconds:.2f} s</title></rect>')
            parts.append(f'<text x="{_LABEL + width + 4}" y="{y + 13}" font-size="11">{seconds:.2f} s</text>')
            y += _BAR
        y += _GAP
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LABEL + _WIDTH + 80}" height="{max(y, 1)}"'
            f' role="img" aria-label="seconds per step and worker">{"".join(parts)}</svg>')


def _per_worker(record: dict) -> dict:
    return record.get("workers") or {"head": {"seconds": record.get("seconds", 0)}}


def _row(record: dict) -> str:
    workers = record.get("workers", {}).values()
    total = {key: sum(c.get(key, 0) for c in workers) for key in ("cpu seconds", "lines in", "lines out", "bytes out")}
    user = ", ".join(f"{k}: {v:,}" for k, v in sorted((record.get("user") or {}).items()))
    seconds = "skipped" if record.get("skipped") else f"{record.get('seconds', 0):.2f}"
    cpu = f"{total['cpu seconds']:.2f}" if any("cpu seconds" in c for c in workers) else "-"
    cells = [html.escape(record.get("step", "?")), html.escape(record.get("target", "")), seconds, cpu,
             f"{total['lines in']:,}", f"{total['lines out']:,}", f"{total['bytes out']:,}", html.escape(user)]
    return "<tr>" + "".join(f'<td class="{"text" if i in (1, 7) else ""}">{cell}</td>'
                            for i, cell in enumerate(cells)) + "</tr>"

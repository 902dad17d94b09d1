"""Trends over the history: a self-contained HTML page with one plot per metric over
time for each instrument and holder, and a plain-text list of the runs.

Nothing here measures or judges: every value, interval, tolerance and verdict comes
from the history (:mod:`stage_acceptance.history`), which keeps them as each run's
results JSON said.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .baseline import COMPARED_METRICS, compared_label
from .figures import figure_png, png_base64
from .history import HistoryEntry

VERDICT_COLOURS = {"accepted": "#1a7f37", "not accepted": "#b42318", "not certified": "#8a6d00",
                   "incomplete": "#7a7a7a"}
"""Marker colour of each verdict (the report's colours; incomplete grey)."""

MAX_NOTE_SHOWN = 60
"""Longest note written on a plot (the runs table shows it whole)."""


def _scale(unit: str) -> tuple[float, str]:
    """Fractions are shown in percent, as in the report."""
    return (100.0, "%") if unit == "" else (1.0, unit)


def group_runs(entries: list[HistoryEntry]) -> dict[tuple[str, str], list[HistoryEntry]]:
    """Runs by (instrument, holder), each group in the order measured, groups by name."""
    groups: dict[tuple[str, str], list[HistoryEntry]] = {}
    for entry in sorted(entries, key=lambda e: (e.when_utc, e.analysed_utc, e.id)):
        groups.setdefault((entry.instrument, entry.holder), []).append(entry)
    return dict(sorted(groups.items()))


def metric_names(entries: list[HistoryEntry]) -> list[str]:
    """The metrics measured in at least one of `entries`, in report order."""
    measured = {name for entry in entries for name, m in entry.metrics.items() if m.value is not None}
    return [name for name in COMPARED_METRICS if name in measured] + sorted(measured - set(COMPARED_METRICS))


def trend_figure(entries: list[HistoryEntry], name: str) -> Figure | None:
    """One metric of one instrument and holder over time.

    Each run is a point at the time the instrument was measured, coloured by its
    verdict, with its 95 % interval as an error bar; the holder's tolerance is a
    shaded band (as each run was judged); runs with a note are marked by a dashed
    vertical line labelled with the note. None when no run measured the metric.

    Parameters
    ----------
    entries : list of HistoryEntry
        Runs of one instrument and holder, in the order measured.
    name : str
        The metric (``x.backlash_nm``, ``pairs.target_actual.rms_nm`` ...).
    """
    rows = [(entry, entry.metrics.get(name)) for entry in entries]
    points = [(entry, metric) for entry, metric in rows if metric is not None and metric.value is not None]
    if not points:
        return None
    unit = points[0][1].unit
    factor, shown_unit = _scale(unit)
    when = [entry.when_utc for entry, _ in points]
    value = np.array([metric.value for _, metric in points]) * factor
    low = np.array([metric.ci95[0] if metric.ci95 else metric.value for _, metric in points]) * factor
    high = np.array([metric.ci95[1] if metric.ci95 else metric.value for _, metric in points]) * factor
    colours = [VERDICT_COLOURS.get(entry.verdict, "#333333") for entry, _ in points]

    fig = Figure(figsize=(8.2, 2.6), layout="constrained")
    ax = fig.subplots()
    all_when = [entry.when_utc for entry, _ in rows]
    tolerance = np.array([np.nan if m is None or m.tolerance is None else m.tolerance * factor for _, m in rows])
    if np.isfinite(tolerance).any():
        if len(rows) == 1 or np.nanmin(tolerance) == np.nanmax(tolerance):
            limit = float(np.nanmax(tolerance))
            ax.axhspan(-limit, limit, color="#1a7f37", alpha=0.10, lw=0)
        else:
            ax.fill_between(all_when, -tolerance, tolerance, step="post", color="#1a7f37", alpha=0.10, lw=0)
    ax.errorbar(when, value, yerr=[np.maximum(value - low, 0), np.maximum(high - value, 0)], fmt="none",
                ecolor="0.45", elinewidth=1, capsize=3, zorder=2)
    ax.plot(when, value, "-", color="0.7", lw=0.8, zorder=1)
    ax.scatter(when, value, c=colours, s=36, zorder=3, edgecolors="k", linewidths=0.4)
    ax.axhline(0, color="0.6", lw=0.6)
    for entry in entries:
        if entry.note:
            ax.axvline(entry.when_utc, color="#0072B2", ls="--", lw=1, zorder=0)
            text = entry.note if len(entry.note) <= MAX_NOTE_SHOWN else entry.note[: MAX_NOTE_SHOWN - 3] + "..."
            ax.annotate(text, (entry.when_utc, 0.97), xycoords=("data", "axes fraction"), xytext=(-2, 0),
                        textcoords="offset points", fontsize=7, color="#0072B2", ha="right", va="top", rotation=90)
    finite_tol = tolerance[np.isfinite(tolerance)]
    top = max(float(np.max(high)), float(np.max(finite_tol)) if finite_tol.size else -np.inf)
    bottom = min(float(np.min(low)), 0.0)
    if bottom < 0 and finite_tol.size:
        bottom = min(bottom, -float(np.max(finite_tol)))
    span = (top - bottom) or max(abs(top), 1.0)
    ax.set_ylim(bottom - 0.08 * span, top + 0.22 * span)
    if len(set(all_when)) == 1:  # one day either side of a single date
        ax.set_xlim(all_when[0] - timedelta(days=1), all_when[0] + timedelta(days=1))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    label = points[-1][1].label if not name.startswith("pairs.") else compared_label(name)
    ax.set_title(f"{label} ({shown_unit})" if shown_unit else label, fontsize=10, loc="left")
    ax.set_ylabel(shown_unit or "value")
    verdicts = [v for v in VERDICT_COLOURS if any(entry.verdict == v for entry, _ in points)]
    handles = [Line2D([], [], marker="o", ls="", color=VERDICT_COLOURS[v], mec="k", mew=0.4, label=v)
               for v in verdicts]
    handles.append(Line2D([], [], color="0.45", marker="|", ls="", ms=10, label="95 % interval"))
    if np.isfinite(tolerance).any():
        handles.append(Line2D([], [], color="#1a7f37", alpha=0.3, lw=8, label="tolerance"))
    if any(entry.note for entry in entries):
        handles.append(Line2D([], [], color="#0072B2", ls="--", label="note"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def _path_link(path: str | None) -> str:
    if not path:
        return "&ndash;"
    target = Path(path)
    href = target.as_uri() if target.is_absolute() else html.escape(path)
    return f'<a href="{html.escape(href)}"><code>{html.escape(target.name)}</code></a>'


def _when(moment: datetime | None) -> str:
    return "unknown" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _latest_html(entry: HistoryEntry) -> str:
    e = html.escape
    results = entry.results or {}
    colour = VERDICT_COLOURS.get(entry.verdict, "#333333")
    headline = results.get("verdict_headline") or entry.verdict.upper()
    reasons = "".join(f"<li>{e(str(reason))}</li>" for reason in (results.get("verdict_reasons") or [])[:12])
    title = (results.get("certification") or {}).get("title")
    case = f"case {entry.case}: {title}" if entry.case else "no case certified"
    facts = [("Measured", _when(entry.measured_utc)), ("Analysed", _when(entry.analysed_utc)),
             ("Holder", f"{entry.holder_name or entry.holder} ({entry.holder})"),
             ("Label", entry.label or "none"), ("Note", entry.note or "none"), ("Source", entry.source),
             ("stage-acceptance", entry.version or "unknown")]
    rows = "".join(f"<tr><th>{name}</th><td>{e(str(value))}</td></tr>" for name, value in facts)
    rows += (f"<tr><th>Report</th><td>{_path_link(entry.report_path)}</td></tr>"
             f"<tr><th>Results JSON</th><td>{_path_link(entry.results_path)}</td></tr>"
             f"<tr><th>Recording</th><td><code>{e(entry.recording_path or 'none')}</code></td></tr>")
    since = (results.get("baseline") or {}).get("headline")
    since = f"<p><b>Since its baseline:</b> {e(str(since))}.</p>" if since else ""
    return (f'<div class="latest" style="border:3px solid {colour}"><h3 style="color:{colour};margin-top:0">'
            f'Latest certificate: {e(headline)}</h3><p><b>{e(case)}.</b></p><ul>{reasons}</ul>{since}'
            f'<table>{rows}</table></div>')


def _runs_html(entries: list[HistoryEntry]) -> str:
    e = html.escape
    rows = []
    for entry in reversed(entries):
        colour = VERDICT_COLOURS.get(entry.verdict, "#333333")
        rows.append(f"<tr><td class=num>{entry.id}</td><td>{_when(entry.when_utc)}</td>"
                    f"<td style='color:{colour};font-weight:bold'>{e(entry.verdict)}</td>"
                    f"<td>{e(entry.case or '-')}</td><td>{e(entry.label or '')}</td><td>{e(entry.note or '')}</td>"
                    f"<td>{e(entry.source)}</td><td>{_path_link(entry.report_path)}</td></tr>")
    return ("<table><tr><th>entry</th><th>measured</th><th>verdict</th><th>case</th><th>label</th><th>note</th>"
            "<th>source</th><th>report</th></tr>" + "".join(rows) + "</table>")


PAGE_STYLE = """
body { font-family: sans-serif; margin: 16px; color: #111; }
table { border-collapse: collapse; margin: 4px 0 12px 0; }
td, th { border: 1px solid #bbb; padding: 3px 6px; text-align: left; vertical-align: top; }
td.num { text-align: right; }
.latest { padding: 10px; margin: 8px 0 14px 0; }
section { margin-bottom: 32px; }
figure { margin: 6px 0; }
"""


def history_page(entries: list[HistoryEntry], *, where: str, selection: str = "") -> str:
    """The trends page: per instrument and holder, the latest certificate, the runs, and
    one plot per metric over time (self-contained HTML, figures embedded as PNG).

    Parameters
    ----------
    entries : list of HistoryEntry
        The runs to show (any order).
    where : str
        The history database, for the page's header (no password).
    selection : str
        What the runs were selected by (e.g. ``microscope sim``), for the header.

    Returns
    -------
    str
        A whole HTML document.
    """
    e = html.escape
    sections = []
    groups = group_runs(entries)
    for (instrument, holder), runs in groups.items():
        plots = []
        for name in metric_names(runs):
            fig = trend_figure(runs, name)
            if fig is not None:
                plots.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
                             f'{png_base64(figure_png(fig, dpi=80))}"></figure>')
        sections.append(f"<section><h2>{e(instrument)}, holder {e(holder)}</h2>{_latest_html(runs[-1])}"
                        f"<h3>Runs ({len(runs)}, newest first)</h3>{_runs_html(runs)}"
                        f"<h3>Metrics over time</h3><p>Each point is a run at the time the instrument was measured, "
                        f"coloured by its verdict, with its 95 % interval; the shaded band is the holder's "
                        f"tolerance; dashed blue lines mark runs with a note.</p>{''.join(plots)}</section>")
    if not sections:
        sections.append("<p>No runs recorded" + (f" for {e(selection)}" if selection else "") + ".</p>")
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    chosen = f"; runs of {e(selection)}" if selection else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Stage acceptance history</title>"
            f"<style>{PAGE_STYLE}</style></head><body><h1>Stage acceptance history</h1>"
            f"<p>{len(entries)} run(s) from <code>{e(where)}</code>{chosen}; made {made}.</p>"
            f"{''.join(sections)}</body></html>\n")


def runs_text(entries: list[HistoryEntry]) -> str:
    """The runs as a plain-text table (oldest first), one line each."""
    header = ("entry", "measured (UTC)", "instrument", "holder", "label", "verdict", "case", "note", "report")
    rows = [header] + [(str(entry.id), entry.when_utc.strftime("%Y-%m-%d %H:%M"), entry.instrument, entry.holder,
                        entry.label or "", entry.verdict, entry.case or "-", entry.note or "",
                        entry.report_path or "") for entry in sorted(entries, key=lambda e: (e.when_utc, e.id))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)

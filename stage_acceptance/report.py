"""Figures (matplotlib), the results JSON (results-v1) and the HTML certificate block.

Nothing here computes a metric: everything comes from an
:class:`~stage_acceptance.analysis.Analysis`, a
:class:`~stage_acceptance.certification.Certificate` and its checks.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import AXIS_NAMES, Analysis  # noqa: E402
from .certification import PAIR_LABELS, Certificate, Check  # noqa: E402

RESULTS_SCHEMA = "stage-acceptance/results"
RESULTS_VERSION = 1

_COLOURS = {"target": "0.35", "reported": "tab:blue", "actual": "tab:orange", "reversal": "tab:red"}


# --------------------------------------------------------------------------- results JSON


def _clean(value):
    """JSON-safe value: NaN/inf become null, numpy scalars become Python numbers."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v) for v in value]
    return value


def results_json(analysis: Analysis, certificate: Certificate, checks: dict[str, Check], *,
                 microscope: str, holder: str, source: str, session_path: str,
                 tests: dict[str, int], extra: dict | None = None) -> dict:
    """The results-v1 document of a run.

    Parameters
    ----------
    analysis : Analysis
    certificate : Certificate
    checks : dict of Check
        Every metric against its tolerance (kept under the additional key ``checks``).
    microscope, holder : str
        Names of the instrument and holder.
    source : {"live", "replay"}
    session_path : str
        Path of the session recording.
    tests : dict
        ``{"passed": n, "failed": n, "skipped": n}``.
    extra : dict, optional
        Further keys (results-v1 allows more keys).

    Returns
    -------
    dict
        JSON-serialisable (NaN and inf turned into null).
    """
    if source not in ("live", "replay"):
        raise ValueError(f"source must be 'live' or 'replay', got {source!r}")
    pairs = {
        name: {"agree": verdict.agree, "consistent": verdict.consistent, "rms_nm": verdict.rms_nm}
        for name, verdict in certificate.pairs.items()
    }
    document = {
        "schema": RESULTS_SCHEMA,
        "version": RESULTS_VERSION,
        "microscope": microscope,
        "holder": holder,
        "source": source,
        "session": session_path,
        "certification": {
            "case": certificate.case,
            "title": certificate.title,
            "accepted": certificate.accepted,
            "reasons": list(certificate.reasons),
        },
        "pairs": pairs,
        "axes": {axis: asdict(analysis.axes[axis]) for axis in AXIS_NAMES},
        "coupling": asdict(analysis.coupling),
        "drift_nm_per_min": analysis.drift_nm_per_min,
        "tilt": {name: asdict(metrics) for name, metrics in analysis.tilt.items()},
        "stage_to_image": {
            "rotation_deg": analysis.transform.rotation_deg,
            "flip_y": analysis.transform.flip_y,
            "estimated": analysis.transform_estimated,
        },
        "frames": analysis.frames,
        "tests": {key: int(tests.get(key, 0)) for key in ("passed", "failed", "skipped")},
        "checks": {
            name: {"value": c.value, "unit": c.unit, "limit": c.limit, "passed": c.passed}
            for name, c in checks.items()
        },
        "steps": {
            "total": len(analysis.steps),
            "registered": int(analysis.steps.registered.sum()),
            "reversal": int(np.sum(analysis.steps.kind == "reversal")),
            "plain": int(np.sum(analysis.steps.kind == "plain")),
            "not_registered": list(analysis.failed),
        },
    }
    if extra:
        document.update(extra)
    return _clean(document)


def write_json(document: dict, path: str | Path) -> Path:
    """Write a JSON document (creating folders); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def png_base64(png: bytes) -> str:
    """Base64 text of PNG bytes (for pytest-html extras and inline images)."""
    return base64.b64encode(png).decode("ascii")


def _frames_of(analysis: Analysis, protocol: str) -> np.ndarray:
    return np.array([i for i, p in enumerate(analysis.session.protocols()) if p == protocol], dtype=int)


def figure_hysteresis(analysis: Analysis, axis: str) -> bytes | None:
    """Figure 3 of the paper for one axis, as PNG.

    Reported - target and actual - target (nm) against the target position along the
    axis for the frames of the ``hysteresis-<axis>`` protocol; frames reached by the
    first step after a reversal are marked in red. ``None`` when the session has no
    such protocol.
    """
    frames = _frames_of(analysis, f"hysteresis-{axis}")
    if len(frames) == 0:
        return None
    k = AXIS_NAMES.index(axis)
    session = analysis.session
    target = session.targets_nm()[frames, k]
    reported = session.reported_nm()[frames, k] - target
    actual = analysis.actual_positions_nm[frames, k] - target
    actual = actual - actual[0]
    kinds = dict(zip(analysis.steps.frame.tolist(), analysis.steps.kind.tolist()))
    reversal = np.array([kinds.get(int(f)) == "reversal" for f in frames])

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(target, reported, "-o", color=_COLOURS["reported"], ms=4, lw=1, label="reported - target")
    ax.plot(target, actual, "-s", color=_COLOURS["actual"], ms=4, lw=1, label="actual - target")
    if reversal.any():
        ax.plot(target[reversal], actual[reversal], "o", ms=10, mfc="none", mec=_COLOURS["reversal"], mew=1.5,
                label="first step after a reversal")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel(f"target {axis} (nm)")
    ax.set_ylabel("error (nm)")
    ax.set_title(f"Hysteresis along {axis} (Figure 3 style); actual relative to the first frame")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def figure_cross(analysis: Analysis) -> bytes | None:
    """Figure 4 of the paper, as PNG.

    Left: target, reported and actual paths of the cross. Right: the errors that are
    too small to see on the left, reported - target and actual - target per frame,
    with the four arms marked; actual positions are chained from the first frame of
    the cross, so the last point shows how far out-and-back fails to return.
    """
    frames = _frames_of(analysis, "cross")
    if len(frames) == 0:
        return None
    session = analysis.session
    target = session.targets_nm()[frames, :2]
    reported = session.reported_nm()[frames, :2]
    actual = analysis.actual_positions_nm[frames]
    actual = actual - actual[0] + target[0]
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(11.5, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    ax.plot(*target.T, "-", color=_COLOURS["target"], lw=1, marker="+", ms=8, label="target")
    ax.plot(*reported.T, "-", color=_COLOURS["reported"], lw=1, marker="o", ms=3, label="reported")
    ax.plot(*actual.T, "-", color=_COLOURS["actual"], lw=1, marker="s", ms=3, label="actual")
    ax.plot(*actual[-1], "*", color=_COLOURS["actual"], ms=12, label="actual, last frame")
    ax.set_aspect("equal")
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title("Cross (Figure 4 style): paths", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)

    index = np.arange(len(frames))
    for k, (axis, style) in enumerate((("x", "-"), ("y", "--"))):
        ax_err.plot(index, reported[:, k] - target[:, k], style, color=_COLOURS["reported"], marker="o", ms=3,
                    label=f"reported - target, {axis}")
        ax_err.plot(index, actual[:, k] - target[:, k], style, color=_COLOURS["actual"], marker="s", ms=3,
                    label=f"actual - target, {axis}")
    arm = (len(frames) - 1) // 4
    if arm > 0:
        for j, name in enumerate(("+x", "-x", "+y", "-y")):
            ax_err.axvline(j * arm, color="0.8", lw=0.8)
            ax_err.text(j * arm + arm / 2, 1.0, name, transform=ax_err.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=9)
    ax_err.axhline(0, color="0.6", lw=0.8)
    ax_err.set_xlabel("frame of the cross")
    ax_err.set_ylabel("error (nm)")
    ax_err.legend(fontsize=7, loc="best")
    ax_err.grid(alpha=0.3)
    return _png(fig)


def _overlay(ax, first: np.ndarray, second: np.ndarray, shift_px: np.ndarray, title: str) -> None:
    rows, cols = first.shape
    dx, dy = shift_px
    left = min(0.0, dx)
    top = min(0.0, dy)
    width = cols + abs(dx)
    height = rows + abs(dy)

    def norm(image):
        image = image.astype(float)
        lo, hi = np.percentile(image, [1, 99.5])
        return np.clip((image - lo) / (hi - lo + 1e-12), 0, 1)

    ax.imshow(norm(first), cmap="gray", alpha=0.5, extent=(-left, cols - left, rows - top, -top))
    ax.imshow(norm(second), cmap="gray", alpha=0.5, extent=(dx - left, dx - left + cols, dy - top + rows, dy - top))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def figure_overlays(analysis: Analysis, axis: str) -> bytes | None:
    """50 % transparent overlays: a first-after-reversal step next to a plain step.

    Each panel places two consecutive frames at their measured (actual) offset; a
    blurred edge would show a bad registration. The caption gives target and actual
    step length along the axis. ``None`` without both kinds of step.
    """
    steps = analysis.steps
    k = AXIS_NAMES.index(axis)
    protocol = f"hysteresis-{axis}"
    chosen = {}
    for kind in ("reversal", "plain"):
        for i in range(len(steps)):
            if (steps.kind[i] == kind and steps.axis[i] == k and steps.registered[i]
                    and steps.protocol[i] == protocol):
                chosen[kind] = i
                break
    if len(chosen) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.2))
    session = analysis.session
    for ax, (kind, i) in zip(axes, (("reversal", chosen["reversal"]), ("plain", chosen["plain"]))):
        frame = int(steps.frame[i])
        label = "first step after a reversal" if kind == "reversal" else "plain step"
        title = (f"{label}: frames {frame - 1}->{frame}\n"
                 f"target {steps.target_nm[i, k]:+.0f} nm, actual {steps.actual_nm[i, k]:+.0f} nm along {axis}")
        _overlay(ax, session.image(frame - 1), session.image(frame), steps.shift_px[i], title)
    fig.suptitle(f"Overlays at 50 % transparency ({axis})", fontsize=10, y=1.03)
    return _png(fig)


def figure_drift(analysis: Analysis) -> bytes | None:
    """Actual displacement of the image content during dwell frames, as PNG."""
    frames = _frames_of(analysis, "dwell")
    if len(frames) < 2 or analysis.drift_velocity_nm_per_min is None:
        return None
    session = analysis.session
    t = session.times_s()[frames]
    pos = analysis.actual_positions_nm[frames]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if np.all(np.isfinite(pos)):
        for k, axis in enumerate(AXIS_NAMES):
            ax.plot(t - t[0], pos[:, k] - pos[0, k], "-o", label=f"{axis}")
    v = analysis.drift_velocity_nm_per_min
    ax.set_title(f"Drift while standing still: ({v[0]:+.2f}, {v[1]:+.2f}) nm/min", fontsize=9)
    ax.set_xlabel("time since first dwell frame (s)")
    ax.set_ylabel("displacement (nm)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def figure_repeatability(analysis: Analysis, axis: str) -> bytes | None:
    """Deviations of revisits of the same target from the first visit, as PNG."""
    records = analysis.revisits.get(axis) or []
    if not records:
        return None
    k = AXIS_NAMES.index(axis)
    targets = analysis.session.targets_nm()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for record in records:
        position = targets[record["frames"][0], k]
        ax.plot([position] * len(record["deviation_nm"]), record["deviation_nm"], "o", ms=4, color="tab:purple")
    ax.set_xlabel(f"target {axis} (nm)")
    ax.set_ylabel("deviation from first visit (nm)")
    ax.set_title(f"Revisits of the same target from the same direction ({axis})", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def figure_tilt(analysis: Analysis, axis: str) -> bytes | None:
    """Sideways image shift against the tilt angle for the ``tilt-<axis>`` protocol.

    The shift is projected on the direction the specimen moves for increasing tilt;
    a eucentric specimen gives a flat line, a height error a slope (nm/deg), and tilt
    backlash a loop; first steps after a reversal are circled.
    """
    frames = _frames_of(analysis, f"tilt-{axis}")
    metrics = analysis.tilt.get(axis)
    if len(frames) == 0 or metrics is None or metrics.direction is None:
        return None
    k = ("alpha", "beta").index(axis)
    angle = analysis.session.targets_nm()[frames, 3 + k]
    position = analysis.actual_positions_nm[frames] @ np.array(metrics.direction)
    position = position - position[0]
    kinds = dict(zip(analysis.steps.frame.tolist(), analysis.steps.tilt_kind.tolist()))
    reversal = np.array([kinds.get(int(f)) == "reversal" for f in frames])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(angle, position, "-s", color=_COLOURS["actual"], ms=4, lw=1, label="sideways image shift")
    if reversal.any():
        ax.plot(angle[reversal], position[reversal], "o", ms=10, mfc="none", mec=_COLOURS["reversal"], mew=1.5,
                label="first step after a reversal")
    ax.set_xlabel(f"target {axis} (deg)")
    ax.set_ylabel("shift (nm)")
    ax.set_title(f"Tilt {axis}: {metrics.shift_nm_per_deg:.2f} nm/deg", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def all_figures(analysis: Analysis) -> dict[str, bytes]:
    """Every figure the session supports, keyed by a short name."""
    makers = {
        "hysteresis-x": lambda: figure_hysteresis(analysis, "x"),
        "hysteresis-y": lambda: figure_hysteresis(analysis, "y"),
        "overlay-x": lambda: figure_overlays(analysis, "x"),
        "overlay-y": lambda: figure_overlays(analysis, "y"),
        "cross": lambda: figure_cross(analysis),
        "repeatability-x": lambda: figure_repeatability(analysis, "x"),
        "repeatability-y": lambda: figure_repeatability(analysis, "y"),
        "drift": lambda: figure_drift(analysis),
        "tilt-alpha": lambda: figure_tilt(analysis, "alpha"),
        "tilt-beta": lambda: figure_tilt(analysis, "beta"),
    }
    figures = {}
    for name, make in makers.items():
        png = make()
        if png is not None:
            figures[name] = png
    return figures


# --------------------------------------------------------------------------- HTML


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    return f"{value:.4g} {unit}".strip()


def certificate_html(certificate: Certificate, checks: dict[str, Check], *, microscope: str, holder: str,
                     date_utc: str, source: str, session_path: str, results_path: str | None,
                     instrument_time_s: float | None, figures: dict[str, bytes],
                     not_registered: list[str] = ()) -> str:
    """The certificate block at the top of the HTML report (self-contained HTML).

    Parameters
    ----------
    certificate : Certificate
    checks : dict of Check
    microscope, holder, date_utc, source, session_path : str
        What is certified, when and from which recording.
    results_path : str or None
        Where the results JSON was written.
    instrument_time_s : float or None
        Instrument time of the session (from the frame times), if known.
    figures : dict of bytes
        PNG figures to embed, by name.
    not_registered : list of str
        Frame pairs that could not be registered, with the reason (left out).

    Returns
    -------
    str
        An HTML fragment.
    """
    e = html.escape
    colour = "#1a7f37" if certificate.accepted else "#b42318"
    verdict = "ACCEPTED" if certificate.accepted else "NOT ACCEPTED"
    heading = e(certificate.title) if certificate.case is None else f"Case {e(certificate.case)}: {e(certificate.title)}"
    if certificate.case is None:
        colour, verdict = "#8a6d00", "NO CASE"
    rows = []
    for check in checks.values():
        state = "not measured" if check.passed is None else ("pass" if check.passed else "FAIL")
        style = "" if check.passed is not False else ' style="color:#b42318;font-weight:bold"'
        limit = "none set" if check.limit is None else f"&le; {check.limit:g} {e(check.unit)}"
        if check.limit is None:
            state = "not judged"
        rows.append(f"<tr><td>{e(check.name)}</td><td>{e(_fmt(check.value, check.unit))}</td>"
                    f"<td>{limit}</td><td{style}>{state}</td></tr>")
    pair_rows = []
    for name, verdict_ in certificate.pairs.items():
        pair_rows.append(f"<tr><td>{e(PAIR_LABELS[name])}</td><td>{_fmt(verdict_.rms_nm, 'nm')}</td>"
                         f"<td>{'yes' if verdict_.agree else 'no'}</td><td>{'yes' if verdict_.consistent else 'no'}</td></tr>")
    reasons = "".join(f"<li>{e(r)}</li>" for r in certificate.reasons)
    images = "".join(
        f'<figure style="display:inline-block;margin:6px"><img alt="{e(name)}" style="max-width:900px" '
        f'src="data:image/png;base64,{png_base64(png)}"><figcaption>{e(name)}</figcaption></figure>'
        for name, png in figures.items()
    )
    minutes = "" if instrument_time_s is None else f"<br>Instrument time of the session: {instrument_time_s / 60:.1f} min"
    results = "" if results_path is None else f"<br>Results JSON: <code>{e(results_path)}</code>"
    left_out = ""
    if not_registered:
        items = "".join(f"<li>{e(text)}</li>" for text in not_registered)
        left_out = (f"<h3>Frame pairs left out ({len(not_registered)})</h3>"
                    f"<p>These pairs could not be registered; their actual displacement is not used.</p><ul>{items}</ul>")
    return f"""
<div id="stage-acceptance-certificate" style="border:3px solid {colour};padding:12px;margin:8px 0;color:#111">
<h2 style="margin-top:0">{heading} &mdash; <span style="color:{colour}">{verdict}</span></h2>
<p><b>{e(certificate.meaning)}</b></p>
<p>Instrument: <b>{e(microscope)}</b> &middot; Holder: <b>{e(holder)}</b> &middot; Date (UTC): {e(date_utc)}
 &middot; Source: {e(source)}<br>Session recording: <code>{e(session_path)}</code>{results}{minutes}</p>
<ul style="color:#111">{reasons}</ul>
<h3>Position pairs</h3>
<table border="1" cellpadding="3" style="border-collapse:collapse">
<tr><th>pair</th><th>RMS per step</th><th>agree</th><th>consistent</th></tr>{''.join(pair_rows)}</table>
<h3>Metrics</h3>
<table border="1" cellpadding="3" style="border-collapse:collapse">
<tr><th>metric</th><th>value</th><th>tolerance</th><th>verdict</th></tr>{''.join(rows)}</table>
{left_out}
<h3>Figures</h3>
{images}
</div>
"""


def incomplete_html(reason: str, session_path: str) -> str:
    """A banner for a run that ended before its last frame (HTML fragment).

    Whatever follows it (metrics, case) rests on the frames taken before the stop.
    """
    e = html.escape
    return (f'<div id="stage-acceptance-incomplete" style="border:3px solid #b42318;padding:12px;margin:8px 0;'
            f'color:#111"><h2 style="margin-top:0;color:#b42318">INCOMPLETE RUN</h2><p>{e(reason)}.</p>'
            f'<p>Session recording: <code>{e(session_path)}</code>. Any metrics and case below come from '
            f'the frames taken before the stop and certify nothing.</p></div>')

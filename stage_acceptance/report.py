"""The results JSON (results-v1) and the HTML certificate block.

Nothing here computes a metric: everything comes from an
:class:`~stage_acceptance.analysis.Analysis`, a
:class:`~stage_acceptance.certification.Certificate` and its checks.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .analysis import AXIS_NAMES, Analysis
from .certification import PAIR_LABELS, Certificate, Check
from .figures import png_base64

RESULTS_SCHEMA = "stage-acceptance/results"
RESULTS_VERSION = 1


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

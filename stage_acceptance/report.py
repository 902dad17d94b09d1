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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .analysis import AXIS_NAMES, Analysis
from .baseline import COMPARED_METRICS, Comparison, MetricChange
from .certification import (PAIR_LABELS, VERDICTS, Certificate, Check, Verdict, format_interval, format_limit,
                            format_value)
from .config import CASES, ConfigError, read_bounded, schema_problem
from .session import load_json_strict
from .figures import png_base64
from .montage import rms_by

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


def stage_to_image_json(analysis: Analysis) -> dict:
    """results-v1 ``stage_to_image``, with how it was obtained and what follows from it.

    ``rotation_deg`` and ``flip_y`` are null when unknown. For an estimated rotation,
    ``note`` says that an antisymmetric coupling cannot be told from it, and
    ``skew_bound_deg`` gives the largest skew the session's 95 % interval allows,
    which bounds the coupling the analysis can see: ``|x_to_y + y_to_x| <=
    tan(skew_bound_deg)``.
    """
    s2i = analysis.stage_to_image
    known = s2i.status != "unknown"
    document = {
        "rotation_deg": s2i.value.rotation_deg if known else None,
        "flip_y": s2i.value.flip_y if known else None,
        "estimated": s2i.status == "estimated",
        "status": s2i.status,
        "rotation_ci95": s2i.rotation_ci95,
    }
    if s2i.status == "unknown":
        document["note"] = f"unknown: {s2i.reason}; metrics that need the stage axes in the image are not measured"
    elif s2i.status == "estimated":
        document.update(rotation_note(analysis))
    return document


def rotation_note(analysis: Analysis) -> dict:
    """What an estimated rotation hides: ``note`` and ``skew_bound_deg`` (None without a skew)."""
    skew = analysis.metrics["coupling.skew_deg"]
    bound = None if skew.ci95 is None else max(abs(skew.ci95[0]), abs(skew.ci95[1]))
    note = ("a coupling that turns both stage axes alike (x_to_y = -y_to_x) cannot be told from an estimated "
            "stage-to-image rotation and is absorbed into it, so the coupling slopes show only the part the skew "
            "measures")
    if bound is not None:
        note += (f"; the skew is at most {bound:.3f} deg (95 %), so |x_to_y + y_to_x| <= "
                 f"{math.tan(math.radians(bound)):.2g}; give [stage_to_image] from a calibration to measure the rest")
    else:
        note += "; give [stage_to_image] from a calibration to measure it"
    return {"note": note, "skew_bound_deg": bound}


def readback_json(analysis: Analysis) -> dict:
    """Per axis, the quantum the readback moves in (informational: results-v1 names no
    tolerance for it): ``quantum_nm`` (null when not measured, with ``not_measured``),
    ``steps`` (nonzero readback steps), ``multiples`` (each step in quanta),
    ``resolution_nm`` (the decimal step the readings are written in, the tolerance of
    the fit) and ``largest_misfit_nm``."""
    return {axis: {"quantum_nm": q.quantum_nm, "steps": q.steps, "multiples": list(q.multiples),
                   "resolution_nm": q.tolerance_nm, "largest_misfit_nm": q.largest_misfit_nm,
                   "not_measured": q.reason or None}
            for axis, q in analysis.readback_quantum.items()}


def notes_lines(analysis: Analysis) -> list[str]:
    """One line each for the terminal, when there is something to say: the readback
    quantum, the image shift, the pairs registered on the central region, and what a
    montage not placed by the stage alone measured."""
    lines = []
    quanta = [f"{axis} {q.quantum_nm:.4g} nm ({q.steps} steps)" for axis, q in analysis.readback_quantum.items()
              if q.quantum_nm is not None]
    if quanta:
        lines.append(f"readback quantum: {', '.join(quanta)}")
    shift = analysis.image_shift
    if shift.get("recorded", "none") != "none":
        lines.append(f"image shift ({shift['recorded']}): {len(shift['subtracted'])} change(s) subtracted, "
                     f"{len(shift['not_measured'])} pair(s) not measured (uncalibrated or missing image shift)")
    if analysis.across_tilt:
        lines.append(f"{len(analysis.across_tilt)} pair(s) across a tilt change registered on the central region")
    result = getattr(analysis, "montage", None)
    if result is not None and result.moved_by != "stage":
        lines.append(f"montage: {montage_measured(result)}")
    return lines


def montage_measured(result) -> str:
    """One sentence: what a montage's piece errors measure, given what moved its pieces."""
    against = "target" if result.has_target else "readback"
    if result.moved_by == "image shift":
        said = ("the pieces were placed by image shift while the stage was to stand still: each piece's error is "
                f"the stage's own motion since the first piece (drift, settling) against its {against}, the image "
                "shift taken as exact (an error of its calibration shows as a piece error)")
    elif result.moved_by == "stage and image shift":
        said = ("the pieces were placed by stage moves and image shift: each piece's error is the stage's, against "
                f"its {against}, the image shift taken as exact (an error of its calibration shows as a piece error)")
    elif result.moved_by == "neither":
        said = (f"every piece was taken at the first one's place: each piece's error is the stage's motion since "
                f"the first piece, against its {against}")
    else:
        said = f"the pieces were placed by stage moves: each piece's error is the stage's, against its {against}"
    if result.stage_unknown:
        said += (f"; {len(result.stage_unknown)} registered pair(s) have no known stage displacement (their "
                 f"image-shift change is not known in nm), so only whether they stitch is measured there")
    return said


def montage_json(analysis: Analysis) -> dict | None:
    """results key ``montage``: the solved montage, piece by piece and pair by pair.

    None when the session has no montage. Positions and errors are ``[x, y]`` nm in
    stage axes, errors relative to the first piece (:mod:`stage_acceptance.montage`);
    ``against`` says what the growth and the neighbour check compare with (the
    target, or the readback where the recording has no target); ``moved_by`` what
    moved the pieces apart (:func:`~stage_acceptance.montage.montage_motion`) and
    ``measured`` what the errors therefore are (:func:`montage_measured`).
    """
    result = getattr(analysis, "montage", None)
    problem = getattr(analysis, "montage_problem", "")
    if result is None:
        return {"problem": problem} if problem else None
    columns, rows = int(result.column.max()) + 1, int(result.row.max()) + 1
    neighbours, misplacement = result.neighbour_errors()
    beyond = result.beyond_overlap()
    overlap = result.overlap_nm
    reasons = result.pair_reasons()

    def pair_record(k):
        a, b = (int(i) for i in result.pairs[k])
        return {"frames": [int(result.frames[a]), int(result.frames[b])],
                "pieces": [[int(result.column[a]), int(result.row[a])], [int(result.column[b]), int(result.row[b])]],
                "registered": bool(result.registrations[k].ok), "used": bool(result.solution.used[k]),
                "weight": float(result.weights[k]), "measured_nm": result.measured_nm[k],
                "residual_nm": result.solution.residual_nm[k], "reason": reasons[k] or None}

    def length(vector):
        return float(np.hypot(*vector))

    return {
        "grid": [columns, rows],
        "pieces_total": len(result.frames),
        "placed": int(result.placed.sum()),
        "oriented": result.oriented,
        "against": "target" if result.has_target else "readback",
        "moved_by": result.moved_by,
        "measured": montage_measured(result),
        "overlap_nm": overlap,
        "field_nm": [result.frame_shape[1] * result.pixel_size_nm, result.frame_shape[0] * result.pixel_size_nm],
        "sigma_unit_weight": result.solution.sigma,
        "pieces": [
            {"frame": int(result.frames[i]), "column": int(result.column[i]), "row": int(result.row[i]),
             "order": i, "placed": bool(result.placed[i]),
             "target_nm": result.target_nm[i], "reported_nm": result.reported_nm[i],
             "actual_nm": result.actual_nm[i], "sd_nm": result.sd_nm[i],
             "image_shift_nm": result.image_shift_nm[i],
             "error_nm": result.error_nm[i], "reported_error_nm": result.reported_error_nm[i],
             "error_length_nm": length(result.commanded_error_nm[i]),
             "error_beyond_overlap": bool(beyond[i])}
            for i in range(len(result.frames))],
        "pairs": [pair_record(k) for k in range(len(result.pairs))],
        "unplaced": [{"frame": frame, "column": column, "row": row} for frame, column, row in result.unplaced()],
        "neighbours": [{"frames": [int(result.frames[a]), int(result.frames[b])], "misplacement_nm": float(size),
                        "beyond_overlap": bool(overlap is not None and size > overlap)}
                       for (a, b), size in zip(neighbours, misplacement)],
        "rms_by_row_nm": {str(k): v for k, v in rms_by(result.row, result.commanded_error_nm).items()},
        "rms_by_column_nm": {str(k): v for k, v in rms_by(result.column, result.commanded_error_nm).items()},
    }


def results_json(analysis: Analysis, certificate: Certificate, checks: dict[str, Check], verdict: Verdict, *,
                 microscope: str, holder: str, source: str, session_path: str,
                 tests: dict[str, int], extra: dict | None = None) -> dict:
    """The results-v1 document of a run.

    Parameters
    ----------
    analysis : Analysis
    certificate : Certificate
    checks : dict of Check
        Every metric against its tolerance (kept under the additional key ``checks``).
    verdict : Verdict
        The run's one verdict (key ``verdict``, and its reasons ``verdict_reasons``).
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
        name: {"agree": v.agree, "consistent": v.consistent, "rms_nm": v.rms_nm, "rms_ci95": v.rms_ci95,
               "decided": v.decided, "marginal": bool(v.marginal),
               "missing": [f"{what}: {why}" for what, why in v.missing]}
        for name, v in certificate.pairs.items()
    }
    steps = analysis.steps
    document = {
        "schema": RESULTS_SCHEMA,
        "version": RESULTS_VERSION,
        "microscope": microscope,
        "holder": holder,
        "source": source,
        "session": session_path,
        "verdict": verdict.word,
        "verdict_headline": verdict.headline,
        "verdict_reasons": list(verdict.why),
        "certification": {
            "case": certificate.case,
            "title": certificate.title,
            "accepted": certificate.accepted,
            "reasons": list(certificate.reasons),
            "missing": list(certificate.missing),
            "marginal": list(certificate.marginal),
        },
        "pairs": pairs,
        "axes": {axis: asdict(analysis.axes[axis]) for axis in AXIS_NAMES},
        "coupling": asdict(analysis.coupling),
        "drift_nm_per_min": analysis.drift_nm_per_min,
        "tilt": {name: {"shift_nm_per_deg": m.shift_nm_per_deg, "backlash_deg": m.backlash_deg,
                        "direction": m.direction, "steps": m.steps} for name, m in analysis.tilt.items()},
        "stage_to_image": stage_to_image_json(analysis),
        "montage": montage_json(analysis),
        "frames": analysis.frames,
        "tests": {key: int(tests.get(key, 0)) for key in ("passed", "failed", "skipped")},
        "checks": {
            name: {"label": c.label, "value": c.value, "unit": c.unit, "limit": c.limit, "passed": c.passed,
                   "ci95": c.ci95, "marginal": c.marginal, "margin": c.margin or None,
                   "evidence": c.evidence, "interval_method": c.method or None,
                   "not_measured": c.reason or None}
            for name, c in checks.items()
        },
        "steps": {
            "total": len(steps),
            "translation": int(steps.translation.sum()),
            "registered": int(steps.registered.sum()),
            "reversal": int(np.sum(steps.kind == "reversal")),
            "plain": int(np.sum(steps.kind == "plain")),
            "not_registered": list(analysis.failed),
            "across_tilt_central_region": [list(pair) for pair in analysis.across_tilt],
        },
        "image_shift": analysis.image_shift,
        "readback": readback_json(analysis),
    }
    if extra:
        document.update(extra)
    return _clean(document)


MAX_RESULTS_BYTES = 16 << 20
"""Largest results JSON read (as a baseline): 16 MiB (one of ours is about 30 kB)."""
MAX_METRIC = 1.0e12
"""Largest |number| accepted in a results JSON read back (a metric, interval or position)."""

_value = {"type": ["number", "null"], "minimum": -MAX_METRIC, "maximum": MAX_METRIC}
_interval = {"type": ["array", "null"], "items": {"type": "number", "minimum": -MAX_METRIC, "maximum": MAX_METRIC},
             "minItems": 2, "maxItems": 2}
_series = {"type": "array", "maxItems": 100_000, "items": _value}
_words = {"type": "string", "maxLength": 1000}

RESULTS_READ_SCHEMA = {
    "type": "object",
    "required": ["schema", "version", "microscope", "holder", "checks"],
    "properties": {
        "schema": {"const": RESULTS_SCHEMA},
        "version": {"const": RESULTS_VERSION},
        "microscope": {"type": "string", "minLength": 1, "maxLength": 1000},
        "holder": {"type": "string", "minLength": 1, "maxLength": 1000},
        "verdict": {"enum": list(VERDICTS)},
        "source": _words,
        "session": {"type": ["string", "null"], "maxLength": 4096},
        "date_utc": {"type": ["string", "null"], "maxLength": 64},
        "date_measured_utc": {"type": ["string", "null"], "maxLength": 64},
        "certification": {"type": "object", "properties": {"case": {"enum": [*CASES, None]}}},
        "checks": {
            "type": "object", "maxProperties": 500,
            "additionalProperties": {"type": "object", "properties": {
                "value": _value, "ci95": _interval, "limit": _value, "unit": {"type": "string", "maxLength": 20},
                "label": _words}},
        },
        "pairs": {
            "type": "object", "maxProperties": 20,
            "additionalProperties": {"type": "object", "properties": {"rms_nm": _value, "rms_ci95": _interval}},
        },
        "hysteresis": {
            "type": "object", "maxProperties": 10,
            "additionalProperties": {"type": ["object", "null"],
                                     "required": ["target_nm", "actual_error_nm", "reversal"],
                                     "properties": {"target_nm": _series, "reported_error_nm": _series,
                                                    "actual_error_nm": _series,
                                                    "reversal": {"type": "array", "maxItems": 100_000,
                                                                 "items": {"type": "boolean"}}}},
        },
    },
}
"""What a results JSON read back (``--baseline PATH``) must hold, with types and bounds.
Other keys are kept and not read."""


def read_results(path: str | Path) -> dict:
    """Read a results JSON (results-v1, as stage-acceptance writes it) and check it.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict

    Raises
    ------
    ConfigError
        One line naming the file, the key and the value: a file that is missing, larger
        than 16 MiB, not UTF-8 JSON (NaN and Infinity are not JSON), not results-v1,
        or with a value of the wrong type or out of bounds.
    """
    path = Path(path)
    raw = read_bounded(path, MAX_RESULTS_BYTES, "; not a results JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        document = load_json_strict(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a results JSON (the top level must be an object)")
    problem = schema_problem(document, RESULTS_READ_SCHEMA)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    for where, interval in [(f"checks.{name}.ci95", check.get("ci95")) for name, check in document["checks"].items()] \
            + [(f"pairs.{name}.rms_ci95", pair.get("rms_ci95")) for name, pair in (document.get("pairs") or {}).items()]:
        if interval is not None and not interval[0] <= interval[1]:
            raise ConfigError(f"{path}: key '{where}' has bad value {interval!r}: low must not exceed high")
    for axis, curve in (document.get("hysteresis") or {}).items():
        if curve and len({len(v) for k, v in curve.items() if k in ("target_nm", "actual_error_nm", "reversal",
                                                                         "reported_error_nm")}) != 1:
            raise ConfigError(f"{path}: key 'hysteresis.{axis}': its lists must have one entry per frame each")
    return document


def write_json(document: dict, path: str | Path) -> Path:
    """Write a JSON document (creating folders); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- HTML


VERDICT_COLOURS = {"accepted": "#1a7f37", "not accepted": "#b42318", "not certified": "#8a6d00",
                   "incomplete": "#b42318"}

PAGE_CSS = """
body { display: flex; flex-direction: column; }
#results-table { order: 1; }
#environment-header, #environment { order: 2; }
footer { order: 3; }
.summary__data > h2 { display: none; }
#stage-acceptance-certificate table { border-collapse: collapse; margin: 4px 0 10px 0; }
#stage-acceptance-certificate td, #stage-acceptance-certificate th { border: 1px solid #bbb; padding: 3px 6px;
  text-align: left; vertical-align: top; }
#stage-acceptance-certificate td.num { text-align: right; white-space: nowrap; }
#stage-acceptance-certificate .fail { color: #b42318; font-weight: bold; }
#stage-acceptance-certificate .marginal { color: #8a6d00; font-weight: bold; }
#stage-acceptance-certificate .muted { color: #666; }
#stage-acceptance-certificate figure { margin: 10px 0 18px 0; }
#stage-acceptance-certificate figcaption { max-width: 900px; }
"""
"""pytest-html puts its environment table above the summary; this puts the certificate
(in the summary) first and the environment last."""


def utc_text(iso: str | None) -> str | None:
    """``2026-11-24 00:36:58 UTC`` from an ISO 8601 time (as written); None stays None."""
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def figure_anchor(name: str) -> str:
    """The id of a figure in the certificate block (tests link to it)."""
    return f"figure-{name}"


def _evidence_text(evidence: dict) -> str:
    """``6 reversal steps, 18 plain steps``; ``3 frames spanning 60 s``."""
    parts = []
    for key, value in evidence.items():
        if key == "span_s":
            parts.append(f"spanning {value:g} s")
        else:
            parts.append(f"{value} {key.replace('_', ' ')}")
    return ", ".join(parts)


def certificate_html(verdict: Verdict, certificate: Certificate, checks: dict[str, Check], *, microscope: str,
                     holder: str, holder_source: str, measured_utc: str | None, analysed_utc: str, source: str,
                     session_path: str | None, results_path: str | None, instrument_time_s: float | None,
                     stage_to_image: dict, figures: dict[str, bytes], captions: dict[str, tuple[str, str]],
                     not_registered: list[str] = (), readback: dict | None = None,
                     image_shift: dict | None = None) -> str:
    """The certificate block at the top of the HTML report (self-contained HTML).

    The verdict comes first, in one line, then why; then what the verdict rests on
    (instrument, holder and who chose it, dates, recording), the position pairs and
    every metric with its interval and evidence, and each figure once.

    Parameters
    ----------
    verdict : Verdict
    certificate : Certificate
    checks : dict of Check
    microscope, holder, holder_source : str
        The instrument, the holder that judged it, and where that holder came from.
    measured_utc : str or None
        When the instrument was measured (a replay: from the recording).
    analysed_utc : str
        When this analysis ran.
    source : str
        ``live``, ``live via tcp://...`` or ``replay``.
    session_path, results_path : str or None
        The recording and the results JSON.
    instrument_time_s : float or None
        Instrument time of the session.
    stage_to_image : dict
        results-v1 ``stage_to_image`` (:func:`stage_to_image_json`).
    figures : dict of bytes
        PNG figures by name, each embedded once, with the id :func:`figure_anchor`.
    captions : dict
        ``name -> (title, caption)`` of every figure.
    not_registered : list of str
        Frame pairs that could not be registered, with the reason (left out).
    readback : dict, optional
        The readback's quantum per axis (:func:`readback_json`).
    image_shift : dict, optional
        What the session's image shift was and what was done with it
        (``Analysis.image_shift``).

    Returns
    -------
    str
        An HTML fragment.
    """
    e = html.escape
    colour = VERDICT_COLOURS[verdict.word]
    why = "".join(f"<li>{e(line)}</li>" for line in verdict.why)
    s2i = stage_to_image
    if s2i["status"] == "calibrated":
        s2i_text = f"calibrated: rotation {s2i['rotation_deg']:.2f} deg, flip_y {str(s2i['flip_y']).lower()}"
    elif s2i["status"] == "estimated":
        low, high = s2i["rotation_ci95"]
        s2i_text = (f"estimated from the moves: rotation {s2i['rotation_deg']:.2f} deg (95 % CI {low:.2f} to "
                    f"{high:.2f} deg), flip_y {str(s2i['flip_y']).lower()}. {s2i['note'][0].upper()}{s2i['note'][1:]}.")
    else:
        s2i_text = s2i["note"]
    facts = [
        ("Instrument", f"<b>{e(microscope)}</b>"),
        ("Holder", f"<b>{e(holder)}</b> ({e(holder_source)})"),
        ("Measured", e(utc_text(measured_utc) or "not recorded in the recording")),
        ("Analysed", e(utc_text(analysed_utc))),
        ("Source", e(source)),
        ("Session recording", f"<code>{e(session_path)}</code>" if session_path else "none kept"),
        ("Results JSON", f"<code>{e(results_path)}</code>" if results_path else "not written"),
        ("Instrument time", "unknown" if instrument_time_s is None else f"{instrument_time_s / 60:.1f} min"),
        ("Stage-to-image", e(s2i_text)),
    ]
    fact_rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)

    def yes_no(value):
        return "undecided" if value is None else ("yes" if value else "<span class=fail>no</span>")

    pair_rows = []
    for name, pair in certificate.pairs.items():
        notes = [e(f"{what}: {reason}") for what, reason in pair.missing] + \
                [f"<span class=marginal>{e(note)}</span>" for note in pair.marginal]
        interval = "" if pair.rms_ci95 is None else f"{pair.rms_ci95[0]:.1f} to {pair.rms_ci95[1]:.1f} nm"
        rms = "not measured" if pair.rms_nm is None else f"{pair.rms_nm:.1f} nm"
        pair_rows.append(f"<tr><td>{e(PAIR_LABELS[name])}</td><td class=num>{rms}</td><td class=num>{interval}</td>"
                         f"<td>{yes_no(pair.agree)}</td><td>{yes_no(pair.consistent)}</td>"
                         f"<td>{'<br>'.join(notes)}</td></tr>")
    rows = []
    for check in checks.values():
        if check.value is None:
            state, css, rests = "not measured", "muted", e(check.reason)
        else:
            rests = e(_evidence_text(check.evidence)) + (f" <span class=muted>({e(check.method)})</span>"
                                                         if check.method else "")
            if check.limit is None:
                state, css = "not judged (no tolerance)", "muted"
            elif not check.passed:
                state, css = "FAIL", "fail"
            else:
                state, css = "pass", ""
            if check.marginal:
                state, css = f"{state}, marginal", "marginal" if check.passed else "fail"
                rests += f"<br><span class=marginal>{e(check.margin)}</span>"
        value = "&ndash;" if check.value is None else e(format_value(check.value, check.unit))
        interval = e(format_interval(check.ci95, check.unit).replace("95 % CI ", ""))
        tolerance = "none set" if check.limit is None else e(check.tolerance())
        rows.append(f"<tr><td>{e(check.label)}</td><td class=num>{value}</td><td class=num>{interval}</td>"
                    f"<td class=num>{tolerance}</td><td class={css}>{e(state)}</td><td>{rests}</td></tr>")
    left_out = ""
    if not_registered:
        items = "".join(f"<li>{e(text)}</li>" for text in not_registered)
        left_out = (f"<h3>Frame pairs left out ({len(not_registered)})</h3>"
                    f"<p>These pairs could not be registered; their actual displacement is not used.</p><ul>{items}</ul>")
    readback_block = _readback_html(readback) if readback else ""
    shift_block = _image_shift_html(image_shift) if image_shift else ""
    images = []
    for name, png in figures.items():
        title, caption = captions.get(name, (name, ""))
        images.append(f'<figure id="{figure_anchor(name)}"><figcaption><b>{e(title)}</b></figcaption>'
                      f'<img alt="{e(title)}" style="max-width:100%" src="data:image/png;base64,{png_base64(png)}">'
                      f'<figcaption>{e(caption)}</figcaption></figure>')
    case = ("no case certified" if certificate.case is None
            else f"case {certificate.case}: {certificate.title}")
    return f"""
<style>{PAGE_CSS}</style>
<div id="stage-acceptance-certificate" style="border:3px solid {colour};padding:12px;margin:8px 0;color:#111">
<h2 style="margin-top:0;color:{colour}" id="stage-acceptance-verdict">{e(verdict.headline)}</h2>
<p><b>{e(case)}.</b> {e(certificate.meaning)}</p>
<ul>{why}</ul>
<table>{fact_rows}</table>
<h3>Position pairs (target, reported, actual)</h3>
<table><tr><th>pair</th><th>RMS per step</th><th>95 % interval</th><th>agree</th><th>consistent</th><th>notes</th></tr>
{''.join(pair_rows)}</table>
<h3>Metrics</h3>
<table><tr><th>metric</th><th>value</th><th>95 % interval</th><th>tolerance</th><th>verdict</th><th>rests on</th></tr>
{''.join(rows)}</table>
{readback_block}
{shift_block}
{left_out}
<h3>Figures</h3>
{''.join(images) or "<p>No figures: the session holds no protocol a figure could show (no hysteresis line, cross, tilt or montage measured).</p>"}
</div>
"""


def _readback_html(readback: dict) -> str:
    """The readback quantum per axis (no tolerance judges it)."""
    e = html.escape
    rows = []
    for axis, q in readback.items():
        if q["quantum_nm"] is None:
            value, note = "not measured", e(q["not_measured"] or "")
        else:
            shown = ", ".join(f"{n:+d}" for n in q["multiples"][:12]) + (" ..." if len(q["multiples"]) > 12 else "")
            value = f"{q['quantum_nm']:.4g} nm"
            note = e(f"{q['steps']} nonzero readback steps, each a multiple of it ({shown}) within "
                     f"{q['resolution_nm']:g} nm (the resolution the readings are written in)")
        rows.append(f"<tr><td>{e(axis)}</td><td class=num>{e(value)}</td><td>{note}</td></tr>")
    return ("<h3>Readback quantum</h3><p>The reported position moves in multiples of this step: a readback "
            "backlash or scatter below it cannot be seen in the readback. Informational: no tolerance judges "
            "it.</p><table><tr><th>axis</th><th>quantum</th><th>rests on</th></tr>" + "".join(rows) + "</table>")


def _image_shift_html(image_shift: dict) -> str:
    """What the session's image (beam) shift was and what the analysis did with it."""
    e = html.escape
    recorded = image_shift.get("recorded", "none")
    if recorded == "none":
        return ""
    lines = [f"<li>{e(f'frames {a}->{b}: {dx:+.2f}, {dy:+.2f} nm subtracted from the registered motion')}</li>"
             for (a, b), (dx, dy) in ((item["frames"], item["change_nm"]) for item in image_shift["subtracted"])]
    lines += [f"<li class=marginal>{e(text)}; its actual motion is not measured</li>"
              for text in image_shift["not_measured"]]
    what = {"nm": "in nm (image_shift_nm)", "raw": "in the acquiring tool's own units only (image_shift_raw)",
            "nm and raw": "in nm for some frames and in the tool's own units for others"}[recorded]
    body = "".join(lines) or "<li>it did not change between the frames of any registered pair</li>"
    return (f"<h3>Image shift</h3><p>The recording gives the image (beam) shift of "
            f"{image_shift['frames_with_image_shift']} frame(s), {e(what)}. It moves the image without moving the "
            f"stage, so its change is subtracted from the registered motion, or the pair is not measured where it "
            f"cannot be.</p><ul>{body}</ul>")


def incomplete_html(reason: str, session_path: str | None) -> str:
    """A banner for a run that ended before its last frame (HTML fragment).

    Whatever follows it (metrics, case) rests on the frames taken before the stop.
    """
    e = html.escape
    return (f'<div id="stage-acceptance-incomplete" style="border:3px solid #b42318;padding:12px;margin:8px 0;'
            f'color:#111"><h2 style="margin-top:0;color:#b42318">INCOMPLETE RUN</h2><p>{e(reason)}.</p>'
            f'<p>Session recording: {"none kept" if session_path is None else f"<code>{e(session_path)}</code>"}. '
            f'Any metrics and case below come from the frames taken before the stop and certify nothing.</p></div>')


BASELINE_CSS = """
#stage-acceptance-baseline table { border-collapse: collapse; margin: 4px 0 10px 0; }
#stage-acceptance-baseline td, #stage-acceptance-baseline th { border: 1px solid #bbb; padding: 3px 6px;
  text-align: left; vertical-align: top; }
#stage-acceptance-baseline td.num { text-align: right; white-space: nowrap; }
#stage-acceptance-baseline tr.regressed td { background: #fde8e6; }
#stage-acceptance-baseline tr.worse td { background: #fff6d6; }
#stage-acceptance-baseline tr.better td { background: #e7f5ea; }
#stage-acceptance-baseline .muted { color: #666; }
"""


def _change_state(change: MetricChange) -> tuple[str, str]:
    """(css class, words) of a metric's change for the table."""
    if change.regressed:
        return "regressed", "WORSE, beyond the regression tolerance"
    if change.worse:
        return "worse", ("worse, within the regression tolerance" if change.tolerance is not None
                         else "worse (no regression tolerance set)")
    if change.better:
        return "better", "better"
    if change.significant is None:
        return "", change.reason
    return "", "no significant change for the worse" if change.significant else "no significant change"


def baseline_html(comparison: Comparison, figure: bytes | None, *, after_label: str = "this run") -> str:
    """The "Since the baseline" block at the top of the HTML report (self-contained HTML).

    Parameters
    ----------
    comparison : Comparison
        This run against its baseline.
    figure : bytes or None
        PNG of the Figure 3 hysteresis of both runs in one plot.
    after_label : str
        How this run is called in the block.

    Returns
    -------
    str
        An HTML fragment: verdict and case before and after, the baseline's origin, a
        table of every metric's change with its 95 % interval and whether it is
        significant and worse, and the figure.
    """
    e = html.escape
    before, after = comparison.before, comparison.after
    colour = "#b42318" if comparison.regressed else ("#8a6d00" if comparison.worse else "#1a7f37")
    rows = []
    for name in COMPARED_METRICS:
        change = comparison.metrics.get(name)
        if change is None:
            continue
        css, state = _change_state(change)

        def shown(value, ci):
            if value is None:
                return "<span class=muted>not measured</span>"
            interval = format_interval(ci, change.unit).replace("95 % CI ", "")
            return e(format_value(value, change.unit)) + (f"<br><span class=muted>{e(interval)}</span>"
                                                          if interval else "")

        if change.change is None:
            delta = "&ndash;"
        else:
            sign = "" if change.change < 0 else "+"
            interval = format_interval(change.change_ci95, change.unit).replace("95 % CI ", "")
            delta = e(sign + format_value(change.change, change.unit)) + (
                f"<br><span class=muted>{e(interval)}</span>" if interval else "")
        tolerance = "none set" if change.tolerance is None else e(format_limit(change.tolerance, change.unit))
        rows.append(f"<tr class='{css}'><td>{e(change.label)}</td><td class=num>{shown(change.before, change.before_ci95)}"
                    f"</td><td class=num>{shown(change.after, change.after_ci95)}</td><td class=num>{delta}</td>"
                    f"<td class=num>{tolerance}</td><td>{e(state)}</td></tr>")
    image = ("<p class=muted>No hysteresis plot of both runs: one of them has no hysteresis line (a results JSON "
             "written before stage-acceptance kept its points has none).</p>")
    if figure is not None:
        image = (f'<figure><img alt="Hysteresis of both runs" style="max-width:100%" '
                 f'src="data:image/png;base64,{png_base64(figure)}"><figcaption>Figure 3 hysteresis of the baseline '
                 f'(grey, dashed) and {e(after_label)} (orange): actual minus target position while the stage steps '
                 f'back and forth; a larger jump at the circled first steps after a reversal is more backlash.'
                 f'</figcaption></figure>')
    when = utc_text(before.get("date_measured_utc")) or utc_text(before.get("date_utc")) or "unknown"
    return f"""
<style>{BASELINE_CSS}</style>
<div id="stage-acceptance-baseline" style="border:3px solid {colour};padding:12px;margin:8px 0;color:#111">
<h2 style="margin-top:0;color:{colour}">Since the baseline</h2>
<p><b>{e(comparison.headline())}.</b></p>
<table>
<tr><th></th><th>baseline</th><th>{e(after_label)}</th></tr>
<tr><th>Verdict</th><td>{e(str(before.get('verdict') or 'unknown'))}</td><td>{e(str(after.get('verdict') or 'unknown'))}</td></tr>
<tr><th>Case</th><td>{e(str(before.get('case') or 'none certified'))}</td><td>{e(str(after.get('case') or 'none certified'))}</td></tr>
<tr><th>Instrument, holder</th><td>{e(str(before.get('microscope')))}, {e(str(before.get('holder')))}</td>
<td>{e(str(after.get('microscope')))}, {e(str(after.get('holder')))}</td></tr>
<tr><th>Measured</th><td>{e(when)}</td><td>{e(utc_text(after.get('date_measured_utc')) or 'unknown')}</td></tr>
</table>
<p>Baseline: {e(comparison.source)}. A change is significant when its 95 % interval (the two runs' intervals
combined in quadrature, assuming independent runs) excludes zero; it is worse when the metric's size grew
significantly, and a regression when it grew by more than the holder's [regression] tolerance.</p>
<table><tr><th>metric</th><th>baseline</th><th>{e(after_label)}</th><th>change (95 % interval)</th>
<th>regression tolerance</th><th>since the baseline</th></tr>
{''.join(rows)}</table>
{image}
</div>
"""

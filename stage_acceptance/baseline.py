"""Comparing a run with a baseline: per metric the change, its 95 % interval, whether
it is significant, and whether the stage got worse beyond the holder's ``[regression]``
tolerance.

The maths are plain functions on numpy arrays (:func:`difference_ci95`,
:func:`magnitude_ci95`); :func:`compare_results` applies them to two results-v1
documents (the baseline's and this run's), so a baseline can be any results JSON, a
recording analysed again, or a run from the history.

The interval of a difference combines the two 95 % intervals' half-widths in
quadrature, assuming the two runs' errors are independent: for ``after - before`` the
lower half-width is ``sqrt(lower(after)**2 + upper(before)**2)`` and the upper one
``sqrt(upper(after)**2 + lower(before)**2)``, which keeps asymmetric intervals (chi-square,
bootstrap) asymmetric. A change is *significant* when its interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .certification import CHECK_NAMES, format_interval, format_limit, format_value, metric_label

PAIR_NAMES = ("target_reported", "target_actual", "reported_actual")

COMPARED_METRICS = (tuple(name for name in CHECK_NAMES if not name.startswith("montage."))
                    + tuple(f"pairs.{pair}.rms_nm" for pair in PAIR_NAMES))
"""Every metric compared with a baseline: the checks and the RMS per step of each pair.
The montage's metrics are left out: they have no ``[regression]`` key and no direction
of worse (:data:`WORSE_WHEN`) yet."""

WORSE_WHEN = {
    "backlash_nm": "larger |value|",
    "scale_error": "larger |value|",
    "step_scatter_nm": "larger |value|",
    "reported_backlash_nm": "larger |value|",
    "reported_scale_error": "larger |value|",
    "repeatability_nm": "larger |value|",
    "coupling": "larger |value|",
    "skew_deg": "larger |value|",
    "drift_nm_per_min": "larger |value|",
    "tilt_shift_nm_per_deg": "larger |value|",
    "tilt_backlash_deg": "larger |value|",
    "pair_rms_nm": "larger |value|",
}
"""Which direction is worse, per ``[regression]`` key (every metric of this version is
an error: the further from zero, the worse the stage). ``"larger value"`` and
``"smaller value"`` are understood too, for metrics where the sign matters."""


def regression_key(name: str) -> str:
    """The ``[regression]`` key of a compared metric, e.g. ``x.backlash_nm`` -> ``backlash_nm``.

    Raises
    ------
    ValueError
        For a name that is not one of :data:`COMPARED_METRICS`.
    """
    if name not in COMPARED_METRICS:
        raise ValueError(f"{name!r} is not a compared metric; they are {list(COMPARED_METRICS)}")
    if name.startswith("pairs."):
        return "pair_rms_nm"
    if name.startswith("coupling.x_to_y") or name.startswith("coupling.y_to_x"):
        return "coupling"
    if name == "coupling.skew_deg":
        return "skew_deg"
    if name.startswith("tilt."):
        return "tilt_" + name.rsplit(".", 1)[1]
    return name.rsplit(".", 1)[-1]


def compared_label(name: str) -> str:
    """Human name of a compared metric: ``Backlash, x``; ``RMS per step, target-actual``."""
    if name.startswith("pairs."):
        return f"RMS per step, {name.split('.')[1].replace('_', '-')}"
    return metric_label(name)


# --------------------------------------------------------------------------- maths


def difference_ci95(before, before_ci95, after, after_ci95) -> tuple[np.ndarray, np.ndarray]:
    """``after - before`` and its 95 % interval from the two runs' 95 % intervals.

    Parameters
    ----------
    before, after : array_like, shape (n,)
        The values of the two runs.
    before_ci95, after_ci95 : array_like, shape (n, 2)
        Their 95 % intervals ``[low, high]``; a side of an interval that does not reach
        past its value (a percentile bootstrap can leave it outside) has half-width 0.

    Returns
    -------
    change : ndarray, shape (n,)
        ``after - before``.
    ci95 : ndarray, shape (n, 2)
        Its interval: the lower and upper half-widths of the two intervals combined in
        quadrature (independent runs), lower with upper, so asymmetric intervals stay
        asymmetric.

    Raises
    ------
    ValueError
        For shapes that do not match or non-finite numbers.
    """
    before, after = np.atleast_1d(np.asarray(before, float)), np.atleast_1d(np.asarray(after, float))
    before_ci95 = np.asarray(before_ci95, float).reshape(-1, 2)
    after_ci95 = np.asarray(after_ci95, float).reshape(-1, 2)
    if not before.shape == after.shape == before_ci95.shape[:1] == after_ci95.shape[:1]:
        raise ValueError(f"shapes differ: before {before.shape}, after {after.shape}, intervals "
                         f"{before_ci95.shape} and {after_ci95.shape}")
    for name, array in (("before", before), ("after", after), ("before_ci95", before_ci95),
                        ("after_ci95", after_ci95)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must be finite")
    change = after - before
    below = np.hypot(np.maximum(after - after_ci95[:, 0], 0), np.maximum(before_ci95[:, 1] - before, 0))
    above = np.hypot(np.maximum(after_ci95[:, 1] - after, 0), np.maximum(before - before_ci95[:, 0], 0))
    return change, np.column_stack([change - below, change + above])


def magnitude_ci95(value, ci95) -> tuple[np.ndarray, np.ndarray]:
    """``|value|`` and the interval of ``|value|`` from the interval of `value`.

    An interval that straddles zero gives ``[0, max(|low|, |high|)]``.

    Parameters
    ----------
    value : array_like, shape (n,)
    ci95 : array_like, shape (n, 2)

    Returns
    -------
    magnitude : ndarray, shape (n,)
    ci95 : ndarray, shape (n, 2)
    """
    value = np.atleast_1d(np.asarray(value, float))
    ci95 = np.asarray(ci95, float).reshape(-1, 2)
    low, high = ci95[:, 0], ci95[:, 1]
    straddles = (low < 0) & (high > 0)
    out_low = np.where(straddles, 0.0, np.minimum(np.abs(low), np.abs(high)))
    out_high = np.maximum(np.abs(low), np.abs(high))
    return np.abs(value), np.column_stack([out_low, out_high])


def badness_ci95(value, ci95, worse_when: str) -> tuple[np.ndarray, np.ndarray]:
    """A value turned so that larger is worse, with its interval (see :data:`WORSE_WHEN`)."""
    value = np.atleast_1d(np.asarray(value, float))
    ci95 = np.asarray(ci95, float).reshape(-1, 2)
    if worse_when == "larger |value|":
        return magnitude_ci95(value, ci95)
    if worse_when == "larger value":
        return value, ci95
    if worse_when == "smaller value":
        return -value, -ci95[:, ::-1]
    raise ValueError(f"worse_when must be 'larger |value|', 'larger value' or 'smaller value', got {worse_when!r}")


def excludes_zero(ci95) -> np.ndarray:
    """Whether each interval ``[low, high]`` lies wholly on one side of zero (significant)."""
    ci95 = np.asarray(ci95, float).reshape(-1, 2)
    return (ci95[:, 0] > 0) | (ci95[:, 1] < 0)


# --------------------------------------------------------------------------- comparing two runs


@dataclass(frozen=True)
class MetricChange:
    """One metric before and after, and what changed."""

    name: str
    unit: str
    before: float | None
    after: float | None
    before_ci95: tuple[float, float] | None = None
    after_ci95: tuple[float, float] | None = None
    change: float | None = None
    """``after - before``."""
    change_ci95: tuple[float, float] | None = None
    significant: bool | None = None
    """The change's interval excludes zero (None when it cannot be told)."""
    worsening: float | None = None
    """How much worse (``|after| - |before|`` for an error), negative when better."""
    worsening_ci95: tuple[float, float] | None = None
    worse: bool | None = None
    """Significantly worse: the worsening's interval lies above zero."""
    better: bool | None = None
    """Significantly better."""
    tolerance: float | None = None
    """The holder's ``[regression]`` tolerance (None when it sets none)."""
    regressed: bool | None = None
    """Significantly worse by more than the tolerance; None when not judged (see `reason`)."""
    reason: str = ""
    """Why the change is not judged ("" when it is)."""

    @property
    def label(self) -> str:
        return compared_label(self.name)

    def describe(self) -> str:
        """One line: the metric, before and after, the change with its interval, the verdict."""
        if self.before is None or self.after is None:
            return f"{self.label}: {self.reason}"
        text = (f"{self.label}: {format_value(self.before, self.unit)} -> {format_value(self.after, self.unit)}, "
                f"change {_signed(self.change, self.unit)}")
        if self.change_ci95 is not None:
            text += f" ({format_interval(self.change_ci95, self.unit)})"
        if self.worse:
            text += ", significantly worse"
        elif self.better:
            text += ", significantly better"
        elif self.significant is False:
            text += ", not significant"
        if self.worse and self.tolerance is not None:
            verb = "beyond" if self.regressed else "within"
            text += (f"; {format_value(self.worsening, self.unit)} worse is {verb} the regression tolerance "
                     f"{format_limit(self.tolerance, self.unit)}")
        if self.regressed is None and self.reason:
            text += f" ({self.reason})"
        return text

    def to_json(self) -> dict:
        return {"label": self.label, "unit": self.unit, "before": self.before, "after": self.after,
                "before_ci95": _listed(self.before_ci95), "after_ci95": _listed(self.after_ci95),
                "change": self.change, "change_ci95": _listed(self.change_ci95), "significant": self.significant,
                "worse": self.worse, "better": self.better, "worsening": self.worsening,
                "worsening_ci95": _listed(self.worsening_ci95), "regression_tolerance": self.tolerance,
                "regressed": self.regressed, "not_judged": self.reason or None}


def _listed(ci):
    return None if ci is None else [float(ci[0]), float(ci[1])]


def _signed(value: float | None, unit: str) -> str:
    text = format_value(value, unit)
    return text if text.startswith("-") or value is None else f"+{text}"


@dataclass(frozen=True)
class Comparison:
    """A run against its baseline."""

    source: str
    """Where the baseline came from (a path, or the history entry)."""
    before: dict
    """The baseline: ``microscope``, ``holder``, ``verdict``, ``case``, ``date_utc``, ``date_measured_utc``."""
    after: dict
    """The same for this run."""
    metrics: dict[str, MetricChange] = field(default_factory=dict)

    @property
    def regressed(self) -> list[MetricChange]:
        return [m for m in self.metrics.values() if m.regressed]

    @property
    def worse(self) -> list[MetricChange]:
        return [m for m in self.metrics.values() if m.worse]

    @property
    def better(self) -> list[MetricChange]:
        return [m for m in self.metrics.values() if m.better]

    def headline(self) -> str:
        """``verdict accepted -> not accepted, case a -> f; 2 metric(s) worse beyond ...``."""
        text = (f"verdict {self.before.get('verdict') or 'unknown'} -> {self.after.get('verdict') or 'unknown'}, "
                f"case {self.before.get('case') or 'none'} -> {self.after.get('case') or 'none'}")
        if self.regressed:
            text += (f"; {len(self.regressed)} metric(s) significantly worse beyond the regression tolerance: "
                     + ", ".join(m.label for m in self.regressed))
        elif self.worse:
            text += f"; {len(self.worse)} metric(s) significantly worse, within the regression tolerance"
        else:
            text += "; no metric significantly worse"
        if self.better:
            text += f"; {len(self.better)} significantly better"
        return text

    def to_json(self) -> dict:
        """The results JSON ``baseline`` section (results-v1 addition)."""
        return {"source": self.source, "date_utc": self.before.get("date_utc"),
                "date_measured_utc": self.before.get("date_measured_utc"),
                "microscope": self.before.get("microscope"), "holder": self.before.get("holder"),
                "verdict": self.before.get("verdict"), "case": self.before.get("case"),
                "verdict_after": self.after.get("verdict"), "case_after": self.after.get("case"),
                "headline": self.headline(), "regressed": [m.name for m in self.regressed],
                "metrics": {name: m.to_json() for name, m in self.metrics.items()}}


def _metric_of(document: dict, name: str) -> tuple[float | None, tuple[float, float] | None, str]:
    """(value, ci95, unit) of a compared metric in a results-v1 document."""
    if name.startswith("pairs."):
        pair = (document.get("pairs") or {}).get(name.split(".")[1]) or {}
        value, ci, unit = pair.get("rms_nm"), pair.get("rms_ci95"), "nm"
    else:
        check = (document.get("checks") or {}).get(name) or {}
        value, ci, unit = check.get("value"), check.get("ci95"), check.get("unit") or ""
    ci = None if ci is None else (float(ci[0]), float(ci[1]))
    return (None if value is None else float(value)), ci, str(unit)


def compare_metric(name: str, before: float | None, before_ci95, after: float | None, after_ci95, unit: str,
                   tolerance: float | None) -> MetricChange:
    """One metric against its baseline (see the module docstring for the interval)."""
    if before is None or after is None:
        which = ("in neither run" if before is None and after is None
                 else "in the baseline" if before is None else "in this run")
        return MetricChange(name, unit, before, after, before_ci95, after_ci95, reason=f"not measured {which}")
    change = after - before
    if before_ci95 is None or after_ci95 is None:
        return MetricChange(name, unit, before, after, before_ci95, after_ci95, change,
                            reason="no 95 % interval in " + ("the baseline" if before_ci95 is None else "this run"))
    delta, delta_ci = difference_ci95([before], [before_ci95], [after], [after_ci95])
    worse_when = WORSE_WHEN[regression_key(name)]
    bad_before, bad_before_ci = badness_ci95([before], [before_ci95], worse_when)
    bad_after, bad_after_ci = badness_ci95([after], [after_ci95], worse_when)
    worsening, worsening_ci = difference_ci95(bad_before, bad_before_ci, bad_after, bad_after_ci)
    worse = bool(worsening_ci[0, 0] > 0)
    better = bool(worsening_ci[0, 1] < 0)
    regressed, reason = None, ""
    if tolerance is None:
        reason = f"the holder sets no [regression] {regression_key(name)}"
    else:
        regressed = bool(worse and worsening[0] > tolerance)
    return MetricChange(name, unit, before, after, before_ci95, after_ci95, float(delta[0]),
                        (float(delta_ci[0, 0]), float(delta_ci[0, 1])), bool(excludes_zero(delta_ci)[0]),
                        float(worsening[0]), (float(worsening_ci[0, 0]), float(worsening_ci[0, 1])), worse, better,
                        tolerance, regressed, reason)


def _summary(document: dict) -> dict:
    return {"microscope": document.get("microscope"), "holder": document.get("holder"),
            "verdict": document.get("verdict"), "case": (document.get("certification") or {}).get("case"),
            "date_utc": document.get("date_utc"), "date_measured_utc": document.get("date_measured_utc")}


def compare_results(baseline: dict, current: dict, regression: dict[str, float], *, source: str) -> Comparison:
    """Compare this run's results-v1 document with a baseline's.

    Parameters
    ----------
    baseline, current : dict
        Results-v1 documents (``checks`` with ``value``, ``ci95``, ``unit``; ``pairs``
        with ``rms_nm`` and ``rms_ci95``; ``verdict``, ``certification.case``).
    regression : dict
        The holder's ``[regression]`` tolerances by key (:func:`regression_key`).
    source : str
        Where the baseline came from, for the report.

    Returns
    -------
    Comparison
        Every metric of :data:`COMPARED_METRICS` either run measured.
    """
    metrics = {}
    for name in COMPARED_METRICS:
        before, before_ci, unit_before = _metric_of(baseline, name)
        after, after_ci, unit = _metric_of(current, name)
        if before is None and after is None:
            continue
        metrics[name] = compare_metric(name, before, before_ci, after, after_ci, unit or unit_before,
                                       regression.get(regression_key(name)))
    return Comparison(source, _summary(baseline), _summary(current), metrics)


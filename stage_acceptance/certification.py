"""Pair agreement and consistency, the alignment case a-f (paper Figure 2), and the
acceptance of every metric against a holder's tolerances (results-v1)."""

from __future__ import annotations

from dataclasses import dataclass

from .analysis import AXIS_NAMES, TILT_NAMES, Analysis
from .config import HolderConfig

CASE_TITLES = {
    "a": "Ideal alignment",
    "b": "Misalignment: actual",
    "c": "Misalignment: reported",
    "d": "Misalignment: target",
    "e": "Misalignment: all",
    "f": "Misalignment: inconsistent",
}
"""Titles of the six cases of Figure 2."""

CASE_MEANINGS = {
    "a": "Target, reported and actual positions coincide: the stage goes where it is sent and says so.",
    "b": "The stage reports the target, but the specimen goes somewhere else, repeatably: "
         "moves can be corrected from images or a calibration.",
    "c": "The specimen goes where it is sent, but the readback is off: trust the target, not the reported position.",
    "d": "The readback tells where the specimen really is, but the stage does not go where it is sent: "
         "close the loop on the reported position.",
    "e": "Target, reported and actual all differ, but repeatably: a calibration can compensate.",
    "f": "Positions disagree in a state-dependent or noisy way (e.g. backlash after reversals): "
         "no fixed calibration compensates; moves need image feedback.",
}

PAIR_LABELS = {
    "target_reported": "target-reported",
    "target_actual": "target-actual",
    "reported_actual": "reported-actual",
}


@dataclass(frozen=True)
class PairVerdict:
    """Agreement and consistency of one position pair."""

    name: str
    agree: bool
    consistent: bool
    rms_nm: float | None
    why: tuple[str, ...]


def judge_pairs(analysis: Analysis, holder: HolderConfig) -> dict[str, PairVerdict]:
    """Agreement and consistency of the three pairs (results-v1).

    A pair agrees when its RMS per-step disagreement is at most ``agreement_nm``; it
    is consistent when on every axis its step scatter is at most
    ``consistency_nm`` and its reversal-dependent lost motion at most
    ``backlash_nm`` in absolute value. A metric the session cannot give (e.g. no
    steps along an axis) does not count against the pair.
    """
    tol = holder.tolerances
    verdicts = {}
    for name, metrics in analysis.pairs.items():
        why = []
        agree = metrics.rms_nm is not None and metrics.rms_nm <= tol["agreement_nm"]
        if metrics.rms_nm is None:
            why.append(f"{PAIR_LABELS[name]}: no registered step to compare")
        elif not agree:
            why.append(f"{PAIR_LABELS[name]} disagree: RMS {metrics.rms_nm:.1f} nm > {tol['agreement_nm']:g} nm")
        consistent = True
        for axis in AXIS_NAMES:
            lm = metrics.axes[axis]
            if lm.step_scatter_nm is not None and lm.step_scatter_nm > tol["consistency_nm"]:
                consistent = False
                why.append(f"{PAIR_LABELS[name]} inconsistent on {axis}: step scatter "
                           f"{lm.step_scatter_nm:.1f} nm > {tol['consistency_nm']:g} nm")
            if lm.backlash_nm is not None and abs(lm.backlash_nm) > tol["backlash_nm"]:
                consistent = False
                why.append(f"{PAIR_LABELS[name]} inconsistent on {axis}: reversal-dependent lost motion "
                           f"{lm.backlash_nm:.1f} nm, |.| > {tol['backlash_nm']:g} nm")
        verdicts[name] = PairVerdict(name, agree, consistent, metrics.rms_nm, tuple(why))
    return verdicts


def alignment_case(verdicts: dict[str, PairVerdict]) -> str | None:
    """The case letter a-f from the three pair verdicts (results-v1 rule).

    None when no pair could be compared at all (a session without translation steps,
    e.g. tilt protocols only): such a session certifies nothing.
    """
    if all(v.rms_nm is None for v in verdicts.values()):
        return None
    if not all(v.consistent for v in verdicts.values()):
        return "f"
    agree = {name for name, v in verdicts.items() if v.agree}
    if len(agree) >= 2:
        return "a"
    if agree == {"target_reported"}:
        return "b"
    if agree == {"target_actual"}:
        return "c"
    if agree == {"reported_actual"}:
        return "d"
    return "e"


@dataclass(frozen=True)
class Check:
    """One measured value with its name, unit, limit and verdict (OpenHTF style)."""

    name: str
    value: float | None
    unit: str
    limit: float | None
    """None when the holder file sets no tolerance for this metric."""
    passed: bool | None
    """None when the session cannot give the value or the holder sets no limit."""

    def describe(self) -> str:
        if self.limit is None:
            shown = "not measured" if self.value is None else f"{self.value:.4g} {self.unit}".strip()
            return f"{self.name} = {shown}: the holder file sets no tolerance for it"
        if self.value is None:
            return f"{self.name}: not measured by this session (limit {self.limit:g} {self.unit})"
        verdict = "ok" if self.passed else "FAIL"
        return f"{self.name} = {self.value:.4g} {self.unit} (limit |.| <= {self.limit:g} {self.unit}): {verdict}"


def metric_checks(analysis: Analysis, holder: HolderConfig) -> dict[str, Check]:
    """Every metric against the holder tolerance, keyed by a dotted name.

    Keys: ``x.backlash_nm``, ``x.scale_error``, ``x.step_scatter_nm``,
    ``x.reported_backlash_nm``, ``x.reported_scale_error``, ``x.repeatability_nm``
    (and the same for y), ``coupling.x_to_y``, ``coupling.y_to_x``,
    ``coupling.skew_deg``, ``drift_nm_per_min``, ``tilt.alpha.shift_nm_per_deg``,
    ``tilt.alpha.backlash_deg`` (and beta). The tilt tolerances are optional in a
    holder file: without them the check has no limit and is not judged.
    """
    tol = holder.tolerances
    limits = {
        "backlash_nm": ("backlash_nm", "nm"),
        "scale_error": ("scale_error", ""),
        "step_scatter_nm": ("consistency_nm", "nm"),
        "reported_backlash_nm": ("backlash_nm", "nm"),
        "reported_scale_error": ("scale_error", ""),
        "repeatability_nm": ("repeatability_nm", "nm"),
    }
    values: dict[str, tuple[float | None, str, str]] = {}
    for axis in AXIS_NAMES:
        metrics = analysis.axes[axis]
        for metric, (tol_key, unit) in limits.items():
            values[f"{axis}.{metric}"] = (getattr(metrics, metric), tol_key, unit)
    values["coupling.x_to_y"] = (analysis.coupling.x_to_y, "coupling", "")
    values["coupling.y_to_x"] = (analysis.coupling.y_to_x, "coupling", "")
    values["coupling.skew_deg"] = (analysis.coupling.skew_deg, "skew_deg", "deg")
    values["drift_nm_per_min"] = (analysis.drift_nm_per_min, "drift_nm_per_min", "nm/min")
    for tilt_name in TILT_NAMES:
        metrics = analysis.tilt.get(tilt_name)
        values[f"tilt.{tilt_name}.shift_nm_per_deg"] = (
            None if metrics is None else metrics.shift_nm_per_deg, "tilt_shift_nm_per_deg", "nm/deg")
        values[f"tilt.{tilt_name}.backlash_deg"] = (
            None if metrics is None else metrics.backlash_deg, "tilt_backlash_deg", "deg")
    checks = {}
    for name, (value, tol_key, unit) in values.items():
        limit = tol.get(tol_key)
        passed = None if value is None or limit is None else abs(value) <= limit
        checks[name] = Check(name, value, unit, limit, passed)
    return checks


NOT_CERTIFIED_TITLE = "Not certified"
NOT_CERTIFIED_MEANING = ("The session has no translation steps to compare target, reported and actual "
                         "positions: run the hysteresis, coupling or certification tests to certify a case.")


@dataclass(frozen=True)
class Certificate:
    """The certified case and whether the holder's acceptance accepts it."""

    case: str | None
    """None when the session certifies no case."""
    title: str
    meaning: str
    accepted: bool
    reasons: tuple[str, ...]
    pairs: dict[str, PairVerdict]


def certify(analysis: Analysis, holder: HolderConfig) -> Certificate:
    """Certify the alignment case of an analysed session and accept or reject it.

    Parameters
    ----------
    analysis : Analysis
    holder : HolderConfig
        Tolerances and ``accepted_cases``.

    Returns
    -------
    Certificate
        ``reasons`` says why the case is what it is and why it is (not) accepted.
    """
    verdicts = judge_pairs(analysis, holder)
    case = alignment_case(verdicts)
    if case is None:
        return Certificate(None, NOT_CERTIFIED_TITLE, NOT_CERTIFIED_MEANING, False,
                           ("no translation step in the session: no case is certified",), verdicts)
    agree = [PAIR_LABELS[n] for n, v in verdicts.items() if v.agree]
    reasons = [f"pairs that agree within {holder.tolerances['agreement_nm']:g} nm RMS: "
               + (", ".join(agree) if agree else "none")]
    for verdict in verdicts.values():
        reasons.extend(verdict.why)
    accepted = case in holder.accepted_cases
    reasons.append(
        f"case {case} is {'accepted' if accepted else 'not accepted'} by holder '{holder.name}' "
        f"(accepted cases: {', '.join(holder.accepted_cases)})"
    )
    return Certificate(case, CASE_TITLES[case], CASE_MEANINGS[case], accepted, tuple(reasons), verdicts)

"""Pair agreement and consistency, the alignment case a-f (paper Figure 2), the
acceptance of every metric against a holder's tolerances (results-v1), and the one
verdict of a run.

Every decision here rests on evidence: a pair that cannot be decided on both axes
leaves the case not certified; a metric that is not measured is never a pass; a
decision whose 95 % interval straddles its tolerance is marked marginal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .analysis import AXIS_NAMES, MONTAGE_METRICS, TILT_NAMES, Analysis, Measurement
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


METRIC_LABELS = {
    "backlash_nm": "Backlash",
    "scale_error": "Scale error",
    "step_scatter_nm": "Step scatter",
    "reported_backlash_nm": "Readback backlash",
    "reported_scale_error": "Readback scale error",
    "repeatability_nm": "Repeatability (ISO 230-2)",
    "coupling.x_to_y": "Coupling x to y",
    "coupling.y_to_x": "Coupling y to x",
    "coupling.skew_deg": "Skew of the x and y axes",
    "drift_nm_per_min": "Drift while standing still",
    "shift_nm_per_deg": "Image shift per degree of tilt",
    "backlash_deg": "Tilt backlash",
    "montage.error_rms_nm": "Montage piece error against the target (RMS)",
    "montage.reported_error_rms_nm": "Montage piece error against the readback (RMS)",
    "montage.growth_nm_per_piece": "Montage error growth per piece",
    "montage.neighbour_error_max_nm": "Montage neighbours' misplacement (largest)",
    "montage.unplaced_pieces": "Montage pieces not placed",
}


def metric_label(name: str) -> str:
    """Human name of a check, e.g. ``x.backlash_nm`` -> ``Backlash, x``."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    parts = name.split(".")
    if parts[0] == "tilt":
        return f"{METRIC_LABELS[parts[2]]}, {parts[1]}"
    return f"{METRIC_LABELS[parts[1]]}, {parts[0]}"


_DECIMALS = {"nm": 1, "deg": 3, "nm/min": 2, "nm/deg": 1, "nm/piece": 2, "pieces": 0, "%": 3}


def format_value(value: float | None, unit: str) -> str:
    """A value for people: fractions as percent, sensible decimals per unit."""
    if value is None:
        return "not measured"
    if unit == "":
        return f"{100.0 * value:.{_DECIMALS['%']}f} %"
    if unit == "pieces":  # a count
        return f"{value:.0f} piece{'' if value == 1 else 's'}"
    return f"{value:.{_DECIMALS.get(unit, 3)}f} {unit}".strip()


def format_interval(ci95: tuple[float, float] | None, unit: str) -> str:
    """``95 % CI 170.2 to 189.4 nm``, or "" without an interval."""
    if ci95 is None:
        return ""
    low, high = ci95
    if unit == "":
        return f"95 % CI {100.0 * low:.{_DECIMALS['%']}f} to {100.0 * high:.{_DECIMALS['%']}f} %"
    decimals = _DECIMALS.get(unit, 3)
    return f"95 % CI {low:.{decimals}f} to {high:.{decimals}f} {unit}".strip()


def format_limit(limit: float, unit: str) -> str:
    """A tolerance as written in the holder file: ``15 nm``, ``1 %``."""
    return f"{100.0 * limit:g} %" if unit == "" else f"{limit:g} {unit}"


def _abs_interval(ci95: tuple[float, float]) -> tuple[float, float]:
    """Interval of ``|x|`` from the interval of ``x``."""
    low, high = ci95
    if low >= 0:
        return low, high
    if high <= 0:
        return -high, -low
    return 0.0, max(-low, high)


def margin(value: float, ci95: tuple[float, float] | None, limit: float, unit: str) -> str:
    """"" when the 95 % interval of ``|value|`` is clear of `limit`, else how far it
    reaches across it, e.g. ``"marginal: its 95 % interval reaches 3.1 nm past the
    tolerance"``."""
    if ci95 is None:
        return ""
    low, high = _abs_interval(ci95)
    if not low <= limit <= high or low == high:
        return ""
    if abs(value) <= limit:
        return f"marginal: its 95 % interval reaches {format_value(high - limit, unit)} past the tolerance"
    return f"marginal: its 95 % interval reaches {format_value(limit - low, unit)} inside the tolerance"


@dataclass(frozen=True)
class PairVerdict:
    """Agreement and consistency of one position pair.

    ``agree`` and ``consistent`` are None when the evidence does not decide them;
    ``missing`` says what is missing, ``marginal`` which decisions are marginal.
    """

    name: str
    agree: bool | None
    consistent: bool | None
    rms_nm: float | None
    why: tuple[str, ...]
    rms_ci95: tuple[float, float] | None = None
    missing: tuple[tuple[str, str], ...] = ()
    """(what, why) for each decision the evidence does not support."""
    marginal: tuple[str, ...] = ()

    @property
    def decided(self) -> bool:
        return not self.missing and self.agree is not None and self.consistent is not None


def judge_pairs(analysis: Analysis, holder: HolderConfig) -> dict[str, PairVerdict]:
    """Agreement and consistency of the three pairs (results-v1).

    A pair agrees when its RMS per-step disagreement is at most ``agreement_nm``; it
    is consistent when on every axis its step scatter is at most
    ``consistency_nm`` and its reversal-dependent lost motion at most
    ``backlash_nm`` in absolute value. A metric below the minimum evidence leaves
    the pair undecided (``missing``); one whose interval straddles its tolerance
    makes the decision marginal.
    """
    tol = holder.tolerances
    verdicts = {}
    for name, metrics in analysis.pairs.items():
        label = PAIR_LABELS[name]
        why, missing, marginal = [], [], []
        rms = metrics.rms
        agree = None
        if not rms.measured:
            missing.append((f"{label} agreement", rms.reason))
        else:
            agree = rms.value <= tol["agreement_nm"]
            if not agree:
                why.append(f"{label} disagree: RMS {format_value(rms.value, 'nm')} > {tol['agreement_nm']:g} nm")
            note = margin(rms.value, rms.ci95, tol["agreement_nm"], "nm")
            if note:
                marginal.append(f"{label} agreement: RMS {format_value(rms.value, 'nm')} "
                                f"({format_interval(rms.ci95, 'nm')}) against {tol['agreement_nm']:g} nm: "
                                f"{note.removeprefix('marginal: ')}")
        violated = undecided = False
        for axis in AXIS_NAMES:
            lm = metrics.axes[axis]
            for measurement, what, limit in ((lm.step_scatter_nm, "step scatter", tol["consistency_nm"]),
                                             (lm.backlash_nm, "reversal-dependent lost motion", tol["backlash_nm"])):
                if not measurement.measured:
                    missing.append((f"{label} {what} on {axis}", measurement.reason))
                    undecided = True
                    continue
                if abs(measurement.value) > limit:
                    violated = True
                    why.append(f"{label} inconsistent on {axis}: {what} {format_value(measurement.value, 'nm')}, "
                               f"|.| > {limit:g} nm")
                note = margin(measurement.value, measurement.ci95, limit, "nm")
                if note:
                    marginal.append(f"{label} {what} on {axis}: {format_value(measurement.value, 'nm')} "
                                    f"({format_interval(measurement.ci95, 'nm')}) against {limit:g} nm: "
                                    f"{note.removeprefix('marginal: ')}")
        consistent = False if violated else (None if undecided else True)
        verdicts[name] = PairVerdict(name, agree, consistent, rms.value, tuple(why), rms.ci95, tuple(missing),
                                     tuple(marginal))
    return verdicts


def alignment_case(verdicts: dict[str, PairVerdict]) -> str | None:
    """The case letter a-f from the three pair verdicts (results-v1 rule).

    None unless every pair is decided (agreement and consistency on both axes, with
    the minimum evidence): such a session certifies no case.
    """
    if not all(v.decided for v in verdicts.values()):
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
    """One measured value with its name, unit, limit, interval and verdict (OpenHTF style)."""

    name: str
    value: float | None
    unit: str
    limit: float | None
    """None when the holder file sets no tolerance for this metric."""
    passed: bool | None
    """None when the session cannot give the value or the holder sets no limit."""
    ci95: tuple[float, float] | None = None
    marginal: bool = False
    margin: str = ""
    """How far the interval reaches across the tolerance ("" unless marginal)."""
    evidence: dict = field(default_factory=dict)
    method: str = ""
    reason: str = ""
    """Why the value is not measured ("" when it is)."""

    @property
    def label(self) -> str:
        return metric_label(self.name)

    def shown(self) -> str:
        """Value, unit and interval, e.g. ``179.8 nm (95 % CI 170.2 to 189.4 nm)``."""
        text = format_value(self.value, self.unit)
        interval = format_interval(self.ci95, self.unit) if self.method != "count" else ""  # a count is exact
        return f"{text} ({interval})" if interval else text

    def tolerance(self) -> str:
        return "none set" if self.limit is None else f"|.| <= {format_limit(self.limit, self.unit)}"

    def describe(self) -> str:
        """One line: name, value with unit and interval, tolerance, verdict."""
        if self.value is None:
            return f"{self.label}: not measured: {self.reason}"
        if self.limit is None:
            return f"{self.label} = {self.shown()}: not judged, the holder file sets no tolerance for it"
        verdict = "pass" if self.passed else "FAIL"
        text = f"{self.label} = {self.shown()}, tolerance {self.tolerance()}: {verdict}"
        return f"{text}; {self.margin}" if self.marginal else text


TOLERANCE_OF = {
    "backlash_nm": ("backlash_nm", "nm"),
    "scale_error": ("scale_error", ""),
    "step_scatter_nm": ("consistency_nm", "nm"),
    "reported_backlash_nm": ("backlash_nm", "nm"),
    "reported_scale_error": ("scale_error", ""),
    "repeatability_nm": ("repeatability_nm", "nm"),
    "coupling.x_to_y": ("coupling", ""),
    "coupling.y_to_x": ("coupling", ""),
    "coupling.skew_deg": ("skew_deg", "deg"),
    "drift_nm_per_min": ("drift_nm_per_min", "nm/min"),
    "shift_nm_per_deg": ("tilt_shift_nm_per_deg", "nm/deg"),
    "backlash_deg": ("tilt_backlash_deg", "deg"),
    "montage.error_rms_nm": (None, "nm"),
    "montage.reported_error_rms_nm": (None, "nm"),
    "montage.growth_nm_per_piece": (None, "nm/piece"),
    "montage.neighbour_error_max_nm": (None, "nm"),
    "montage.unplaced_pieces": (None, "pieces"),
}
"""The holder tolerance and unit of each metric (by its name, or the last part of it);
None for a metric no holder tolerance judges."""


CHECK_NAMES = tuple(
    [f"{axis}.{metric}" for axis in AXIS_NAMES for metric in
     ("backlash_nm", "scale_error", "step_scatter_nm", "reported_backlash_nm", "reported_scale_error",
      "repeatability_nm")]
    + ["coupling.x_to_y", "coupling.y_to_x", "coupling.skew_deg", "drift_nm_per_min"]
    + [f"tilt.{tilt}.{metric}" for tilt in TILT_NAMES for metric in ("shift_nm_per_deg", "backlash_deg")]
    + [f"montage.{metric}" for metric in MONTAGE_METRICS]
)
"""The name of every check (:func:`metric_checks`), in report order."""


def check_of(name: str, measurement: Measurement, holder: HolderConfig, limit: float | None = None) -> Check:
    """One metric against the holder tolerance (or against `limit`, where the session sets it)."""
    tol_key, unit = TOLERANCE_OF.get(name) or TOLERANCE_OF[name.rsplit(".", 1)[1]]
    if limit is None and tol_key is not None:
        limit = holder.tolerances.get(tol_key)
    value = measurement.value
    passed = None if value is None or limit is None else abs(value) <= limit
    note = "" if passed is None else margin(value, measurement.ci95, limit, unit)
    return Check(name, value, unit, limit, passed, measurement.ci95, bool(note), note, dict(measurement.evidence),
                 measurement.method, measurement.reason)


def metric_checks(analysis: Analysis, holder: HolderConfig) -> dict[str, Check]:
    """Every metric against the holder tolerance, keyed by a dotted name.

    Keys: ``x.backlash_nm``, ``x.scale_error``, ``x.step_scatter_nm``,
    ``x.reported_backlash_nm``, ``x.reported_scale_error``, ``x.repeatability_nm``
    (and the same for y), ``coupling.x_to_y``, ``coupling.y_to_x``,
    ``coupling.skew_deg``, ``drift_nm_per_min``, ``tilt.alpha.shift_nm_per_deg``,
    ``tilt.alpha.backlash_deg`` (and beta), and the ``montage.<name>`` metrics of
    :data:`~stage_acceptance.analysis.MONTAGE_METRICS`. The tilt tolerances are
    optional in a holder file: without them the check has no limit and is not judged.
    The montage's neighbour misplacement is judged against the montage's own overlap
    width (beyond it stitching fails) and its unplaced pieces against 0; the other
    montage metrics are not judged.
    """
    base = [name for name in CHECK_NAMES if not name.startswith("montage.")]
    checks = {name: check_of(name, analysis.metrics[name], holder) for name in base}
    solved = getattr(analysis, "montage", None)
    limits = {}
    if solved is not None:
        limits["unplaced_pieces"] = 0.0
        if solved.overlap_nm is not None:
            limits["neighbour_error_max_nm"] = round(solved.overlap_nm, 1)
    for metric in MONTAGE_METRICS:
        name = f"montage.{metric}"
        checks[name] = check_of(name, analysis.metrics[name], holder, limit=limits.get(metric))
    return checks


NOT_CERTIFIED_TITLE = "Not certified"
NOT_SELECTED_MEANING = ("The certification test was not selected (-m/-k), so no case is certified: run the suites "
                        "without a selection, or with -m certification, to certify one.")
INSUFFICIENT_MEANING = ("The session does not hold the evidence to decide the case: every pair must be decided "
                        "on both axes with the minimum number of registered steps.")


@dataclass(frozen=True)
class Certificate:
    """The certified case and whether the holder's acceptance accepts it."""

    case: str | None
    """None when the session certifies no case."""
    title: str
    meaning: str
    accepted: bool
    """The case is one of the holder's accepted cases (False when not certified)."""
    reasons: tuple[str, ...]
    pairs: dict[str, PairVerdict]
    missing: tuple[str, ...] = ()
    """What evidence is missing when the case is not certified."""
    marginal: tuple[str, ...] = ()
    """Pair decisions whose interval straddles their tolerance."""


def _grouped(missing: list[tuple[str, str]]) -> list[str]:
    """``"a, b: reason"`` lines, one per distinct reason."""
    by_reason: dict[str, list[str]] = {}
    for what, reason in missing:
        by_reason.setdefault(reason, []).append(what)
    return [f"{', '.join(whats)}: {reason}" for reason, whats in by_reason.items()]


def certify(analysis: Analysis, holder: HolderConfig, *, selected: bool = True) -> Certificate:
    """Certify the alignment case of an analysed session and accept or reject it.

    Parameters
    ----------
    analysis : Analysis
    holder : HolderConfig
        Tolerances and ``accepted_cases``.
    selected : bool
        Whether the certification test is part of the run; without it no case is
        certified (a ``-m drift`` run measures drift and nothing more).

    Returns
    -------
    Certificate
        ``reasons`` says why the case is what it is and why it is (not) accepted, or
        what evidence is missing.
    """
    verdicts = judge_pairs(analysis, holder)
    marginal = tuple(note for v in verdicts.values() for note in v.marginal)
    if not selected:
        return Certificate(None, NOT_CERTIFIED_TITLE, NOT_SELECTED_MEANING, False,
                           ("the certification test was not selected: no case is certified",), verdicts)
    case = alignment_case(verdicts)
    if case is None:
        missing = tuple(_grouped([item for v in verdicts.values() for item in v.missing]))
        registered = int(analysis.steps.registered.sum())
        pairs = analysis.frames - 1
        if registered < pairs:
            first = f" (first left out: {analysis.failed[0]})" if analysis.failed else ""
            missing += (f"{registered} of {pairs} consecutive frame pairs could be registered{first}",)
        return Certificate(None, NOT_CERTIFIED_TITLE, INSUFFICIENT_MEANING, False,
                           ("not certified: insufficient evidence",) + missing, verdicts, missing, marginal)
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
    return Certificate(case, CASE_TITLES[case], CASE_MEANINGS[case], accepted, tuple(reasons), verdicts, (),
                       marginal)


VERDICTS = ("accepted", "not accepted", "not certified", "incomplete")


@dataclass(frozen=True)
class Verdict:
    """The one verdict of a run, the line that says it, and why."""

    word: str
    """One of :data:`VERDICTS`."""
    headline: str
    why: tuple[str, ...]


def _case_line(certificate: Certificate, holder: HolderConfig) -> str:
    if certificate.case is None:
        return certificate.reasons[0]
    return (f"case {certificate.case} ({certificate.title}) is "
            f"{'accepted' if certificate.accepted else 'not accepted'} by holder '{holder.name}' "
            f"(accepted cases: {', '.join(holder.accepted_cases)})")


def verdict(certificate: Certificate, checks: dict[str, Check], holder: HolderConfig, *,
            incomplete: str | None = None) -> Verdict:
    """The run's one verdict: accepted, not accepted, not certified or incomplete.

    ``accepted`` only for a certified case that the holder accepts with every measured
    metric within its tolerance; ``not accepted`` when the case is not accepted or a
    metric fails; ``not certified`` when no case is certified; ``incomplete`` when the
    session stopped early. The reasons list the case, each failed metric, each
    marginal decision, what evidence is missing and which metrics are not measured.
    """
    failed = [c for c in checks.values() if c.passed is False]
    marginal = [c for c in checks.values() if c.marginal]
    unmeasured = [c for c in checks.values() if c.value is None and c.limit is not None]
    why = [_case_line(certificate, holder)]
    why += [f"missing evidence: {line}" for line in certificate.missing]
    why += [f"failed: {c.describe()}" for c in failed]
    why += [f"marginal: {note}" for note in certificate.marginal]
    why += [f"marginal: {c.label} = {c.shown()}, tolerance {c.tolerance()}: "
            f"{c.margin.removeprefix('marginal: ')}" for c in marginal if c.passed]
    if len(unmeasured) > 6:
        why.append(f"not measured: {len(unmeasured)} metrics (each with the reason in the report)")
    elif unmeasured:
        why.append("not measured (the report says why): " + "; ".join(c.label for c in unmeasured))
    failures = f"{len(failed)} metric(s) outside tolerance: " + ", ".join(c.label for c in failed)
    if incomplete:
        return Verdict("incomplete", f"INCOMPLETE: {incomplete}; nothing is accepted", tuple(why))
    if certificate.case is None:
        cause = ("insufficient evidence" if certificate.missing
                 else "the certification test was not selected")
        extra = f"; {failures}" if failed else ""
        return Verdict("not certified", f"NOT CERTIFIED: {cause}{extra}", tuple(why))
    case = f"case {certificate.case} ({certificate.title})"
    if not certificate.accepted:
        extra = f"; {failures}" if failed else ""
        return Verdict("not accepted", f"NOT ACCEPTED: {case} is not among the cases holder '{holder.name}' "
                                       f"accepts{extra}", tuple(why))
    if failed:
        return Verdict("not accepted", f"NOT ACCEPTED: {case} is accepted, but {failures}", tuple(why))
    judged = sum(1 for c in checks.values() if c.passed)
    notes = f"; {len(marginal) + len(certificate.marginal)} marginal" if marginal or certificate.marginal else ""
    return Verdict("accepted", f"ACCEPTED: {case}, {judged} measured metric(s) within tolerance{notes}", tuple(why))

"""Steps and every metric of results-v1, from a recorded session.

The flow is: register the frame pairs (:mod:`stage_acceptance.registry`), estimate the
stage-to-image transform if the session does not give it
(:func:`estimate_stage_to_image`), turn image displacements into actual stage
displacements, less any change of the microscope's image shift
(:func:`image_shift_change_nm`), classify the steps (:func:`classify_steps`), then
compute the metrics with plain functions on numpy arrays. :func:`analyse` runs the whole chain. No pass/fail
decision is made here (that is :mod:`stage_acceptance.certification`).

Every metric is a :class:`Measurement`: its value, a 95 % interval from the data
(:mod:`stage_acceptance.intervals`) and the evidence it rests on. Below the minimum
evidence of :data:`MIN_EVIDENCE` a metric is not measured: its value is ``None`` and
its ``reason`` says what is missing.

Conventions: displacement arrays are ``(n_steps, 2)`` = ``(x, y)`` in nm in stage
coordinates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import intervals, montage, readback
from .geometry import StageToImage, image_px_to_stage_nm, stage_nm_to_image_px
from .registration import Registration, central_region_shape
from .registry import commanded_nm, register_all, registration_plan, step_axis, tilt_pairs
from .session import Session

AXIS_NAMES = ("x", "y")
TILT_NAMES = ("alpha", "beta")
PAIRS = {
    "target_reported": ("target", "reported"),
    "target_actual": ("target", "actual"),
    "reported_actual": ("reported", "actual"),
}
"""The three position pairs of the alignment case, as (reference, measured)."""


# --------------------------------------------------------------------------- steps


@dataclass
class Steps:
    """Every step of a session (consecutive frames whose images overlap).

    Attributes
    ----------
    frame : ndarray of int, (n,)
        Index of the frame the step arrives at (the step is ``frame-1 -> frame``).
    target_nm, reported_nm, actual_nm : ndarray, (n, 2)
        Displacements ``(x, y)`` in nm; ``target_nm`` is NaN where the recording has
        no target, ``actual_nm`` where the pair could not be registered.
    shift_px : ndarray, (n, 2)
        Measured image displacement ``(column, row)``; NaN where not registered.
    confidence : ndarray, (n,)
        Registration confidence.
    registered : ndarray of bool, (n,)
    reason : list of str
        Why a pair was not registered ("" when it was).
    translation : ndarray of bool, (n,)
        A lateral move was commanded (or, without a recorded target, reported) and
        no tilt changed: the steps that compare target, reported and actual.
    axis : ndarray of int, (n,)
        0 for a translation step along x, 1 along y, -1 for neither.
    direction : ndarray of int, (n,)
        Sign of the target displacement along `axis` (0 for none).
    kind : ndarray of str, (n,)
        ``"first"`` (first step along its axis), ``"reversal"``, ``"plain"`` or
        ``"other"`` (not along an axis).
    protocol : list of str or None
        Protocol of the arrival frame.
    tilt_deg : ndarray, (n, 2)
        Change of the target alpha and beta, degrees.
    tilt_axis : ndarray of int, (n,)
        0 for a pure alpha step, 1 for a pure beta step, -1 otherwise.
    tilt_kind : ndarray of str, (n,)
        ``"first"``, ``"reversal"``, ``"plain"`` or ``"other"`` for the tilt axes.
    image_shift_nm : ndarray, (n, 2)
        Change of the image shift over the step (nm, stage axes), subtracted from the
        registered displacement to give `actual_nm`; NaN where it is not known.
    unmeasured : list of str
        Why a registered step's actual displacement is not known (a change of an
        uncalibrated image shift); "" otherwise.
    """

    frame: np.ndarray
    target_nm: np.ndarray
    reported_nm: np.ndarray
    actual_nm: np.ndarray
    shift_px: np.ndarray
    confidence: np.ndarray
    registered: np.ndarray
    reason: list
    translation: np.ndarray
    axis: np.ndarray
    direction: np.ndarray
    kind: np.ndarray
    protocol: list
    tilt_deg: np.ndarray
    tilt_axis: np.ndarray
    tilt_kind: np.ndarray
    image_shift_nm: np.ndarray
    unmeasured: list

    def __len__(self) -> int:
        return len(self.frame)

    def displacement(self, which: str) -> np.ndarray:
        """``"target"``, ``"reported"`` or ``"actual"`` displacements, (n, 2) nm."""
        return {"target": self.target_nm, "reported": self.reported_nm, "actual": self.actual_nm}[which]


@dataclass(frozen=True)
class PairRegistration:
    """Registration of frame `moving` against an earlier frame `reference`."""

    reference: int
    moving: int
    result: Registration


def estimate_stage_to_image(target_nm: np.ndarray, shift_px: np.ndarray, pixel_size_nm: float) -> StageToImage:
    """Least-squares rotation and flip that map stage moves onto image shifts.

    Solves ``min sum |R(theta) diag(1, s) t_i * / p - d_i|^2`` for theta and s in
    {+1, -1} (a 2-D Procrustes problem; Kabsch 1976), and keeps the flip with the
    smaller residual.

    Parameters
    ----------
    target_nm : ndarray, (n, 2)
        Commanded stage displacements in nm.
    shift_px : ndarray, (n, 2)
        Measured image displacements ``(column, row)`` in pixels.
    pixel_size_nm : float
        Calibrated pixel size.

    Returns
    -------
    StageToImage

    Raises
    ------
    ValueError
        With fewer than two usable steps, or when all steps are parallel (the flip
        cannot be told from one direction of motion).

    References
    ----------
    Kabsch W (1976). A solution for the best rotation to relate two sets of vectors.
    Acta Cryst A32, 922-923.
    """
    t = np.asarray(target_nm, dtype=float)
    d = np.asarray(shift_px, dtype=float) * pixel_size_nm
    usable = np.all(np.isfinite(d), axis=1) & (np.hypot(t[:, 0], t[:, 1]) > 0)
    t, d = t[usable], d[usable]
    if len(t) < 2:
        raise ValueError(f"cannot estimate the stage-to-image rotation from {len(t)} registered move(s); need >= 2")
    unit = t / np.hypot(t[:, 0], t[:, 1])[:, None]
    cross_area = np.abs(np.linalg.det(unit.T @ unit))
    if cross_area < 1e-3:
        raise ValueError("cannot estimate the stage-to-image flip: all moves are parallel; "
                         "give [stage_to_image] in the config or session.json")
    best = None
    for flip in (False, True):
        ts = t * np.array([1.0, -1.0 if flip else 1.0])
        h = d.T @ ts  # sum of d_i ts_i^T
        theta = np.arctan2(h[1, 0] - h[0, 1], h[0, 0] + h[1, 1])
        c, s = np.cos(theta), np.sin(theta)
        rotated = ts @ np.array([[c, -s], [s, c]]).T
        residual = float(np.sum((rotated - d) ** 2))
        if best is None or residual < best[0]:
            best = (residual, np.rad2deg(theta), flip)
    rotation = (best[1] + 180.0) % 360.0 - 180.0
    return StageToImage(float(rotation), bool(best[2]))


def image_shift_change_nm(shift_nm: np.ndarray, shift_raw: np.ndarray, reference: int,
                         moving: int) -> tuple[np.ndarray, str]:
    """Change of the image shift between two frames, to subtract from their registered motion.

    The image (beam) shift moves the image without moving the stage. recording-v1's
    ``image_shift_nm`` is taken as the stage displacement (nm, stage axes) that would
    move the image alike, so the stage moved by the registered displacement (in stage
    nm) minus the change of ``image_shift_nm``. An image shift known only in the
    acquiring tool's own units (``image_shift_raw``, e.g. SerialEM's) cannot be
    subtracted: when it changed, the pair's stage motion is unknown.

    Parameters
    ----------
    shift_nm, shift_raw : ndarray, (n_frames, 2)
        ``image_shift_nm`` and ``image_shift_raw`` of every frame; NaN rows where a frame
        has none (:meth:`~stage_acceptance.session.Session.image_shifts`).
    reference, moving : int
        The two frames.

    Returns
    -------
    change_nm : ndarray, (2,)
        ``shift_nm[moving] - shift_nm[reference]``; zero when neither frame records an
        image shift, or both the same raw one; NaN when it cannot be known.
    reason : str
        Why it cannot be known ("" when it can).
    """
    nm = np.isfinite(shift_nm[[reference, moving]]).all(axis=1)
    raw = np.isfinite(shift_raw[[reference, moving]]).all(axis=1)
    unknown = np.full(2, np.nan)
    if nm.all():
        return shift_nm[moving] - shift_nm[reference], ""
    if nm.any():
        has, lacks = (reference, moving) if nm[0] else (moving, reference)
        return unknown, f"frame {has} records its image shift in nm and frame {lacks} does not"
    if raw.all():
        change = shift_raw[moving] - shift_raw[reference]
        if np.any(change != 0):
            return unknown, (f"the image shift changed by ({change[0]:+.6g}, {change[1]:+.6g}) in the acquiring "
                             f"tool's own units (image_shift_raw) and the recording has no calibration of them to "
                             f"nm, so the stage motion cannot be told from the image motion")
        return np.zeros(2), ""
    if raw.any():
        has, lacks = (reference, moving) if raw[0] else (moving, reference)
        return unknown, f"frame {has} records an image shift and frame {lacks} does not"
    return np.zeros(2), ""


def classify_steps(axis: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``"first"``, ``"reversal"``, ``"plain"`` or ``"other"`` for each step.

    A step along a is a reversal when its direction differs from that of the previous
    step along a; the first step along an axis has no known history.
    """
    kind = np.empty(len(axis), dtype=object)
    last = {}
    for i, (a, d) in enumerate(zip(axis, direction)):
        if a < 0:
            kind[i] = "other"
            continue
        if a not in last:
            kind[i] = "first"
        elif last[a] != d:
            kind[i] = "reversal"
        else:
            kind[i] = "plain"
        last[a] = d
    return kind.astype(str)


def images_overlap(delta_nm: np.ndarray, pixel_size_nm: float, frame_shape, transform: StageToImage | None) -> bool:
    """Whether a move of `delta_nm` leaves the two frames overlapping."""
    rows, cols = frame_shape
    if transform is None:
        return float(np.hypot(*delta_nm)) / pixel_size_nm < min(rows, cols)
    d = stage_nm_to_image_px(delta_nm, pixel_size_nm, transform)
    return abs(d[0]) < cols and abs(d[1]) < rows


def build_steps(session: Session, registrations: list[PairRegistration], transform: StageToImage,
                image_shift: dict | None = None) -> Steps:
    """Assemble the steps of a session from its consecutive-pair registrations.

    A consecutive pair is a step when its images overlap by the reported move, or
    when the registration found an overlap. It is a *translation* step when a lateral
    move was commanded (without a recorded target: reported), no tilt changed and
    neither frame is a montage piece (``montage_piece``: the montage analysis measures
    those moves); only translation steps are along an axis. `image_shift` maps a pair
    to its :func:`image_shift_change_nm` (none: no image shift), subtracted from the
    actual displacement; an unknown change leaves the actual displacement NaN, with the
    reason in ``Steps.unmeasured``.
    """
    targets = session.targets_nm()
    reported = session.reported_nm()
    commanded = commanded_nm(session)
    frame_shape = session.frame_shape
    kept = [r for r in registrations
            if r.result.ok or images_overlap(reported[r.moving, :2] - reported[r.moving - 1, :2],
                                             session.pixel_size_nm, frame_shape, transform)]
    frame = np.array([r.moving for r in kept], dtype=int)
    n = len(frame)
    d_t = (targets[frame] - targets[frame - 1]).reshape(n, 5)
    d_r = (reported[frame] - reported[frame - 1]).reshape(n, 5)
    d_c = (commanded[frame] - commanded[frame - 1]).reshape(n, 5)
    registered = np.array([r.result.ok for r in kept], dtype=bool)
    shift = np.array([r.result.shift_px if r.result.ok else (np.nan, np.nan) for r in kept], dtype=float).reshape(n, 2)
    tilt = d_c[:, 3:]
    untilted = np.all(tilt == 0, axis=1)
    # Moves to, from and between montage pieces are as long as the field less the overlap,
    # not the protocol's step: the montage analysis measures them, the lateral metrics
    # (whose lost motion assumes one step length) leave them out.
    piece = np.array(["montage_piece" in f.extra for f in session.frames], dtype=bool)
    montage_step = piece[frame] | piece[frame - 1] if n else np.zeros(0, dtype=bool)
    translation = untilted & np.any(d_c[:, :2] != 0, axis=1) & ~montage_step
    axis = np.full(n, -1, dtype=int)
    direction = np.zeros(n, dtype=int)
    for i in np.flatnonzero(translation):
        axis[i], direction[i] = step_axis(d_c[i, :3])
    changes = [(image_shift or {}).get((r.moving - 1, r.moving), (np.zeros(2), "")) for r in kept]
    shift_change = np.array([change for change, _ in changes], dtype=float).reshape(n, 2)
    actual = image_px_to_stage_nm(shift, session.pixel_size_nm, transform).reshape(n, 2) - shift_change
    lateral_still = np.all(d_c[:, :2] == 0, axis=1)
    tilt_axis = np.full(n, -1, dtype=int)
    tilt_axis[lateral_still & (tilt[:, 0] != 0) & (tilt[:, 1] == 0)] = 0
    tilt_axis[lateral_still & (tilt[:, 1] != 0) & (tilt[:, 0] == 0)] = 1
    tilt_direction = np.where(tilt_axis >= 0, np.sign(tilt[np.arange(n), np.clip(tilt_axis, 0, 1)]), 0)
    return Steps(
        frame=frame,
        target_nm=d_t[:, :2],
        reported_nm=d_r[:, :2],
        actual_nm=actual,
        shift_px=shift,
        confidence=np.array([r.result.confidence for r in kept], dtype=float),
        registered=registered,
        reason=[r.result.reason for r in kept],
        translation=translation,
        axis=axis,
        direction=direction,
        kind=classify_steps(axis, direction),
        protocol=[session.frames[i].protocol for i in frame],
        tilt_deg=tilt,
        tilt_axis=tilt_axis,
        tilt_kind=classify_steps(tilt_axis, tilt_direction.astype(int)),
        image_shift_nm=shift_change,
        unmeasured=[why if ok else "" for (_, why), ok in zip(changes, registered)],
    )


# --------------------------------------------------------------------------- evidence


MIN_EVIDENCE = {
    "reversal_steps": 2,
    "plain_steps": 4,
    "axis_steps": 4,
    "pair_steps": 4,
    "revisited_targets": 3,
    "visits_per_target": 2,
    "drift_frames": 3,
    "drift_span_s": 60.0,
    "tilt_reversal_steps": 2,
    "tilt_plain_steps": 4,
    "montage_pieces": 3,
    "montage_neighbour_pairs": 1,
}
"""The least evidence each metric is measured from (README, "Evidence and intervals").

- backlash (any pair): ``reversal_steps`` reversal and ``plain_steps`` plain steps
  along the axis, each with both displacements;
- scale error and step scatter: ``plain_steps`` plain steps;
- pair agreement (RMS per step): ``pair_steps`` translation steps;
- coupling ``x_to_y`` (``y_to_x``): ``axis_steps`` registered steps along x (y); skew:
  both;
- repeatability: ``revisited_targets`` targets, each visited ``visits_per_target``
  times from the same direction (a revisit), registered; targets visited less often
  are left out;
- drift: ``drift_frames`` registered frames without a move in between, spanning
  ``drift_span_s`` seconds;
- tilt: ``tilt_plain_steps`` plain tilt steps for the image shift per degree, and
  ``tilt_reversal_steps`` reversals as well for the tilt backlash;
- montage: ``montage_pieces`` pieces besides the first placed by registered pairs (the
  error RMS and its growth), ``montage_neighbour_pairs`` raster neighbours both placed
  (the largest neighbour error).
"""


@dataclass(frozen=True)
class Measurement:
    """A metric: its value, 95 % interval, and the evidence it rests on.

    Attributes
    ----------
    value : float or None
        None when the session does not give enough evidence (see `reason`).
    ci95 : (float, float) or None
        95 % interval of the value.
    evidence : dict
        Counts the value rests on, e.g. ``{"reversal_steps": 3, "plain_steps": 17}``.
    method : str
        How the interval was obtained (``"Welch t"``, ``"t"``, ``"chi-square"``,
        ``"bootstrap"``, ...).
    reason : str
        Why it is not measured ("" when it is).
    """

    value: float | None
    ci95: tuple[float, float] | None = None
    evidence: dict = field(default_factory=dict)
    method: str = ""
    reason: str = ""

    @property
    def measured(self) -> bool:
        return self.value is not None


def not_measured(reason: str, evidence: dict | None = None) -> Measurement:
    """A metric the session cannot give, and why."""
    return Measurement(None, None, dict(evidence or {}), "", reason)


def _shortfall(evidence: dict, need: dict, noun: str) -> str | None:
    """What is missing, e.g. ``"needs >= 2 reversal and >= 4 plain registered steps along
    x; the session has 0 reversal and 3 plain"``, or None when `evidence` suffices."""
    if all(evidence.get(key, 0) >= least for key, least in need.items()):
        return None
    kinds = {"reversal_steps": "reversal ", "plain_steps": "plain "}
    wanted = " and ".join(f">= {least} {kinds.get(key, '')}".rstrip() for key, least in need.items())
    have = " and ".join(f"{evidence.get(key, 0)} {kinds.get(key, '')}".rstrip() for key in need)
    return f"needs {wanted} {noun}; the session has {have}"


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class LostMotion:
    """Lost-motion metrics of one axis for one (reference, measured) pair."""

    backlash_nm: Measurement
    scale_error: Measurement
    step_scatter_nm: Measurement
    reversal_steps: int
    plain_steps: int


def lost_motion(reference_nm, measured_nm, kind, noun: str = "steps") -> LostMotion:
    """Backlash, scale error and step scatter along one axis, with 95 % intervals.

    With ``L = |ref| - sign(ref) * meas`` the lost motion of a step:
    ``backlash = mean L(reversal) - mean L(plain)`` (interval: Welch t),
    ``scale_error = sum(meas * ref) / sum(ref**2) - 1`` over plain steps (t interval
    of a slope through the origin) and
    ``step_scatter = std(meas - (1 + scale_error) * ref)`` over plain steps, n - 1
    degrees of freedom (chi-square interval).

    Parameters
    ----------
    reference_nm, measured_nm : array_like, (n,)
        Axis components of the reference (e.g. target) and measured (e.g. actual)
        displacements of the steps along this axis, in nm. Non-finite entries are
        left out.
    kind : array_like of str, (n,)
        ``"reversal"``, ``"plain"`` or anything else (left out).
    noun : str
        What a counted step is, for the reasons (e.g. ``"registered steps along x"``).

    Returns
    -------
    LostMotion
        A metric below :data:`MIN_EVIDENCE` is not measured.
    """
    ref = np.asarray(reference_nm, dtype=float)
    meas = np.asarray(measured_nm, dtype=float)
    kind = np.asarray(kind)
    if ref.shape != meas.shape or ref.shape != kind.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, measured {meas.shape}, kind {kind.shape}")
    valid = np.isfinite(ref) & np.isfinite(meas)
    plain = valid & (kind == "plain")
    reversal = valid & (kind == "reversal")
    evidence = {"reversal_steps": int(reversal.sum()), "plain_steps": int(plain.sum())}
    lost = np.abs(ref) - np.sign(ref) * meas

    need = {key: MIN_EVIDENCE[key] for key in ("reversal_steps", "plain_steps")}
    short = _shortfall(evidence, need, noun)
    if short:
        backlash = not_measured(short, evidence)
    else:
        backlash = Measurement(float(lost[reversal].mean() - lost[plain].mean()),
                               intervals.mean_difference_interval(lost[reversal], lost[plain]), evidence, "Welch t")

    plain_evidence = {"plain_steps": evidence["plain_steps"]}
    short = _shortfall(plain_evidence, {"plain_steps": MIN_EVIDENCE["plain_steps"]}, noun)
    if short or float(np.sum(ref[plain] ** 2)) == 0:
        reason = short or "every plain step is 0"
        return LostMotion(backlash, not_measured(reason, plain_evidence), not_measured(reason, plain_evidence),
                          evidence["reversal_steps"], evidence["plain_steps"])
    slope, se, dof = intervals.slope_through_origin(ref[plain], meas[plain])
    low, high = intervals.t_interval(slope - 1.0, se, dof)
    scale = Measurement(slope - 1.0, (low, high), plain_evidence, "t")
    scatter_value = float(np.std(meas[plain] - slope * ref[plain], ddof=1))
    scatter = Measurement(scatter_value, intervals.std_interval(scatter_value, dof), plain_evidence, "chi-square")
    return LostMotion(backlash, scale, scatter, evidence["reversal_steps"], evidence["plain_steps"])


def pair_rms_nm(reference_nm: np.ndarray, measured_nm: np.ndarray, noun: str = "steps") -> Measurement:
    """RMS over steps of the per-step difference of two displacement vectors (nm).

    The interval is a percentile bootstrap over the steps.
    """
    diff = np.asarray(measured_nm, dtype=float) - np.asarray(reference_nm, dtype=float)
    squared = np.sum(diff ** 2, axis=1)
    squared = squared[np.isfinite(squared)]
    evidence = {"pair_steps": int(len(squared))}
    short = _shortfall(evidence, {"pair_steps": MIN_EVIDENCE["pair_steps"]}, noun)
    if short:
        return not_measured(short, evidence)
    ci = intervals.bootstrap_interval(lambda idx: float(np.sqrt(np.mean(squared[idx[0]]))),
                                      [np.arange(len(squared))])
    return Measurement(float(np.sqrt(np.mean(squared))), ci, evidence, "bootstrap")


@dataclass(frozen=True)
class Coupling:
    """Axis coupling from steps along x and along y."""

    x_to_y: Measurement
    y_to_x: Measurement
    skew_deg: Measurement


def _axis_direction(t: np.ndarray, a: np.ndarray, k: int) -> np.ndarray:
    """Measured direction of axis k: regression of the whole actual vector on ``t[:, k]``."""
    return (a.T @ t[:, k]) / float(t[:, k] @ t[:, k])


def _skew(dir_x: np.ndarray, dir_y: np.ndarray) -> float:
    cos_angle = float(np.dot(dir_x, dir_y) / (np.linalg.norm(dir_x) * np.linalg.norm(dir_y)))
    return float(np.rad2deg(np.arccos(np.clip(cos_angle, -1.0, 1.0))) - 90.0)


def coupling(target_nm: np.ndarray, actual_nm: np.ndarray, axis: np.ndarray) -> Coupling:
    """Coupling slopes and skew between the measured x and y directions.

    ``x_to_y`` is the least-squares slope (through the origin) of ``dA_y`` against
    ``dT_x`` over steps along x (t interval); ``y_to_x`` likewise. The measured
    direction of an axis is the regression of the whole ``dA`` vector on the
    commanded component; ``skew_deg`` is the angle between the x and y directions
    minus 90 degrees (bootstrap interval over the steps of each axis).

    Parameters
    ----------
    target_nm, actual_nm : ndarray, (n, 2)
        Target and actual displacements (nm); NaN rows are left out.
    axis : ndarray of int, (n,)
        0 for steps along x, 1 along y.

    Returns
    -------
    Coupling
    """
    t = np.asarray(target_nm, dtype=float).reshape(-1, 2)
    a = np.asarray(actual_nm, dtype=float).reshape(-1, 2)
    valid = np.all(np.isfinite(a), axis=1) & np.all(np.isfinite(t), axis=1)
    selected = [np.flatnonzero(valid & (np.asarray(axis) == k)) for k in (0, 1)]
    slopes = []
    for k, name in ((0, "x"), (1, "y")):
        sel = selected[k]
        key = f"steps_along_{name}"
        evidence = {key: int(len(sel))}
        short = _shortfall(evidence, {key: MIN_EVIDENCE["axis_steps"]}, f"registered steps along {name}")
        if short or float(t[sel, k] @ t[sel, k]) == 0:
            slopes.append(not_measured(short or f"every step along {name} is 0", evidence))
            continue
        slope, se, dof = intervals.slope_through_origin(t[sel, k], a[sel, 1 - k])
        slopes.append(Measurement(slope, intervals.t_interval(slope, se, dof), evidence, "t"))
    evidence = {"steps_along_x": int(len(selected[0])), "steps_along_y": int(len(selected[1]))}
    if not (slopes[0].measured and slopes[1].measured):
        missing = [f"coupling {m}: {s.reason}" for m, s in zip(("x_to_y", "y_to_x"), slopes) if not s.measured]
        skew = not_measured("needs both axes; " + "; ".join(missing), evidence)
    else:
        def statistic(idx):
            return _skew(_axis_direction(t[idx[0]], a[idx[0]], 0), _axis_direction(t[idx[1]], a[idx[1]], 1))

        value = _skew(_axis_direction(t[selected[0]], a[selected[0]], 0),
                      _axis_direction(t[selected[1]], a[selected[1]], 1))
        skew = Measurement(value, intervals.bootstrap_interval(statistic, selected), evidence, "bootstrap")
    return Coupling(slopes[0], slopes[1], skew)


def repeatability_nm(deviations_nm: list[np.ndarray]) -> Measurement:
    """ISO 230-2 unidirectional repeatability ``max_j 4 s_j``, with its interval.

    Only targets visited at least ``visits_per_target`` times (registered) count;
    at least ``revisited_targets`` of them are needed. The interval is
    ``4 [max_j low_j, max_j high_j]`` with ``[low_j, high_j]`` the chi-square
    interval of each target's ``s_j``.

    Parameters
    ----------
    deviations_nm : list of ndarray
        For each target position and approach direction, the positional deviations
        (nm, any common offset) of its visits; NaN for a visit not registered.

    Returns
    -------
    Measurement

    References
    ----------
    ISO 230-2:2014, Test code for machine tools, Part 2: Determination of accuracy
    and repeatability of positioning of numerically controlled axes, clause 2.
    """
    counted = [np.asarray(dev, dtype=float)[np.isfinite(dev)] for dev in deviations_nm]
    counted = [dev for dev in counted if len(dev) >= MIN_EVIDENCE["visits_per_target"]]
    evidence = {"targets": len(counted), "visits": int(sum(len(dev) for dev in counted))}
    if len(counted) < MIN_EVIDENCE["revisited_targets"]:
        return not_measured(f"needs >= {MIN_EVIDENCE['revisited_targets']} targets each visited >= "
                            f"{MIN_EVIDENCE['visits_per_target']} times from the same direction (registered); "
                            f"the session has {len(counted)}", evidence)
    stds = [float(np.std(dev, ddof=1)) for dev in counted]
    low, high = intervals.max_std_interval(stds, [len(dev) - 1 for dev in counted])
    return Measurement(4.0 * max(stds), (4.0 * low, 4.0 * high), evidence, "chi-square, per target")


@dataclass(frozen=True)
class Drift:
    """Drift while standing still."""

    speed_nm_per_min: Measurement
    velocity_nm_per_min: np.ndarray | None
    """(x, y) in nm/min, or None."""


def drift(times_s: list[np.ndarray], positions_nm: list[np.ndarray]) -> Drift:
    """Common drift velocity (x, y) in nm/min of several dwell runs, and its speed.

    Each run has its own offset; the velocity is the pooled least-squares slope. The
    speed's interval is the vector's length -+ the radius of its 95 % confidence
    circle (residual scatter pooled over x and y).

    Parameters
    ----------
    times_s : list of ndarray, (k,)
        Frame times of each run.
    positions_nm : list of ndarray, (k, 2)
        Measured image-content positions (stage coordinates, nm) of each run; NaN
        rows are left out.

    Returns
    -------
    Drift
    """
    num = np.zeros(2)
    den = 0.0
    centred = []
    frames = 0
    span = 0.0
    for t, p in zip(times_s, positions_nm):
        t = np.asarray(t, dtype=float)
        p = np.asarray(p, dtype=float).reshape(-1, 2)
        ok = np.all(np.isfinite(p), axis=1)
        if ok.sum() < 2:
            continue
        tc = t[ok] - t[ok].mean()
        pc = p[ok] - p[ok].mean(axis=0)
        num += tc @ pc
        den += float(tc @ tc)
        centred.append((tc, pc))
        frames += int(ok.sum())
        span += float(t[ok].max() - t[ok].min())
    evidence = {"frames": frames, "span_s": round(span, 3), "runs": len(centred)}
    need_frames, need_span = MIN_EVIDENCE["drift_frames"], MIN_EVIDENCE["drift_span_s"]
    if frames < need_frames or span < need_span or den == 0:
        return Drift(not_measured(f"needs >= {need_frames} registered frames without a move, spanning >= "
                                  f"{need_span:g} s; the session has {frames} spanning {span:.0f} s", evidence), None)
    velocity = num / den  # nm/s
    residual = sum(float(np.sum((pc - np.outer(tc, velocity)) ** 2)) for tc, pc in centred)
    dof = 2 * (frames - len(centred) - 1)
    speed = float(np.hypot(*velocity)) * 60.0
    if dof <= 0:
        return Drift(not_measured(f"{frames} frames in {len(centred)} runs leave no degree of freedom for "
                                  f"the interval", evidence), velocity * 60.0)
    se = np.sqrt(residual / dof / den) * 60.0
    ci = intervals.magnitude_interval(velocity * 60.0, se, dof)
    return Drift(Measurement(speed, ci, evidence, "t, confidence circle"), velocity * 60.0)


def actual_positions_nm(start_nm: np.ndarray, n_frames: int, steps: Steps) -> np.ndarray:
    """Absolute actual (x, y) of every frame by chaining the measured steps.

    Frame 0 is taken to be where it was sent (its target). A frame after a step that
    could not be measured, and every frame after it, is NaN.
    """
    positions = np.full((n_frames, 2), np.nan)
    positions[0] = start_nm
    by_frame = {int(f): a for f, a in zip(steps.frame, steps.actual_nm)}
    for i in range(1, n_frames):
        step = by_frame.get(i)
        positions[i] = positions[i - 1] + step if step is not None else np.nan
    return positions


@dataclass(frozen=True)
class TiltMetrics:
    """How the specimen moves sideways when one tilt axis turns."""

    shift: Measurement
    """Image shift per degree of tilt (nm/deg): the specimen's distance from the tilt
    axis (eucentric height error) times pi / 180."""
    backlash: Measurement
    """Reversal-dependent lost tilt (deg), from the lost sideways motion."""
    direction: tuple[float, float] | None
    """Unit vector (x, y) of the sideways motion for increasing tilt."""
    steps: int

    @property
    def shift_nm_per_deg(self) -> float | None:
        return self.shift.value

    @property
    def backlash_deg(self) -> float | None:
        return self.backlash.value


MIN_TILT_SHIFT_NM_PER_DEG = 0.5
"""Below this image shift per degree the tilt backlash cannot be told from noise."""


def _tilt_slope(theta: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return shift.T @ theta / float(theta @ theta)


def _tilt_backlash(theta, shift, reversal, plain) -> float | None:
    slope = _tilt_slope(theta[plain], shift[plain])
    magnitude = float(np.hypot(*slope))
    if magnitude == 0:
        return None
    lost = np.abs(theta) * magnitude - np.sign(theta) * (shift @ (slope / magnitude))
    return float((lost[reversal].mean() - lost[plain].mean()) / magnitude)


def tilt_response(tilt_deg, actual_nm, kind) -> TiltMetrics:
    """Image shift per degree and tilt backlash of one tilt axis.

    Over plain tilt steps the sideways displacement is regressed on the tilt change
    (through the origin): ``s = sum(dA * dtheta) / sum(dtheta**2)`` (nm/deg, a
    vector); its length's interval is the length -+ the radius of the 95 %
    confidence circle. Projected on ``s``, the lost motion of a step is
    ``L = |dtheta| |s| - sign(dtheta) dA . s / |s|`` and the tilt backlash is
    ``(mean L(reversal) - mean L(plain)) / |s|`` (bootstrap interval over the steps).

    Parameters
    ----------
    tilt_deg : array_like, (n,)
        Tilt change of each step along this axis, degrees.
    actual_nm : array_like, (n, 2)
        Measured sideways displacement (x, y) of each step, nm; NaN rows left out.
    kind : array_like of str, (n,)
        ``"plain"``, ``"reversal"`` or other (left out).

    Returns
    -------
    TiltMetrics
        The backlash is not measured without enough reversals or when the shift per
        degree is below :data:`MIN_TILT_SHIFT_NM_PER_DEG` (a eucentric specimen shows
        no tilt).
    """
    theta = np.asarray(tilt_deg, dtype=float)
    shift = np.asarray(actual_nm, dtype=float).reshape(-1, 2)
    kind = np.asarray(kind)
    valid = np.isfinite(theta) & np.all(np.isfinite(shift), axis=1)
    plain = np.flatnonzero(valid & (kind == "plain"))
    reversal = np.flatnonzero(valid & (kind == "reversal"))
    evidence = {"reversal_steps": int(len(reversal)), "plain_steps": int(len(plain))}
    noun = "registered tilt steps"
    short = _shortfall(evidence, {"plain_steps": MIN_EVIDENCE["tilt_plain_steps"]}, noun)
    if short or float(theta[plain] @ theta[plain]) == 0:
        missing = not_measured(short or "every plain tilt step is 0", evidence)
        return TiltMetrics(missing, missing, None, int(valid.sum()))
    slope = _tilt_slope(theta[plain], shift[plain])
    magnitude = float(np.hypot(*slope))
    residual = shift[plain] - np.outer(theta[plain], slope)
    dof = 2 * (len(plain) - 1)
    se = float(np.sqrt(np.sum(residual ** 2) / dof / float(theta[plain] @ theta[plain])))
    shift_m = Measurement(magnitude, intervals.magnitude_interval(slope, se, dof),
                          {"plain_steps": evidence["plain_steps"]}, "t, confidence circle")
    direction = None if magnitude == 0 else (float(slope[0] / magnitude), float(slope[1] / magnitude))
    short = _shortfall(evidence, {"reversal_steps": MIN_EVIDENCE["tilt_reversal_steps"],
                                  "plain_steps": MIN_EVIDENCE["tilt_plain_steps"]}, noun)
    if short:
        backlash = not_measured(short, evidence)
    elif magnitude < MIN_TILT_SHIFT_NM_PER_DEG:
        backlash = not_measured(f"the specimen is near the eucentric height ({magnitude:.2f} nm/deg < "
                                f"{MIN_TILT_SHIFT_NM_PER_DEG} nm/deg): the tilt moves the image too little to "
                                f"measure the tilt backlash by", evidence)
    else:
        def statistic(idx):
            picked = np.concatenate(idx)
            is_reversal = np.arange(len(picked)) < len(idx[0])
            return _tilt_backlash(theta[picked], shift[picked], is_reversal, ~is_reversal)

        value = _tilt_backlash(theta, shift, np.isin(np.arange(len(theta)), reversal),
                               np.isin(np.arange(len(theta)), plain))
        backlash = Measurement(value, intervals.bootstrap_interval(statistic, [reversal, plain]), evidence,
                               "bootstrap")
    return TiltMetrics(shift_m, backlash, direction, int(valid.sum()))


# --------------------------------------------------------------------------- montage

MONTAGE_METRICS = ("error_rms_nm", "reported_error_rms_nm", "growth_nm_per_piece", "neighbour_error_max_nm",
                   "unplaced_pieces")
"""The montage metrics, ``montage.<name>`` in ``Analysis.metrics``."""


def _rms_measurement(error_nm: np.ndarray, noun: str) -> Measurement:
    """RMS length of the errors of the pieces besides the first, bootstrapped over the pieces."""
    size = np.hypot(error_nm[1:, 0], error_nm[1:, 1])
    size = size[np.isfinite(size)]
    evidence = {"pieces": int(len(size))}
    short = _shortfall(evidence, {"pieces": MIN_EVIDENCE["montage_pieces"]}, noun)
    if short:
        return not_measured(short, evidence)
    ci = intervals.bootstrap_interval(lambda idx: float(np.sqrt(np.mean(size[idx[0]] ** 2))), [np.arange(len(size))])
    return Measurement(float(np.sqrt(np.mean(size ** 2))), ci, evidence, "bootstrap")


def montage_metrics(result: montage.Montage | None, why_not: str = "") -> dict[str, Measurement]:
    """The montage metrics of a solved montage (``montage.<name>`` of :data:`MONTAGE_METRICS`).

    - ``error_rms_nm``: RMS over the pieces besides the first of the length of their
      error against the target (relative to the first piece), bootstrap interval over
      the pieces; needs every piece's target.
    - ``reported_error_rms_nm``: the same against the readback.
    - ``growth_nm_per_piece``: slope of the error's length against the commanded
      position (the target; the readback where there is none) over the acquisition
      order, t interval.
    - ``neighbour_error_max_nm``: the largest difference between the errors of two
      raster neighbours (against the commanded positions): beyond the overlap width
      their fields no longer overlap and stitching fails there.
    - ``unplaced_pieces``: how many pieces no registered pair connects to the first
      piece (the overlap graph is disconnected): the montage cannot stitch them. A pair
      whose stage displacement is unknown (an uncalibrated image-shift change) still
      ties its pieces together; the metrics that need the displacement say so.

    Parameters
    ----------
    result : Montage or None
        None when the session has no montage it can analyse (`why_not` says why).
    why_not : str
        The reason given for every metric when `result` is None.
    """
    names = [f"montage.{name}" for name in MONTAGE_METRICS]
    if result is None:
        return {name: not_measured(why_not or "the session has no montage") for name in names}
    unknown = ""
    if result.stage_unknown:
        unknown = (f"; {len(result.stage_unknown)} registered pair(s) of pieces have no known stage displacement "
                   f"({next(iter(result.stage_unknown.values()))})")
    if not result.oriented:
        why = "needs the stage-to-image orientation, which is unknown" + unknown
        return {name: not_measured(why) for name in names}
    noun = "pieces besides the first placed by registered pairs"
    metrics = {}
    if result.has_target:
        metrics["montage.error_rms_nm"] = _rms_measurement(result.error_nm, noun)
    else:
        metrics["montage.error_rms_nm"] = not_measured(
            "needs the target of every piece; the recording has none (target null: the acquiring tool recorded "
            "the readback only)")
    metrics["montage.reported_error_rms_nm"] = _rms_measurement(result.reported_error_nm, noun)
    later = result.commanded_error_nm.copy()
    later[0] = np.nan  # the first piece's error is 0 by definition
    known = int(np.sum(np.all(np.isfinite(later), axis=1)))
    evidence = {"pieces": known}
    short = _shortfall(evidence, {"pieces": MIN_EVIDENCE["montage_pieces"]}, noun)
    if short:
        metrics["montage.growth_nm_per_piece"] = not_measured(short, evidence)
    else:
        slope, se, dof = montage.error_growth(result.order, later)
        ci = intervals.t_interval(slope, se, dof) if dof > 0 and np.isfinite(se) else None
        metrics["montage.growth_nm_per_piece"] = Measurement(slope, ci, evidence, "t" if ci else "")
    metrics["montage.neighbour_error_max_nm"] = _neighbour_measurement(result)
    if unknown:
        for name in ("montage.error_rms_nm", "montage.reported_error_rms_nm", "montage.growth_nm_per_piece",
                     "montage.neighbour_error_max_nm"):
            if not metrics[name].measured and "target null" not in metrics[name].reason:
                metrics[name] = dataclasses.replace(metrics[name], reason=metrics[name].reason + unknown)
    unplaced = float(len(result.unplaced()))
    metrics["montage.unplaced_pieces"] = Measurement(unplaced, (unplaced, unplaced),
                                                     {"pieces": int(len(result.frames))}, "count")
    return metrics


def _neighbour_measurement(result: montage.Montage) -> Measurement:
    """The largest misplacement of two raster neighbours, with the interval of the largest.

    Each neighbour pair's misplacement is the length of the difference of two solved
    errors; its interval is that of the length of a 2-D vector (the 95 % confidence
    circle, t with the least-squares degrees of freedom), with the standard errors of
    the two pieces combined as if independent (the shared path makes them positively
    correlated, so this is wider than need be). The interval of the largest is
    ``[max low, max high]``; none without redundancy in the overlap graph (a tree).
    """
    pairs, size = result.neighbour_errors()
    known = np.isfinite(size)
    evidence = {"neighbour_pairs": int(known.sum())}
    short = _shortfall(evidence, {"neighbour_pairs": MIN_EVIDENCE["montage_neighbour_pairs"]},
                       "raster neighbours both placed by registered pairs")
    if short:
        return not_measured(short, evidence)
    solution = result.solution
    ci = None
    if solution.sigma is not None and solution.dof > 0:
        bounds = []
        for (a, b), length in zip(pairs[known], size[known]):
            difference = result.commanded_error_nm[b] - result.commanded_error_nm[a]
            bounds.append(intervals.magnitude_interval(difference, float(np.hypot(result.sd_nm[a], result.sd_nm[b])),
                                                       solution.dof))
        bounds = np.array(bounds)
        ci = (float(bounds[:, 0].max()), float(bounds[:, 1].max()))
    return Measurement(float(size[known].max()), ci, evidence, "least-squares residuals" if ci else "")


# --------------------------------------------------------------------------- the whole chain


@dataclass
class AxisMetrics:
    """results-v1 ``axes.<axis>``: the values (None where not measured)."""

    backlash_nm: float | None
    scale_error: float | None
    step_scatter_nm: float | None
    reported_backlash_nm: float | None
    reported_scale_error: float | None
    repeatability_nm: float | None


@dataclass
class CouplingValues:
    """results-v1 ``coupling``: the values (None where not measured)."""

    x_to_y: float | None
    y_to_x: float | None
    skew_deg: float | None


@dataclass
class PairMetrics:
    """RMS disagreement and per-axis lost motion of one position pair."""

    rms: Measurement
    axes: dict[str, LostMotion]

    @property
    def rms_nm(self) -> float | None:
        return self.rms.value


@dataclass(frozen=True)
class Transform:
    """The stage-to-image transform the analysis used, and where it came from.

    Attributes
    ----------
    value : StageToImage
        Identity when unknown (then actual displacements are in image axes).
    status : {"calibrated", "estimated", "unknown"}
    rotation_ci95 : (float, float) or None
        Bootstrap interval of an estimated rotation (deg).
    reason : str
        Why it is unknown ("" otherwise).
    """

    value: StageToImage
    status: str
    rotation_ci95: tuple[float, float] | None = None
    reason: str = ""


def stage_to_image_of(session: Session, registrations: list[PairRegistration],
                      image_shift: dict | None = None) -> Transform:
    """The session's calibration, or the rotation and flip estimated from its moves.

    Estimated from the registered translation steps (commanded displacements, plus the
    change of the image shift, which moves the image alike: `image_shift` as in
    :func:`build_steps`) when the session gives none; unknown (identity, with the
    reason) when they are too few or all parallel. The interval of an estimated
    rotation is a bootstrap over the steps.
    """
    given = session.stage_to_image
    if given is not None:
        return Transform(given, "calibrated")
    commanded = commanded_nm(session)
    deltas = np.array([commanded[r.moving] - commanded[r.reference] for r in registrations]).reshape(-1, 5)
    changes = np.array([(image_shift or {}).get((r.reference, r.moving), (np.zeros(2), ""))[0]
                        for r in registrations], dtype=float).reshape(-1, 2)
    deltas[:, :2] += changes  # NaN where the change is unknown: such a pair is not used
    # a move of the image by image shift alone (a montage by image shift) orients the image as well
    lateral = np.all(deltas[:, 2:] == 0, axis=1) & np.any(deltas[:, :2] != 0, axis=1)
    shifts = np.array([r.result.shift_px if r.result.ok else (np.nan, np.nan) for r in registrations],
                      dtype=float).reshape(-1, 2)
    usable = np.flatnonzero(lateral & np.all(np.isfinite(shifts), axis=1) & np.all(np.isfinite(changes), axis=1))
    try:
        estimate = estimate_stage_to_image(deltas[usable, :2], shifts[usable], session.pixel_size_nm)
    except ValueError as exc:
        return Transform(StageToImage(0.0, False), "unknown",
                         reason=f"no [stage_to_image] calibration, and {exc}")

    def statistic(idx):
        try:
            picked = usable[idx[0]]
            rotation = estimate_stage_to_image(deltas[picked, :2], shifts[picked], session.pixel_size_nm).rotation_deg
        except ValueError:
            return None
        return (rotation - estimate.rotation_deg + 180.0) % 360.0 - 180.0

    low, high = intervals.bootstrap_interval(statistic, [np.arange(len(usable))], resamples=500)
    return Transform(estimate, "estimated", (estimate.rotation_deg + low, estimate.rotation_deg + high))


def image_shift_summary(shift_nm: np.ndarray, shift_raw: np.ndarray, image_shift: dict, registered) -> dict:
    """What the session's image shift was and what the analysis did with it.

    Parameters
    ----------
    shift_nm, shift_raw : ndarray, (n_frames, 2)
        As for :func:`image_shift_change_nm`.
    image_shift : dict
        ``(reference, moving) -> (change_nm, reason)`` of every registered pair.
    registered : dict
        ``(reference, moving) -> bool``: whether the pair was registered.

    Returns
    -------
    dict
        ``recorded``: ``"nm"``, ``"raw"`` (the acquiring tool's units, not calibrated),
        ``"nm and raw"`` or ``"none"``; ``frames_with_image_shift``; ``subtracted``:
        for each registered pair whose image shift changed, ``frames`` and
        ``change_nm`` (subtracted from its registered motion); ``not_measured``: the
        registered pairs whose stage motion is unknown because of the image shift, with
        the reason (``"frames 1->2: ..."``).
    """
    has_nm = np.isfinite(shift_nm).all(axis=1)
    has_raw = np.isfinite(shift_raw).all(axis=1)
    recorded = {(True, True): "nm and raw", (True, False): "nm", (False, True): "raw",
                (False, False): "none"}[(bool(has_nm.any()), bool(has_raw.any()))]
    subtracted, unknown = [], []
    for (ref, mov), (change, reason) in sorted(image_shift.items(), key=lambda item: (item[0][1], item[0][0])):
        if not registered.get((ref, mov), False):
            continue
        if reason:
            unknown.append(f"frames {ref}->{mov}: {reason}")
        elif np.any(change != 0):
            subtracted.append({"frames": [ref, mov], "change_nm": [float(change[0]), float(change[1])]})
    return {"recorded": recorded, "frames_with_image_shift": int(np.sum(has_nm | has_raw)),
            "subtracted": subtracted, "not_measured": unknown}


def readback_quanta(reported_nm: np.ndarray, targets_nm: np.ndarray) -> dict[str, readback.Quantum]:
    """The quantum of the x and y readback (:func:`stage_acceptance.readback.readback_quantum_nm`).

    From the steps between consecutive readings, with the resolution of all readings
    (:func:`~stage_acceptance.readback.readback_resolution_nm`) as the tolerance. A
    readback step equal to its commanded step (within that resolution) is left out: it
    shows the command (round targets are multiples of the step), not a grid of the
    readback's own; a readback that always equals its target has no quantum to tell.

    Parameters
    ----------
    reported_nm, targets_nm : ndarray, (n_frames, 5)
        Reported and target positions (NaN rows where there is no target).
    """
    xy = np.asarray(reported_nm, dtype=float)[:, :2]
    commanded = np.asarray(targets_nm, dtype=float)[:, :2]
    resolution = readback.readback_resolution_nm(xy)
    quanta = {}
    for k, name in enumerate(AXIS_NAMES):
        steps, ordered = np.diff(xy[:, k]), np.diff(commanded[:, k])
        as_commanded = np.isfinite(ordered) & (np.abs(steps - ordered) <= resolution) & (np.abs(steps) > resolution)
        quantum = readback.readback_quantum_nm(steps[~as_commanded], resolution)
        left_out = int(as_commanded.sum())
        if left_out:
            note = (f"; {left_out} readback step(s) equal to the commanded step were left out (they show the "
                    f"command, not the readback's grid)")
            quantum = dataclasses.replace(quantum, reason=quantum.reason + note if quantum.reason else "",
                                          evidence={**quantum.evidence, "as_commanded": left_out})
        quanta[name] = quantum
    return quanta


@dataclass
class Analysis:
    """Everything the analysis measured on one session.

    ``metrics`` holds every checked metric by its dotted name (``x.backlash_nm``,
    ``coupling.skew_deg``, ``drift_nm_per_min``, ``tilt.alpha.backlash_deg``, ...);
    ``axes``, ``coupling`` and ``drift_nm_per_min`` are views of their values.
    """

    session: Session
    steps: Steps
    stage_to_image: Transform
    pairs: dict[str, PairMetrics]
    metrics: dict[str, Measurement]
    drift_velocity_nm_per_min: np.ndarray | None
    actual_positions_nm: np.ndarray
    revisits: dict[str, list[dict]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    tilt: dict[str, TiltMetrics] = field(default_factory=dict)
    image_shift: dict = field(default_factory=dict)
    """:func:`image_shift_summary` of the session."""
    across_tilt: list[tuple[int, int]] = field(default_factory=list)
    """Pairs across a tilt change, registered on the central region of the field."""
    readback_quantum: dict[str, readback.Quantum] = field(default_factory=dict)
    """The readback's quantum per axis (informational; no tolerance judges it)."""
    montage: montage.Montage | None = None
    """The session's montage, solved (None without one; ``montage_problem`` says why
    when frames carry ``montage_piece`` but cannot be analysed)."""
    montage_problem: str = ""

    @property
    def frames(self) -> int:
        return len(self.session.frames)

    @property
    def transform(self) -> StageToImage:
        return self.stage_to_image.value

    @property
    def transform_estimated(self) -> bool:
        return self.stage_to_image.status == "estimated"

    @property
    def transform_known(self) -> bool:
        return self.stage_to_image.status != "unknown"

    @property
    def axes(self) -> dict[str, AxisMetrics]:
        return {axis: AxisMetrics(**{name: self.metrics[f"{axis}.{name}"].value
                                     for name in AxisMetrics.__dataclass_fields__})
                for axis in AXIS_NAMES}

    @property
    def coupling(self) -> CouplingValues:
        return CouplingValues(**{name: self.metrics[f"coupling.{name}"].value
                                 for name in CouplingValues.__dataclass_fields__})

    @property
    def drift_nm_per_min(self) -> float | None:
        return self.metrics["drift_nm_per_min"].value


def analyse(session: Session, *, jobs: int | None = None, progress: Callable[[str], None] | None = None,
            pairs_progress: Callable[[int, int], None] | None = None,
            prepare: Callable | None = None, register: Callable[..., Registration] | None = None) -> Analysis:
    """Register, classify and measure a whole session (results-v1 metrics).

    Every pair the metrics need (:func:`~stage_acceptance.registry.registration_plan`:
    consecutive frames, revisits of a target against its first visit, frames without
    a move against the first of their run) is registered once, each frame read and
    prepared once (:func:`~stage_acceptance.registry.register_all`).

    Parameters
    ----------
    session : Session
        A recorded session (live or replayed).
    jobs : int, optional
        Threads registering pairs at once (default: every core).
    progress : callable, optional
        Called with a short message at each stage of the analysis.
    pairs_progress : callable, optional
        ``pairs_progress(done, total)`` while the pairs are registered.
    prepare, register : callable, optional
        The registration (default: the paper's normalised cross-correlation,
        :mod:`stage_acceptance.registration`).

    Returns
    -------
    Analysis
        Every metric with its interval and evidence; one below :data:`MIN_EVIDENCE`
        is not measured and says why.
    """
    say = progress or (lambda message: None)
    plan = registration_plan(session)
    n = len(session.frames)
    revisit_pairs = sum(len(group) - 1 for groups in plan.revisits.values() for group in groups)
    dwell_pairs = sum(len(run) - 1 for run in plan.dwell)
    say(f"registering {len(plan.pairs)} frame pairs of {n} frames ({n - 1} consecutive, {revisit_pairs} revisits, "
        f"{dwell_pairs} without a move; each pair once)")
    shift_nm, shift_raw = session.image_shifts()
    image_shift = {pair: image_shift_change_nm(shift_nm, shift_raw, *pair) for pair in plan.pairs}
    across_tilt = tilt_pairs(session, plan.pairs)
    if central_region_shape(session.frame_shape) == tuple(session.frame_shape):
        across_tilt = set()  # a small frame is registered whole
    if across_tilt:
        say(f"{len(across_tilt)} pair(s) across a tilt change: registered on the central region of the field")
    results = register_all(session, plan.pairs, session.stage_to_image, jobs=jobs, progress=pairs_progress,
                           prepare=prepare, register=register,
                           image_shift_nm={pair: change for pair, (change, _) in image_shift.items()},
                           central=across_tilt)
    registrations = [PairRegistration(i - 1, i, results[(i - 1, i)]) for i in range(1, n)]
    s2i = stage_to_image_of(session, registrations, image_shift)
    if s2i.status == "estimated":
        low, high = s2i.rotation_ci95
        say(f"estimated stage-to-image rotation {s2i.value.rotation_deg:.2f} deg (95 % interval {low:.2f} to "
            f"{high:.2f}), flip_y {s2i.value.flip_y}")
    elif s2i.status == "unknown":
        say(f"stage-to-image rotation unknown: {s2i.reason}")
    transform = s2i.value
    steps = build_steps(session, registrations, transform, image_shift)
    failed = [f"frames {ref}->{mov}: {result.reason}" for (ref, mov), result in results.items() if not result.ok]
    unoriented = f"needs the stage-to-image orientation, which is unknown: {s2i.reason}"
    untargeted = None
    if not np.any(np.all(np.isfinite(session.targets_nm()), axis=1)):
        untargeted = ("needs the commanded positions, which the recording does not have (target null in every "
                      "frame: the acquiring tool recorded the readback only); nothing is certified from the "
                      "readback alone")

    def stage_nm(pair, result) -> np.ndarray:
        """Actual stage displacement of a registered pair: image motion less the image-shift change."""
        if not result.ok:
            return np.full(2, np.nan)
        return image_px_to_stage_nm(result.shift_px, session.pixel_size_nm, transform) - image_shift[pair][0]

    pairs = {}
    for name, (ref_name, meas_name) in PAIRS.items():
        ref, meas = steps.displacement(ref_name), steps.displacement(meas_name)
        needs_image = "actual" in (ref_name, meas_name)
        counted = "registered " if needs_image else ""
        per_axis = {}
        for k, axis_name in enumerate(AXIS_NAMES):
            sel = steps.axis == k
            per_axis[axis_name] = lost_motion(ref[sel, k], meas[sel, k], steps.kind[sel],
                                              f"{counted}steps along {axis_name}")
        rms = pair_rms_nm(ref[steps.translation], meas[steps.translation], f"{counted}translation steps")
        if needs_image and s2i.status == "unknown":
            missing = not_measured(unoriented)
            per_axis = {axis_name: LostMotion(missing, missing, missing, 0, 0) for axis_name in AXIS_NAMES}
            rms = missing
        if "target" in (ref_name, meas_name) and untargeted:
            missing = not_measured(untargeted)
            per_axis = {axis_name: LostMotion(missing, missing, missing, 0, 0) for axis_name in AXIS_NAMES}
            rms = missing
        pairs[name] = PairMetrics(rms, per_axis)

    tilt = {}
    for k, tilt_name in enumerate(TILT_NAMES):
        sel = steps.tilt_axis == k
        if sel.any():
            tilt[tilt_name] = tilt_response(steps.tilt_deg[sel, k], steps.actual_nm[sel], steps.tilt_kind[sel])

    metrics: dict[str, Measurement] = {}
    revisits: dict[str, list[dict]] = {}
    for k, axis_name in enumerate(AXIS_NAMES):
        deviations = []
        records = []
        for group in plan.revisits[axis_name]:
            dev = [0.0]
            for other in group[1:]:
                dev.append(float(stage_nm((group[0], other), results[(group[0], other)])[k]))
            deviations.append(np.array(dev))
            records.append({"frames": group, "deviation_nm": dev})
        revisits[axis_name] = records
        ta, tr = pairs["target_actual"].axes[axis_name], pairs["target_reported"].axes[axis_name]
        metrics[f"{axis_name}.backlash_nm"] = ta.backlash_nm
        metrics[f"{axis_name}.scale_error"] = ta.scale_error
        metrics[f"{axis_name}.step_scatter_nm"] = ta.step_scatter_nm
        metrics[f"{axis_name}.reported_backlash_nm"] = tr.backlash_nm
        metrics[f"{axis_name}.reported_scale_error"] = tr.scale_error
        metrics[f"{axis_name}.repeatability_nm"] = (
            not_measured(untargeted) if untargeted else
            repeatability_nm(deviations) if s2i.status != "unknown" else not_measured(unoriented))

    if untargeted:
        axis_coupling = Coupling(not_measured(untargeted), not_measured(untargeted), not_measured(untargeted))
    elif s2i.status != "unknown":
        axis_coupling = coupling(steps.target_nm, steps.actual_nm, steps.axis)
    else:
        axis_coupling = Coupling(not_measured(unoriented), not_measured(unoriented), not_measured(unoriented))
    metrics["coupling.x_to_y"] = axis_coupling.x_to_y
    metrics["coupling.y_to_x"] = axis_coupling.y_to_x
    metrics["coupling.skew_deg"] = axis_coupling.skew_deg

    times, positions = [], []
    for run in plan.dwell:
        pos = [np.zeros(2)]
        for other in run[1:]:
            pos.append(stage_nm((run[0], other), results[(run[0], other)]))
        times.append(session.times_s()[run])
        positions.append(np.array(pos))
    drift_result = drift(times, positions)
    metrics["drift_nm_per_min"] = drift_result.speed_nm_per_min
    if untargeted and not drift_result.speed_nm_per_min.measured:
        metrics["drift_nm_per_min"] = not_measured(
            "frames without a move in between are told by their commanded positions, which the recording does not "
            "have (target null in every frame)")

    for tilt_name in TILT_NAMES:
        metrics_of = tilt.get(tilt_name)
        absent = not_measured(f"the session has no {tilt_name} tilt steps")
        metrics[f"tilt.{tilt_name}.shift_nm_per_deg"] = absent if metrics_of is None else metrics_of.shift
        metrics[f"tilt.{tilt_name}.backlash_deg"] = absent if metrics_of is None else metrics_of.backlash

    grid, montage_problem = montage.piece_grid(session)
    solved = None
    registered = {pair: result.ok for pair, result in results.items()}
    if grid is not None:
        solved, montage_failed, montage_shift, montage_found = _solve_montage(
            session, grid, results, s2i, say, jobs=jobs, progress=pairs_progress, prepare=prepare, register=register)
        failed += montage_failed
        image_shift = {**montage_shift, **image_shift}
        registered.update({pair: result.ok for pair, result in montage_found.items()})
    metrics.update(montage_metrics(solved, montage_problem))

    start = commanded_nm(session)[0, :2]
    return Analysis(
        session=session,
        steps=steps,
        stage_to_image=s2i,
        pairs=pairs,
        metrics=metrics,
        drift_velocity_nm_per_min=drift_result.velocity_nm_per_min,
        actual_positions_nm=actual_positions_nm(start, len(session.frames), steps),
        revisits=revisits,
        failed=failed,
        tilt=tilt,
        image_shift=image_shift_summary(shift_nm, shift_raw, image_shift, registered),
        readback_quantum=readback_quanta(session.reported_nm(), session.targets_nm()),
        across_tilt=sorted(across_tilt, key=lambda pair: (pair[1], pair[0])),
        montage=solved,
        montage_problem=montage_problem,
    )


def _solve_montage(session: Session, grid: montage.MontageGrid, results: dict, s2i: Transform, say, *,
                   jobs, progress, prepare, register) -> tuple[montage.Montage, list[str], dict, dict]:
    """Register the pairs of overlapping montage pieces the plan has not, and solve the montage.

    Pairs registered before (consecutive pieces) are used as they are, unless the
    transform was estimated after they were registered without a prior and they failed:
    those are registered again with the estimated transform's prior, as are the new
    pairs. The change of the image shift between two pieces moves the image without
    moving the stage: it is in each pair's prior and is subtracted from its registered
    motion (:func:`image_shift_change_nm`, as for the lateral metrics); where it is
    unknown the pair's stage displacement is unknown, with the reason. Each piece's field
    is placed by its commanded position plus its image shift.

    Returns
    -------
    montage : Montage
    failed : list of str
        The new pairs that could not be registered.
    image_shift : dict
        ``(reference, moving) -> (change_nm, reason)`` of every montage pair.
    registered : dict
        ``(reference, moving) -> Registration`` of every montage pair.
    """
    known = s2i.status != "unknown"
    transform = s2i.value
    commanded = commanded_nm(session)[grid.frames, :2]
    shift_nm, shift_raw = session.image_shifts()
    first = int(grid.frames[0])
    piece_shift = np.array([image_shift_change_nm(shift_nm, shift_raw, first, int(frame))[0]
                            for frame in grid.frames]).reshape(-1, 2)
    field_px = montage.expected_field_px(commanded + piece_shift, session.pixel_size_nm, transform)
    pairs = montage.overlap_pairs(grid.column, grid.row, field_px, session.frame_shape)
    frame_pairs = [(int(grid.frames[a]), int(grid.frames[b])) for a, b in pairs]
    changes = {pair: image_shift_change_nm(shift_nm, shift_raw, *pair) for pair in frame_pairs}
    again = s2i.status == "estimated"
    todo = [pair for pair in frame_pairs if pair not in results or (again and not results[pair].ok)]
    found = {pair: results[pair] for pair in frame_pairs if pair in results}
    if todo:
        say(f"montage of {len(grid)} pieces: registering {len(todo)} more pair(s) of overlapping pieces "
            f"({len(frame_pairs)} in all)")
        found.update(register_all(session, todo, transform if known else None, jobs=jobs, progress=progress,
                                  prepare=prepare, register=register,
                                  image_shift_nm={pair: changes[pair][0] for pair in todo}))
    registrations = [found[pair] for pair in frame_pairs]
    change = np.array([changes[pair][0] for pair in frame_pairs], dtype=float).reshape(-1, 2)
    measured = montage.pair_displacements_nm(registrations, session.pixel_size_nm, transform, change)
    unknown = {k: changes[pair][1] for k, pair in enumerate(frame_pairs) if changes[pair][1] and found[pair].ok}
    solved = montage.analyse_montage(session, grid, pairs, registrations, measured, transform, oriented=known,
                                     image_shift_nm=piece_shift, stage_unknown=unknown)
    failed = [f"frames {ref}->{mov} (montage pieces): {found[(ref, mov)].reason}" for ref, mov in todo
              if (ref, mov) not in results and not found[(ref, mov)].ok]
    if solved.moved_by in ("image shift", "stage and image shift"):
        say(f"montage moved by {solved.moved_by}: the image-shift change of each pair is subtracted from its "
            f"registered motion" + (f"; {len(unknown)} pair(s) of unknown image-shift change" if unknown else ""))
    return solved, failed, changes, {pair: found[pair] for pair in frame_pairs}

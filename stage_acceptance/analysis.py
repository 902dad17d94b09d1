"""Steps and every metric of results-v1, from a recorded session.

The flow is: register consecutive frames (:func:`register_steps`), estimate the
stage-to-image transform if the session does not give it
(:func:`estimate_stage_to_image`), turn image shifts into actual stage displacements,
classify the steps (:func:`classify_steps`), then compute the metrics with plain
functions on numpy arrays. :func:`analyse` runs the whole chain. No pass/fail
decision is made here (that is :mod:`stage_acceptance.certification`).

Conventions: displacement arrays are ``(n_steps, 2)`` = ``(x, y)`` in nm in stage
coordinates; a metric that cannot be computed from the session is ``None``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .geometry import StageToImage, image_px_to_stage_nm, stage_nm_to_image_px
from .registration import Registration, register
from .session import Session

AXIS_NAMES = ("x", "y")
TILT_NAMES = ("alpha", "beta")
ALONG_TOLERANCE = 0.10
"""A step is along axis a when its other target components are at most 10 % of it."""

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
        Displacements ``(x, y)`` in nm; ``actual_nm`` is NaN where the pair could not
        be registered.
    shift_px : ndarray, (n, 2)
        Measured image displacement ``(column, row)``; NaN where not registered.
    confidence : ndarray, (n,)
        Registration confidence.
    registered : ndarray of bool, (n,)
    reason : list of str
        Why a pair was not registered ("" when it was).
    axis : ndarray of int, (n,)
        0 for a step along x, 1 along y, -1 for neither.
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
    """

    frame: np.ndarray
    target_nm: np.ndarray
    reported_nm: np.ndarray
    actual_nm: np.ndarray
    shift_px: np.ndarray
    confidence: np.ndarray
    registered: np.ndarray
    reason: list
    axis: np.ndarray
    direction: np.ndarray
    kind: np.ndarray
    protocol: list
    tilt_deg: np.ndarray
    tilt_axis: np.ndarray
    tilt_kind: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    def displacement(self, which: str) -> np.ndarray:
        """``"target"``, ``"reported"`` or ``"actual"`` displacements, (n, 2) nm."""
        return {"target": self.target_nm, "reported": self.reported_nm, "actual": self.actual_nm}[which]


REGISTRATION_WORKERS = min(4, os.cpu_count() or 1)
"""Threads that register frame pairs at once (2 cores: about 1.5 times faster)."""


@dataclass(frozen=True)
class PairRegistration:
    """Registration of frame `moving` against an earlier frame `reference`."""

    reference: int
    moving: int
    result: Registration


def predicted_shift_px(delta_nm: np.ndarray, pixel_size_nm: float, transform: StageToImage | None) -> np.ndarray | None:
    """The image displacement a stage move should cause, or None without a transform."""
    if transform is None:
        return None
    return stage_nm_to_image_px(delta_nm, pixel_size_nm, transform)


def register_pairs(session: Session, pairs, transform: StageToImage | None,
                   registrar: Callable[..., Registration] = register,
                   workers: int | None = None) -> list[PairRegistration]:
    """Register frame pairs ``(reference, moving)`` of a session.

    The reported displacement, mapped into the image with `transform`, is passed to
    the registration as a prior when the transform is known. Pairs are registered in
    parallel threads (the FFTs release the GIL); the result does not depend on
    `workers`.

    Parameters
    ----------
    session : Session
    pairs : iterable of (int, int)
        Frame indices ``(reference, moving)``.
    transform : StageToImage or None
        Stage-to-image transform, if known.
    registrar : callable
        The registration function (default :func:`stage_acceptance.registration.register`).
    workers : int, optional
        Threads to use; default :data:`REGISTRATION_WORKERS`.

    Returns
    -------
    list of PairRegistration
        In the order of `pairs`.
    """
    pairs = list(pairs)
    reported = session.reported_nm()[:, :2]
    images = {index: session.image(index) for pair in pairs for index in pair}  # read errors surface here

    def one(pair):
        ref, mov = pair
        prior = predicted_shift_px(reported[mov] - reported[ref], session.pixel_size_nm, transform)
        return PairRegistration(ref, mov, registrar(images[ref], images[mov], prior_shift_px=prior))

    workers = REGISTRATION_WORKERS if workers is None else int(workers)
    if workers <= 1 or len(pairs) < 2:
        return [one(pair) for pair in pairs]
    with ThreadPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
        return list(pool.map(one, pairs))


def register_steps(session: Session, transform: StageToImage | None,
                   registrar: Callable[..., Registration] = register) -> list[PairRegistration]:
    """Register every consecutive frame pair ``i-1 -> i`` of a session."""
    return register_pairs(session, [(i - 1, i) for i in range(1, len(session.frames))], transform, registrar)


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


def step_axis(delta: np.ndarray, tilt_delta: np.ndarray | None = None) -> tuple[int, int]:
    """Axis (0 = x, 1 = y, -1 = none) and direction (+1/-1/0) of one target step.

    Parameters
    ----------
    delta : ndarray, (2,) or (3,)
        Target displacement in nm (x, y[, z]).
    tilt_delta : ndarray, optional
        Change of alpha and beta (deg); a step that tilts is along no lateral axis.
    """
    delta = np.asarray(delta, dtype=float)
    if tilt_delta is not None and np.any(np.abs(tilt_delta) > 0):
        return -1, 0
    magnitude = np.abs(delta)
    a = int(np.argmax(magnitude[:2]))
    if magnitude[a] == 0:
        return -1, 0
    others = np.delete(magnitude, a)
    if np.all(others <= ALONG_TOLERANCE * magnitude[a]):
        return a, int(np.sign(delta[a]))
    return -1, 0


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


def build_steps(session: Session, registrations: list[PairRegistration], transform: StageToImage) -> Steps:
    """Assemble the steps of a session from its consecutive-pair registrations.

    A consecutive pair is a step when its images overlap by the reported move, or
    when the registration found an overlap.
    """
    targets = session.targets_nm()
    reported = session.reported_nm()
    frame_shape = session.image(0).shape
    kept = [r for r in registrations
            if r.result.ok or images_overlap(reported[r.moving, :2] - reported[r.moving - 1, :2],
                                             session.pixel_size_nm, frame_shape, transform)]
    if not kept:
        raise ValueError(f"{session.directory}: no two consecutive frames overlap; nothing to analyse")
    frame = np.array([r.moving for r in kept], dtype=int)
    d_t = targets[frame] - targets[frame - 1]
    d_r = reported[frame] - reported[frame - 1]
    registered = np.array([r.result.ok for r in kept], dtype=bool)
    shift = np.array([r.result.shift_px if r.result.ok else (np.nan, np.nan) for r in kept], dtype=float)
    axis, direction = (np.array(v, dtype=int) for v in zip(*(step_axis(t[:3], t[3:]) for t in d_t)))
    tilt = d_t[:, 3:]
    lateral_still = np.all(d_t[:, :2] == 0, axis=1)
    tilt_axis = np.full(len(kept), -1, dtype=int)
    tilt_axis[lateral_still & (tilt[:, 0] != 0) & (tilt[:, 1] == 0)] = 0
    tilt_axis[lateral_still & (tilt[:, 1] != 0) & (tilt[:, 0] == 0)] = 1
    tilt_direction = np.where(tilt_axis >= 0, np.sign(tilt[np.arange(len(kept)), np.clip(tilt_axis, 0, 1)]), 0)
    return Steps(
        frame=frame,
        target_nm=d_t[:, :2],
        reported_nm=d_r[:, :2],
        actual_nm=image_px_to_stage_nm(shift, session.pixel_size_nm, transform),
        shift_px=shift,
        confidence=np.array([r.result.confidence for r in kept], dtype=float),
        registered=registered,
        reason=[r.result.reason for r in kept],
        axis=axis,
        direction=direction,
        kind=classify_steps(axis, direction),
        protocol=[session.frames[i].protocol for i in frame],
        tilt_deg=tilt,
        tilt_axis=tilt_axis,
        tilt_kind=classify_steps(tilt_axis, tilt_direction.astype(int)),
    )


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class LostMotion:
    """Lost-motion metrics of one axis for one (reference, measured) pair."""

    backlash_nm: float | None
    scale_error: float | None
    step_scatter_nm: float | None
    reversal_steps: int
    plain_steps: int


def lost_motion(reference_nm, measured_nm, kind) -> LostMotion:
    """Backlash, scale error and step scatter along one axis.

    With ``L = |ref| - sign(ref) * meas`` the lost motion of a step:
    ``backlash = mean L(reversal) - mean L(plain)``,
    ``scale_error = sum(meas * ref) / sum(ref**2) - 1`` over plain steps and
    ``step_scatter = std(meas - (1 + scale_error) * ref)`` over plain steps.

    Parameters
    ----------
    reference_nm, measured_nm : array_like, (n,)
        Axis components of the reference (e.g. target) and measured (e.g. actual)
        displacements of the steps along this axis, in nm. Non-finite entries are
        left out.
    kind : array_like of str, (n,)
        ``"reversal"``, ``"plain"`` or anything else (left out).

    Returns
    -------
    LostMotion
        ``None`` for a metric the steps cannot give (no plain step, no reversal,
        fewer than two plain steps for the scatter).
    """
    ref = np.asarray(reference_nm, dtype=float)
    meas = np.asarray(measured_nm, dtype=float)
    kind = np.asarray(kind)
    if ref.shape != meas.shape or ref.shape != kind.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, measured {meas.shape}, kind {kind.shape}")
    valid = np.isfinite(ref) & np.isfinite(meas)
    plain = valid & (kind == "plain")
    reversal = valid & (kind == "reversal")
    lost = np.abs(ref) - np.sign(ref) * meas
    backlash = None
    if plain.any() and reversal.any():
        backlash = float(lost[reversal].mean() - lost[plain].mean())
    scale = scatter = None
    denominator = float(np.sum(ref[plain] ** 2))
    if plain.any() and denominator > 0:
        scale = float(np.sum(meas[plain] * ref[plain]) / denominator - 1.0)
        if plain.sum() >= 2:
            scatter = float(np.std(meas[plain] - (1.0 + scale) * ref[plain], ddof=1))
    return LostMotion(backlash, scale, scatter, int(reversal.sum()), int(plain.sum()))


def pair_rms_nm(reference_nm: np.ndarray, measured_nm: np.ndarray) -> float | None:
    """RMS over steps of the per-step difference of two displacement vectors (nm)."""
    diff = np.asarray(measured_nm, dtype=float) - np.asarray(reference_nm, dtype=float)
    valid = np.all(np.isfinite(diff), axis=1)
    if not valid.any():
        return None
    return float(np.sqrt(np.mean(np.sum(diff[valid] ** 2, axis=1))))


@dataclass(frozen=True)
class Coupling:
    """Axis coupling from steps along x and along y."""

    x_to_y: float | None
    y_to_x: float | None
    skew_deg: float | None


def coupling(target_nm: np.ndarray, actual_nm: np.ndarray, axis: np.ndarray) -> Coupling:
    """Coupling slopes and skew between the measured x and y directions.

    ``x_to_y`` is the least-squares slope (through the origin) of ``dA_y`` against
    ``dT_x`` over steps along x; ``y_to_x`` likewise. The measured direction of
    an axis is the regression of the whole ``dA`` vector on the commanded component;
    ``skew_deg`` is the angle between the x and y directions minus 90 degrees.

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
    t = np.asarray(target_nm, dtype=float)
    a = np.asarray(actual_nm, dtype=float)
    valid = np.all(np.isfinite(a), axis=1) & np.all(np.isfinite(t), axis=1)
    directions = []
    for k in (0, 1):
        sel = valid & (np.asarray(axis) == k)
        denominator = float(np.sum(t[sel, k] ** 2))
        directions.append(None if denominator == 0 else (a[sel].T @ t[sel, k]) / denominator)
    dir_x, dir_y = directions
    x_to_y = None if dir_x is None else float(dir_x[1])
    y_to_x = None if dir_y is None else float(dir_y[0])
    skew = None
    if dir_x is not None and dir_y is not None:
        cos_angle = float(np.dot(dir_x, dir_y) / (np.linalg.norm(dir_x) * np.linalg.norm(dir_y)))
        skew = float(np.rad2deg(np.arccos(np.clip(cos_angle, -1.0, 1.0))) - 90.0)
    return Coupling(x_to_y, y_to_x, skew)


def revisit_groups(session: Session, steps: Steps, axis: int) -> list[list[int]]:
    """Frames that visit the same target arriving from the same direction along `axis`.

    Returns
    -------
    list of list of int
        Each list holds frame indices (in order) with equal targets, all reached by a
        step along `axis` in the same direction; only groups of two or more.
    """
    targets = session.targets_nm()
    groups: dict[tuple, list[int]] = {}
    for frame, a, d in zip(steps.frame, steps.axis, steps.direction):
        if a != axis:
            continue
        key = (tuple(np.round(targets[frame], 3)), int(d))
        groups.setdefault(key, []).append(int(frame))
    return [frames for frames in groups.values() if len(frames) >= 2]


def repeatability_nm(deviations_nm: list[np.ndarray]) -> float | None:
    """ISO 230-2 unidirectional repeatability ``max_j 4 s_j``.

    Parameters
    ----------
    deviations_nm : list of ndarray
        For each target position and approach direction, the positional deviations
        (nm, any common offset) of its visits.

    Returns
    -------
    float or None
        ``None`` when no target has two or more visits.

    References
    ----------
    ISO 230-2:2014, Test code for machine tools, Part 2: Determination of accuracy
    and repeatability of positioning of numerically controlled axes, clause 2.
    """
    spreads = [4.0 * float(np.std(dev, ddof=1)) for dev in deviations_nm if np.sum(np.isfinite(dev)) >= 2]
    return max(spreads) if spreads else None


def dwell_runs(session: Session) -> list[list[int]]:
    """Runs of two or more consecutive frames taken without a move in between."""
    targets = session.targets_nm()
    runs: list[list[int]] = []
    current = [0]
    for i in range(1, len(targets)):
        if np.array_equal(targets[i], targets[i - 1]):
            current.append(i)
        else:
            if len(current) >= 2:
                runs.append(current)
            current = [i]
    if len(current) >= 2:
        runs.append(current)
    return runs


def drift_velocity_nm_per_min(times_s: list[np.ndarray], positions_nm: list[np.ndarray]) -> np.ndarray | None:
    """Common drift velocity (x, y) in nm/min of several dwell runs.

    Each run has its own offset; the velocity is the pooled least-squares slope.

    Parameters
    ----------
    times_s : list of ndarray, (k,)
        Frame times of each run.
    positions_nm : list of ndarray, (k, 2)
        Measured image-content positions (stage coordinates, nm) of each run; NaN
        rows are left out.

    Returns
    -------
    ndarray, (2,) or None
    """
    num = np.zeros(2)
    den = 0.0
    for t, p in zip(times_s, positions_nm):
        t = np.asarray(t, dtype=float)
        p = np.asarray(p, dtype=float)
        ok = np.all(np.isfinite(p), axis=1)
        if ok.sum() < 2:
            continue
        tc = t[ok] - t[ok].mean()
        pc = p[ok] - p[ok].mean(axis=0)
        num += tc @ pc
        den += float(tc @ tc)
    if den == 0:
        return None
    return num / den * 60.0


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

    shift_nm_per_deg: float | None
    """Image shift per degree of tilt: the specimen's distance from the tilt axis
    (eucentric height error) times pi / 180."""
    backlash_deg: float | None
    """Reversal-dependent lost tilt, from the lost sideways motion."""
    direction: tuple[float, float] | None
    """Unit vector (x, y) of the sideways motion for increasing tilt."""
    steps: int


MIN_TILT_SHIFT_NM_PER_DEG = 0.5
"""Below this image shift per degree the tilt backlash cannot be told from noise."""


def tilt_response(tilt_deg, actual_nm, kind) -> TiltMetrics:
    """Image shift per degree and tilt backlash of one tilt axis.

    Over plain tilt steps the sideways displacement is regressed on the tilt change
    (through the origin): ``s = sum(dA * dtheta) / sum(dtheta**2)`` (nm/deg, a
    vector). Projected on ``s``, the lost motion of a step is
    ``L = |dtheta| |s| - sign(dtheta) dA . s / |s|`` and the tilt backlash is
    ``(mean L(reversal) - mean L(plain)) / |s|``.

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
        ``backlash_deg`` is None without reversals or when the shift per degree is
        below :data:`MIN_TILT_SHIFT_NM_PER_DEG` (a eucentric specimen shows no tilt).
    """
    theta = np.asarray(tilt_deg, dtype=float)
    shift = np.asarray(actual_nm, dtype=float).reshape(-1, 2)
    kind = np.asarray(kind)
    valid = np.isfinite(theta) & np.all(np.isfinite(shift), axis=1)
    plain = valid & (kind == "plain")
    reversal = valid & (kind == "reversal")
    denominator = float(np.sum(theta[plain] ** 2))
    if denominator == 0:
        return TiltMetrics(None, None, None, int(valid.sum()))
    slope = shift[plain].T @ theta[plain] / denominator
    magnitude = float(np.hypot(*slope))
    if magnitude == 0:
        return TiltMetrics(0.0, None, None, int(valid.sum()))
    unit = slope / magnitude
    backlash = None
    if reversal.any() and magnitude >= MIN_TILT_SHIFT_NM_PER_DEG:
        lost = np.abs(theta) * magnitude - np.sign(theta) * (shift @ unit)
        backlash = float((lost[reversal].mean() - lost[plain].mean()) / magnitude)
    return TiltMetrics(magnitude, backlash, (float(unit[0]), float(unit[1])), int(valid.sum()))


# --------------------------------------------------------------------------- the whole chain


@dataclass
class AxisMetrics:
    """results-v1 ``axes.<axis>``."""

    backlash_nm: float | None
    scale_error: float | None
    step_scatter_nm: float | None
    reported_backlash_nm: float | None
    reported_scale_error: float | None
    repeatability_nm: float | None


@dataclass
class PairMetrics:
    """RMS disagreement and per-axis lost motion of one position pair."""

    rms_nm: float | None
    axes: dict[str, LostMotion]


@dataclass
class Analysis:
    """Everything the analysis measured on one session."""

    session: Session
    steps: Steps
    transform: StageToImage
    transform_estimated: bool
    axes: dict[str, AxisMetrics]
    pairs: dict[str, PairMetrics]
    coupling: Coupling
    drift_nm_per_min: float | None
    drift_velocity_nm_per_min: np.ndarray | None
    actual_positions_nm: np.ndarray
    revisits: dict[str, list[dict]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    tilt: dict[str, TiltMetrics] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.session.frames)


def analyse(session: Session, *, registrar: Callable[..., Registration] = register,
            progress: Callable[[str], None] | None = None) -> Analysis:
    """Register, classify and measure a whole session (results-v1 metrics).

    Parameters
    ----------
    session : Session
        A recorded session (live or replayed).
    registrar : callable, optional
        Registration function; the default is the paper's normalised
        cross-correlation.
    progress : callable, optional
        Called with a short message at each stage of the analysis.

    Returns
    -------
    Analysis
    """
    say = progress or (lambda message: None)
    transform = session.stage_to_image
    say(f"registering {len(session.frames) - 1} consecutive frame pairs")
    registrations = register_steps(session, transform, registrar)
    estimated = transform is None
    if estimated:
        targets = session.targets_nm()[:, :2]
        deltas = np.array([targets[r.moving] - targets[r.reference] for r in registrations])
        shifts = np.array([r.result.shift_px if r.result.ok else (np.nan, np.nan) for r in registrations], dtype=float)
        transform = estimate_stage_to_image(deltas, shifts, session.pixel_size_nm)
        say(f"estimated stage-to-image rotation {transform.rotation_deg:.2f} deg, flip_y {transform.flip_y}")
    steps = build_steps(session, registrations, transform)
    failed = [f"frames {r.reference}->{r.moving}: {r.result.reason}" for r in registrations if not r.result.ok]

    pairs = {}
    untilted = np.all(steps.tilt_deg == 0, axis=1)  # a tilt moves the image without a stage translation
    for name, (ref_name, meas_name) in PAIRS.items():
        ref, meas = steps.displacement(ref_name), steps.displacement(meas_name)
        per_axis = {}
        for k, axis_name in enumerate(AXIS_NAMES):
            sel = steps.axis == k
            per_axis[axis_name] = lost_motion(ref[sel, k], meas[sel, k], steps.kind[sel])
        pairs[name] = PairMetrics(pair_rms_nm(ref[untilted], meas[untilted]), per_axis)

    tilt = {}
    for k, tilt_name in enumerate(TILT_NAMES):
        sel = steps.tilt_axis == k
        if sel.any():
            tilt[tilt_name] = tilt_response(steps.tilt_deg[sel, k], steps.actual_nm[sel], steps.tilt_kind[sel])

    say("registering revisits of the same targets (repeatability)")
    revisits: dict[str, list[dict]] = {}
    axes = {}
    for k, axis_name in enumerate(AXIS_NAMES):
        groups = revisit_groups(session, steps, k)
        pair_list = [(g[0], other) for g in groups for other in g[1:]]
        regs = {(r.reference, r.moving): r.result for r in register_pairs(session, pair_list, transform, registrar)}
        deviations = []
        records = []
        for group in groups:
            dev = [0.0]
            for other in group[1:]:
                result = regs[(group[0], other)]
                if result.ok:
                    dev.append(float(image_px_to_stage_nm(result.shift_px, session.pixel_size_nm, transform)[k]))
                else:
                    failed.append(f"frames {group[0]}->{other}: {result.reason}")
                    dev.append(np.nan)
            deviations.append(np.array(dev))
            records.append({"frames": group, "deviation_nm": dev})
        revisits[axis_name] = records
        ta, tr = pairs["target_actual"].axes[axis_name], pairs["target_reported"].axes[axis_name]
        axes[axis_name] = AxisMetrics(
            backlash_nm=ta.backlash_nm,
            scale_error=ta.scale_error,
            step_scatter_nm=ta.step_scatter_nm,
            reported_backlash_nm=tr.backlash_nm,
            reported_scale_error=tr.scale_error,
            repeatability_nm=repeatability_nm(deviations),
        )

    runs = dwell_runs(session)
    velocity = None
    if runs:
        say(f"registering {sum(len(r) - 1 for r in runs)} dwell frames (drift)")
        times, positions = [], []
        for run in runs:
            regs = register_pairs(session, [(run[0], other) for other in run[1:]], transform, registrar)
            pos = [np.zeros(2)]
            for r in regs:
                if r.result.ok:
                    pos.append(image_px_to_stage_nm(r.result.shift_px, session.pixel_size_nm, transform))
                else:
                    failed.append(f"frames {r.reference}->{r.moving}: {r.result.reason}")
                    pos.append(np.full(2, np.nan))
            times.append(session.times_s()[run])
            positions.append(np.array(pos))
        velocity = drift_velocity_nm_per_min(times, positions)

    start = session.targets_nm()[0, :2]
    return Analysis(
        session=session,
        steps=steps,
        transform=transform,
        transform_estimated=estimated,
        axes=axes,
        pairs=pairs,
        coupling=coupling(steps.target_nm, steps.actual_nm, steps.axis),
        drift_nm_per_min=None if velocity is None else float(np.hypot(*velocity)),
        drift_velocity_nm_per_min=velocity,
        actual_positions_nm=actual_positions_nm(start, len(session.frames), steps),
        revisits=revisits,
        failed=failed,
        tilt=tilt,
    )

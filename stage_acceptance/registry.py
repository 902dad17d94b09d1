"""Which frame pairs a session registers, and registering each of them once.

The analysis needs three kinds of pairs: every consecutive pair (the steps), every
later visit of a target against its first visit from the same direction
(repeatability), and every frame of a run taken without a move against the run's
first frame (drift). :func:`registration_plan` lists them from the commanded
positions alone, each pair once, in the order of the later frame, so that
:func:`register_all` can walk the session front to back: each frame is read and
prepared (normalised, transformed) once, kept only while a later pair still needs
it, and the pairs are registered in parallel threads. Memory stays flat in the
length of the session; the results do not depend on the number of threads.

A pair across a tilt change (:func:`tilt_pairs`) differs by more than a shift
(foreshortening): it is registered on the whole frame, then, in frames larger than
256 px, on the central region where the whole-frame result puts it
(:func:`~stage_acceptance.registration.register_central`), which gives the
displacement of the field's centre.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .geometry import StageToImage, stage_nm_to_image_px
from . import registration
from .registration import Registration, unregistered
from .session import RecordingError, Session

ALONG_TOLERANCE = 0.10
"""A step is along axis a when its other target components are at most 10 % of it."""


def default_jobs() -> int:
    """Threads that register pairs at once when not told: every core."""
    return max(1, os.cpu_count() or 1)


def commanded_nm(session: Session) -> np.ndarray:
    """``(n_frames, 5)`` positions the moves were commanded to: the target, or where the
    recording has none (``target: null``), the reported position."""
    targets = session.targets_nm()
    reported = session.reported_nm()
    missing = ~np.all(np.isfinite(targets), axis=1)
    targets[missing] = reported[missing]
    return targets


def step_axis(delta: np.ndarray, tilt_delta: np.ndarray | None = None) -> tuple[int, int]:
    """Axis (0 = x, 1 = y, -1 = none) and direction (+1/-1/0) of one commanded step.

    Parameters
    ----------
    delta : ndarray, (2,) or (3,)
        Commanded displacement in nm (x, y[, z]).
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


def revisit_groups(session: Session, axis: int) -> list[list[int]]:
    """Frames that visit the same recorded target arriving from the same direction along `axis`.

    Returns
    -------
    list of list of int
        Each list holds frame indices (in order) with equal recorded targets, all
        reached by a commanded step along `axis` in the same direction; only groups of
        two or more. Montage pieces (``montage_piece``) are left out: the montage
        analysis measures them.
    """
    targets = session.targets_nm()
    commanded = commanded_nm(session)
    groups: dict[tuple, list[int]] = {}
    for frame in range(1, len(session.frames)):
        if not np.all(np.isfinite(targets[frame])) or "montage_piece" in session.frames[frame].extra:
            continue
        delta = commanded[frame] - commanded[frame - 1]
        a, direction = step_axis(delta[:3], delta[3:])
        if a != axis:
            continue
        key = (tuple(np.round(targets[frame], 3)), direction)
        groups.setdefault(key, []).append(frame)
    return [frames for frames in groups.values() if len(frames) >= 2]


def dwell_runs(session: Session) -> list[list[int]]:
    """Runs of two or more consecutive frames with the same recorded target (no move between)."""
    targets = session.targets_nm()
    runs: list[list[int]] = []
    current = [0]
    for i in range(1, len(targets)):
        if np.all(np.isfinite(targets[i])) and np.array_equal(targets[i], targets[i - 1]):
            current.append(i)
        else:
            if len(current) >= 2:
                runs.append(current)
            current = [i]
    if len(current) >= 2:
        runs.append(current)
    return runs


@dataclass
class RegistrationPlan:
    """Every pair a session's analysis registers, each once.

    Attributes
    ----------
    pairs : list of (int, int)
        ``(reference, moving)``, ordered by the moving frame, unique.
    revisits : dict
        ``"x"``/``"y"`` -> revisit groups (:func:`revisit_groups`).
    dwell : list of list of int
        Runs of frames without a move (:func:`dwell_runs`).
    """

    pairs: list[tuple[int, int]]
    revisits: dict[str, list[list[int]]] = field(default_factory=dict)
    dwell: list[list[int]] = field(default_factory=list)


def tilt_pairs(session: Session, pairs) -> set[tuple[int, int]]:
    """The pairs whose commanded (without a recorded target: reported) alpha or beta differ."""
    tilts = commanded_nm(session)[:, 3:]
    return {(int(a), int(b)) for a, b in pairs if np.any(tilts[a] != tilts[b])}


def registration_plan(session: Session) -> RegistrationPlan:
    """The pairs to register: consecutive, revisits against the first visit, dwell frames
    against the first of their run; each once, ordered by the later frame."""
    pairs = {(i - 1, i) for i in range(1, len(session.frames))}
    revisits = {name: revisit_groups(session, k) for k, name in enumerate(("x", "y"))}
    for groups in revisits.values():
        pairs.update((group[0], other) for group in groups for other in group[1:])
    dwell = dwell_runs(session)
    pairs.update((run[0], other) for run in dwell for other in run[1:])
    return RegistrationPlan(sorted(pairs, key=lambda pair: (pair[1], pair[0])), revisits, dwell)


def predicted_shift_px(delta_nm: np.ndarray, pixel_size_nm: float, transform: StageToImage | None) -> np.ndarray | None:
    """The image displacement a stage move should cause, or None without a transform."""
    if transform is None:
        return None
    return stage_nm_to_image_px(delta_nm, pixel_size_nm, transform)


def predicted_overlap(shift_px, shape) -> float | None:
    """Fraction of a frame of `shape` ``(rows, columns)`` that overlaps the next one
    displaced by `shift_px` ``(column, row)`` (None when either is unknown)."""
    if shift_px is None or shape is None:
        return None
    rows, columns = shape
    dx, dy = np.abs(np.asarray(shift_px, dtype=float))
    return float(max(columns - dx, 0.0) * max(rows - dy, 0.0) / (rows * columns))


@dataclass(frozen=True)
class _Unusable:
    """A frame that cannot be registered, and why (one line)."""

    reason: str


def _one_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def register_all(session: Session, pairs, transform: StageToImage | None, *, jobs: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 prepare: Callable | None = None,
                 register: Callable[..., Registration] | None = None,
                 image_shift_nm: dict | None = None,
                 central: set | None = None) -> dict[tuple[int, int], Registration]:
    """Register frame pairs of a session, each frame read and prepared once.

    The reported displacement plus the change of the image shift, mapped into the
    image with `transform`, is the prior of each registration when the transform is
    known (no prior where the image-shift change is unknown). A pair with a frame that
    cannot be registered (unreadable, wrong shape, constant or non-finite image) is not
    registered, with the reason.

    Parameters
    ----------
    session : Session
    pairs : iterable of (int, int)
        ``(reference, moving)``; registered in this order, duplicates once. Keep it
        ordered by the moving frame (:func:`registration_plan`) for flat memory.
    transform : StageToImage or None
    jobs : int, optional
        Threads registering at once (default: every core). The result does not
        depend on it.
    progress : callable, optional
        ``progress(done, total)`` after each batch of pairs.
    prepare, register : callable, optional
        ``prepare(image)`` once per frame, ``register(prepared_reference,
        prepared_moving, prior_shift_px=...)`` once per pair (default:
        :func:`stage_acceptance.registration.prepare_frame` and
        :func:`~stage_acceptance.registration.register_prepared`).
    image_shift_nm : dict, optional
        ``(reference, moving) -> (2,)`` change of the image shift in nm (stage axes),
        NaN where unknown; missing pairs have none.
    central : set of (int, int), optional
        Pairs registered on the central region after the whole frame
        (:func:`~stage_acceptance.registration.register_central`; default prepared
        frames only): the pairs across a tilt change (:func:`tilt_pairs`).

    Returns
    -------
    dict
        ``(reference, moving) -> Registration``.
    """
    pairs = list(dict.fromkeys(tuple(int(i) for i in pair) for pair in pairs))
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    central = set(central or ()) if prepare is None else set()  # the central region needs prepared frames
    prepare = prepare or registration.prepare_frame
    register = register or registration.register_prepared
    image_shift_nm = image_shift_nm or {}
    reported = session.reported_nm()[:, :2]
    uses = Counter(frame for pair in pairs for frame in pair)
    prepared: dict[int, object] = {}
    results: dict[tuple[int, int], Registration] = {}

    def load(frame):
        try:
            return prepare(session.image(frame))
        except RecordingError as exc:  # an unusable frame: its pairs are left out, with why
            return _Unusable(_one_line(exc))
        except ValueError as exc:
            return _Unusable(f"frame {frame}: {_one_line(exc)}")

    def one(pair):
        ref, mov = pair
        a, b = prepared[ref], prepared[mov]
        for item in (a, b):
            if isinstance(item, _Unusable):
                return unregistered(item.reason)
        change = np.asarray(image_shift_nm.get(pair, (0.0, 0.0)), dtype=float)
        prior = (predicted_shift_px(reported[mov] - reported[ref] + change, session.pixel_size_nm, transform)
                 if np.all(np.isfinite(change)) else None)
        try:
            result = register(a, b, prior_shift_px=prior)
            if pair in central and registration.central_region_shape(a.shape) != tuple(a.shape):
                result = registration.register_central(a, b, coarse_shift_px=result.shift_px)
        except ValueError as exc:
            return unregistered(_one_line(exc))
        if result.ok:
            return result
        overlap = predicted_overlap(prior, session.frame_shape)
        if overlap is not None and overlap < registration.DEFAULT_MIN_OVERLAP:
            # e.g. a long move between two protocols: say why the frames cannot match
            result = replace(result, reason=f"{result.reason}; the reported move leaves {overlap:.0%} of the "
                                            f"frame overlapping (at least {registration.DEFAULT_MIN_OVERLAP:.0%} "
                                            "is needed)")
        return result

    batch = max(8, 4 * jobs)
    pool = ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else None
    mapper = pool.map if pool is not None else map
    try:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            needed = sorted({frame for pair in chunk for frame in pair} - set(prepared))
            for frame, item in zip(needed, mapper(load, needed)):
                prepared[frame] = item
            for pair, result in zip(chunk, mapper(one, chunk)):
                results[pair] = result
                for frame in pair:
                    uses[frame] -= 1
                    if uses[frame] == 0:
                        del prepared[frame]  # no later pair needs it
            if progress:
                progress(len(results), len(pairs))
    finally:
        if pool is not None:
            # Ctrl-C: drop what has not started; the few pairs under way end on their own.
            pool.shutdown(wait=False, cancel_futures=True)
    return results

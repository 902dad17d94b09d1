"""Measurement sequences as data.

A protocol is a named list of visits; each visit is a target *offset* from the
session origin (the position the stage reported when the run started) and how long
to wait there before imaging. Nothing here moves a stage: the runner in
:mod:`stage_acceptance.session` executes protocols.

Protocols (``step`` = ``[protocol] step_nm``, ``n`` = ``[protocol] steps``):

``hysteresis-x``, ``hysteresis-y`` (paper Figure 3)
    Approach the start from below (one frame at ``-step``, one at 0, so the stage's
    direction is known), then ``n`` steps up and ``n`` steps down, twice. Every
    target is visited at least twice from the same direction, which gives the ISO
    230-2 unidirectional repeatability.
``cross`` (paper Figure 4)
    From the origin ``n`` steps out and ``n`` back along +x, -x, +y and -y.
``dwell``
    ``dwell_frames`` frames at the origin without a move, ``dwell_interval_s`` apart,
    for the drift speed.
``tilt-alpha``, ``tilt-beta``
    The hysteresis line for a tilt axis: ``tilt_steps`` steps of ``tilt_step_deg`` up
    and down, twice, after approaching 0 from below; the image shift per degree
    (eucentricity) and the tilt backlash.
``montage``
    What automation runs: a grid of ``montage_pieces = [columns, rows]`` overlapping
    fields centred on the origin, ``montage_overlap`` of the field shared by
    neighbours, visited in serpentine order (row 0 left to right, row 1 right to left,
    ...). Each visit carries its grid position, which the recording keeps
    (``montage_piece``) for :mod:`stage_acceptance.montage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ProtocolConfig
from .geometry import AXIS_FIELDS, AXIS_UNITS, StagePosition, StageToImage


@dataclass(frozen=True)
class Visit:
    """One frame of a protocol: where to go (offset from the origin) and how long to wait.

    `piece` is the ``(column, row)`` of a montage piece (None outside a montage).
    """

    offset: StagePosition
    wait_s: float = 0.0
    piece: tuple[int, int] | None = None


@dataclass(frozen=True)
class Protocol:
    """A named sequence of visits."""

    name: str
    description: str
    visits: tuple[Visit, ...]


PROTOCOL_NAMES = ("hysteresis-x", "hysteresis-y", "cross", "dwell", "tilt-alpha", "tilt-beta", "montage")
"""Every protocol, in the order a session runs them."""

FAMILIES = {
    "hysteresis": ("hysteresis-x", "hysteresis-y"),
    "repeatability": ("hysteresis-x", "hysteresis-y", "cross"),
    "coupling": ("cross",),
    "drift": ("dwell",),
    "tilt": ("tilt-alpha", "tilt-beta"),
    "montage": ("montage",),
    "certification": ("hysteresis-x", "hysteresis-y", "cross", "dwell"),
    "regression": (),
}
"""Which protocols each test family (pytest marker) needs. The regression tests
(``--baseline``) compare what the other selected tests measure; selected alone, every
protocol runs."""


_LINE_AXES = ("x", "y", "alpha", "beta")
"""Axes a hysteresis line can run along."""


def _offset(axis: str, distance: float) -> StagePosition:
    return StagePosition(**{AXIS_FIELDS[axis]: distance})


def hysteresis_line(axis: str, step: float, steps: int) -> Protocol:
    """The Figure 3 hysteresis line along `axis`.

    Parameters
    ----------
    axis : {"x", "y", "alpha", "beta"}
        Stage axis to test: a lateral axis (protocol ``hysteresis-<axis>``) or a tilt
        axis (``tilt-<axis>``).
    step : float
        Step length in nm (x, y) or degrees (alpha, beta).
    steps : int
        Steps per direction.

    Returns
    -------
    Protocol
        ``2 + 4 * steps`` visits.
    """
    if axis not in _LINE_AXES:
        raise ValueError(f"hysteresis axis must be one of {list(_LINE_AXES)}, got {axis!r}")
    if steps < 1 or step <= 0:
        raise ValueError(f"need steps >= 1 and step > 0, got steps={steps}, step={step}")
    indices = [-1, 0]
    for _ in range(2):
        indices += list(range(1, steps + 1)) + list(range(steps - 1, -1, -1))
    visits = tuple(Visit(_offset(axis, k * step)) for k in indices)
    lateral = axis in ("x", "y")
    return Protocol(
        name=f"hysteresis-{axis}" if lateral else f"tilt-{axis}",
        description=(f"{'Figure 3 hysteresis line' if lateral else 'tilt hysteresis'} along {axis}: "
                     f"{steps} steps of {step:g} {AXIS_UNITS[axis]} each way, twice"),
        visits=visits,
    )


def cross(step_nm: float, steps: int) -> Protocol:
    """The Figure 4 cross: out and back along +x, -x, +y, -y.

    Parameters
    ----------
    step_nm : float
        Step length in nm.
    steps : int
        Steps out along each direction (and as many back).

    Returns
    -------
    Protocol
        ``1 + 8 * steps`` visits.
    """
    if steps < 1 or step_nm <= 0:
        raise ValueError(f"need steps >= 1 and step_nm > 0, got steps={steps}, step_nm={step_nm}")
    visits = [Visit(StagePosition())]
    for axis, sign in (("x", 1), ("x", -1), ("y", 1), ("y", -1)):
        out = [sign * k for k in range(1, steps + 1)]
        back = [sign * k for k in range(steps - 1, -1, -1)]
        visits += [Visit(_offset(axis, k * step_nm)) for k in out + back]
    return Protocol(
        name="cross",
        description=f"Figure 4 cross: {steps} steps of {step_nm:g} nm out and back along +x, -x, +y, -y",
        visits=tuple(visits),
    )


def dwell(frames: int, interval_s: float) -> Protocol:
    """Frames at the origin without a move, `interval_s` apart, for drift."""
    if frames < 2 or interval_s < 0:
        raise ValueError(f"need frames >= 2 and interval_s >= 0, got frames={frames}, interval_s={interval_s}")
    visits = (Visit(StagePosition()),) + tuple(Visit(StagePosition(), wait_s=interval_s) for _ in range(frames - 1))
    return Protocol(
        name="dwell",
        description=f"dwell: {frames} frames without a move, {interval_s:g} s apart",
        visits=visits,
    )


def serpentine(columns: int, rows: int) -> list[tuple[int, int]]:
    """``(column, row)`` of every piece of a grid in serpentine order.

    Row 0 from column 0 to the last, row 1 back, and so on: each piece is a raster
    neighbour of the one before.
    """
    if columns < 1 or rows < 1:
        raise ValueError(f"need columns >= 1 and rows >= 1, got {columns} x {rows}")
    order = []
    for row in range(rows):
        line = range(columns) if row % 2 == 0 else range(columns - 1, -1, -1)
        order += [(column, row) for column in line]
    return order


def montage(columns: int, rows: int, overlap: float, field_nm: float,
            stage_to_image: StageToImage | None = None) -> Protocol:
    """A montage: `columns` x `rows` overlapping fields in serpentine order.

    Neighbouring pieces are ``step = field_nm * (1 - overlap)`` apart. Piece
    ``(column, row)`` is where the assembled montage image has it: columns along the
    image x (rightwards), rows along the image y (downwards), the grid centred on
    the origin. The stage carries the specimen, so a field further right is reached
    by moving the stage the other way: the offset is ``-M^-1 (q_x, q_y)`` for the
    piece's field centre ``q`` (nm, image axes) and ``M`` the stage-to-image matrix
    (identity when `stage_to_image` is None: the grid then runs along the stage axes).

    Parameters
    ----------
    columns, rows : int
        Pieces along the image x and y (at least 2 pieces in all).
    overlap : float
        Fraction of the field shared by raster neighbours, in (0, 1).
    field_nm : float
        Side of the (square) field of view in nm: ``frame_px * pixel_size_nm``.
    stage_to_image : StageToImage, optional
        The calibrated stage-to-image rotation and flip.

    Returns
    -------
    Protocol
        ``columns * rows`` visits, each with its ``piece``.
    """
    if columns < 1 or rows < 1 or columns * rows < 2:
        raise ValueError(f"a montage needs at least 2 pieces, got {columns} x {rows}")
    if not 0 < overlap < 1:
        raise ValueError(f"overlap must be in (0, 1), got {overlap}")
    if not (np.isfinite(field_nm) and field_nm > 0):
        raise ValueError(f"field_nm must be finite and > 0, got {field_nm}")
    step_nm = field_nm * (1.0 - overlap)
    inverse = np.linalg.inv((stage_to_image or StageToImage()).matrix())
    visits = []
    for column, row in serpentine(columns, rows):
        field_centre_nm = np.array([column - (columns - 1) / 2.0, row - (rows - 1) / 2.0]) * step_nm
        x_nm, y_nm = -inverse @ field_centre_nm + 0.0  # + 0.0: no negative zeros in the recording
        visits.append(Visit(StagePosition(x_nm=float(x_nm), y_nm=float(y_nm)), piece=(column, row)))
    along = "image axes" if stage_to_image is not None else "stage axes"
    return Protocol(
        name="montage",
        description=(f"montage: {columns} x {rows} pieces, {overlap:.0%} overlap, {step_nm:g} nm apart along the "
                     f"{along}, serpentine order"),
        visits=tuple(visits),
    )


def build(config: ProtocolConfig, names=PROTOCOL_NAMES, *, field_nm: float | None = None,
          stage_to_image: StageToImage | None = None) -> list[Protocol]:
    """The protocols `names` (any order, duplicates ignored), in session order.

    Parameters
    ----------
    config : ProtocolConfig
        ``[protocol]`` table of the microscope config.
    names : iterable of str
        Protocol names from :data:`PROTOCOL_NAMES`.
    field_nm : float, optional
        Side of the field of view in nm (``frame_px * pixel_size_nm``); the montage
        needs it.
    stage_to_image : StageToImage, optional
        The calibrated stage-to-image transform: the montage grid then follows the
        image axes.

    Returns
    -------
    list of Protocol
    """
    wanted = set(names)
    unknown = wanted - set(PROTOCOL_NAMES)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; known: {', '.join(PROTOCOL_NAMES)}")
    if "montage" in wanted and field_nm is None:
        raise ValueError("the montage protocol needs the field of view (field_nm = frame_px * pixel_size_nm)")
    makers = {
        "hysteresis-x": lambda: hysteresis_line("x", config.step_nm, config.steps),
        "hysteresis-y": lambda: hysteresis_line("y", config.step_nm, config.steps),
        "cross": lambda: cross(config.step_nm, config.steps),
        "dwell": lambda: dwell(config.dwell_frames, config.dwell_interval_s),
        "tilt-alpha": lambda: hysteresis_line("alpha", config.tilt_step_deg, config.tilt_steps),
        "tilt-beta": lambda: hysteresis_line("beta", config.tilt_step_deg, config.tilt_steps),
        "montage": lambda: montage(*config.montage_pieces, config.montage_overlap, field_nm, stage_to_image),
    }
    return [makers[name]() for name in PROTOCOL_NAMES if name in wanted]


def protocols_for_families(families) -> tuple[str, ...]:
    """Protocol names needed by the given test families (pytest markers)."""
    needed: set[str] = set()
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"unknown test family {family!r}; known: {', '.join(FAMILIES)}")
        needed.update(FAMILIES[family])
    return tuple(name for name in PROTOCOL_NAMES if name in needed)

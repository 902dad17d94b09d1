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
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ProtocolConfig
from .geometry import AXIS_FIELDS, AXIS_UNITS, StagePosition


@dataclass(frozen=True)
class Visit:
    """One frame of a protocol: where to go (offset from the origin) and how long to wait."""

    offset: StagePosition
    wait_s: float = 0.0


@dataclass(frozen=True)
class Protocol:
    """A named sequence of visits."""

    name: str
    description: str
    visits: tuple[Visit, ...]


PROTOCOL_NAMES = ("hysteresis-x", "hysteresis-y", "cross", "dwell", "tilt-alpha", "tilt-beta")
"""Every protocol, in the order a session runs them."""

FAMILIES = {
    "hysteresis": ("hysteresis-x", "hysteresis-y"),
    "repeatability": ("hysteresis-x", "hysteresis-y", "cross"),
    "coupling": ("cross",),
    "drift": ("dwell",),
    "tilt": ("tilt-alpha", "tilt-beta"),
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


def build(config: ProtocolConfig, names=PROTOCOL_NAMES) -> list[Protocol]:
    """The protocols `names` (any order, duplicates ignored), in session order.

    Parameters
    ----------
    config : ProtocolConfig
        ``[protocol]`` table of the microscope config.
    names : iterable of str
        Protocol names from :data:`PROTOCOL_NAMES`.

    Returns
    -------
    list of Protocol
    """
    wanted = set(names)
    unknown = wanted - set(PROTOCOL_NAMES)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; known: {', '.join(PROTOCOL_NAMES)}")
    makers = {
        "hysteresis-x": lambda: hysteresis_line("x", config.step_nm, config.steps),
        "hysteresis-y": lambda: hysteresis_line("y", config.step_nm, config.steps),
        "cross": lambda: cross(config.step_nm, config.steps),
        "dwell": lambda: dwell(config.dwell_frames, config.dwell_interval_s),
        "tilt-alpha": lambda: hysteresis_line("alpha", config.tilt_step_deg, config.tilt_steps),
        "tilt-beta": lambda: hysteresis_line("beta", config.tilt_step_deg, config.tilt_steps),
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

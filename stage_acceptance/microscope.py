"""The microscope interface every backend implements, and the travel envelope.

A backend (the simulator, a remote microscope, ...) implements :class:`Microscope`.
The protocol runner never talks to a backend directly: it talks to an
:class:`Envelope`, which checks every target against the holder's ``[limits]`` and
refuses an out-of-limit move *before* the backend sees it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .geometry import AXES, AXIS_FIELDS, AXIS_UNITS, StagePosition


class MoveRefused(ValueError):
    """A move was refused before anything was sent to the stage."""


class BackendError(RuntimeError):
    """A real microscope (PyJEM, SerialEM) failed, refused or did not reach a target.

    Each backend raises its own subclass; the message is one line.
    """


@runtime_checkable
class Microscope(Protocol):
    """What the protocol runner needs from a microscope.

    Positions are :class:`~stage_acceptance.geometry.StagePosition` (nm, degrees);
    images are 2-D arrays ``(row, column)``; time is in seconds.
    """

    name: str
    pixel_size_nm: float
    frame_px: int

    def move_to(self, target: StagePosition) -> None:
        """Move the stage to `target` and return when the move has finished."""

    def position(self) -> StagePosition:
        """The position the microscope reports now."""

    def acquire(self) -> np.ndarray:
        """Take one image at the current position."""

    def wait(self, seconds: float) -> None:
        """Let `seconds` of instrument time pass without moving."""

    def time_s(self) -> float:
        """Instrument clock in seconds (monotonic; origin arbitrary)."""

    def stop(self) -> None:
        """Abort a move under way and leave the stage where it is."""

    def close(self) -> None:
        """Release the microscope (leave the stage where it is)."""


class Envelope:
    """A :class:`Microscope` wrapper that refuses moves outside the holder limits.

    Parameters
    ----------
    microscope : Microscope
        The backend to protect.
    limits : dict
        ``{"x_nm": (low, high), "y_nm": ..., "z_nm": ..., "alpha_deg": ...,
        "beta_deg": ...}`` as read from a holder file.
    """

    def __init__(self, microscope: Microscope, limits: dict[str, tuple[float, float]]):
        missing = [key for key in AXIS_FIELDS.values() if key not in limits]
        if missing:
            raise ValueError(f"envelope limits lack {missing}")
        self.microscope = microscope
        self.limits = dict(limits)

    def check(self, target: StagePosition) -> None:
        """Raise :class:`MoveRefused` if `target` lies outside the limits, or the backend's
        own ``check_target(target)`` (when it has one) refuses it."""
        for axis, value in zip(AXES, target.as_tuple()):
            low, high = self.limits[AXIS_FIELDS[axis]]
            if not np.isfinite(value) or not (low <= value <= high):
                unit = AXIS_UNITS[axis]
                raise MoveRefused(
                    f"move refused: {axis} = {value:g} {unit} is outside the holder limit "
                    f"{AXIS_FIELDS[axis]} = [{low:g}, {high:g}]; nothing was sent to the stage"
                )
        backend_check = getattr(self.microscope, "check_target", None)
        if backend_check is not None:  # what the stage itself cannot do (e.g. no beta axis)
            backend_check(target)

    def check_all(self, targets) -> None:
        """Check a whole sequence of targets before the first move is made."""
        for target in targets:
            self.check(target)

    def move_to(self, target: StagePosition) -> None:
        self.check(target)
        self.microscope.move_to(target)

    def __getattr__(self, name):
        # Everything but move_to passes straight through to the backend.
        return getattr(self.microscope, name)

"""The microscope interface every backend implements, and the travel envelope.

A backend (the simulator, a remote microscope, ...) implements :class:`Microscope`.
The protocol runner never talks to a backend directly: it talks to an
:class:`Envelope`, which checks every target against the holder's ``[limits]`` and
refuses an out-of-limit move *before* the backend sees it.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Protocol, runtime_checkable

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


class ReadbackStage:
    """Base of a real stage that is commanded and confirmed by its readback (PyJEM, SerialEM).

    Holds what every such stage needs: the tolerances within which a readback confirms
    a target, how long a move may take, how often the readback is polled, the clock and
    sleep (replaceable in tests) and the flag :meth:`stop` sets for a move under way.

    Raises
    ------
    ValueError
        If a tolerance, the timeout or the poll interval is not a finite number > 0.
    """

    def __init__(self, *, tolerance_nm: float, tolerance_deg: float, move_timeout_s: float, poll_s: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        for name, value in (("tolerance_nm", tolerance_nm), ("tolerance_deg", tolerance_deg),
                            ("move_timeout_s", move_timeout_s), ("poll_s", poll_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{type(self).__name__} {name} must be a finite number > 0, got {value}")
        self.tolerance_nm = float(tolerance_nm)
        self.tolerance_deg = float(tolerance_deg)
        self.move_timeout_s = float(move_timeout_s)
        self.poll_s = float(poll_s)
        self._clock = clock
        self._sleep = sleep
        self._stop_requested = threading.Event()

    @property
    def max_move_s(self) -> float:
        """The longest one move may take: every axis up to ``move_timeout_s``."""
        return len(AXES) * self.move_timeout_s


class StageAndCamera:
    """Base of a real :class:`Microscope` made of a :class:`ReadbackStage` and a camera.

    Moves, readback and stop go to the stage; waiting and time are the wall clock
    (replaceable in tests). A subclass adds :meth:`acquire` and :meth:`close`.

    Raises
    ------
    ValueError
        If the pixel size is not a finite number > 0 or the frame is under 32 px.
    """

    def __init__(self, stage, *, name: str, pixel_size_nm: float, frame_px: int,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise ValueError(f"pixel_size_nm must be a finite number > 0, got {pixel_size_nm}")
        if int(frame_px) < 32:
            raise ValueError(f"frame_px must be >= 32, got {frame_px}")
        self.stage = stage
        self.name = str(name)
        self.pixel_size_nm = float(pixel_size_nm)
        self.frame_px = int(frame_px)
        self._clock = clock
        self._sleep = sleep

    def move_to(self, target: StagePosition) -> None:
        self.stage.move_to(target)

    def position(self) -> StagePosition:
        return self.stage.position()

    def wait(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"wait time must be >= 0 s, got {seconds}")
        self._sleep(float(seconds))

    def time_s(self) -> float:
        return float(self._clock())

    def stop(self) -> None:
        """Stop the stage (:meth:`ReadbackStage.stop` of the backend)."""
        self.stage.stop()

    @property
    def max_move_s(self) -> float | None:
        """The longest one move may take (:attr:`ReadbackStage.max_move_s`), if the stage says."""
        return getattr(self.stage, "max_move_s", None)


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

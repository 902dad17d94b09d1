"""A recorded session played back as a microscope, so ``stage-acceptance serve --replay``
can serve a recording to the acceptance suites over the network.

The rule: a replay answers **only the recorded sequence of moves**. Frame ``k`` of the
recording is what the ``k``-th acquisition returns, and the move before it must ask for
that frame's target. Positions are compared in the client's coordinates, which may
differ from the recording's by one constant offset:

- a recording made by stage-acceptance stores the position the run started from
  (``session.json`` key ``stage_acceptance.origin``); the replay reports it before the
  first move, so a client running the same protocols asks for exactly the recorded
  targets (offset 0);
- for any other recording the first move fixes the offset (recorded target of frame 0
  minus the commanded target).

A move or acquisition that departs from the recording is refused with an error that
names the frame, the recorded target and the requested one; nothing else is served
out of order. Instrument time is the recording's: ``time_s`` is the time stamp of the
next frame, and ``wait`` lets no time pass.
"""

from __future__ import annotations

import numpy as np

from ..geometry import AXES, AXIS_UNITS, StagePosition
from ..session import Session

MATCH_TOLERANCE_NM = 1e-3
"""How close a commanded x, y or z must be to the recorded target, nm."""

MATCH_TOLERANCE_DEG = 1e-6
"""How close a commanded tilt must be to the recorded target, degrees."""

_TOLERANCE = np.array([MATCH_TOLERANCE_NM] * 3 + [MATCH_TOLERANCE_DEG] * 2)


class ReplayMismatch(RuntimeError):
    """A client asked a replay for something the recording does not hold. One line."""


def _describe(position: np.ndarray) -> str:
    return ", ".join(f"{axis}={value:g} {AXIS_UNITS[axis]}" for axis, value in zip(AXES, position))


class ReplayMicroscope:
    """A :class:`~stage_acceptance.microscope.Microscope` that plays a recording back.

    Parameters
    ----------
    session : Session
        The recording (:func:`~stage_acceptance.session.read_recording`).

    Raises
    ------
    ValueError
        For a recording without frames.
    """

    def __init__(self, session: Session):
        if not session.frames:
            raise ValueError(f"{session.directory}: the recording has no frames to replay")
        unrecorded = [frame.index for frame in session.frames if frame.target is None]
        if unrecorded:
            raise ValueError(f"{session.directory}: frame {unrecorded[0]} has no recorded target (target: null); a "
                             f"served replay answers the recorded moves, so a readback-only recording cannot be "
                             f"served (analyse it with pytest suites/ --replay)")
        self.session = session
        self.name = session.microscope
        self.pixel_size_nm = session.pixel_size_nm
        self.frame_px = int(session.frame_shape[1])
        self._targets = np.array([frame.target.as_array() for frame in session.frames])
        self._reported = np.array([frame.reported.as_array() for frame in session.frames])
        extension = session.meta.get("stage_acceptance") or {}
        origin = extension.get("origin")
        names = extension.get("protocols")
        self._recorded_protocols = f" ({', '.join(names)})" if names else ""
        self._origin = None if origin is None else StagePosition.from_dict(origin).as_array()
        self.rewind()

    @property
    def frames_served(self) -> int:
        """How many frames the current client has acquired."""
        return self._next

    def rewind(self) -> None:
        """Start again from frame 0 (the server does this for every new client)."""
        self._next = 0
        self._offset = None if self._origin is None else np.zeros(5)
        self._commanded = self._origin if self._origin is not None else self._targets[0]
        self._moved = False

    def _expected(self) -> np.ndarray:
        """The next frame's target in the client's coordinates."""
        if self._next >= len(self._targets):
            raise ReplayMismatch(f"replay of {self.session.directory}: all {len(self._targets)} recorded frames "
                                 f"have been served; the client asks for more than was recorded")
        return self._targets[self._next] - (self._offset if self._offset is not None else 0.0)

    def move_to(self, target: StagePosition) -> None:
        wanted = target.as_array()
        if self._offset is None:  # a foreign recording: the first move fixes the offset
            self._offset = self._targets[0] - wanted
        expected = self._expected()
        if np.any(np.abs(wanted - expected) > _TOLERANCE):
            raise ReplayMismatch(
                f"replay of {self.session.directory}: move to ({_describe(wanted)}) differs from the target of "
                f"recorded frame {self._next} ({_describe(expected)}); a replay serves only the recorded "
                f"sequence{self._recorded_protocols}: run the suites without -m/-k selection and with the "
                f"recording's [protocol], or analyse it with pytest suites/ --replay DIR")
        self._commanded = wanted
        self._moved = True

    def position(self) -> StagePosition:
        if not self._moved or self._next >= len(self._reported):
            return StagePosition.from_array(self._commanded)
        return StagePosition.from_array(self._reported[self._next] - self._offset)

    def acquire(self) -> np.ndarray:
        expected = self._expected()
        if np.any(np.abs(self._commanded - expected) > _TOLERANCE):
            raise ReplayMismatch(
                f"replay of {self.session.directory}: recorded frame {self._next} was taken at "
                f"({_describe(expected)}), but the stage was last sent to ({_describe(self._commanded)})")
        image = self.session.image(self._next)
        self._next += 1
        return image

    def wait(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"wait time must be >= 0 s, got {seconds}")

    def time_s(self) -> float:
        index = min(self._next, len(self.session.frames) - 1)
        return float(self.session.frames[index].time_s)

    def stop(self) -> None:
        """Nothing moves in a replay; there is nothing to stop."""

    def close(self) -> None:
        """A replay holds nothing open."""

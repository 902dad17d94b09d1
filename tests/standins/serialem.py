"""A stand-in for SerialEM's Python module ``serialem`` as an external Python sees it.

Put ``tests/standins`` on the Python path and ``import serialem`` gets this module. It
behaves as SerialEM's help documents the module (about_scripts.htm "Scripting with
Python", script_commands.htm; stage_acceptance/backends/serialem.py lists each call):

- ``ConnectToSEM(port, IP)`` takes an int and a str; the first command connects and
  raises ``SEMmoduleError`` when nothing listens (``STATE.listening = False``).
- Arguments are type-checked as the module does: a string argument must be a str, an
  integer an int, a double an int or a float.
- The stage works in micrometres, tilts in degrees. A move command returns before the
  readback shows the move: for ``lag_polls`` stage readbacks (``ReportStageXYZ``,
  ``ReportTiltAngle``, ``ReportStageBAxis``, ``ReportStageBusy``) it still reads the old
  position, for ``move_polls`` more it reads halfway, and ``ReportStageBusy`` says 1
  until it reads the target (plus ``landing_error_um``); with ``busy_during_lag = False``
  it says 0 while the readback still shows the old position. With ``stuck`` the stage
  never arrives.
- A move outside the stage range raises ``SEMerror`` and nothing moves, as does a tilt
  beyond the maximum tilt.
- ``Record``, ``Preview``, ``View`` put into buffer A an image of the project's
  simulated specimen at the stage's position, of the binning and centred size
  ``SetCenteredSize`` gave that parameter set (default: the whole 1024 x 1024 camera
  at binning 1), pixel size ``PIXEL_NM_UNBINNED`` times the binning. ``bufferImage('A')``
  gives it through the buffer protocol, with padded lines; ``ImageProperties('A')``
  reports size, binning, exposure, pixel size (nm) and the parameter set.
- ``ReportImageShift`` reports ``STATE.image_shift`` (IS units), in unbinned pixels and as
  the compensating stage move (``STAGE_UM_PER_IS_UNIT``), or zeros for the last four
  with ``is_calibrated = False``.
- ``Exit(1)`` ends external control; ``STATE.user_stop`` makes the next command raise
  ``SEMexited('User STOP')`` as SerialEM's STOP button does.

``STATE`` is the one instrument of the process; :func:`reset` makes a new one.
``STATE.calls`` lists every command with its arguments.
"""

from __future__ import annotations

import numpy as np

from stage_acceptance.geometry import StageToImage
from stage_acceptance.sim.imaging import render_frame
from stage_acceptance.sim.specimen import Specimen

PIXEL_NM_UNBINNED = 7.5
CAMERA_PX = 1024
STAGE_UM_PER_IS_UNIT = 0.2
PIXELS_PER_IS_UNIT = 200.0
SETS = {"V": 0, "F": 1, "T": 2, "R": 3, "P": 4, "S": 5, "M": 6}


class SEMerror(Exception):
    """A SerialEM command failed."""


class SEMmoduleError(Exception):
    """The module or the connection failed."""


class SEMexited(Exception):
    """SerialEM ended external control (STOP button or Exit)."""


class Instrument:
    """The stand-in microscope behind the module."""

    def __init__(self, *, lag_polls: int = 2, move_polls: int = 2, landing_error_um=(0.0, 0.0, 0.0),
                 busy_during_lag: bool = True, stuck: bool = False, max_tilt_deg: float = 70.0,
                 limits_um=((-1000.0, 1000.0), (-1000.0, 1000.0), (-375.0, 375.0)), is_calibrated: bool = True):
        self.lag_polls = lag_polls
        self.move_polls = move_polls
        self.landing_error_um = tuple(landing_error_um)
        self.busy_during_lag = busy_during_lag
        self.stuck = stuck
        self.max_tilt_deg = max_tilt_deg
        self.limits_um = limits_um
        self.is_calibrated = is_calibrated
        self.axes = [0.0] * 5  # x, y, z (um), alpha, beta (deg): what the readback reports
        self.pending: dict[int, dict] = {}
        self.areas = {letter: (1.0, CAMERA_PX, CAMERA_PX) for letter in SETS}
        self.image_shift = [0.0, 0.0]
        self.buffer: tuple[np.ndarray, tuple] | None = None
        self.listening = True
        self.connected = False
        self.user_stop = False
        self.address: tuple[int, str] | None = None
        self.calls: list[tuple] = []
        self._specimen = Specimen(seed=5)
        self._rng = np.random.default_rng(7)

    # ----------------------------------------------------------------- stage model
    def tick(self) -> None:
        """One stage readback: pending moves advance by one poll."""
        for index, move in list(self.pending.items()):
            move["polls"] += 1
            if self.stuck or move["polls"] <= self.lag_polls:
                continue
            if move["polls"] <= self.lag_polls + self.move_polls:
                self.axes[index] = (move["start"] + move["goal"]) / 2
            else:
                error = self.landing_error_um[index] if index < 3 else 0.0
                self.axes[index] = move["goal"] + error
                del self.pending[index]

    def start(self, index: int, goal: float) -> None:
        self.pending[index] = {"start": self.axes[index], "goal": float(goal), "polls": 0}

    def image(self, letter: str) -> None:
        binning, size_x, size_y = self.areas[letter]
        if size_x != size_y:
            raise SEMerror("the stand-in camera images square areas only")
        pixel_nm = PIXEL_NM_UNBINNED * binning
        counts = render_frame(self._specimen, np.array(self.axes[:2]) * 1000.0, pixel_size_nm=pixel_nm,
                              frame_px=size_x, transform=StageToImage(0.0, False), dose=40.0, rng=self._rng,
                              tilt_deg=(self.axes[3], self.axes[4]))
        image = np.clip(counts, 0, 65535).astype(np.uint16)
        self.buffer = (image, (float(size_x), float(size_y), float(binning), 1.0, pixel_nm, float(SETS[letter])))


STATE = Instrument()


def reset(**options) -> Instrument:
    """A new stand-in instrument (options as :class:`Instrument`); returns it."""
    global STATE
    STATE = Instrument(**options)
    return STATE


def _command(name: str, keys: str, args: tuple) -> None:
    """Connect, honour STOP, check argument types as the module does, and log the call."""
    if not STATE.listening:
        raise SEMmoduleError("Failed to connect to SerialEM: connection refused")
    if STATE.user_stop:
        STATE.user_stop = False
        STATE.connected = False
        raise SEMexited("User STOP")
    required = sum(1 for key in keys if key.isupper())
    if not required <= len(args) <= len(keys):
        raise TypeError(f"{name}() takes {required} to {len(keys)} arguments ({len(args)} given)")
    for key, value in zip(keys, args):
        kind = key.upper()
        if kind == "S" and not isinstance(value, str):
            raise TypeError(f"{name}() argument must be str, not {type(value).__name__}")
        if kind == "I" and (not isinstance(value, int) or isinstance(value, bool)):
            raise TypeError(f"{name}() argument must be int, not {type(value).__name__}")
        if kind == "D" and not isinstance(value, (int, float)):
            raise TypeError(f"{name}() argument must be a number, not {type(value).__name__}")
    STATE.connected = True
    STATE.calls.append((name, *args))


def ConnectToSEM(port: int = 48888, ip: str = "127.0.0.1") -> None:  # noqa: N802 (SerialEM's names)
    if not isinstance(port, int) or not isinstance(ip, str):
        raise TypeError("ConnectToSEM(port: int, IP: str)")
    STATE.address = (port, ip)


def MoveStageTo(x_um, y_um, z_um=None) -> None:  # noqa: N802
    _command("MoveStageTo", "DDd", (x_um, y_um) if z_um is None else (x_um, y_um, z_um))
    goals = [x_um, y_um, STATE.axes[2] if z_um is None else z_um]
    for index, goal in enumerate(goals):
        low, high = STATE.limits_um[index]
        if not low <= goal <= high:
            raise SEMerror(f"Script suspended because of failure to start stage movement "
                           f"({'XYZ'[index]} {goal:.2f} um is outside the stage range)")
    for index, goal in enumerate(goals):
        if goal != STATE.axes[index] or index in STATE.pending:
            STATE.start(index, goal)


def TiltTo(angle_deg, *_options) -> None:  # noqa: N802
    _command("TiltTo", "Didd", (angle_deg, *_options))
    if abs(angle_deg) > STATE.max_tilt_deg + 0.05:
        raise SEMerror(f"Attempt to tilt too high in script, to {angle_deg:.1f} degrees")
    STATE.start(3, angle_deg)


def SetStageBAxis(angle_deg) -> None:  # noqa: N802
    _command("SetStageBAxis", "D", (angle_deg,))
    STATE.start(4, angle_deg)


def ReportStageXYZ():  # noqa: N802
    _command("ReportStageXYZ", "", ())
    STATE.tick()
    return tuple(STATE.axes[:3])


def ReportTiltAngle():  # noqa: N802
    _command("ReportTiltAngle", "", ())
    STATE.tick()
    return STATE.axes[3]


def ReportStageBAxis():  # noqa: N802
    _command("ReportStageBAxis", "", ())
    STATE.tick()
    return STATE.axes[4]


def ReportStageBusy():  # noqa: N802
    _command("ReportStageBusy", "", ())
    STATE.tick()
    lagging = any(move["polls"] <= STATE.lag_polls for move in STATE.pending.values())
    return 1.0 if STATE.pending and (STATE.busy_during_lag or not lagging or STATE.stuck) else 0.0


def SetCenteredSize(parameter_set, binning, size_x, size_y) -> None:  # noqa: N802
    _command("SetCenteredSize", "SDII", (parameter_set, binning, size_x, size_y))
    if parameter_set not in SETS:
        raise SEMerror(f"Invalid parameter set letter {parameter_set}")
    if size_x * binning > CAMERA_PX or size_y * binning > CAMERA_PX:
        size_x = size_y = int(CAMERA_PX // binning)  # SerialEM adjusts to a legal area
    STATE.areas[parameter_set] = (float(binning), size_x, size_y)


def Record() -> None:  # noqa: N802
    _command("Record", "", ())
    STATE.image("R")


def Preview() -> None:  # noqa: N802
    _command("Preview", "", ())
    STATE.image("P")


def View() -> None:  # noqa: N802
    _command("View", "", ())
    STATE.image("V")


def bufferImage(buffer):  # noqa: N802 - a type in SerialEM's module; here a function giving the same buffer
    if not isinstance(buffer, str):
        raise TypeError("bufferImage() argument must be str")
    if buffer != "A" or STATE.buffer is None:
        raise SEMmoduleError(f'"{buffer}" is not a valid buffer specification or holds no image')
    image = STATE.buffer[0]
    padded = np.zeros((image.shape[0], image.shape[1] + 3), dtype=image.dtype)  # padded lines, as SerialEM may have
    padded[:, : image.shape[1]] = image
    return memoryview(padded[:, : image.shape[1]])


def ImageProperties(buffer="A"):  # noqa: N802
    _command("ImageProperties", "s", (buffer,))
    if buffer != "A" or STATE.buffer is None:
        raise SEMerror(f"There is no image in buffer {buffer}")
    return STATE.buffer[1]


def ReportImageShift():  # noqa: N802
    _command("ReportImageShift", "", ())
    is_x, is_y = STATE.image_shift
    if not STATE.is_calibrated:
        return (is_x, is_y, 0.0, 0.0, 0.0, 0.0)
    return (is_x, is_y, -is_x * PIXELS_PER_IS_UNIT, -is_y * PIXELS_PER_IS_UNIT,
            is_x * STAGE_UM_PER_IS_UNIT, is_y * STAGE_UM_PER_IS_UNIT)


def Exit(exc: int = 1, text: str = "") -> None:  # noqa: N802
    _command("Exit", "is", (exc, text) if text else (exc,))
    STATE.connected = False
    if exc == 0:
        raise SEMexited("Normal exit")

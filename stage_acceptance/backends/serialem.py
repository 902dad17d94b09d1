"""Any microscope SerialEM drives, through SerialEM's Python module ``serialem``.

SerialEM drives Thermo Fisher/FEI, JEOL, Hitachi and Zeiss TEMs; an external Python
process controls it through the module ``serialem`` (SerialEM's ``PythonModules``
folder on the Python path, SerialEM property ``EnableExternalPython 1``). This backend
is importable without that module: :func:`load_serialem` says so in one line when it is
missing. A microscope config with ``kind = "serialem"`` opens it
(:func:`open_serialem`); on the microscope PC serve it with
``stage-acceptance serve --microscope NAME``.

Every call was checked against SerialEM's own documentation (help pages of SerialEM
4.2, https://bio3d.colorado.edu/SerialEM/hlp/html/, and for argument types and
returned values the command table ``MacroMasterList.h`` and ``MacroCommands.cpp`` of
https://github.com/mastcu/SerialEM, and ``SerialEMModule.cpp`` of
https://github.com/mastcu/PythonModule):

- about_scripts.htm, "Scripting with Python": ``ConnectToSEM(port, IP)`` as the first
  call of an external Python (default port 48888, IP 127.0.0.1; the port an integer,
  the IP a string); a command returns None, one float, or a tuple of the reported
  values; a failed command raises ``serialem.SEMerror``, a failure of the module or
  the connection ``SEMmoduleError``, SerialEM's STOP button ``SEMexited("User STOP")``;
  "do not try to run two operations at once".
- script_commands.htm: ``MoveStageTo #X #Y [#Z]`` "moves stage to given position in
  microns", Z unchanged when omitted; ``ReportStageXYZ`` the stage position (three
  values, microns); ``ReportStageBusy`` 1 while the stage is busy; ``TiltTo #A`` tilts
  to the angle in degrees (SerialEM refuses more than its maximum tilt);
  ``ReportTiltAngle`` the tilt in degrees; ``SetStageBAxis #`` / ``ReportStageBAxis``
  the stage B axis in degrees "if such an item exists" (a Thermo Fisher/FEI double-tilt
  holder's beta); ``Record``, ``Preview``, ``View`` acquire with those parameter sets
  into buffer A; ``SetCenteredSize set #B #X #Y`` sets a parameter set's binning and
  centred binned size (set a letter, binning a number, sizes integers); ``bufferImage(buf)``
  gives the image in a buffer through the buffer protocol (``numpy.asarray``), possibly
  with padded lines; ``ImageProperties [buf]`` reports size X, Y, binning, exposure,
  pixel size (nm: 1000 times SerialEM's pixel size in microns, 0 when not calibrated)
  and the parameter set; ``ReportImageShift`` the image shift in IS units, in unbinned
  camera pixels, and the stage move (microns) that would compensate resetting it, the
  last four 0 without an image-shift calibration; ``Exit [#exc]`` ends external control
  (with 1, without raising ``SEMexited``).

SerialEM has no script command that stops a stage move under way (``StopBackgroundStage``
only stops background moves, and "probably will not work for any Thermo/FEI scopes"),
so :meth:`SerialEMStage.stop` stops the backend instead: the move under way ends where
SerialEM takes it, and no further command is sent. ``ResetImageShift`` is never called:
it moves the stage by an amount the holder envelope cannot check first. Instead the
image shift must not change during a run (:class:`SerialEMMicroscope`), since it moves
the image without moving the stage and the live runner records no image shift.
"""

from __future__ import annotations

import importlib
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..geometry import StagePosition
from ..microscope import BackendError, MoveRefused, ReadbackStage, StageAndCamera

if TYPE_CHECKING:
    from ..config import MicroscopeConfig

NOT_INSTALLED = ("SerialEM's Python module 'serialem' is not installed: the SerialEM backend runs where "
                 "SerialEM's PythonModules folder is on the Python path (the SerialEM PC)")

ACQUIRE_CALLS = {"record": "Record", "preview": "Preview", "view": "View"}
"""The acquisition command of each parameter set."""

SET_LETTERS = {"record": "R", "preview": "P", "view": "V"}
"""The parameter set letter SerialEM's Set... commands take."""

SET_NUMBERS = {"view": 0.0, "record": 3.0, "preview": 4.0}
"""The parameter set number ``ImageProperties`` reports (View, Focus, Trial, Record, Preview, ...)."""

UM_PER_NM = 1.0e-3
IS_UNITS_TOLERANCE = 1.0e-3
"""Without an image-shift calibration, a change of the image shift by more than this many
IS units (on either axis) is a change."""


class SerialEMError(BackendError):
    """SerialEM failed, refused or did not reach a target. The message is one line."""


def load_serialem(host: str = "127.0.0.1", port: int = 48888):
    """SerialEM's Python module, connected to the SerialEM at `host`:`port`.

    ``ConnectToSEM(port, host)`` tells the module where SerialEM listens (it must be the
    module's first call); :func:`open_serialem` sends a first command at once, so an
    unreachable or busy SerialEM is reported when the microscope is opened.

    Raises
    ------
    SerialEMError
        If the module is not installed or refuses the address.
    """
    try:
        module = importlib.import_module("serialem")
    except ImportError:
        raise SerialEMError(NOT_INSTALLED) from None
    try:
        module.ConnectToSEM(int(port), str(host))
    except Exception as exc:  # noqa: BLE001 - whatever the module raises is one line to the user
        raise SerialEMError(f"SerialEM ConnectToSEM({port}, {host!r}) failed: {_exception_text(exc)}") from None
    return module


def open_serialem(config: "MicroscopeConfig") -> "SerialEMMicroscope":
    """The microscope a ``kind = "serialem"`` config describes, connected and set up.

    Sets the camera parameter set's binning and centred frame size
    (``SetCenteredSize``) and reads the stage and the image shift once, so a SerialEM
    that cannot be reached or is busy is reported here, before any move.

    Raises
    ------
    SerialEMError
        If the module is missing or SerialEM cannot be reached, is busy or fails.
    """
    options = config.serialem
    link = SerialEMLink(load_serialem(options.host, options.port), f"{options.host}:{options.port}")
    stage = SerialEMStage(link, tolerance_nm=options.tolerance_nm, tolerance_deg=options.tolerance_deg,
                          move_timeout_s=options.move_timeout_s, poll_s=options.poll_s,
                          beta_axis=options.beta_axis)
    camera = SerialEMCamera(link, parameter_set=options.parameter_set, binning=options.binning,
                            frame_px=config.frame_px, pixel_size_nm=config.pixel_size_nm,
                            pixel_size_tolerance=options.pixel_size_tolerance)
    try:
        stage.position()
        camera.configure()
        microscope = SerialEMMicroscope(stage, camera, name=config.name, pixel_size_nm=config.pixel_size_nm,
                                        frame_px=config.frame_px,
                                        image_shift_tolerance_nm=options.image_shift_tolerance_nm)
    except BaseException:
        link.release()
        raise
    return microscope


def _exception_text(exc: BaseException) -> str:
    """``Type: message`` on one line, cut to 200 characters."""
    text = " ".join(str(exc).split()) or "(no message)"
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}"


def _numbers(call: str, value: Any, count: int) -> tuple[float, ...]:
    """The first `count` reported values of `call` as finite floats.

    SerialEM's module returns one float for one reported value and a tuple for more
    (or for every command after ``ReturnAllValuesAsTuples``).

    Raises
    ------
    SerialEMError
        For fewer values, or values that are not finite numbers.
    """
    values = value if isinstance(value, (tuple, list)) else (value,)
    if len(values) < count:
        raise SerialEMError(f"SerialEM {call} reported {len(values)} value(s), expected {count}: {values!r:.80}")
    numbers = []
    for item in values[:count]:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise SerialEMError(f"SerialEM {call} reported {item!r:.40}, expected a finite number")
        numbers.append(float(item))
    return tuple(numbers)


class SerialEMLink:
    """One SerialEM connection: every command goes through :meth:`call`, one at a time.

    SerialEM runs one command at a time ("do not try to run two operations at once"),
    so a lock serialises the calls. Whatever the module raises becomes one
    :class:`SerialEMError` line naming the command and its arguments.

    Parameters
    ----------
    module : module
        ``serialem`` after ``ConnectToSEM``.
    where : str
        ``host:port``, for messages.
    """

    def __init__(self, module, where: str):
        self.module = module
        self.where = where
        self._lock = threading.Lock()

    def call(self, name: str, *args):
        """``serialem.<name>(*args)``.

        Raises
        ------
        SerialEMError
            If the command fails, SerialEM cannot be reached, or its STOP button was pressed.
        """
        shown = f"{name}({', '.join(f'{a:g}' if isinstance(a, float) else repr(a) for a in args)})"
        with self._lock:
            try:
                return getattr(self.module, name)(*args)
            except Exception as exc:  # noqa: BLE001 - SEMerror, SEMmoduleError, SEMexited, socket errors
                if type(exc).__name__ == "SEMexited":
                    raise SerialEMError(f"SerialEM at {self.where} ended external control during {shown} "
                                        f"({exc}): its STOP button was pressed or a script exited") from None
                raise SerialEMError(f"SerialEM at {self.where}: {shown} failed: {_exception_text(exc)}") from None

    def buffer_image(self, buffer: str) -> np.ndarray:
        """A copy of the image in `buffer` (``bufferImage(buffer)`` through ``numpy.asarray``).

        ``bufferImage`` is a type of the module, not a command, and its memory is freed
        with it, so the pixels are copied at once.

        Raises
        ------
        SerialEMError
            If SerialEM cannot deliver the image.
        """
        with self._lock:
            try:
                return np.array(np.asarray(self.module.bufferImage(buffer)), copy=True)
            except Exception as exc:  # noqa: BLE001 - SEMmoduleError, SEMexited, socket errors
                raise SerialEMError(f"SerialEM at {self.where}: bufferImage({buffer!r}) failed: "
                                    f"{_exception_text(exc)}") from None

    def release(self) -> None:
        """End external control (``Exit(1)``) unless a command is under way; best effort."""
        if not self._lock.acquire(blocking=False):
            return  # a command is under way in another thread; never send two at once
        try:
            self.module.Exit(1)
        except Exception:  # noqa: BLE001 - releasing is best effort on the way out
            pass
        finally:
            self._lock.release()


class SerialEMStage(ReadbackStage):
    """Confirmed moves of a stage SerialEM drives.

    x, y and z go in one ``MoveStageTo`` (microns), alpha with ``TiltTo`` (degrees),
    beta with ``SetStageBAxis`` (degrees, only with `beta_axis`). After each command
    the readback is polled until ``ReportStageBusy`` says 0 **and** the position reads
    the target within the tolerance; a readback that lags behind the move is waited
    for, up to `move_timeout_s`.

    Parameters
    ----------
    link : SerialEMLink
        The connection.
    tolerance_nm : float
        A move of x, y or z is done when the readback is within this of the target.
    tolerance_deg : float
        The same for the tilts.
    move_timeout_s : float
        Longest wait for one command's readback; then the move fails.
    poll_s : float
        Time between readbacks.
    beta_axis : bool
        Whether the stage has a B axis (beta tilt) SerialEM drives. Without it beta
        reads 0 and a move to another beta is refused before anything is sent.
    clock, sleep : callable
        Time source and sleep (replaceable in tests).
    """

    def __init__(self, link: SerialEMLink, *, tolerance_nm: float = 50.0, tolerance_deg: float = 0.1,
                 move_timeout_s: float = 120.0, poll_s: float = 0.05, beta_axis: bool = False,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        super().__init__(tolerance_nm=tolerance_nm, tolerance_deg=tolerance_deg, move_timeout_s=move_timeout_s,
                         poll_s=poll_s, clock=clock, sleep=sleep)
        self.link = link
        self.beta_axis = bool(beta_axis)

    def position(self) -> StagePosition:
        """``ReportStageXYZ`` (microns), ``ReportTiltAngle`` and ``ReportStageBAxis`` (degrees) in nm and degrees.

        Raises
        ------
        SerialEMError
            If a readback fails or is not finite numbers.
        """
        x_um, y_um, z_um = _numbers("ReportStageXYZ", self.link.call("ReportStageXYZ"), 3)
        (alpha_deg,) = _numbers("ReportTiltAngle", self.link.call("ReportTiltAngle"), 1)
        beta_deg = _numbers("ReportStageBAxis", self.link.call("ReportStageBAxis"), 1)[0] if self.beta_axis else 0.0
        return StagePosition(x_um / UM_PER_NM, y_um / UM_PER_NM, z_um / UM_PER_NM, alpha_deg, beta_deg)

    def _busy(self) -> bool:
        (busy,) = _numbers("ReportStageBusy", self.link.call("ReportStageBusy"), 1)
        return busy != 0

    def check_target(self, target: StagePosition) -> None:
        """Raise :class:`MoveRefused` for a target this stage cannot reach whatever the
        holder: a beta other than 0 without a B axis. The run's plan is checked with it
        before the first move (:class:`~stage_acceptance.microscope.Envelope`)."""
        if not self.beta_axis and abs(target.beta_deg) > self.tolerance_deg:
            raise MoveRefused(f"move refused: beta = {target.beta_deg:g} deg, but this stage has no B axis in "
                              f"SerialEM ([serialem] beta_axis = false); deselect the tilt tests (-m \"not tilt\"); "
                              f"nothing was sent to the stage")

    def move_to(self, target: StagePosition) -> None:
        """Move to `target` and confirm it by readback; axes already there are not commanded.

        Raises
        ------
        MoveRefused
            For a beta other than 0 on a stage without a B axis (nothing is sent).
        SerialEMError
            If SerialEM refuses the move, the readback does not reach the target within
            ``move_timeout_s`` (naming target and readback), or :meth:`stop` was called.
        """
        self._stop_requested.clear()
        self.check_target(target)
        current = self.position()
        off = {f: abs(getattr(current, f) - getattr(target, f)) > self.tolerance_nm for f in ("x_nm", "y_nm", "z_nm")}
        if any(off.values()):
            args = [target.x_nm * UM_PER_NM, target.y_nm * UM_PER_NM]
            if off["z_nm"]:  # MoveStageTo leaves Z alone when it is omitted
                args.append(target.z_nm * UM_PER_NM)
            self._command(target, ("x_nm", "y_nm", "z_nm"), "MoveStageTo", *args)
        if abs(current.alpha_deg - target.alpha_deg) > self.tolerance_deg:
            self._command(target, ("alpha_deg",), "TiltTo", float(target.alpha_deg))
        if self.beta_axis and abs(current.beta_deg - target.beta_deg) > self.tolerance_deg:
            self._command(target, ("beta_deg",), "SetStageBAxis", float(target.beta_deg))

    def _command(self, target: StagePosition, fields: tuple[str, ...], name: str, *args: float) -> None:
        """Send one move command, then confirm the axes it moves (`fields` of StagePosition)."""
        if self._stop_requested.is_set():
            raise SerialEMError(f"move to {_position_text(target)} aborted by stop before {name}; nothing more "
                                f"was sent to SerialEM")
        self.link.call(name, *args)
        self._confirm(target, fields, name)

    def _reached(self, reached: StagePosition, target: StagePosition, fields: tuple[str, ...]) -> bool:
        return all(abs(getattr(reached, f) - getattr(target, f))
                   <= (self.tolerance_nm if f.endswith("_nm") else self.tolerance_deg) for f in fields)

    def _confirm(self, target: StagePosition, fields: tuple[str, ...], name: str) -> None:
        deadline = self._clock() + self.move_timeout_s
        while True:
            busy = self._busy()
            reached = self.position()
            if self._stop_requested.is_set():
                raise SerialEMError(f"move to {_position_text(target)} aborted by stop at {_position_text(reached)}; "
                                    f"nothing more was sent to SerialEM")
            if not busy and self._reached(reached, target, fields):
                return
            if self._clock() >= deadline:
                state = "still busy" if busy else "at rest"
                raise SerialEMError(
                    f"stage did not reach {_position_text(target)} within {self.move_timeout_s:g} s after {name} "
                    f"(reads {_position_text(reached)}, {state}; tolerance {self.tolerance_nm:g} nm, "
                    f"{self.tolerance_deg:g} deg)")
            self._sleep(self.poll_s)

    def stop(self) -> None:
        """End a move under way (another thread) with an error and send nothing more.

        SerialEM has no command that stops a stage move, and takes one command at a
        time, so nothing is sent: the command under way ends where SerialEM takes it.
        """
        self._stop_requested.set()


def _position_text(position: StagePosition) -> str:
    return (f"x {position.x_nm:.1f} nm, y {position.y_nm:.1f} nm, z {position.z_nm:.1f} nm, "
            f"alpha {position.alpha_deg:.2f} deg, beta {position.beta_deg:.2f} deg")


class SerialEMCamera:
    """Frames from one of SerialEM's camera parameter sets.

    Parameters
    ----------
    link : SerialEMLink
        The connection.
    parameter_set : {"record", "preview", "view"}
        The parameter set to acquire with (``Record``, ``Preview``, ``View``).
    binning : float
        Binning of that set.
    frame_px : int
        Side of the centred square frame, binned pixels.
    pixel_size_nm : float
        The calibrated pixel size the config gives.
    pixel_size_tolerance : float
        Largest relative difference allowed between SerialEM's pixel size of a frame
        (when SerialEM has one) and `pixel_size_nm`: a larger one means another
        magnification or binning than the config's.
    """

    def __init__(self, link: SerialEMLink, *, parameter_set: str, binning: float, frame_px: int,
                 pixel_size_nm: float, pixel_size_tolerance: float = 0.05):
        if parameter_set not in ACQUIRE_CALLS:
            raise ValueError(f"parameter_set must be one of {sorted(ACQUIRE_CALLS)}, got {parameter_set!r}")
        self.link = link
        self.parameter_set = parameter_set
        self.binning = float(binning)
        self.frame_px = int(frame_px)
        self.pixel_size_nm = float(pixel_size_nm)
        self.pixel_size_tolerance = float(pixel_size_tolerance)

    def configure(self) -> None:
        """``SetCenteredSize``: the parameter set's binning and a centred ``frame_px`` square."""
        self.link.call("SetCenteredSize", SET_LETTERS[self.parameter_set], self.binning, self.frame_px, self.frame_px)

    def acquire(self) -> np.ndarray:
        """Acquire with the parameter set; the image in buffer A, checked, as a copy.

        Raises
        ------
        SerialEMError
            If the acquisition fails, or the frame is not ``frame_px`` square at the
            configured binning and pixel size.
        """
        command = ACQUIRE_CALLS[self.parameter_set]
        self.link.call(command)
        image = self.link.buffer_image("A")
        size_x, size_y, binning, _exposure_s, pixel_nm, used_set = _numbers(
            "ImageProperties", self.link.call("ImageProperties", "A"), 6)
        if image.ndim != 2 or image.shape != (int(size_y), int(size_x)):
            raise SerialEMError(f"SerialEM bufferImage('A') gave an array of shape {image.shape}, but ImageProperties "
                                f"reports {size_x:g} x {size_y:g} pixels")
        if image.shape != (self.frame_px, self.frame_px) or abs(binning - self.binning) > 1e-6:
            raise SerialEMError(
                f"SerialEM {command} gave a {image.shape[1]} x {image.shape[0]} image at binning {binning:g}, expected "
                f"{self.frame_px} x {self.frame_px} at binning {self.binning:g}: frame_px times binning must fit "
                f"the camera ({command} set area)")
        if used_set != SET_NUMBERS[self.parameter_set]:
            raise SerialEMError(f"SerialEM's ImageProperties says the {command} image was taken with parameter set "
                                f"{used_set:g}, expected {SET_NUMBERS[self.parameter_set]:g} ({self.parameter_set})")
        if pixel_nm > 0 and abs(pixel_nm - self.pixel_size_nm) > self.pixel_size_tolerance * self.pixel_size_nm:
            raise SerialEMError(
                f"SerialEM reports a pixel size of {pixel_nm:g} nm for this {command} image, but the config gives "
                f"pixel_size_nm = {self.pixel_size_nm:g} (more than {100 * self.pixel_size_tolerance:g} % apart): "
                f"set the magnification and binning the config was calibrated at")
        return image


class SerialEMMicroscope(StageAndCamera):
    """A :class:`~stage_acceptance.microscope.Microscope` that SerialEM drives.

    The image shift (``ReportImageShift``) is read when the microscope is opened and
    before every frame: it moves the image without moving the stage, so a change
    during the run (a Navigator realign, a user, another script) would be measured as
    a stage error. A change larger than `image_shift_tolerance_nm` (its stage
    equivalent; without an image-shift calibration, any change of more than
    :data:`IS_UNITS_TOLERANCE` IS units) ends the run with an error naming both values.

    Parameters
    ----------
    stage : SerialEMStage
    camera : SerialEMCamera
    name : str
        Microscope name for the recording and report.
    pixel_size_nm : float
        Calibrated pixel size at the magnification and binning used.
    frame_px : int
        Frame size in pixels.
    image_shift_tolerance_nm : float
        Largest change of the image shift allowed during the run.
    clock, sleep : callable
        Instrument time source and sleep (replaceable in tests).
    """

    def __init__(self, stage: SerialEMStage, camera: SerialEMCamera, *, name: str, pixel_size_nm: float,
                 frame_px: int, image_shift_tolerance_nm: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(stage, name=name, pixel_size_nm=pixel_size_nm, frame_px=frame_px, clock=clock, sleep=sleep)
        if not (math.isfinite(image_shift_tolerance_nm) and image_shift_tolerance_nm > 0):
            raise ValueError(f"image_shift_tolerance_nm must be a finite number > 0, got {image_shift_tolerance_nm}")
        self.camera = camera
        self.image_shift_tolerance_nm = float(image_shift_tolerance_nm)
        self.image_shift_at_start = self._image_shift()
        """``(IS x, IS y, stage x nm, stage y nm)``: the image shift when the microscope was opened."""

    def _image_shift(self) -> tuple[float, float, float, float]:
        is_x, is_y, _px_x, _px_y, stage_x_um, stage_y_um = _numbers(
            "ReportImageShift", self.stage.link.call("ReportImageShift"), 6)
        return is_x, is_y, stage_x_um / UM_PER_NM, stage_y_um / UM_PER_NM

    def _check_image_shift(self) -> None:
        start = self.image_shift_at_start
        now = self._image_shift()
        calibrated = any(value != 0 for value in start[2:] + now[2:])
        if calibrated:
            change_nm = math.hypot(now[2] - start[2], now[3] - start[3])
            changed = change_nm > self.image_shift_tolerance_nm
            what = f"by {change_nm:.1f} nm of stage equivalent (tolerance {self.image_shift_tolerance_nm:g} nm)"
        else:
            changed = max(abs(now[0] - start[0]), abs(now[1] - start[1])) > IS_UNITS_TOLERANCE
            what = "(no image-shift calibration at this magnification: compared in IS units)"
        if changed:
            raise SerialEMError(
                f"the image shift changed during the run {what}: IS {start[0]:.4g}, {start[1]:.4g} when the run "
                f"started, {now[0]:.4g}, {now[1]:.4g} now; it moves the image without moving the stage, so keep "
                f"it fixed (no realign or Reset IS during the run)")

    def check_target(self, target: StagePosition) -> None:
        """Refuse a target the stage cannot reach (:meth:`SerialEMStage.check_target`)."""
        self.stage.check_target(target)

    def acquire(self) -> np.ndarray:
        self._check_image_shift()
        return self.camera.acquire()

    def close(self) -> None:
        """Leave the stage where it is and give SerialEM back to its user (``Exit(1)``)."""
        self.stage.link.release()

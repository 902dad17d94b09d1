"""JEOL microscopes through PyJEM (``PyJEM.TEM3.Stage3``), importable without PyJEM.

PyJEM's ``Stage3`` reports ``GetPos()`` as ``[x, y, z, tilt_x, tilt_y, ...]`` in
nanometres and degrees, moves one axis per call (``SetX``, ``SetY``, ``SetZ``,
``SetTiltXAngle``, ``SetTiltYAngle``), reports per-axis ``GetStatus()`` (0 at rest,
1 moving, 2 hardware limit) and stops with ``Stop()``. Its setters can return before
the stage has started moving, so a status "at rest" right after a call proves nothing:
:class:`PyJEMStage` waits until the axis is at rest **and** reports the target within a
tolerance, and stops the stage if that does not happen in time.

A microscope config with ``kind = "pyjem"`` opens it (:func:`open_pyjem`); on the
microscope PC serve it with ``stage-acceptance serve --microscope NAME``. Images come
from a PyJEM detector (``[pyjem] detector``: ``PyJEM.detector.Detector(name)``, whose
``snapshot_rawdata()`` returns the raw 16-bit frame) or from any Python callable
(``[pyjem] camera = "module:function"``, e.g. a facility's Gatan or Thermo camera
bridge) that returns a 2-D array.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..geometry import AXES, StagePosition
from ..microscope import BackendError, ReadbackStage, StageAndCamera

if TYPE_CHECKING:
    from ..config import MicroscopeConfig

STATUS_REST = 0
STATUS_MOVING = 1
STATUS_HARDWARE_LIMIT = 2

NOT_INSTALLED = "PyJEM is not installed: the PyJEM backend runs on the JEOL microscope PC (pip install PyJEM there)"

_SETTERS = {"x": "SetX", "y": "SetY", "z": "SetZ", "alpha": "SetTiltXAngle", "beta": "SetTiltYAngle"}


class PyJEMError(BackendError):
    """The JEOL stage failed, refused or did not reach a target. The message is one line."""


def load_stage3():
    """A ``PyJEM.TEM3.Stage3`` instance.

    Raises
    ------
    PyJEMError
        If PyJEM is not installed (it exists only on JEOL microscope PCs).
    """
    try:
        from PyJEM import TEM3
    except ImportError:
        raise PyJEMError(NOT_INSTALLED) from None
    return TEM3.Stage3()


def detector_camera(name: str, frame_px: int) -> Callable[[], np.ndarray]:
    """A camera call for the PyJEM detector `name` (``PyJEM.detector.Detector``).

    ``snapshot_rawdata()`` returns the frame as raw little-endian 16-bit pixels; the
    detector's image size must be `frame_px` x `frame_px`.

    Raises
    ------
    PyJEMError
        If PyJEM is not installed or the detector cannot be opened.
    """
    try:
        from PyJEM.detector import Detector
    except ImportError:
        raise PyJEMError(NOT_INSTALLED) from None
    try:
        detector = Detector(name)
    except Exception as exc:
        raise PyJEMError(f"cannot open PyJEM detector {name!r}: {type(exc).__name__}: {exc}") from None
    expected = frame_px * frame_px * 2

    def snapshot() -> np.ndarray:
        raw = detector.snapshot_rawdata()
        if len(raw) != expected:
            raise PyJEMError(f"detector {name!r} returned {len(raw)} bytes, expected {expected} for a "
                             f"{frame_px} x {frame_px} 16-bit frame: set its image size to frame_px = {frame_px}")
        return np.frombuffer(raw, dtype="<u2").reshape(frame_px, frame_px).copy()

    return snapshot


def python_camera(spec: str, config_dir: Path | None = None) -> Callable[[], np.ndarray]:
    """The camera call ``"module:function"``.

    The module is imported from the Python path, or else from ``module.py`` in
    `config_dir` (the folder of the microscope config).

    Raises
    ------
    PyJEMError
        If the module or the function cannot be found.
    """
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        local = config_dir / f"{module_name.replace('.', '/')}.py" if config_dir else None
        if exc.name != module_name.split(".")[0] or local is None or not local.is_file():
            raise PyJEMError(f"camera {spec!r}: cannot import {module_name!r} ({exc}); put it on the Python "
                             f"path or next to the microscope config") from None
        loader = importlib.util.spec_from_file_location(module_name, local)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        loader.loader.exec_module(module)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise PyJEMError(f"camera {spec!r}: {module_name} has no function {function_name!r}")
    return function


def open_pyjem(config: "MicroscopeConfig") -> "PyJEMMicroscope":
    """The JEOL microscope a ``kind = "pyjem"`` config describes.

    Raises
    ------
    PyJEMError
        If PyJEM, the detector or the camera function is missing.
    """
    options = config.pyjem
    if options.detector is not None:
        camera = detector_camera(options.detector, config.frame_px)
    else:
        camera = python_camera(options.camera, config.path.parent if config.path else None)
    stage = PyJEMStage(load_stage3(), tolerance_nm=options.tolerance_nm, tolerance_deg=options.tolerance_deg,
                       move_timeout_s=options.move_timeout_s, poll_s=options.poll_s)
    return PyJEMMicroscope(stage, camera, name=config.name, pixel_size_nm=config.pixel_size_nm,
                           frame_px=config.frame_px)


class PyJEMStage(ReadbackStage):
    """Confirmed moves of a JEOL stage.

    Parameters
    ----------
    stage3 : object
        ``PyJEM.TEM3.Stage3()`` or anything with the same methods.
    tolerance_nm : float
        A move of x, y or z is done when the stage reports the target within this.
    tolerance_deg : float
        The same for the tilts.
    move_timeout_s : float
        Longest time one axis may take; then the stage is stopped and the move fails.
    poll_s : float
        Time between status polls.
    clock, sleep : callable
        Time source and sleep (replaceable in tests).
    """

    def __init__(self, stage3, *, tolerance_nm: float = 50.0, tolerance_deg: float = 0.1,
                 move_timeout_s: float = 120.0, poll_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        super().__init__(tolerance_nm=tolerance_nm, tolerance_deg=tolerance_deg, move_timeout_s=move_timeout_s,
                         poll_s=poll_s, clock=clock, sleep=sleep)
        self.stage3 = stage3

    def position(self) -> StagePosition:
        """``GetPos()`` as a :class:`StagePosition`.

        Raises
        ------
        PyJEMError
            If ``GetPos`` returns fewer than five finite numbers.
        """
        values = list(self.stage3.GetPos())
        if len(values) < 5:
            raise PyJEMError(f"Stage3.GetPos returned {len(values)} values, expected at least 5 (x, y, z, tx, ty)")
        try:
            numbers = [float(v) for v in values[:5]]
        except (TypeError, ValueError):
            raise PyJEMError(f"Stage3.GetPos returned non-numbers {values[:5]!r}") from None
        if not all(math.isfinite(v) for v in numbers):
            raise PyJEMError(f"Stage3.GetPos returned non-finite values {numbers!r}")
        return StagePosition(*numbers)

    def _status(self, index: int) -> int:
        status = list(self.stage3.GetStatus())
        if len(status) <= index:
            raise PyJEMError(f"Stage3.GetStatus returned {len(status)} values, expected at least {index + 1}")
        return int(status[index])

    def _tolerance(self, axis: str) -> float:
        return self.tolerance_deg if axis in ("alpha", "beta") else self.tolerance_nm

    def move_to(self, target: StagePosition) -> None:
        """Move axis by axis (x, y, z, alpha, beta) and confirm each.

        Axes already within tolerance are not commanded.

        Raises
        ------
        PyJEMError
            For a hardware limit, or an axis not at the target within ``move_timeout_s``
            (the stage is stopped first).
        """
        self._stop_requested.clear()
        goals = dict(zip(AXES, target.as_tuple()))
        for index, axis in enumerate(AXES):
            if self._stop_requested.is_set():
                raise PyJEMError(f"move to {target.as_dict()} aborted by stop; stage stopped where it is")
            current = dict(zip(AXES, self.position().as_tuple()))[axis]
            if abs(current - goals[axis]) <= self._tolerance(axis):
                continue
            getattr(self.stage3, _SETTERS[axis])(goals[axis])
            self._confirm(index, axis, goals[axis])

    def _confirm(self, index: int, axis: str, goal: float) -> None:
        unit = "deg" if axis in ("alpha", "beta") else "nm"
        deadline = self._clock() + self.move_timeout_s
        while True:
            status = self._status(index)
            if status == STATUS_HARDWARE_LIMIT:
                self.stage3.Stop()
                raise PyJEMError(f"stage {axis} hit a hardware limit moving to {goal:g} {unit}; stage stopped")
            reached = dict(zip(AXES, self.position().as_tuple()))[axis]
            if self._stop_requested.is_set():
                raise PyJEMError(f"move of {axis} to {goal:g} {unit} aborted by stop at {reached:g} {unit}; "
                                 f"stage stopped where it is")
            if status == STATUS_REST and abs(reached - goal) <= self._tolerance(axis):
                return
            if self._clock() >= deadline:
                self.stage3.Stop()
                raise PyJEMError(f"stage {axis} did not reach {goal:g} {unit} within {self.move_timeout_s:g} s "
                                 f"(reports {reached:g} {unit}, status {status}); stage stopped")
            self._sleep(self.poll_s)

    def stop(self) -> None:
        """Stop every axis where it is; a move under way (another thread) ends with an error."""
        self._stop_requested.set()
        self.stage3.Stop()


class PyJEMMicroscope(StageAndCamera):
    """A :class:`~stage_acceptance.microscope.Microscope` of a JEOL stage and a camera.

    Parameters
    ----------
    stage : PyJEMStage
        The stage.
    camera : callable
        ``camera()`` returns one image, a 2-D array ``frame_px x frame_px``.
    name : str
        Microscope name for the recording and report.
    pixel_size_nm : float
        Calibrated pixel size at the magnification used.
    frame_px : int
        Frame size in pixels.
    clock, sleep : callable
        Instrument time source and sleep (replaceable in tests).
    """

    def __init__(self, stage: PyJEMStage, camera: Callable[[], np.ndarray], *, name: str,
                 pixel_size_nm: float, frame_px: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(stage, name=name, pixel_size_nm=pixel_size_nm, frame_px=frame_px, clock=clock, sleep=sleep)
        self.camera = camera

    def acquire(self) -> np.ndarray:
        image = np.asarray(self.camera())
        if image.shape != (self.frame_px, self.frame_px):
            raise PyJEMError(f"camera returned an image of shape {image.shape}, expected "
                             f"({self.frame_px}, {self.frame_px})")
        return image

    def close(self) -> None:
        """Leave the stage where it is; PyJEM holds no connection to release."""

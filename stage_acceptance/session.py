"""Frames, sessions, the recording-v1 folder, and the runner that executes protocols.

A live run writes its recording frame by frame (``frames.jsonl`` is flushed after
every frame), so a run that is interrupted leaves a valid recording up to its last
frame. :func:`read_recording` reads any recording-v1 folder, whoever wrote it, and
names the file and line of anything malformed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np
import tifffile

from .config import schema_problem
from .geometry import StagePosition, StageToImage
from .microscope import Envelope
from .protocols import Protocol

FORMAT = "stage-acceptance/recording"
VERSION = 1


class RecordingError(ValueError):
    """A recording folder is malformed. The message names the file (and line)."""


@dataclass(frozen=True)
class Frame:
    """One acquired image and the positions around it (a line of ``frames.jsonl``)."""

    index: int
    time_s: float
    target: StagePosition | None
    """None where the acquiring tool did not record the command (recording-v1 ``null``)."""
    reported: StagePosition
    image: str
    protocol: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        record = {
            "index": self.index,
            "time_s": self.time_s,
            "target": None if self.target is None else self.target.as_dict(),
            "reported": self.reported.as_dict(),
            "image": self.image,
        }
        if self.protocol is not None:
            record["protocol"] = self.protocol
        record.update(self.extra)
        return record


@dataclass
class Session:
    """A recorded session: what ``session.json`` shares, the frames, the images.

    Parameters
    ----------
    meta : dict
        The content of ``session.json`` (unknown keys kept).
    frames : list of Frame
    directory : Path
        The recording folder; image paths are relative to it.
    """

    meta: dict
    frames: list[Frame]
    directory: Path
    _shape: tuple[int, int] | None = field(default=None, repr=False)
    unreadable: dict[int, str] = field(default_factory=dict)
    """Frames whose image cannot be used (missing, not a TIFF, wrong shape), and why;
    their pairs are left out of the analysis."""
    incomplete: str | None = None
    """Why the recording is not a whole session (None when it is, or cannot tell)."""

    @property
    def microscope(self) -> str:
        return self.meta["microscope"]

    @property
    def holder(self) -> str | None:
        return self.meta.get("holder")

    @property
    def pixel_size_nm(self) -> float:
        return float(self.meta["pixel_size_nm"])

    @property
    def stage_to_image(self) -> StageToImage | None:
        """The calibrated transform, or None when the analysis must estimate it."""
        s2i = self.meta.get("stage_to_image")
        if s2i is None:
            return None
        return StageToImage(float(s2i["rotation_deg"]), bool(s2i.get("flip_y", False)))

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the session's frames (of its first usable image)."""
        if self._shape is None:
            usable = next((i for i in range(len(self.frames)) if i not in self.unreadable), None)
            if usable is None:
                raise RecordingError(f"{self.directory}: no frame has a usable image")
            self._shape = tuple(self.image(usable).shape)
        return self._shape

    def image(self, index: int) -> np.ndarray:
        """The image of frame `index` as a 2-D array, read from the recording.

        Nothing is cached here: a long session is never held in memory (the
        analysis keeps the few frames its next pairs need).

        Raises
        ------
        RecordingError
            One line naming the frame, when its image cannot be used (the content of
            the file is never echoed).
        """
        if index in self.unreadable:
            raise RecordingError(f"frame {index}: {self.unreadable[index]}")
        path = image_path(self.directory, self.frames[index].image, f"frame {index}")
        try:
            image = tifffile.imread(path)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise RecordingError(f"frame {index}: image '{_short(self.frames[index].image)}' cannot be "
                                 f"read as a TIFF ({type(exc).__name__})") from None
        if image.ndim != 2:
            raise RecordingError(f"frame {index}: image must be single-channel 2-D, got shape {image.shape}")
        return image

    def targets_nm(self) -> np.ndarray:
        """``(n_frames, 5)`` array of targets (x, y, z nm, alpha, beta deg); NaN rows
        for frames without a recorded target."""
        return np.array([np.full(5, np.nan) if f.target is None else f.target.as_array()
                         for f in self.frames]).reshape(-1, 5)

    def reported_nm(self) -> np.ndarray:
        """``(n_frames, 5)`` array of reported positions."""
        return np.array([f.reported.as_array() for f in self.frames]).reshape(-1, 5)

    def times_s(self) -> np.ndarray:
        return np.array([f.time_s for f in self.frames], dtype=float)

    def image_shifts(self) -> tuple[np.ndarray, np.ndarray]:
        """The image shift in effect for each frame, ``(n_frames, 2)`` arrays ``(x, y)``:
        ``image_shift_nm`` (nm at the specimen, stage axes) and ``image_shift_raw`` (the
        acquiring tool's own units, not calibrated); NaN rows where a frame has none.
        Within an object a missing ``x`` or ``y`` means 0, as in a position."""
        def rows(key):
            return np.array([[float(f.extra[key].get("x", 0.0)), float(f.extra[key].get("y", 0.0))]
                             if isinstance(f.extra.get(key), dict) else [np.nan, np.nan]
                             for f in self.frames], dtype=float).reshape(-1, 2)

        return rows("image_shift_nm"), rows("image_shift_raw")

    def protocols(self) -> list[str | None]:
        return [f.protocol for f in self.frames]


# --------------------------------------------------------------------------- reading

MAX_FRAMES = 1_000_000
"""Most frames a recording may hold (a night of automation is a few 10,000)."""
MAX_TIME_S = 1.0e7
"""Latest frame time, seconds since the first frame (about 116 days)."""
MAX_POSITION_NM = 1.0e8
"""Largest |x|, |y|, |z| of a position or image shift, nm (10 cm: beyond any stage)."""
MAX_TILT_DEG = 360.0
MAX_SESSION_JSON_BYTES = 1 << 20
MAX_LINE_BYTES = 1 << 16
MAX_TEXT = 10_000
"""Longest free text (notes); names and paths are shorter (:data:`MAX_NAME`)."""
MAX_NAME = 1000
MAX_MONTAGE_INDEX = 9999
"""Largest column or row of a montage piece (``montage_piece``)."""

_nm = {"type": "number", "minimum": -MAX_POSITION_NM, "maximum": MAX_POSITION_NM}
_deg = {"type": "number", "minimum": -MAX_TILT_DEG, "maximum": MAX_TILT_DEG}
_name = {"type": "string", "maxLength": MAX_NAME}
_piece = {"type": "integer", "minimum": 0, "maximum": MAX_MONTAGE_INDEX}

_position_schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"x": _nm, "y": _nm, "z": _nm, "alpha": _deg, "beta": _deg},
}

SESSION_SCHEMA = {
    "type": "object",
    "required": ["format", "version", "microscope", "pixel_size_nm"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "microscope": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "holder": _name,
        "pixel_size_nm": {"type": "number", "exclusiveMinimum": 0, "maximum": 1.0e6},
        "stage_to_image": {
            "type": "object",
            "required": ["rotation_deg"],
            "properties": {"rotation_deg": _deg, "flip_y": {"type": "boolean"}},
        },
        "started": {"type": "string", "maxLength": 64},
        "notes": {"type": "string", "maxLength": MAX_TEXT},
        "stage_acceptance": {  # this project's extension; other writers leave it out
            "type": "object",
            "properties": {
                "origin": _position_schema,
                "protocols": {"type": "array", "maxItems": 100, "items": {"type": "string", "maxLength": 100}},
                "protocol": {"type": "object"},
                "complete": {"type": "boolean"},
                "frames": {"type": "integer", "minimum": 0, "maximum": MAX_FRAMES},
                "finished": {"type": "string", "maxLength": 64},
            },
        },
    },
}

FRAME_SCHEMA = {
    "type": "object",
    "required": ["index", "time_s", "target", "reported", "image"],
    "properties": {
        "index": {"type": "integer", "minimum": 0, "maximum": MAX_FRAMES},
        "time_s": {"type": "number", "minimum": 0, "maximum": MAX_TIME_S},
        "target": {"anyOf": [_position_schema, {"type": "null"}]},
        "reported": _position_schema,
        "image": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "protocol": {"type": "string", "maxLength": 100},
        "image_shift_nm": {"type": "object", "properties": {"x": _nm, "y": _nm}},
        # This project's addition: the image shift in the acquiring tool's own units, where
        # no calibration to nm is known (a change of it leaves the pair's actual motion unknown).
        "image_shift_raw": {"type": "object", "additionalProperties": False, "required": ["x", "y"],
                            "properties": {"x": _nm, "y": _nm}},
        # This project's addition: the place of a montage piece in the assembled montage
        # image (column along image x, row along image y; stage_acceptance.montage).
        "montage_piece": {"type": "object", "additionalProperties": False, "required": ["column", "row"],
                          "properties": {"column": _piece, "row": _piece}},
    },
}

_FRAME_KEYS = set(FRAME_SCHEMA["properties"]) - {"image_shift_nm", "image_shift_raw", "montage_piece"}


def _short(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters for a one-line message."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def load_json_strict(text: str):
    """json.loads that rejects NaN and Infinity (not JSON), and deep nesting, as ValueError."""

    def reject(constant):
        raise ValueError(f"{constant} is not valid JSON")

    try:
        return json.loads(text, parse_constant=reject)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def image_path(root: Path, name: str, where: str) -> Path:
    """The file of an ``image`` entry, which must lie inside the recording's ``images/``.

    Checked on the path alone: ``..``, an absolute path or a symlink (of the file or
    of ``images/``) leaving the folder is refused before anything is read.

    Raises
    ------
    RecordingError
        ``"<where>: key 'image' is '../x.tif': ..."`` (the value cut to 60 characters).
    """
    text = str(name).replace("\\", "/")
    parts = PurePosixPath(text).parts
    problem = None
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        problem = "an absolute path"
    elif ".." in parts:
        problem = "a path with '..'"
    elif len(parts) < 2 or parts[0] != "images":
        problem = "not inside the recording's images/ folder"
    else:
        folder = (root / "images").resolve()
        if not folder.is_relative_to(root.resolve()):
            problem = "inside an images/ folder that is a link out of the recording"
        elif not (root / text).resolve().is_relative_to(folder):
            problem = "a link out of the recording's images/ folder"
    if problem:
        raise RecordingError(f"{where}: key 'image' is '{_short(name)}': {problem}; every image must lie inside "
                             f"{root / 'images'}")
    return root / text


def _read_text(path: Path, limit: int | None) -> str:
    """A file's text: UTF-8 (without a byte-order mark), at most `limit` bytes."""
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise RecordingError(f"{path}: {size} bytes, more than the {limit} a recording's {path.name} may have")
    data = path.read_bytes()
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise RecordingError(f"{path}: starts with a byte-order mark; recording-v1 files are UTF-8 without one")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _image_problem(root: Path, name: str, where: str) -> tuple[tuple[int, ...] | None, str]:
    """``(shape, "")`` of a frame's TIFF, or ``(None, why it cannot be used)``."""
    path = image_path(root, name, where)
    if not path.is_file():
        return None, f"image '{_short(name)}' not found"
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tuple(tif.pages[0].shape)
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        return None, f"image '{_short(name)}' is not a readable TIFF ({type(exc).__name__})"
    if len(shape) != 2:
        return None, f"image '{_short(name)}' must be single-channel 2-D, got shape {shape}"
    return shape, ""


def read_recording(directory: str | Path) -> Session:
    """Read and check a recording-v1 folder.

    Every value is checked against :data:`SESSION_SCHEMA` and :data:`FRAME_SCHEMA`
    (types and bounds), frame times must not decrease, and every ``image`` must lie
    inside ``images/`` (:func:`image_path`). A frame whose image is missing, not a
    TIFF or of another shape is kept and marked (``Session.unreadable``): its pairs
    are left out of the analysis with the reason. A torn last line of
    ``frames.jsonl`` (a run killed while writing it) is dropped, and so is a
    recording whose run did not finish: both are marked ``Session.incomplete``.

    Parameters
    ----------
    directory : str or Path
        The folder holding ``session.json``, ``frames.jsonl`` and the images.

    Returns
    -------
    Session
        Images are loaded lazily by :meth:`Session.image`.

    Raises
    ------
    RecordingError
        One line naming the file (and line of ``frames.jsonl``), the key and what is
        wrong; a value is never echoed beyond 60 characters.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RecordingError(f"{root}: recording folder not found")
    session_path = root / "session.json"
    frames_path = root / "frames.jsonl"
    for path in (session_path, frames_path):
        if not path.is_file():
            raise RecordingError(f"{path}: missing (a recording-v1 folder needs session.json and frames.jsonl)")
    try:
        meta = load_json_strict(_read_text(session_path, MAX_SESSION_JSON_BYTES))
    except ValueError as exc:
        if isinstance(exc, RecordingError):
            raise
        raise RecordingError(f"{session_path}: not valid JSON: {_short(exc, 120)}") from None
    if not isinstance(meta, dict):
        raise RecordingError(f"{session_path}: must hold a JSON object")
    problem = schema_problem(meta, SESSION_SCHEMA)
    if problem:
        raise RecordingError(f"{session_path}: {problem}")

    lines = _read_text(frames_path, None).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    frames: list[Frame] = []
    unreadable: dict[int, str] = {}
    incomplete = None
    shape = None
    previous_time = 0.0
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{frames_path}:{line_no}"
        if len(line) > MAX_LINE_BYTES:
            raise RecordingError(f"{where}: line of {len(line)} characters, more than {MAX_LINE_BYTES}")
        try:
            record = load_json_strict(line)
        except ValueError as exc:
            if line_no == len(lines) and frames:
                incomplete = (f"{where}: the last line is torn (a run stopped while writing it); read up to "
                              f"frame {len(frames) - 1}")
                break
            raise RecordingError(f"{where}: not valid JSON: {_short(exc, 120)}") from None
        if not isinstance(record, dict):
            raise RecordingError(f"{where}: each line must be a JSON object")
        problem = schema_problem(record, FRAME_SCHEMA)
        if problem:
            raise RecordingError(f"{where}: {problem}")
        if record["index"] != len(frames):
            raise RecordingError(f"{where}: key 'index' is {record['index']}, expected {len(frames)} "
                                 f"(frames in order 0, 1, 2, ...)")
        if record["time_s"] < previous_time:
            raise RecordingError(f"{where}: key 'time_s' is {record['time_s']:g}, before the previous frame's "
                                 f"{previous_time:g}: frame times must not decrease")
        previous_time = float(record["time_s"])
        page_shape, why = _image_problem(root, record["image"], where)
        if page_shape is not None and shape is None:
            shape = page_shape
        elif page_shape is not None and page_shape != shape:
            why = f"image '{_short(record['image'])}' has shape {page_shape}, the session's frames are {shape}"
        if why:
            unreadable[len(frames)] = why
        frames.append(
            Frame(
                index=record["index"],
                time_s=float(record["time_s"]),
                target=None if record["target"] is None else StagePosition.from_dict(record["target"]),
                reported=StagePosition.from_dict(record["reported"]),
                image=record["image"],
                protocol=record.get("protocol"),
                extra={k: v for k, v in record.items() if k not in _FRAME_KEYS},
            )
        )
    if len(frames) < 2:
        raise RecordingError(f"{frames_path}: a session needs at least 2 frames, found {len(frames)}")
    if shape is None:
        raise RecordingError(f"{root}: no frame has a usable image (frame 0: {unreadable.get(0, '')})")
    extension = meta.get("stage_acceptance") or {}
    if extension.get("complete") is False and incomplete is None:
        incomplete = (f"{session_path}: the run that wrote this recording did not finish "
                      f"({len(frames)} frames recorded)")
    return Session(meta=meta, frames=frames, directory=root, unreadable=unreadable, incomplete=incomplete)


# --------------------------------------------------------------------------- writing


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".session-", suffix=".json")
    os.chmod(tmp, 0o644)  # readable by colleagues, like every other file of the recording
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)


def storable(image) -> np.ndarray:
    """The image in the type a detector would give: integer counts as ``uint16`` (or
    ``int16``, ``int32``) when every value is an integer that fits, else as it is.

    Lossless: the stored values are exactly the given ones.
    """
    image = np.asarray(image)
    if image.dtype.kind != "f" or not np.all(np.isfinite(image)) or not np.array_equal(image, np.round(image)):
        return image
    low, high = float(image.min()), float(image.max())
    for dtype in (np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return image.astype(dtype)
    return image


class RecordingWriter:
    """Write a recording-v1 folder frame by frame.

    Parameters
    ----------
    directory : str or Path
        Folder to create; it must not already hold a recording.
    meta : dict
        ``session.json`` content without ``format`` and ``version`` (added here):
        at least ``microscope`` and ``pixel_size_nm``.
    stamp_start : bool
        Write ``started`` (now, UTC) with the first frame: a live run. An importer of
        frames taken earlier gives False and keeps whatever `meta` says.
    """

    def __init__(self, directory: str | Path, meta: dict, *, stamp_start: bool = True):
        self.directory = Path(directory)
        self.stamp_start = stamp_start
        if (self.directory / "frames.jsonl").exists():
            raise RecordingError(f"{self.directory}: already holds a recording; choose another --record folder")
        (self.directory / "images").mkdir(parents=True, exist_ok=True)
        self.meta = {"format": FORMAT, "version": VERSION, **meta}
        # Until finish(): a reader tells a recording cut short from a whole one.
        self.meta["stage_acceptance"] = {**self.meta.get("stage_acceptance", {}), "complete": False}
        problem = schema_problem(self.meta, SESSION_SCHEMA)
        if problem:
            raise ValueError(f"session metadata: {problem}")
        _write_json_atomic(self.directory / "session.json", self.meta)
        self._frames_handle = open(self.directory / "frames.jsonl", "w", encoding="utf-8")
        self.frames: list[Frame] = []

    def append(self, *, time_s: float, target: StagePosition | None, reported: StagePosition,
               image: np.ndarray, protocol: str | None, extra: dict | None = None) -> Frame:
        """Store one frame: the image file first, then its line in ``frames.jsonl``.

        The image is a TIFF compressed losslessly (deflate, readable by tifffile and
        Fiji), integer counts in an integer type (:func:`storable`). `target` is None
        where the command is not known (recording-v1 ``null``); `extra` holds further
        keys of the line (e.g. ``image_shift_nm``, ``montage_piece``), checked against
        :data:`FRAME_SCHEMA` like everything else.
        """
        index = len(self.frames)
        if index == 0 and self.stamp_start:
            self.meta["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
            _write_json_atomic(self.directory / "session.json", self.meta)
        name = f"images/{index:05d}.tif"
        tifffile.imwrite(self.directory / name, storable(image), compression="zlib", compressionargs={"level": 1})
        frame = Frame(index=index, time_s=float(time_s), target=target, reported=reported, image=name,
                      protocol=protocol, extra=dict(extra or {}))
        record = frame.to_json()
        problem = schema_problem(record, FRAME_SCHEMA)
        if problem:
            raise ValueError(f"frame {index}: {problem}")
        self._frames_handle.write(json.dumps(record, allow_nan=False) + "\n")
        self._frames_handle.flush()
        self.frames.append(frame)
        return frame

    def discard(self) -> None:
        """Remove the folder of a recording that holds no frame (a run refused at once)."""
        if self.frames:
            raise RuntimeError(f"{self.directory}: holds {len(self.frames)} frame(s); not discarded")
        self.close()
        for path in (self.directory / "frames.jsonl", self.directory / "session.json"):
            path.unlink(missing_ok=True)
        for folder in (self.directory / "images", self.directory):
            try:
                folder.rmdir()
            except OSError:  # not empty: something else lives there; leave it
                return

    def finish(self) -> Session:
        """Mark the recording complete (the run took its last frame), close it, and
        return the session."""
        self.meta["stage_acceptance"].update(
            complete=True, frames=len(self.frames),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"))
        _write_json_atomic(self.directory / "session.json", self.meta)
        return self.close()

    def close(self) -> Session:
        """Close the folder and return the session (images kept in memory); a recording
        closed without :meth:`finish` reads as incomplete."""
        if not self._frames_handle.closed:
            self._frames_handle.close()
        return Session(meta=dict(self.meta), frames=list(self.frames), directory=self.directory)


# --------------------------------------------------------------------------- running

ProgressFn = Callable[[str, int, int], None]
"""``progress(protocol_name, frames_done, frames_total)``."""


def plan_visits(protocols: Iterable[Protocol], origin: StagePosition) -> list[tuple[Protocol, object, StagePosition]]:
    """Every visit of the protocols with its absolute target: ``(protocol, visit, target)``."""
    return [(protocol, visit, StagePosition.from_array(origin.as_array() + visit.offset.as_array()))
            for protocol in protocols for visit in protocol.visits]


def run_protocols(microscope: Envelope, protocols: Iterable[Protocol], writer: RecordingWriter, *,
                  settle_s: float = 0.0, origin: StagePosition | None = None,
                  progress: ProgressFn | None = None) -> Session:
    """Execute protocols on a microscope and record every frame.

    Every target is checked against the envelope *before the first move*, so a
    protocol that would leave the holder's limits is refused without moving.

    Parameters
    ----------
    microscope : Envelope
        The microscope behind its travel envelope.
    protocols : iterable of Protocol
        Executed in order; visits are offsets from `origin`.
    writer : RecordingWriter
        Where frames go, as they are taken.
    settle_s : float
        Wait after each move before imaging.
    origin : StagePosition, optional
        Session origin; default: the position the microscope reports now.
    progress : callable, optional
        Called as ``progress(name, done, total)`` before the first frame of a
        protocol (``done = 0``) and after every frame.

    Returns
    -------
    Session
    """
    protocols = list(protocols)
    if not protocols:
        raise ValueError("no protocol to run")
    if settle_s < 0:
        raise ValueError(f"settle_s must be >= 0, got {settle_s}")
    if origin is None:
        origin = microscope.position()
    plan = plan_visits(protocols, origin)
    microscope.check_all(target for _, _, target in plan)

    t0 = None
    current = None
    for protocol in protocols:
        steps = [(visit, target) for p, visit, target in plan if p is protocol]
        if progress:
            progress(protocol.name, 0, len(steps))
        for done, (visit, target) in enumerate(steps, start=1):
            if visit.wait_s > 0:
                microscope.wait(visit.wait_s)
            if target != current or visit.wait_s == 0:
                microscope.move_to(target)
                current = target
                if settle_s > 0:
                    microscope.wait(settle_s)
            reported = microscope.position()
            now = microscope.time_s()
            if t0 is None:
                t0 = now
            image = microscope.acquire()
            extra = None if visit.piece is None else {"montage_piece": {"column": visit.piece[0],
                                                                        "row": visit.piece[1]}}
            writer.append(time_s=now - t0, target=target, reported=reported, image=image, protocol=protocol.name,
                          extra=extra)
            if progress:
                progress(protocol.name, done, len(steps))
    return writer.finish()

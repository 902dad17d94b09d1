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
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tifffile

from .config import schema_problem
from .geometry import AXES, StagePosition, StageToImage
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
    _images: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

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

    def image(self, index: int) -> np.ndarray:
        """The image of frame `index` as a 2-D array (loaded once, then cached)."""
        if index not in self._images:
            path = self.directory / self.frames[index].image
            try:
                image = tifffile.imread(path)
            except (OSError, ValueError, tifffile.TiffFileError) as exc:
                raise RecordingError(f"{path}: cannot read image: {exc}") from None
            if image.ndim != 2:
                raise RecordingError(f"{path}: image must be single-channel 2-D, got shape {image.shape}")
            self._images[index] = image
        return self._images[index]

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

    def protocols(self) -> list[str | None]:
        return [f.protocol for f in self.frames]


# --------------------------------------------------------------------------- reading

_position_schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {axis: {"type": "number"} for axis in AXES},
}

SESSION_SCHEMA = {
    "type": "object",
    "required": ["format", "version", "microscope", "pixel_size_nm"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "microscope": {"type": "string"},
        "holder": {"type": "string"},
        "pixel_size_nm": {"type": "number", "exclusiveMinimum": 0},
        "stage_to_image": {
            "type": "object",
            "required": ["rotation_deg"],
            "properties": {"rotation_deg": {"type": "number"}, "flip_y": {"type": "boolean"}},
        },
        "started": {"type": "string"},
        "notes": {"type": "string"},
        "stage_acceptance": {  # this project's extension; other writers leave it out
            "type": "object",
            "properties": {
                "origin": _position_schema,
                "protocols": {"type": "array", "items": {"type": "string"}},
                "protocol": {"type": "object"},
            },
        },
    },
}

FRAME_SCHEMA = {
    "type": "object",
    "required": ["index", "time_s", "target", "reported", "image"],
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "time_s": {"type": "number"},
        "target": {"anyOf": [_position_schema, {"type": "null"}]},
        "reported": _position_schema,
        "image": {"type": "string", "minLength": 1},
        "protocol": {"type": "string"},
    },
}

_FRAME_KEYS = set(FRAME_SCHEMA["properties"])


def _load_json_strict(text: str):
    """json.loads that rejects NaN and Infinity (not JSON)."""

    def reject(constant):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=reject)


def read_recording(directory: str | Path) -> Session:
    """Read and check a recording-v1 folder.

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
        One line naming the file (and line of ``frames.jsonl``) and what is wrong.
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
        meta = _load_json_strict(session_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{session_path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise RecordingError(f"{session_path}: must hold a JSON object")
    problem = schema_problem(meta, SESSION_SCHEMA)
    if problem:
        raise RecordingError(f"{session_path}: {problem}")

    frames: list[Frame] = []
    shape = None
    with open(frames_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{frames_path}:{line_no}"
            try:
                record = _load_json_strict(line)
            except ValueError as exc:
                raise RecordingError(f"{where}: not valid JSON: {exc}") from None
            if not isinstance(record, dict):
                raise RecordingError(f"{where}: each line must be a JSON object")
            problem = schema_problem(record, FRAME_SCHEMA)
            if problem:
                raise RecordingError(f"{where}: {problem}")
            if record["index"] != len(frames):
                raise RecordingError(f"{where}: key 'index' is {record['index']}, expected {len(frames)} (frames in order 0, 1, 2, ...)")
            image_path = root / record["image"]
            if not image_path.is_file():
                raise RecordingError(f"{where}: image '{record['image']}' not found in {root}")
            try:
                with tifffile.TiffFile(image_path) as tif:
                    page_shape = tuple(tif.pages[0].shape)
            except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
                raise RecordingError(f"{where}: image '{record['image']}' is not a readable TIFF: {exc}") from None
            if len(page_shape) != 2:
                raise RecordingError(f"{where}: image '{record['image']}' must be single-channel 2-D, got shape {page_shape}")
            if shape is None:
                shape = page_shape
            elif page_shape != shape:
                raise RecordingError(f"{where}: image '{record['image']}' has shape {page_shape}, the session's frames are {shape}")
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
    return Session(meta=meta, frames=frames, directory=root)


# --------------------------------------------------------------------------- writing


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".session-", suffix=".json")
    os.chmod(tmp, 0o644)  # readable by colleagues, like every other file of the recording
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)


class RecordingWriter:
    """Write a recording-v1 folder frame by frame.

    Parameters
    ----------
    directory : str or Path
        Folder to create; it must not already hold a recording.
    meta : dict
        ``session.json`` content without ``format`` and ``version`` (added here):
        at least ``microscope`` and ``pixel_size_nm``.
    """

    def __init__(self, directory: str | Path, meta: dict):
        self.directory = Path(directory)
        if (self.directory / "frames.jsonl").exists():
            raise RecordingError(f"{self.directory}: already holds a recording; choose another --record folder")
        (self.directory / "images").mkdir(parents=True, exist_ok=True)
        self.meta = {"format": FORMAT, "version": VERSION, **meta}
        problem = schema_problem(self.meta, SESSION_SCHEMA)
        if problem:
            raise ValueError(f"session metadata: {problem}")
        _write_json_atomic(self.directory / "session.json", self.meta)
        self._frames_handle = open(self.directory / "frames.jsonl", "w", encoding="utf-8")
        self.frames: list[Frame] = []
        self._images: dict[int, np.ndarray] = {}

    def append(self, *, time_s: float, target: StagePosition, reported: StagePosition,
               image: np.ndarray, protocol: str | None) -> Frame:
        """Store one frame: the image file first, then its line in ``frames.jsonl``."""
        index = len(self.frames)
        if index == 0:
            self.meta["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
            _write_json_atomic(self.directory / "session.json", self.meta)
        name = f"images/{index:05d}.tif"
        tifffile.imwrite(self.directory / name, np.asarray(image))
        frame = Frame(index=index, time_s=float(time_s), target=target, reported=reported, image=name, protocol=protocol)
        self._frames_handle.write(json.dumps(frame.to_json(), allow_nan=False) + "\n")
        self._frames_handle.flush()
        self.frames.append(frame)
        self._images[index] = np.asarray(image)
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

    def close(self) -> Session:
        """Close the folder and return the session (images kept in memory)."""
        if not self._frames_handle.closed:
            self._frames_handle.close()
        return Session(meta=dict(self.meta), frames=list(self.frames), directory=self.directory, _images=dict(self._images))


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
            writer.append(time_s=now - t0, target=target, reported=reported, image=image, protocol=protocol.name)
            if progress:
                progress(protocol.name, done, len(steps))
    return writer.close()

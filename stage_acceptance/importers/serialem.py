"""SerialEM sessions (MRC stacks with their ``.mdoc`` metadata) as recording-v1 folders.

SerialEM saves images in MRC stacks and, per image, the microscope's state in an
``.mdoc`` file beside the stack (IMOD autodoc format, one ``[ZValue = n]`` section per
image): the stage readback ``StagePosition`` (x, y, micrometres) and ``StageZ``, the
``TiltAngle`` (degrees), the ``ImageShift`` (SerialEM's image-shift units, "close to
microns for Thermo/FEI, much larger than microns for JEOL"), the ``PixelSpacing``
(Angstrom) and the ``DateTime``. It does not record the commanded position of a move.

:func:`plan_import` reads and checks everything (the ``.mdoc`` files with
:mod:`mdocfile`, the MRC headers with :mod:`mrcfile`) before anything is written;
:func:`write_import` then writes the recording through
:class:`~stage_acceptance.session.RecordingWriter` into a temporary folder beside the
destination and renames it into place, so a failed import leaves nothing behind.
:func:`import_serialem` does both.

What the recording holds, per frame (acquisition order: by ``DateTime``, then the
order of the files given, then the section):

- ``target``: null (SerialEM records no command), ``reported``: ``StagePosition``
  and ``StageZ`` (um -> nm), ``TiltAngle`` as alpha; ``time_s`` from ``DateTime``;
- ``image_shift_nm`` when a calibration of SerialEM's image-shift units is given
  (``image_shift_to_nm``), else ``image_shift_raw`` (the units as recorded): a pair
  whose image shift changed without a calibration is not measured by the analysis;
- ``serialem``: where the frame came from (file, section) and the raw values of the
  ``.mdoc`` section (time, magnification, piece coordinates of a montage);
- ``montage_piece``: for the pieces of a montage (sections with ``PieceCoordinates``),
  the piece's column and row in the montage (:func:`piece_grid_indices`), so the
  montage analysis (:mod:`stage_acceptance.montage`) runs on it as on a live montage.

``PieceCoordinates`` are, per SerialEM's documentation of its ``.mdoc`` keys, the "pixel
coordinates in X and Y and section Z value for montage piece": the lower left corner of
the piece in the assembled montage, in pixels of the stored (binned) images, ``(piece
number - 1) * (frame - overlap)`` along each axis, so the piece spacing is the frame less
the overlap (global ``PieceSpacing`` in newer files). Their y runs along the image rows
as stored in the MRC file, which the imported images keep, so the grid row follows the
recording's image rows.

The images are written as TIFF (deflate, lossless) in the MRC's own row order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PureWindowsPath
from typing import Callable, Sequence

import mrcfile
import numpy as np
import pydantic
from mdocfile.data_models import MdocGlobalData, MdocSectionData
from mdocfile.utils import find_section_entries, find_title_entries

from .. import __version__
from ..geometry import StagePosition
from ..session import (MAX_FRAMES, MAX_MONTAGE_INDEX, MAX_NAME, MAX_POSITION_NM, RecordingWriter, Session,
                       read_recording)

MAX_MDOC_BYTES = 64 << 20
"""Largest ``.mdoc`` read (a montage of 10,000 pieces is about 15 MB)."""
MIN_SIDE_PX = 16
MAX_SIDE_PX = 16384
MAX_TILT_DEG = 360.0
MAX_PIXEL_NM = 1.0e6
MAX_IMAGE_SHIFT = MAX_POSITION_NM
"""Largest |image shift| in SerialEM units (JEOL units are large; this only refuses nonsense)."""
MAX_MATRIX = 1.0e6
"""Largest |entry| of an image-shift calibration, nm per unit."""
STACK_SUFFIXES = (".mrc", ".st", ".mrcs", ".map", ".ali", ".preali")
DATE_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S")
"""SerialEM's ``DateTime`` (``31-Mar-23  16:24:15``; the spaces are collapsed first)."""
_MODES_REAL = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}
"""MRC modes of real single-channel pixels (int8, int16, float32, uint16, float16): bytes per pixel."""
MAX_PIECE_PX = float(MAX_SIDE_PX * (MAX_MONTAGE_INDEX + 1))
"""Largest |PieceCoordinates| x or y: the corner of the last piece of the largest montage."""
GRID_TOLERANCE_PX = 0.5
"""How far a piece's coordinate may lie off the grid of the montage's piece spacing."""
_PIECE_SPACING = re.compile(r"^\s*PieceSpacing\s*=\s*(\S+)\s+(\S+)\s*$")
_TITLE = re.compile(r"SerialEM:\s*(.*?)\s+\d{1,2}-[A-Za-z]{3}-\d{2,4}\s+\d{1,2}:\d{2}:\d{2}")


class SerialEMImportError(ValueError):
    """A SerialEM session cannot be imported; the message is one line naming the file
    (and section), the key and the value."""


def _short(value, limit: int = 60) -> str:
    text = str(value).replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Section:
    """One image of a stack and what its ``.mdoc`` section says about it."""

    z: int
    time: datetime
    stage_um: tuple[float, float]
    stage_z_um: float | None
    tilt_deg: float | None
    image_shift: tuple[float, float] | None
    pixel_nm: float
    raw: dict = field(default_factory=dict)
    """The section's values kept in the recording (``serialem`` key of the frame)."""
    piece_px: tuple[float, float, int] | None = None
    """``PieceCoordinates`` (x, y px, montage section z) of a montage piece."""
    line: int = 0
    """Line of the section's header in the ``.mdoc``."""


@dataclass(frozen=True)
class Stack:
    """An MRC stack and its ``.mdoc``, checked against each other."""

    mrc: Path
    mdoc: Path
    shape: tuple[int, int]
    """``(rows, columns)`` of each image."""
    sections: tuple[Section, ...]
    instrument: str | None
    """The instrument named in the file's first title, if any."""
    piece_spacing_px: tuple[float, float] | None = None
    """The global ``PieceSpacing`` of a montage file (x, y px), if given."""


@dataclass(frozen=True)
class ImportPlan:
    """Everything an import will write, checked; no image read yet."""

    stacks: tuple[Stack, ...]
    frames: tuple[tuple[int, Section], ...]
    """``(stack index, section)`` in acquisition order."""
    microscope: str
    pixel_size_nm: float
    image_shift_to_nm: np.ndarray | None
    montage: MontagePlan | None = None
    stage_to_image: tuple[float, bool] | None = None
    """``(rotation_deg, flip_y)`` of a calibration given with the import, if any."""
    """The montage among the frames (one at most), if any."""


@dataclass(frozen=True)
class MontagePlan:
    """The pieces of the montage an import holds, placed on their grid."""

    stack: int
    """Index of the stack holding the montage."""
    places: dict
    """Section z -> ``(column, row)`` of the piece."""
    grid: tuple[int, int]
    """``(columns, rows)``."""
    spacing_px: tuple[float | None, float | None]
    """Piece spacing along x and y (None along an axis with one column or row)."""


# --------------------------------------------------------------------------- finding files


def stack_and_mdoc(path: str | Path) -> tuple[Path, Path]:
    """The MRC stack and the ``.mdoc`` of one command-line argument (either of the two).

    SerialEM names the metadata ``NAME.mrc.mdoc``; ``NAME.mdoc`` is accepted as well. For
    an ``.mdoc`` whose stack is not beside it under either name, the ``ImageFile`` the
    ``.mdoc`` names is looked for in the same folder.

    Raises
    ------
    SerialEMImportError
        When the file or its partner is missing.
    """
    path = Path(path)
    if path.is_dir():
        raise SerialEMImportError(f"{path}: is a folder; give SerialEM .mrc stacks or their .mdoc files")
    if not path.is_file():
        raise SerialEMImportError(f"{path}: file not found")
    if path.suffix.lower() == ".mdoc":
        mdoc = path
        inner = path.with_suffix("")
        candidates = [inner] if inner.suffix.lower() in STACK_SUFFIXES else []
        candidates += [path.with_suffix(suffix) for suffix in (".mrc", ".st")]
        named = _image_file_named(mdoc)
        if named:
            candidates.append(path.parent / named)
        for candidate in candidates:
            if candidate.is_file():
                return candidate, mdoc
        looked = ", ".join(dict.fromkeys(c.name for c in candidates))
        raise SerialEMImportError(f"{mdoc}: its image stack is missing (looked for {looked} beside it); give the "
                                  f".mrc file with its .mdoc")
    candidates = [path.with_name(path.name + ".mdoc"), path.with_suffix(".mdoc")]
    for candidate in candidates:
        if candidate.is_file():
            return path, candidate
    raise SerialEMImportError(f"{path}: no .mdoc beside it (looked for {candidates[0].name} and {candidates[1].name}); "
                              f"SerialEM writes the stage readback, tilt, image shift and pixel size there")


def _image_file_named(mdoc: Path) -> str | None:
    """The file name (no folder) of the mdoc's global ``ImageFile``, if it has one."""
    try:
        with mdoc.open("rb") as handle:
            head = handle.read(1 << 16).decode("utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"^\s*ImageFile\s*=\s*(.+?)\s*$", head, flags=re.MULTILINE)
    if not match:
        return None
    name = PureWindowsPath(match.group(1)).name  # SerialEM runs on Windows; keep the name only
    return name or None


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _quiet_mdocfile():
    """mdocfile logs a warning for every key it does not model; the import reports its own."""
    logger = logging.getLogger("mdocfile")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _validation_problem(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error.get("loc", ()) if not isinstance(part, int)) or "?"
    return f"key '{key}' has bad value '{_short(error.get('input'))}': {_short(error.get('msg', ''), 120)}"


def _finite(value, where: str, key: str, bound: float) -> float:
    number = float(value)
    if not math.isfinite(number) or abs(number) > bound:
        raise SerialEMImportError(f"{where}: key '{key}' has bad value {_short(value)}: must be a finite number "
                                  f"within -+{bound:g}")
    return number


def _parse_time(text: str | None, where: str) -> datetime:
    if not text:
        raise SerialEMImportError(f"{where}: missing key 'DateTime'; recording-v1 needs the time of every frame")
    collapsed = " ".join(str(text).split())
    for form in DATE_FORMATS:
        try:
            return datetime.strptime(collapsed, form)
        except ValueError:
            continue
    raise SerialEMImportError(f"{where}: key 'DateTime' has bad value '{_short(text)}': expected SerialEM's "
                              f"'31-Mar-23  16:24:15'")


def read_mdoc(path: Path) -> tuple[list[str], MdocGlobalData, list[tuple[int, MdocSectionData]],
                                   tuple[float, float] | None]:
    """Titles, global data and the ``[ZValue = n]`` sections of an ``.mdoc`` file.

    Parsed with :mod:`mdocfile`, one section at a time so that an error names its
    section. Montage overview sections (``[MontSection]``) and frame sets are skipped.

    Returns
    -------
    titles : list of str
    global_data : mdocfile.data_models.MdocGlobalData
    sections : list of (line number, MdocSectionData)
        The image sections in file order, with the line of their header.
    piece_spacing : (float, float) or None
        The global ``PieceSpacing`` of a montage (x, y px; :mod:`mdocfile` does not
        model it), checked like the other values; None when absent.

    Raises
    ------
    SerialEMImportError
        One line naming the file (and section line) and the key.
    """
    size = path.stat().st_size
    if size > MAX_MDOC_BYTES:
        raise SerialEMImportError(f"{path}: {size} bytes, more than the {MAX_MDOC_BYTES} an .mdoc may have")
    data = path.read_bytes()
    if b"\x00" in data:
        raise SerialEMImportError(f"{path}: not a text file (an .mdoc is SerialEM's text metadata)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # SerialEM writes the Windows code page; only names can be non-ASCII
    lines = [line.strip() for line in text.splitlines()]
    starts = find_section_entries(lines)
    if not starts:
        raise SerialEMImportError(f"{path}: no '[ZValue = n]' section: not a SerialEM .mdoc of an image file")
    header = lines[:starts[0]]
    with _quiet_mdocfile():
        try:
            global_data = MdocGlobalData.from_lines(header)
        except pydantic.ValidationError as exc:
            raise SerialEMImportError(f"{path}: global data: {_validation_problem(exc)}") from None
        except ValueError:
            bad = next((line for line in header if line and not line.startswith("[") and line.count("=") != 1), "")
            raise SerialEMImportError(f"{path}: global line '{_short(bad)}' is not 'key = value'") from None
        sections = []
        for start, end in zip(starts, starts[1:] + [len(lines)]):
            if not lines[start].startswith("[ZValue"):
                continue
            try:
                sections.append((start + 1, MdocSectionData.from_lines(lines[start:end])))
            except pydantic.ValidationError as exc:
                raise SerialEMImportError(f"{path}:{start + 1}: section {lines[start]}: "
                                          f"{_validation_problem(exc)}") from None
    titles = [header[i] for i in find_title_entries(header)]
    return titles, global_data, sections, _piece_spacing(path, header)


def _piece_spacing(path: Path, header: list[str]) -> tuple[float, float] | None:
    for line in header:
        if not line.startswith("PieceSpacing"):
            continue
        match = _PIECE_SPACING.match(line)
        try:
            spacing = tuple(float(v) for v in match.groups()) if match else ()
        except ValueError:
            spacing = ()
        if len(spacing) != 2 or not all(math.isfinite(v) and 1 <= v <= MAX_SIDE_PX for v in spacing):
            value = _short(line.split("=", 1)[-1].strip())
            raise SerialEMImportError(f"{path}: key 'PieceSpacing' has bad value '{value}': must be two numbers 1 "
                                      f"to {MAX_SIDE_PX} (the piece spacing in x and y, px)")
        return spacing
    return None


def _instrument(titles: list[str]) -> str | None:
    for title in titles:
        match = _TITLE.search(title)
        if match and match.group(1).strip():
            return match.group(1).strip()[:200]
    return None


def _section(path: Path, line: int, data: MdocSectionData, global_pixel: float | None) -> Section:
    where = f"{path}:{line}: section [ZValue = {data.ZValue}]"
    if data.StagePosition is None:
        raise SerialEMImportError(f"{where}: missing key 'StagePosition' (the stage readback, um)")
    bound_um = MAX_POSITION_NM / 1000.0
    stage = tuple(_finite(v, where, "StagePosition", bound_um) for v in data.StagePosition)
    stage_z = None if data.StageZ is None else _finite(data.StageZ, where, "StageZ", bound_um)
    tilt = None if data.TiltAngle is None else _finite(data.TiltAngle, where, "TiltAngle", MAX_TILT_DEG)
    shift = (None if data.ImageShift is None
             else tuple(_finite(v, where, "ImageShift", MAX_IMAGE_SHIFT) for v in data.ImageShift))
    spacing = data.PixelSpacing if data.PixelSpacing is not None else global_pixel
    if spacing is None:
        raise SerialEMImportError(f"{where}: missing key 'PixelSpacing' (Angstrom per pixel), here and in the "
                                  f"global data; the analysis needs the calibrated pixel size")
    pixel_nm = _finite(spacing, where, "PixelSpacing", MAX_PIXEL_NM * 10.0) / 10.0
    if not pixel_nm > 0:
        raise SerialEMImportError(f"{where}: key 'PixelSpacing' has bad value {_short(spacing)}: must be > 0 "
                                  f"(Angstrom per pixel)")
    piece = None
    if data.PieceCoordinates is not None:
        x, y, z = (_finite(v, where, "PieceCoordinates", MAX_PIECE_PX) for v in data.PieceCoordinates)
        piece = (x, y, int(z))
    raw = {"datetime": " ".join(str(data.DateTime).split())[:64]} if data.DateTime else {}
    for key, name in (("Magnification", "magnification"), ("MagIndex", "mag_index"), ("Binning", "binning"),
                      ("PieceCoordinates", "piece_coordinates"), ("ImageShift", "image_shift")):
        value = getattr(data, key)
        numbers = list(value) if isinstance(value, tuple) else [value]
        if value is not None and all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            raw[name] = numbers if isinstance(value, tuple) else value
    return Section(z=int(data.ZValue), time=_parse_time(data.DateTime, where), stage_um=stage, stage_z_um=stage_z,
                   tilt_deg=tilt, image_shift=shift, pixel_nm=pixel_nm, raw=raw, piece_px=piece, line=line)


def _mrc_header(path: Path):
    """``(nx, ny, nz, mode, bytes the header says the file holds)`` of an MRC file,
    read from its header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                header = mrc.header
                if header is None:
                    raise ValueError("no header")
                nx, ny, nz, mode = int(header.nx), int(header.ny), int(header.nz), int(header.mode)
                size = 1024 + max(0, int(header.nsymbt)) + nx * ny * nz * _MODES_REAL.get(mode, 0)
                return nx, ny, nz, mode, size
    except (OSError, ValueError, EOFError) as exc:
        raise SerialEMImportError(f"{path}: not a readable MRC file ({_short(exc, 100)})") from None


def read_stack(mrc: Path, mdoc: Path) -> Stack:
    """An MRC stack and its ``.mdoc``, checked against each other (headers only).

    Raises
    ------
    SerialEMImportError
        When the files do not belong together (image count or size), the stack is
        not of single-channel real images, or a section lacks what recording-v1 needs.
    """
    titles, global_data, parsed, spacing = read_mdoc(mdoc)
    nx, ny, nz, mode, expected = _mrc_header(mrc)
    if mode not in _MODES_REAL:
        raise SerialEMImportError(f"{mrc}: MRC mode {mode} is not single-channel real pixels (modes 0, 1, 2, 6, "
                                  f"12 are)")
    if not (MIN_SIDE_PX <= nx <= MAX_SIDE_PX and MIN_SIDE_PX <= ny <= MAX_SIDE_PX and 1 <= nz <= MAX_FRAMES):
        raise SerialEMImportError(f"{mrc}: images of {nx} x {ny} px, {nz} of them: expected {MIN_SIDE_PX} to "
                                  f"{MAX_SIDE_PX} px a side and 1 to {MAX_FRAMES} images")
    held = mrc.stat().st_size
    if held < expected:
        raise SerialEMImportError(f"{mrc}: holds {held} bytes, its header describes {nz} images of {nx} x {ny} px "
                                  f"in {expected} bytes: the file is cut short")
    size = global_data.ImageSize
    if size is not None and tuple(size) != (nx, ny):
        raise SerialEMImportError(f"{mdoc}: key 'ImageSize' is {size[0]} {size[1]}, but {mrc.name} holds images of "
                                  f"{nx} x {ny} px: the .mdoc belongs to another file")
    if len(parsed) != nz:
        raise SerialEMImportError(f"{mdoc}: describes {len(parsed)} image(s), but {mrc.name} holds {nz}: the .mdoc "
                                  f"belongs to another file, or the stack was cut")
    sections = [_section(mdoc, line, data, global_data.PixelSpacing) for line, data in parsed]
    zs = sorted(s.z for s in sections)
    if zs != list(range(nz)):
        raise SerialEMImportError(f"{mdoc}: the ZValue sections are {_short(zs)}, expected 0 to {nz - 1} once each")
    with_shift = [s.image_shift is not None for s in sections]
    if any(with_shift) and not all(with_shift):
        missing = next(s.z for s in sections if s.image_shift is None)
        raise SerialEMImportError(f"{mdoc}: section [ZValue = {missing}] has no 'ImageShift' while others have "
                                  f"one; the change of image shift between frames cannot be told")
    with_piece = [s.piece_px is not None for s in sections]
    if any(with_piece) and not all(with_piece):
        missing = next(s for s in sections if s.piece_px is None)
        raise SerialEMImportError(f"{mdoc}:{missing.line}: section [ZValue = {missing.z}] has no 'PieceCoordinates' "
                                  f"while others have them; a montage file gives every piece's place")
    return Stack(mrc=mrc, mdoc=mdoc, shape=(ny, nx), sections=tuple(sorted(sections, key=lambda s: s.z)),
                 instrument=_instrument(titles), piece_spacing_px=spacing)


def piece_grid_indices(coordinate_px, spacing_px: float | None = None,
                       tolerance_px: float = GRID_TOLERANCE_PX) -> tuple[np.ndarray, float | None]:
    """Grid index of montage pieces along one axis, from their pixel coordinates.

    A montage's pieces lie on a grid: ``(index) * spacing`` from the first column (or
    row), the spacing being the frame less the overlap. Without a given spacing it is
    the smallest difference between two distinct coordinates (a column or row that no
    piece occupies at all would make it look twice as large; SerialEM's
    ``PieceSpacing`` avoids that).

    Parameters
    ----------
    coordinate_px : array_like, (n,)
        Piece coordinates along the axis (``PieceCoordinates`` x or y).
    spacing_px : float, optional
        The piece spacing along the axis.
    tolerance_px : float
        How far a coordinate may lie off the grid.

    Returns
    -------
    index : ndarray of int, (n,)
        0 for the smallest coordinate.
    spacing_px : float or None
        The spacing used; None when every piece has the same coordinate.

    Raises
    ------
    ValueError
        When a coordinate lies off the grid, or the grid is longer than
        ``MAX_MONTAGE_INDEX + 1`` pieces.
    """
    values = np.asarray(coordinate_px, dtype=float).reshape(-1)
    offset = values - values.min()
    if spacing_px is None:
        distinct = np.unique(np.round(offset, 6))
        if len(distinct) < 2:
            return np.zeros(len(values), dtype=int), None
        spacing_px = float(np.diff(distinct).min())
    if not spacing_px > tolerance_px:
        raise ValueError(f"piece spacing {spacing_px:g} px is not a spacing of distinct pieces")
    index = np.round(offset / spacing_px).astype(int)
    off = np.abs(offset - index * spacing_px)
    worst = int(np.argmax(off))
    if off[worst] > tolerance_px:
        raise ValueError(f"{values[worst]:.10g} px lies {off[worst]:.3g} px off the grid of pieces {spacing_px:.10g} "
                         f"px apart from {values.min():.10g} px")
    if index.max() > MAX_MONTAGE_INDEX:
        raise ValueError(f"{values[int(np.argmax(index))]:.10g} px is piece {index.max()} of the grid of pieces "
                         f"{spacing_px:.10g} px apart: at most {MAX_MONTAGE_INDEX + 1} pieces a side")
    return index, float(spacing_px)


def plan_montage(stacks: Sequence[Stack]) -> MontagePlan | None:
    """The montage among the stacks' frames: every piece's column and row.

    A recording holds one montage (:func:`stage_acceptance.montage.piece_grid`): the
    sections with ``PieceCoordinates`` of one stack and one montage section (their z).

    Raises
    ------
    SerialEMImportError
        When the frames hold more than one montage, two pieces share a place, or a
        piece lies off the grid; one line naming the file, section, key and value.
    """
    montages = {(k, s.piece_px[2]) for k, stack in enumerate(stacks) for s in stack.sections
                if s.piece_px is not None}
    if not montages:
        return None
    if len(montages) > 1:
        named = ", ".join(f"{stacks[k].mdoc.name} z {z}" for k, z in sorted(montages)[:6])
        raise SerialEMImportError(f"the frames hold {len(montages)} montages (PieceCoordinates {_short(named, 200)}); "
                                  f"a recording holds one montage: import each montage (file) on its own")
    (k, _), = montages
    stack = stacks[k]
    pieces = list(stack.sections)
    given = stack.piece_spacing_px or (None, None)
    indices, spacing = [], []
    for axis, name in enumerate("xy"):
        try:
            index, step = piece_grid_indices([s.piece_px[axis] for s in pieces], given[axis])
        except ValueError as exc:
            raise SerialEMImportError(f"{stack.mdoc}: key 'PieceCoordinates' {name}: {exc}") from None
        indices.append(index)
        spacing.append(step)
    places: dict[int, tuple[int, int]] = {}
    seen: dict[tuple[int, int], Section] = {}
    for section, column, row in zip(pieces, *indices):
        place = (int(column), int(row))
        if place in seen:
            first = seen[place]
            raise SerialEMImportError(f"{stack.mdoc}:{section.line}: section [ZValue = {section.z}]: key "
                                      f"'PieceCoordinates' has the value of section [ZValue = {first.z}] "
                                      f"({_short(' '.join(f'{v:g}' for v in section.piece_px))}): two pieces at one "
                                      f"place of the montage")
        seen[place] = section
        places[section.z] = place
    grid = (int(indices[0].max()) + 1, int(indices[1].max()) + 1)
    return MontagePlan(stack=k, places=places, grid=grid, spacing_px=(spacing[0], spacing[1]))


def _matrix(values) -> np.ndarray | None:
    if values is None:
        return None
    matrix = np.asarray(values, dtype=float)
    if matrix.size != 4 or not np.all(np.isfinite(matrix)) or np.any(np.abs(matrix) > MAX_MATRIX):
        shown = " ".join(f"{float(v):g}" for v in np.ravel(np.asarray(values, dtype=float)))
        raise SerialEMImportError(f"--image-shift-matrix {_short(shown)}: needs 4 finite numbers within "
                                  f"-+{MAX_MATRIX:g} (nm per image-shift unit: xx xy yx yy)")
    return matrix.reshape(2, 2)


def _stage_to_image(given) -> tuple[float, bool] | None:
    if given is None:
        return None
    rotation, flip = given
    if rotation is None:
        raise SerialEMImportError("--flip-y needs --stage-to-image DEG: the rotation of the calibration it belongs to")
    if not math.isfinite(rotation) or abs(rotation) > MAX_TILT_DEG:
        raise SerialEMImportError(f"--stage-to-image {_short(rotation)}: needs a finite rotation within "
                                  f"-+{MAX_TILT_DEG:g} deg")
    return float(rotation), bool(flip)


def _check_out(out: Path) -> None:
    if (out / "frames.jsonl").exists() or (out / "session.json").exists():
        raise SerialEMImportError(f"{out}: already holds a recording; choose another --out folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SerialEMImportError(f"{out}: exists and is not an empty folder; choose another --out folder")


def plan_import(paths: Sequence[str | Path], out: str | Path, *, microscope: str | None = None,
                image_shift_to_nm=None, stage_to_image: tuple[float | None, bool] | None = None) -> ImportPlan:
    """Read and check everything an import needs, before anything is written.

    Parameters
    ----------
    paths : sequence of str or Path
        MRC stacks or their ``.mdoc`` files (either one names the pair).
    out : str or Path
        The recording folder to create: it must not exist or be empty.
    microscope : str, optional
        Instrument name; default: the one in SerialEM's title line
        (``SerialEM: NIST Titan D3094 ...``), else ``"SerialEM microscope"``.
    image_shift_to_nm : array_like, (2, 2), optional
        Calibration of SerialEM's image-shift units: the stage displacement (x, y) in nm
        that moves the image as one unit of image shift x (first column) and y (second
        column) does. Without it the image shift is kept in its units
        (``image_shift_raw``).
    stage_to_image : (float, bool), optional
        ``(rotation_deg, flip_y)`` of the stage-to-image transform from a calibration
        (SerialEM's ``.mdoc`` does not record it), written as the recording's
        ``stage_to_image``; without it the analysis estimates it from the moves.

    Returns
    -------
    ImportPlan

    Raises
    ------
    SerialEMImportError
        One line naming the file, section, key and value.
    """
    if not paths:
        raise SerialEMImportError("no file to import: give SerialEM .mrc stacks or their .mdoc files")
    out = Path(out)
    _check_out(out)
    matrix = _matrix(image_shift_to_nm)
    transform = _stage_to_image(stage_to_image)
    stacks: list[Stack] = []
    seen: dict[Path, str] = {}
    for path in paths:
        mrc, mdoc = stack_and_mdoc(path)
        key = mrc.resolve()
        if key in seen:
            raise SerialEMImportError(f"{path}: names the stack {mrc.name} again (already given as {seen[key]})")
        seen[key] = str(path)
        stacks.append(read_stack(mrc, mdoc))
    shapes = {stack.shape for stack in stacks}
    if len(shapes) > 1:
        sizes = ", ".join(f"{s.mrc.name} {s.shape[1]} x {s.shape[0]} px" for s in stacks)
        raise SerialEMImportError(f"the stacks hold images of different sizes ({_short(sizes, 200)}); a session's "
                                  f"frames all have one size")
    pixels = {round(section.pixel_nm, 9): stack for stack in stacks for section in stack.sections}
    if len(pixels) > 1:
        listed = ", ".join(f"{p:g} nm ({stack.mrc.name})" for p, stack in pixels.items())
        raise SerialEMImportError(f"the frames have different pixel sizes ({_short(listed, 200)}); import the frames "
                                  f"of one magnification and binning")
    shift_given = {section.image_shift is not None for stack in stacks for section in stack.sections}
    if len(shift_given) > 1:
        raise SerialEMImportError("some stacks record 'ImageShift' and others do not; the change of image shift "
                                  "between them cannot be told")
    frames = sorted(((k, section) for k, stack in enumerate(stacks) for section in stack.sections),
                    key=lambda item: (item[1].time, item[0], item[1].z))
    name = microscope if microscope is not None else next(
        (stack.instrument for stack in stacks if stack.instrument), "SerialEM microscope")
    if not 1 <= len(name) <= 200 or any(ord(ch) < 32 for ch in name):
        raise SerialEMImportError(f"--microscope '{_short(name)}': a name of 1 to 200 characters without control "
                                  f"characters")
    return ImportPlan(stacks=tuple(stacks), frames=tuple(frames), microscope=name,
                      pixel_size_nm=frames[0][1].pixel_nm, image_shift_to_nm=matrix, montage=plan_montage(stacks),
                      stage_to_image=transform)


# --------------------------------------------------------------------------- writing


def _nm(value_um: float) -> float:
    """um -> nm, rounded to 1e-4 nm so that a readback written with 4 decimals stays exact."""
    return round(value_um * 1000.0, 4)


def frame_record(section: Section, stack: Stack, matrix: np.ndarray | None,
                 piece: tuple[int, int] | None = None) -> tuple[StagePosition, dict]:
    """The reported position and the further keys of one frame's recording-v1 line
    (`piece`: its column and row when it is a montage piece)."""
    reported = StagePosition(x_nm=_nm(section.stage_um[0]), y_nm=_nm(section.stage_um[1]),
                             z_nm=0.0 if section.stage_z_um is None else _nm(section.stage_z_um),
                             alpha_deg=0.0 if section.tilt_deg is None else section.tilt_deg)
    extra: dict = {}
    if section.image_shift is not None:
        if matrix is not None:
            shift_nm = matrix @ np.asarray(section.image_shift, dtype=float)
            extra["image_shift_nm"] = {"x": round(float(shift_nm[0]), 4), "y": round(float(shift_nm[1]), 4)}
        else:
            extra["image_shift_raw"] = {"x": section.image_shift[0], "y": section.image_shift[1]}
    extra["serialem"] = {"file": stack.mrc.name[:MAX_NAME], "z": section.z, **section.raw}
    if piece is not None:
        extra["montage_piece"] = {"column": piece[0], "row": piece[1]}
    return reported, extra


class _StackReader:
    """Images of the stacks, each stack memory-mapped while its frames are read (one
    open at a time: a session of many stacks never holds many files open)."""

    def __init__(self):
        self._path: Path | None = None
        self._mrc = None

    def image(self, stack: Stack, z: int) -> np.ndarray:
        try:
            if self._path != stack.mrc:
                self.close()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._mrc = mrcfile.mmap(stack.mrc, mode="r", permissive=True)
                self._path = stack.mrc
            data = self._mrc.data
            if data is None:
                raise ValueError("no image data")
            image = np.array(data if data.ndim == 2 else data[z])
        except (OSError, ValueError, EOFError, IndexError) as exc:
            raise SerialEMImportError(f"{stack.mrc}: image {z} cannot be read ({_short(exc, 100)})") from None
        if image.shape != stack.shape:
            raise SerialEMImportError(f"{stack.mrc}: image {z} has shape {image.shape}, expected {stack.shape}")
        if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
            raise SerialEMImportError(f"{stack.mrc}: image {z} has NaN or infinite pixels")
        return image

    def close(self) -> None:
        if self._mrc is not None:
            self._mrc.close()
        self._mrc, self._path = None, None


def write_import(plan: ImportPlan, out: str | Path, *,
                 progress: Callable[[int, int], None] | None = None) -> Session:
    """Write the planned recording to `out` (created whole, or not at all).

    The frames go through :class:`~stage_acceptance.session.RecordingWriter` into a
    temporary folder beside `out`, which is renamed to `out` once the recording is
    complete; on any error (or Ctrl-C) the temporary folder is removed.

    Returns
    -------
    Session
        The recording as written (in `out`).
    """
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.import-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(scratch, 0o777 & ~umask)  # a recording is for colleagues to read, like a live run's
    first = plan.frames[0][1].time
    files = ", ".join(f"{stack.mrc.name} ({len(stack.sections)})" for stack in plan.stacks)
    calibration = ("SerialEM image-shift units calibrated to nm with --image-shift-matrix "
                   f"{' '.join(f'{v:g}' for v in plan.image_shift_to_nm.ravel())}"
                   if plan.image_shift_to_nm is not None else
                   "SerialEM image-shift units, not calibrated to nm (image_shift_raw)")
    meta = {
        "microscope": plan.microscope,
        "pixel_size_nm": plan.pixel_size_nm,
        "notes": _short(f"imported from SerialEM by stage-acceptance {__version__}: {files}; SerialEM records the "
                        f"stage readback, not the commanded position (target null); first frame "
                        f"{first:%Y-%m-%d %H:%M:%S}, local time of the SerialEM PC", 9000),
        "stage_acceptance": {"version": __version__, "imported": {
            "from": "SerialEM", "files": [stack.mrc.name for stack in plan.stacks][:100],
            "first_frame_local_time": first.isoformat(), "image_shift": calibration}},
    }
    if plan.stage_to_image is not None:
        meta["stage_to_image"] = {"rotation_deg": plan.stage_to_image[0], "flip_y": plan.stage_to_image[1]}
    montage = plan.montage
    if montage is not None:
        rows, columns = plan.stacks[montage.stack].shape
        meta["stage_acceptance"]["imported"]["montage"] = {
            "file": plan.stacks[montage.stack].mrc.name, "pieces": len(montage.places), "grid": list(montage.grid),
            "spacing_px": list(montage.spacing_px),
            "overlap": [None if step is None else round(1.0 - step / size, 4)
                        for step, size in zip(montage.spacing_px, (columns, rows))]}
    reader = _StackReader()
    try:
        writer = RecordingWriter(scratch, meta, stamp_start=False)
        try:
            for done, (k, section) in enumerate(plan.frames, start=1):
                stack = plan.stacks[k]
                piece = montage.places.get(section.z) if montage is not None and montage.stack == k else None
                reported, extra = frame_record(section, stack, plan.image_shift_to_nm, piece)
                writer.append(time_s=(section.time - first).total_seconds(), target=None, reported=reported,
                              image=reader.image(stack, section.z), protocol=None, extra=extra)
                if progress:
                    progress(done, len(plan.frames))
            writer.finish()
        finally:
            writer.close()
            reader.close()
        if out.exists():
            out.rmdir()  # empty (checked): the rename takes its place
        os.replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return read_recording(out)


def import_serialem(paths: Sequence[str | Path], out: str | Path, *, microscope: str | None = None,
                    image_shift_to_nm=None, stage_to_image: tuple[float | None, bool] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Session:
    """Import SerialEM stacks as one recording-v1 folder: :func:`plan_import`, then
    :func:`write_import`. See :func:`plan_import` for the parameters."""
    plan = plan_import(paths, out, microscope=microscope, image_shift_to_nm=image_shift_to_nm,
                       stage_to_image=stage_to_image)
    return write_import(plan, out, progress=progress)

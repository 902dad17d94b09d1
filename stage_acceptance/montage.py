"""Montages: where each piece of a grid of overlapping fields really went.

A montage is what automation runs (a live ``montage`` protocol, or a SerialEM montage
imported with its piece coordinates): a grid of overlapping frames. Each frame of a
montage carries its place in the assembled montage image, recording-v1 frame key
``montage_piece = {"column": c, "row": r}`` (column along the image x, rightwards; row
along the image y, downwards). The analysis:

1. :func:`piece_grid` reads the pieces of a session (one montage per session).
2. :func:`expected_field_px` places every piece's field where its commanded position
   (the target; the readback where the recording has none) and its image shift put it,
   and :func:`overlap_pairs` lists the pairs of pieces whose fields overlap there:
   every raster neighbour, and any other pair sharing at least
   :data:`MIN_PAIR_OVERLAP` of the field (diagonal neighbours at a large overlap). The
   analysis registers each pair (:mod:`stage_acceptance.registry`), and
   :func:`pair_displacements_nm` turns each registration into the stage's
   displacement: the image motion less the change of the image shift, which moves the
   image without moving the stage (unknown where that change is).
3. :func:`solve_positions` finds the stage positions of the pieces that best explain
   the registered displacements, by weighted least squares over the overlap graph with
   the first piece fixed (:func:`pair_weights`); untrusted pairs are left out, a pair
   that disagrees with the rest of the graph by more than :data:`MAX_RESIDUAL_PX` is
   dropped, and pieces not connected to the first are left unplaced.
   :func:`montage_motion` says what moved the pieces apart: the stage, the image shift
   (a SerialEM montage by image shift: the stage is meant to stand still), or both.
4. :func:`piece_errors_nm` gives each piece's error against the commanded and
   reported positions (relative to the first piece), :func:`neighbour_errors_nm` the
   difference of the errors of raster neighbours, which is what breaks stitching when
   it exceeds the overlap (:func:`overlap_width_px`), and :func:`error_growth` the
   linear trend of the error over the acquisition order.

Everything here is a plain function on numpy arrays, except :func:`piece_grid` and
:func:`analyse_montage`, which read the session; the metrics (with their intervals and
minimum evidence) are made by :mod:`stage_acceptance.analysis`. Positions and
displacements are ``(x, y)`` nm in stage axes; image quantities are ``(column, row)``
pixels, as in recording-v1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import lsqr
from scipy.spatial import cKDTree

from .geometry import StageToImage, image_px_to_stage_nm, stage_nm_to_image_px
from .registration import Registration
from .session import Session

MIN_PAIR_OVERLAP = 0.1
"""Least shared area (fraction of the field) for a pair of pieces that are not raster
neighbours to be registered: the registration's own least overlap."""

MAX_RESIDUAL_PX = 2.0
"""A registered pair whose displacement disagrees with the solved positions by more
than this (pixels) contradicts the rest of the overlap graph (a wrong match): it is
dropped, the worst first, and the positions solved again. A good registration is
within a tenth of a pixel."""

CONFIDENCE_CLIP = (0.01, 0.99)
"""Range the registration confidence is clipped to in :func:`pair_weights`."""

MOVED_FRACTION = 0.1
"""A piece counts as moved by the stage (or the image shift) when its commanded stage
position (or image shift) lies more than this fraction of the field's side from the
first piece's (:func:`montage_motion`)."""


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class MontageGrid:
    """The pieces of a montage, in acquisition order.

    Attributes
    ----------
    frames : ndarray of int, (n,)
        Frame index of each piece.
    column, row : ndarray of int, (n,)
        Place of each piece in the assembled montage image.
    """

    frames: np.ndarray
    column: np.ndarray
    row: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, int]:
        """``(columns, rows)`` of the grid (the largest column and row, plus one)."""
        return int(self.column.max()) + 1, int(self.row.max()) + 1


def piece_grid(session: Session) -> tuple[MontageGrid | None, str]:
    """The montage pieces of a session (frames with a ``montage_piece`` key).

    Returns
    -------
    grid : MontageGrid or None
        None when the session has no montage, or has one the analysis cannot use.
    problem : str
        Why `grid` is None although frames carry ``montage_piece`` ("" otherwise):
        fewer than two pieces, or two frames at the same place (a session holds one
        montage).
    """
    frames, places = [], {}
    for index, frame in enumerate(session.frames):
        piece = frame.extra.get("montage_piece")
        if not isinstance(piece, dict):
            continue
        place = (int(piece["column"]), int(piece["row"]))
        if place in places:
            return None, (f"frames {places[place]} and {index} are both montage piece (column {place[0]}, row "
                          f"{place[1]}): a session holds one montage, each piece once")
        places[place] = index
        frames.append(index)
    if not frames:
        return None, ""
    if len(frames) < 2:
        return None, f"frame {frames[0]} is the only montage piece; a montage needs two or more"
    columns = np.array([session.frames[i].extra["montage_piece"]["column"] for i in frames], dtype=int)
    rows = np.array([session.frames[i].extra["montage_piece"]["row"] for i in frames], dtype=int)
    return MontageGrid(np.array(frames, dtype=int), columns, rows), ""


def expected_field_px(commanded_nm: np.ndarray, pixel_size_nm: float, transform: StageToImage) -> np.ndarray:
    """Where each piece's field lies in the assembled montage image, by its commanded position.

    The stage carries the specimen, so the field moves against the stage: a stage move
    ``u`` moves the features by ``M u / p`` and the field by minus that.

    Parameters
    ----------
    commanded_nm : ndarray, (n, 2)
        Commanded stage positions ``(x, y)`` in nm.
    pixel_size_nm : float
    transform : StageToImage

    Returns
    -------
    ndarray, (n, 2)
        Field positions ``(column, row)`` in pixels, the first piece's at 0.
    """
    commanded = np.asarray(commanded_nm, dtype=float).reshape(-1, 2)
    return -stage_nm_to_image_px(commanded - commanded[0], pixel_size_nm, transform)


def overlap_fraction(offset_px: np.ndarray, frame_shape) -> np.ndarray:
    """Shared area of two fields `offset_px` apart, as a fraction of the field.

    Parameters
    ----------
    offset_px : ndarray, (..., 2)
        ``(column, row)`` offsets in pixels.
    frame_shape : (int, int)
        ``(rows, columns)`` of a frame.
    """
    rows, columns = frame_shape
    offset = np.abs(np.asarray(offset_px, dtype=float))
    shared = np.clip(columns - offset[..., 0], 0, None) * np.clip(rows - offset[..., 1], 0, None)
    return shared / float(rows * columns)


def overlap_pairs(column, row, field_px, frame_shape, min_overlap: float = MIN_PAIR_OVERLAP) -> np.ndarray:
    """The pairs of pieces whose fields overlap: what a montage analysis registers.

    Every raster neighbour (pieces one column or one row apart), however little they
    overlap, and every other pair whose fields, placed by `field_px`, share at least
    `min_overlap` of the field (e.g. diagonal neighbours of a montage with 40 %
    overlap).

    Parameters
    ----------
    column, row : array_like of int, (n,)
        Grid place of each piece.
    field_px : ndarray, (n, 2)
        Expected field positions (:func:`expected_field_px`).
    frame_shape : (int, int)
        ``(rows, columns)`` of a frame.
    min_overlap : float
        Least shared area of a pair that is not a raster neighbour.

    Returns
    -------
    ndarray of int, (m, 2)
        ``(a, b)`` piece indices with ``a < b``, sorted by ``b`` then ``a``.
    """
    column = np.asarray(column, dtype=int)
    row = np.asarray(row, dtype=int)
    field = np.asarray(field_px, dtype=float).reshape(-1, 2)
    if not (len(column) == len(row) == len(field)):
        raise ValueError(f"column, row and field_px must have one entry per piece, got {len(column)}, {len(row)}, "
                         f"{len(field)}")
    rows, columns = frame_shape
    found = {(int(a), int(b)) for a, b in raster_neighbours(column, row)}
    if np.all(np.isfinite(field)):
        for a, b in cKDTree(field).query_pairs(r=float(np.hypot(rows, columns))):
            if overlap_fraction(field[b] - field[a], frame_shape) >= min_overlap:
                found.add((min(a, b), max(a, b)))
    return np.array(sorted(found, key=lambda pair: (pair[1], pair[0])), dtype=int).reshape(-1, 2)


def raster_neighbours(column, row) -> np.ndarray:
    """``(a, b)`` piece indices (``a < b``, sorted) of every pair one column or one row apart."""
    grid = np.stack([np.asarray(column, dtype=int), np.asarray(row, dtype=int)], axis=1)
    pairs = sorted((min(a, b), max(a, b)) for a, b in cKDTree(grid).query_pairs(r=1.0, p=1))
    return np.array(pairs, dtype=int).reshape(-1, 2)


def overlap_width_px(column, row, field_px, frame_shape) -> float | None:
    """Width of the strip raster neighbours share, by their commanded positions (pixels).

    The smaller of the median overlap of horizontal neighbours (columns minus their
    offset along the image x) and of vertical ones (rows minus the offset along y):
    the most a piece may be off relative to its neighbour before the two fields no
    longer overlap. Neighbours whose offset is unknown (NaN: an image shift of unknown
    size) are left out; None when no raster neighbours are left.
    """
    row = np.asarray(row, dtype=int)
    field = np.asarray(field_px, dtype=float).reshape(-1, 2)
    rows, columns = frame_shape
    pairs = raster_neighbours(column, row)
    offset = np.abs(field[pairs[:, 1]] - field[pairs[:, 0]])
    known = np.all(np.isfinite(offset), axis=1)
    pairs, offset = pairs[known], offset[known]
    if len(pairs) == 0:
        return None
    horizontal = row[pairs[:, 0]] == row[pairs[:, 1]]
    widths = [float(np.median(size - offset[along, k])) for k, (size, along)
              in enumerate(((columns, horizontal), (rows, ~horizontal))) if along.any()]
    return min(widths)


# --------------------------------------------------------------------------- least squares


def pair_weights(confidence, overlap, frame_pixels: int) -> np.ndarray:
    """Least-squares weight of each registered pair: its inverse variance, up to a constant.

    A registration's variance falls with the number of overlapping pixels ``N`` and
    with the signal-to-noise ratio of the two images, which a correlation coefficient
    ``r`` of the overlap gives as ``r / (1 - r)``: the weight is
    ``N * r / (1 - r)``, ``r`` clipped to :data:`CONFIDENCE_CLIP`.

    Parameters
    ----------
    confidence : array_like, (m,)
        `Registration.confidence` of each pair.
    overlap : array_like, (m,)
        `Registration.overlap_fraction` of each pair.
    frame_pixels : int
        Pixels in a frame.

    Returns
    -------
    ndarray, (m,)
        Positive weights (0 where a value is not finite).
    """
    r = np.clip(np.asarray(confidence, dtype=float), *CONFIDENCE_CLIP)
    n = np.asarray(overlap, dtype=float) * float(frame_pixels)
    weight = n * r / (1.0 - r)
    return np.where(np.isfinite(weight) & (weight > 0), weight, 0.0)


@dataclass(frozen=True)
class Solution:
    """Piece positions solved over the overlap graph.

    Attributes
    ----------
    positions_nm : ndarray, (n, 2)
        NaN for pieces not connected to the fixed one.
    placed : ndarray of bool, (n,)
        Connected to the fixed piece by used pairs.
    used : ndarray of bool, (m,)
        Pairs in the solution (measured, weighted, not dropped, connected).
    residual_nm : ndarray, (m, 2)
        Measured minus solved displacement of each pair (NaN for pairs not used).
    dropped : dict
        Pair index -> why it was dropped after the first solution (loop closure).
    sigma : float or None
        Standard deviation of unit weight (None without redundancy: a tree).
    sd_nm : ndarray, (n,)
        Standard error of each placed piece's position per axis (NaN when unknown; 0
        for the fixed piece).
    dof : int
        Degrees of freedom of `sigma`: twice the used pairs less the free pieces.
    """

    positions_nm: np.ndarray
    placed: np.ndarray
    used: np.ndarray
    residual_nm: np.ndarray
    dropped: dict = field(default_factory=dict)
    sigma: float | None = None
    sd_nm: np.ndarray | None = None
    dof: int = 0


def _least_squares(n_pieces, pairs, measured, weights, usable, fixed, fixed_position):
    """One weighted least-squares solution over the usable pairs (see :func:`solve_positions`)."""
    m = len(pairs)
    graph = csr_matrix((np.ones(int(usable.sum())), (pairs[usable, 0], pairs[usable, 1])),
                       shape=(n_pieces, n_pieces))
    _, label = connected_components(graph, directed=False)
    placed = label == label[fixed]
    used = usable & placed[pairs[:, 0]] & placed[pairs[:, 1]]
    positions = np.full((n_pieces, 2), np.nan)
    positions[fixed] = fixed_position
    residual = np.full((m, 2), np.nan)
    sd = np.full(n_pieces, np.nan)
    sd[fixed] = 0.0
    free = np.flatnonzero(placed & (np.arange(n_pieces) != fixed))
    rows = np.flatnonzero(used)
    if len(free) == 0:
        return positions, placed, used, residual, None, sd, 0
    column_of = np.full(n_pieces, -1)
    column_of[free] = np.arange(len(free))
    root = np.sqrt(weights[rows])
    entries, row_index, col_index = [], [], []
    rhs = measured[rows].copy()
    for k, (a, b) in enumerate(pairs[rows]):
        for piece, sign in ((a, -1.0), (b, 1.0)):
            if piece == fixed:
                rhs[k] -= sign * fixed_position
            else:
                entries.append(sign * root[k])
                row_index.append(k)
                col_index.append(column_of[piece])
    design = coo_matrix((entries, (row_index, col_index)), shape=(len(rows), len(free))).tocsr()
    scaled = rhs * root[:, None]
    variance = None
    for axis in range(2):
        result = lsqr(design, scaled[:, axis], atol=1e-14, btol=1e-14, conlim=1e12,
                      iter_lim=20 * len(free) + 100, calc_var=True)
        positions[free, axis] = result[0]
        variance = result[-1]
    solved = positions[pairs[rows, 1]] - positions[pairs[rows, 0]]
    residual[rows] = measured[rows] - solved
    dof = 2 * (len(rows) - len(free))
    sigma = None
    if dof > 0:
        sigma = float(np.sqrt(np.sum(weights[rows, None] * residual[rows] ** 2) / dof))
        sd[free] = sigma * np.sqrt(variance)
    return positions, placed, used, residual, sigma, sd, max(dof, 0)


def solve_positions(n_pieces: int, pairs, measured_nm, weights, *, fixed: int = 0, fixed_position_nm=(0.0, 0.0),
                    max_residual_nm: float | None = None) -> Solution:
    """Positions of the pieces that best explain the measured pair displacements.

    Minimises ``sum_k w_k |p[b_k] - p[a_k] - d_k|^2`` over the pieces connected to the
    `fixed` one by usable pairs (a finite displacement and a positive weight), with
    ``p[fixed]`` held at `fixed_position_nm` (the gauge), by sparse least squares
    (LSQR; Paige & Saunders 1982), x and y separately. With `max_residual_nm`, the
    pair whose residual is largest beyond it is dropped and the positions solved
    again, until none is: a wrong match shows as a residual wherever the graph has a
    loop (a pair the graph cannot check, a bridge, keeps a residual of 0).

    Parameters
    ----------
    n_pieces : int
    pairs : array_like of int, (m, 2)
        ``(a, b)`` piece indices.
    measured_nm : array_like, (m, 2)
        Measured ``p[b] - p[a]`` (NaN where not measured).
    weights : array_like, (m,)
        Inverse variances up to a constant (:func:`pair_weights`).
    fixed : int
        The piece held in place.
    fixed_position_nm : (float, float)
    max_residual_nm : float, optional
        Largest residual a pair may keep.

    Returns
    -------
    Solution

    References
    ----------
    Paige CC & Saunders MA (1982). LSQR: an algorithm for sparse linear equations and
    sparse least squares. ACM Trans Math Softw 8, 43-71.
    """
    pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
    measured = np.asarray(measured_nm, dtype=float).reshape(-1, 2)
    weights = np.asarray(weights, dtype=float).reshape(-1)
    if not (len(pairs) == len(measured) == len(weights)):
        raise ValueError(f"pairs, measured_nm and weights must have one entry per pair, got {len(pairs)}, "
                         f"{len(measured)}, {len(weights)}")
    if not 0 <= fixed < n_pieces:
        raise ValueError(f"fixed must be a piece index 0 to {n_pieces - 1}, got {fixed}")
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n_pieces or np.any(pairs[:, 0] == pairs[:, 1])):
        raise ValueError(f"pairs must join two different pieces 0 to {n_pieces - 1}")
    fixed_position = np.asarray(fixed_position_nm, dtype=float)
    usable = np.all(np.isfinite(measured), axis=1) & np.isfinite(weights) & (weights > 0)
    dropped = {}
    while True:
        positions, placed, used, residual, sigma, sd, dof = _least_squares(n_pieces, pairs, measured, weights,
                                                                           usable, fixed, fixed_position)
        if max_residual_nm is None or not used.any():
            break
        size = np.where(used, np.hypot(residual[:, 0], residual[:, 1]), -np.inf)
        worst = int(np.argmax(size))
        if size[worst] <= max_residual_nm:
            break
        usable[worst] = False
        dropped[worst] = (f"disagrees with the other pairs by {size[worst]:.1f} nm (more than "
                          f"{max_residual_nm:.1f} nm around the loops of the overlap graph): a wrong match")
    return Solution(positions, placed, used, residual, dropped, sigma, sd, dof)


# --------------------------------------------------------------------------- errors


def piece_errors_nm(positions_nm, reference_nm, first: int = 0) -> np.ndarray:
    """Each piece's position error against reference positions, relative to the first piece.

    ``(p_i - p_first) - (r_i - r_first)``: where the piece went, counted from where the
    first piece went, minus where it should have gone by the reference (the target, or
    the readback), counted alike. Zero for the first piece.

    Parameters
    ----------
    positions_nm, reference_nm : ndarray, (n, 2)
    first : int

    Returns
    -------
    ndarray, (n, 2)
        NaN where a position or reference is unknown.
    """
    positions = np.asarray(positions_nm, dtype=float).reshape(-1, 2)
    reference = np.asarray(reference_nm, dtype=float).reshape(-1, 2)
    return (positions - positions[first]) - (reference - reference[first])


def neighbour_errors_nm(column, row, error_nm) -> tuple[np.ndarray, np.ndarray]:
    """How much the errors of raster neighbours differ: the misplacement stitching sees.

    Parameters
    ----------
    column, row : array_like of int, (n,)
    error_nm : ndarray, (n, 2)
        Piece errors (:func:`piece_errors_nm`).

    Returns
    -------
    pairs : ndarray of int, (k, 2)
        Raster neighbours ``(a, b)``, ``a < b``.
    size_nm : ndarray, (k,)
        ``|e_b - e_a|``; NaN where an error is unknown.
    """
    error = np.asarray(error_nm, dtype=float).reshape(-1, 2)
    pairs = raster_neighbours(column, row)
    difference = error[pairs[:, 1]] - error[pairs[:, 0]]
    return pairs, np.hypot(difference[:, 0], difference[:, 1])


def error_growth(order, error_nm) -> tuple[float, float, int]:
    """Linear trend of the error's length over the acquisition order.

    Least-squares line ``|e| = a + g * order`` through the pieces with a known error;
    `g` (nm per piece) says how fast the montage runs away from its commands.

    Parameters
    ----------
    order : array_like, (n,)
        Acquisition order of each piece (0, 1, ...).
    error_nm : ndarray, (n, 2)

    Returns
    -------
    slope_nm_per_piece, standard_error, dof : float, float, int
        ``dof = k - 2`` for `k` pieces with a known error.

    Raises
    ------
    ValueError
        With fewer than 3 pieces with a known error.
    """
    order = np.asarray(order, dtype=float).reshape(-1)
    error = np.asarray(error_nm, dtype=float).reshape(-1, 2)
    size = np.hypot(error[:, 0], error[:, 1])
    known = np.isfinite(size)
    x, y = order[known], size[known]
    if len(x) < 3:
        raise ValueError(f"need 3 pieces with a known error for a trend with an error, got {len(x)}")
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        raise ValueError("all pieces share one acquisition order: no trend")
    slope = float(dx @ (y - y.mean())) / sxx
    residual = y - y.mean() - slope * dx
    dof = len(x) - 2
    standard_error = float(np.sqrt(residual @ residual / dof / sxx)) if dof > 0 else float("nan")
    return slope, standard_error, dof


def rms_by(labels, error_nm) -> dict[int, float]:
    """RMS length of the known errors per label (e.g. per row or column of the grid)."""
    labels = np.asarray(labels, dtype=int)
    error = np.asarray(error_nm, dtype=float).reshape(-1, 2)
    size = np.hypot(error[:, 0], error[:, 1])
    out = {}
    for label in np.unique(labels):
        values = size[(labels == label) & np.isfinite(size)]
        out[int(label)] = float(np.sqrt(np.mean(values ** 2))) if len(values) else float("nan")
    return out


def montage_motion(stage_nm, image_shift_nm, field_nm: float, moved_fraction: float = MOVED_FRACTION) -> str:
    """What moved the pieces of a montage apart: the stage, the image shift, or both.

    SerialEM takes a montage by stage moves or by image shift (the stage stands still
    and the beam is shifted from piece to piece), or in blocks of image shift joined by
    stage moves. A piece moved by the stage when its commanded stage position lies
    more than ``moved_fraction * field_nm`` from the first piece's; by the image shift
    when its image shift does, or changed by an unknown amount (NaN).

    Parameters
    ----------
    stage_nm : ndarray, (n, 2)
        Commanded stage positions (the target; the readback where there is none).
    image_shift_nm : ndarray, (n, 2)
        Each piece's image shift relative to the first piece's (stage nm that move the
        image alike; NaN where its change is unknown).
    field_nm : float
        The field's shorter side.
    moved_fraction : float

    Returns
    -------
    str
        ``"stage"``, ``"image shift"``, ``"stage and image shift"``, or ``"neither"``
        (every piece at the first one's place).
    """
    stage = np.asarray(stage_nm, dtype=float).reshape(-1, 2)
    shift = np.asarray(image_shift_nm, dtype=float).reshape(-1, 2)
    if len(stage) != len(shift):
        raise ValueError(f"stage_nm and image_shift_nm must have one row per piece, got {len(stage)} and {len(shift)}")
    if not field_nm > 0:
        raise ValueError(f"field_nm must be > 0, got {field_nm}")
    limit = moved_fraction * field_nm
    moved_stage = bool(np.any(np.hypot(*(stage - stage[0]).T) > limit))
    length = np.hypot(shift[:, 0], shift[:, 1])
    moved_shift = bool(np.any(~np.isfinite(length) | (length > limit)))
    return {(True, False): "stage", (False, True): "image shift", (True, True): "stage and image shift",
            (False, False): "neither"}[(moved_stage, moved_shift)]


# --------------------------------------------------------------------------- a session's montage


@dataclass
class Montage:
    """A session's montage: each piece's solved position and errors, and each pair.

    Attributes
    ----------
    frames, column, row : ndarray of int, (n,)
        The pieces in acquisition order (:class:`MontageGrid`).
    target_nm, reported_nm, commanded_nm : ndarray, (n, 2)
        Target (NaN where the recording has none), readback, and commanded positions
        (the target, else the readback).
    actual_nm : ndarray, (n, 2)
        Solved positions, the first piece held at its commanded position; NaN for
        unplaced pieces.
    sd_nm : ndarray, (n,)
        Standard error of each solved position per axis (NaN when unknown).
    error_nm, reported_error_nm, commanded_error_nm : ndarray, (n, 2)
        :func:`piece_errors_nm` against the target, the readback and the commanded
        positions.
    pairs : ndarray of int, (m, 2)
        Piece indices of every pair of overlapping pieces (:func:`overlap_pairs`).
    registrations : list of Registration
    measured_nm : ndarray, (m, 2)
        Registered displacement of each pair in stage nm (NaN where not registered).
    weights : ndarray, (m,)
    solution : Solution
    field_px : ndarray, (n, 2)
        Commanded field positions in the montage image (:func:`expected_field_px`).
    overlap_px : float or None
        :func:`overlap_width_px`.
    pixel_size_nm : float
    frame_shape : (int, int)
    oriented : bool
        Whether the stage-to-image orientation is known (calibrated or estimated);
        without it positions are in image axes and nothing is compared with a command.
    image_shift_nm : ndarray, (n, 2)
        Each piece's image shift relative to the first piece's (stage nm that move the
        image alike; 0 without image shift, NaN where its change is unknown). A piece's
        field is where its commanded stage position plus this puts it.
    stage_unknown : dict
        Pair index -> why its stage displacement is unknown although it registered
        (the image shift changed by an amount not known in nm).
    moved_by : str
        :func:`montage_motion`.
    """

    frames: np.ndarray
    column: np.ndarray
    row: np.ndarray
    target_nm: np.ndarray
    reported_nm: np.ndarray
    commanded_nm: np.ndarray
    actual_nm: np.ndarray
    sd_nm: np.ndarray
    error_nm: np.ndarray
    reported_error_nm: np.ndarray
    commanded_error_nm: np.ndarray
    pairs: np.ndarray
    registrations: list
    measured_nm: np.ndarray
    weights: np.ndarray
    solution: Solution
    field_px: np.ndarray
    overlap_px: float | None
    pixel_size_nm: float
    frame_shape: tuple[int, int]
    oriented: bool
    image_shift_nm: np.ndarray | None = None
    stage_unknown: dict = field(default_factory=dict)
    moved_by: str = "stage"

    def __post_init__(self):
        if self.image_shift_nm is None:
            self.image_shift_nm = np.zeros((len(self.frames), 2))

    @property
    def overlap_nm(self) -> float | None:
        """Width of the strip raster neighbours share, nm (None without raster neighbours)."""
        return None if self.overlap_px is None else self.overlap_px * self.pixel_size_nm

    @property
    def placed(self) -> np.ndarray:
        return self.solution.placed

    @property
    def order(self) -> np.ndarray:
        """Acquisition order of the pieces (0, 1, ...)."""
        return np.arange(len(self.frames))

    @property
    def has_target(self) -> bool:
        """Every piece has a recorded target."""
        return bool(np.all(np.isfinite(self.target_nm)))

    def pair_frames(self) -> np.ndarray:
        """``(m, 2)`` frame indices of the pairs."""
        return self.frames[self.pairs]

    def pair_reasons(self) -> list[str]:
        """Why each pair is not in the solution ("" for the pairs that are)."""
        reasons = []
        for k, result in enumerate(self.registrations):
            if self.solution.used[k]:
                reasons.append("")
            elif not result.ok:
                reasons.append(f"not registered: {result.reason}")
            elif k in self.solution.dropped:
                reasons.append(self.solution.dropped[k])
            elif k in self.stage_unknown:
                reasons.append(f"registered, but its stage displacement is unknown: {self.stage_unknown[k]}")
            elif not np.all(np.isfinite(self.measured_nm[k])):
                reasons.append("its stage displacement is not known")
            else:
                reasons.append("not connected to the first piece")
        return reasons

    def connected(self) -> np.ndarray:
        """Whether each piece is tied to the first by registered overlaps (pairs not
        dropped as wrong matches): what stitching needs, whether or not the stage
        displacement of those pairs is known."""
        n = len(self.frames)
        good = np.array([r.ok for r in self.registrations], dtype=bool).reshape(-1)
        good &= ~np.isin(np.arange(len(self.pairs)), list(self.solution.dropped))
        graph = csr_matrix((np.ones(int(good.sum())), (self.pairs[good, 0], self.pairs[good, 1])), shape=(n, n))
        _, label = connected_components(graph, directed=False)
        return label == label[0]

    def unplaced(self) -> list[tuple[int, int, int]]:
        """``(frame, column, row)`` of every piece no registered overlap ties to the
        first piece (:meth:`connected`): the montage cannot stitch it. A piece tied to
        the first only by pairs of unknown stage displacement is stitched, but has no
        solved position (``placed`` False)."""
        return [(int(self.frames[i]), int(self.column[i]), int(self.row[i]))
                for i in np.flatnonzero(~self.connected())]

    def neighbour_errors(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`neighbour_errors_nm` of the errors against the commanded positions."""
        return neighbour_errors_nm(self.column, self.row, self.commanded_error_nm)

    def beyond_overlap(self) -> np.ndarray:
        """Pieces whose error against the commanded position is longer than the overlap width."""
        size = np.hypot(self.commanded_error_nm[:, 0], self.commanded_error_nm[:, 1])
        overlap = self.overlap_nm
        return np.isfinite(size) & (overlap is not None) & (size > (overlap or 0.0))


def analyse_montage(session: Session, grid: MontageGrid, pairs: np.ndarray, registrations: list[Registration],
                    measured_nm: np.ndarray, transform: StageToImage, *, oriented: bool,
                    image_shift_nm: np.ndarray | None = None, stage_unknown: dict | None = None) -> Montage:
    """Solve a session's montage from its registered pairs.

    Parameters
    ----------
    session : Session
    grid : MontageGrid
        :func:`piece_grid`.
    pairs : ndarray of int, (m, 2)
        :func:`overlap_pairs` of the grid (piece indices).
    registrations : list of Registration
        The registration of each pair, frame ``grid.frames[a]`` against
        ``grid.frames[b]``.
    measured_nm : ndarray, (m, 2)
        Each pair's stage displacement from its registration (nm, stage axes; NaN where
        not known): :func:`pair_displacements_nm`.
    transform : StageToImage
        The stage-to-image transform the analysis uses.
    oriented : bool
        Whether `transform` is known (calibrated or estimated).
    image_shift_nm : ndarray, (n, 2), optional
        Each piece's image shift relative to the first piece's (NaN where unknown);
        default none.
    stage_unknown : dict, optional
        Pair index -> why its stage displacement is unknown (e.g. an uncalibrated
        image-shift change).

    Returns
    -------
    Montage
    """
    pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
    if len(registrations) != len(pairs):
        raise ValueError(f"need one registration per pair, got {len(registrations)} for {len(pairs)} pairs")
    frames = grid.frames
    target = session.targets_nm()[frames, :2]
    reported = session.reported_nm()[frames, :2]
    commanded = np.where(np.all(np.isfinite(target), axis=1)[:, None], target, reported)
    rows, columns = session.frame_shape
    confidence = np.array([r.confidence if r.ok else np.nan for r in registrations], dtype=float)
    overlap = np.array([r.overlap_fraction if r.ok else np.nan for r in registrations], dtype=float)
    weights = pair_weights(confidence, overlap, rows * columns)
    measured = np.asarray(measured_nm, dtype=float).reshape(-1, 2)
    solution = solve_positions(len(frames), pairs, measured, weights, fixed=0, fixed_position_nm=commanded[0],
                               max_residual_nm=MAX_RESIDUAL_PX * session.pixel_size_nm)
    actual = solution.positions_nm
    shift = np.zeros((len(frames), 2)) if image_shift_nm is None else np.asarray(image_shift_nm, dtype=float)
    field_px = expected_field_px(commanded + shift, session.pixel_size_nm, transform)
    return Montage(
        frames=frames, column=grid.column, row=grid.row,
        target_nm=target, reported_nm=reported, commanded_nm=commanded,
        actual_nm=actual, sd_nm=solution.sd_nm,
        error_nm=piece_errors_nm(actual, target), reported_error_nm=piece_errors_nm(actual, reported),
        commanded_error_nm=piece_errors_nm(actual, commanded),
        pairs=pairs, registrations=list(registrations), measured_nm=measured, weights=weights,
        solution=solution, field_px=field_px,
        overlap_px=overlap_width_px(grid.column, grid.row, field_px, (rows, columns)),
        pixel_size_nm=session.pixel_size_nm, frame_shape=(rows, columns), oriented=oriented,
        image_shift_nm=shift, stage_unknown=dict(stage_unknown or {}),
        moved_by=montage_motion(commanded, shift, min(rows, columns) * session.pixel_size_nm),
    )


def pair_displacements_nm(registrations: list[Registration], pixel_size_nm: float, transform: StageToImage,
                          image_shift_change_nm=None) -> np.ndarray:
    """Stage displacement of each registered pair: its image motion less the change of the image shift.

    The image shift moves the image without moving the stage, so, as for the lateral
    metrics (:func:`stage_acceptance.analysis.image_shift_change_nm`), the stage moved
    by the registered displacement in stage nm minus the change of the image shift
    between the two frames.

    Parameters
    ----------
    registrations : list of Registration
    pixel_size_nm : float
    transform : StageToImage
    image_shift_change_nm : array_like, (m, 2), optional
        Change of the image shift of each pair (stage nm; NaN where unknown). Default:
        none.

    Returns
    -------
    ndarray, (m, 2)
        nm, stage axes; NaN where not registered or the image-shift change is unknown.
    """
    shift = np.array([r.shift_px if r.ok else (np.nan, np.nan) for r in registrations], dtype=float).reshape(-1, 2)
    moved = image_px_to_stage_nm(shift, pixel_size_nm, transform).reshape(-1, 2)
    if image_shift_change_nm is None:
        return moved
    change = np.asarray(image_shift_change_nm, dtype=float).reshape(-1, 2)
    if len(change) != len(moved):
        raise ValueError(f"need one image-shift change per registration, got {len(change)} for {len(moved)}")
    return moved - change

"""Field of view and detector of the simulated microscope.

The image follows the recording-v1 convention (see :mod:`stage_acceptance.geometry`):
with ``M = transform.matrix()`` and the frame centre ``c = ((n - 1) / 2, (n - 1) / 2)``
for an ``n x n`` frame, the pixel at image coordinate ``v = (column, row)`` shows the
specimen point::

    q = M^-1 (v - c) * pixel_size_nm - stage_xy_nm

so a stage move ``u`` (nm) moves every feature by ``M u / pixel_size_nm`` pixels
``(column, row)``: with rotation 0 and no flip, ``+x`` moves features right and ``+y``
moves them down.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..geometry import StageToImage
from .specimen import Specimen

MIN_FRAME_PX = 16
"""Smallest frame side the simulation renders, pixels."""


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return float(value)


def frame_intensity(
    specimen: Specimen,
    stage_xy_nm,
    *,
    pixel_size_nm: float,
    frame_px: int,
    transform: StageToImage,
    blur_px: float = 0.7,
    tilt_deg=(0.0, 0.0),
) -> np.ndarray:
    """The noiseless image (specimen intensity) for a stage position.

    Parameters
    ----------
    specimen : Specimen
        What is imaged.
    stage_xy_nm : array_like, shape (2,)
        The actual stage position ``(x, y)``, nm.
    pixel_size_nm : float
        Pixel size, nm per pixel (> 0).
    frame_px : int
        Side of the square frame, pixels (>= :data:`MIN_FRAME_PX`).
    transform : StageToImage
        Rotation and flip between the stage and image axes.
    blur_px : float, optional
        Sigma of the Gaussian probe/pixel blur, pixels (>= 0). About 0.7 px or more
        keeps the image free of aliasing.

    tilt_deg : (float, float), optional
        Actual alpha and beta tilt (deg): the specimen is foreshortened by their
        cosines about its own position.

    Returns
    -------
    ndarray of float64, shape (frame_px, frame_px)
        Intensity, indexed ``[row, column]``; about 1 on bare film.

    Raises
    ------
    ValueError
        If an argument is out of range or of the wrong type.
    """
    if not hasattr(specimen, "render_grid"):
        raise ValueError(f"specimen must be a Specimen or ImageSpecimen, got {type(specimen).__name__}")
    stage = np.asarray(stage_xy_nm, dtype=float)
    if stage.shape != (2,) or not np.all(np.isfinite(stage)):
        raise ValueError(f"stage_xy_nm must be two finite numbers (x, y) in nm, got {stage_xy_nm!r}")
    pixel_size_nm = _check_positive("pixel_size_nm", pixel_size_nm)
    if isinstance(frame_px, bool) or not isinstance(frame_px, (int, np.integer)) or frame_px < MIN_FRAME_PX:
        raise ValueError(f"frame_px must be an integer >= {MIN_FRAME_PX}, got {frame_px!r}")
    if not isinstance(transform, StageToImage):
        raise ValueError(f"transform must be a StageToImage, got {type(transform).__name__}")
    if isinstance(blur_px, bool) or not isinstance(blur_px, (int, float, np.integer, np.floating)):
        raise ValueError(f"blur_px must be a number, got {blur_px!r}")
    if not (math.isfinite(blur_px) and blur_px >= 0):
        raise ValueError(f"blur_px must be finite and >= 0, got {blur_px}")

    frame_px = int(frame_px)
    basis_nm = np.linalg.inv(transform.matrix()) * pixel_size_nm  # column-plane nm per image pixel (column, row)
    centre_px = np.full(2, (frame_px - 1) / 2.0)
    origin_nm = -basis_nm @ centre_px - stage
    # A specimen tilted by alpha (about x) and beta (about y) is seen foreshortened:
    # a column-plane offset p from the specimen's position is specimen distance p / cos.
    alpha, beta = np.deg2rad(np.asarray(tilt_deg, dtype=float))
    stretch = np.array([1.0 / np.cos(beta), 1.0 / np.cos(alpha)])[:, None]
    origin_nm = (origin_nm + stage) * stretch[:, 0] - stage
    basis_nm = basis_nm * stretch
    return specimen.render_grid(
        origin_nm,
        basis_nm[:, 0],
        basis_nm[:, 1],
        (frame_px, frame_px),
        blur_nm=float(blur_px) * pixel_size_nm,
    )


def render_frame(
    specimen: Specimen,
    stage_xy_nm,
    *,
    pixel_size_nm: float,
    frame_px: int,
    transform: StageToImage,
    dose: float,
    rng: np.random.Generator,
    blur_px: float = 0.7,
    scan_jitter_px: float = 0.0,
    read_noise_counts: float = 0.0,
    tilt_deg=(0.0, 0.0),
) -> np.ndarray:
    """The image the detector records with the specimen at a stage position.

    Poisson counts with mean ``dose * intensity``, where the intensity is
    :func:`frame_intensity` (about 1 on bare film).

    Parameters
    ----------
    specimen : Specimen
        What is imaged.
    stage_xy_nm : array_like, shape (2,)
        The actual stage position ``(x, y)``, nm.
    pixel_size_nm : float
        Pixel size, nm per pixel (> 0).
    frame_px : int
        Side of the square frame, pixels (>= :data:`MIN_FRAME_PX`).
    transform : StageToImage
        Rotation and flip between the stage and image axes.
    dose : float
        Mean counts per pixel on bare film (> 0).
    rng : numpy.random.Generator
        Source of the shot noise; the result is a deterministic function of its state.
    blur_px : float, optional
        Sigma of the Gaussian probe/pixel blur, pixels (>= 0).
    scan_jitter_px : float, optional
        Standard deviation of the sideways offset of each scan line (STEM scan-line
        jitter), pixels (>= 0); see :func:`scan_line_jitter`.
    read_noise_counts : float, optional
        Standard deviation of Gaussian detector read noise added to the counts (>= 0).
    tilt_deg : (float, float), optional
        Actual alpha and beta tilt: the specimen is foreshortened by their cosines
        about its own position.

    Returns
    -------
    ndarray of float32, shape (frame_px, frame_px)
        Counts (whole numbers, exact up to 2**24, unless read noise is added),
        indexed ``[row, column]``; float32 rather than uint16 so that no dose can
        overflow.

    Raises
    ------
    ValueError
        If an argument is out of range or of the wrong type.
    """
    dose = _check_positive("dose", dose)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    intensity = frame_intensity(
        specimen,
        stage_xy_nm,
        pixel_size_nm=pixel_size_nm,
        frame_px=frame_px,
        transform=transform,
        blur_px=blur_px,
        tilt_deg=tilt_deg,
    )
    if scan_jitter_px < 0 or read_noise_counts < 0:
        raise ValueError(f"scan_jitter_px and read_noise_counts must be >= 0, got {scan_jitter_px}, {read_noise_counts}")
    if scan_jitter_px > 0:
        intensity = scan_line_jitter(intensity, rng.normal(0.0, scan_jitter_px, size=intensity.shape[0]))
    counts = rng.poisson(dose * intensity).astype(np.float32)
    if read_noise_counts > 0:
        counts += rng.normal(0.0, read_noise_counts, size=counts.shape).astype(np.float32)
    return counts


def scan_line_jitter(image: np.ndarray, row_offsets_px: np.ndarray) -> np.ndarray:
    """Shift every scan line (row) of `image` sideways by its own offset.

    Models STEM scan-line jitter: line ``r`` is sampled ``row_offsets_px[r]`` pixels
    further along the scan (cubic spline; edges continued by reflection).

    Parameters
    ----------
    image : ndarray, 2-D
    row_offsets_px : ndarray, (rows,)
        Offset of each line in pixels; positive samples further right.

    Returns
    -------
    ndarray, same shape as `image`
    """
    rows, cols = image.shape
    offsets = np.asarray(row_offsets_px, dtype=float)
    if offsets.shape != (rows,):
        raise ValueError(f"need one offset per row ({rows}), got shape {offsets.shape}")
    r, c = np.mgrid[0:rows, 0:cols].astype(float)
    return ndimage.map_coordinates(image, [r, c + offsets[:, None]], order=3, mode="reflect")

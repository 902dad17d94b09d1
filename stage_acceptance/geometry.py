"""Stage positions and the stage <-> image transform.

This is the one place that converts between stage coordinates (nanometres, the
stage's own x and y axes) and image coordinates (pixels, ``(column, row)`` = image
``(x, y)``), following the convention of recording-v1::

    d = R(rotation_deg) . diag(1, s) . u / pixel_size_nm

where ``u = (dx, dy)`` is a stage move in nm, ``d`` the resulting displacement of the
specimen's features in the image in pixels ``(column, row)``, ``R`` the usual
counter-clockwise rotation matrix applied to column vectors and ``s = -1`` when
``flip_y`` is true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AXES = ("x", "y", "z", "alpha", "beta")
"""Names of the stage axes, in the order used everywhere (recording-v1 keys)."""

AXIS_UNITS = {"x": "nm", "y": "nm", "z": "nm", "alpha": "deg", "beta": "deg"}

AXIS_FIELDS = {"x": "x_nm", "y": "y_nm", "z": "z_nm", "alpha": "alpha_deg", "beta": "beta_deg"}
"""The :class:`StagePosition` field (and holder ``[limits]`` key) of each axis."""


@dataclass(frozen=True)
class StagePosition:
    """A stage position: x, y, z in nanometres, alpha and beta tilts in degrees."""

    x_nm: float = 0.0
    y_nm: float = 0.0
    z_nm: float = 0.0
    alpha_deg: float = 0.0
    beta_deg: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Return the recording-v1 position object ``{"x": .., "y": .., ...}``."""
        return {axis: float(value) for axis, value in zip(AXES, self.as_tuple())}

    @classmethod
    def from_dict(cls, data: dict) -> "StagePosition":
        """Build from a recording-v1 position object; missing keys mean 0.

        Raises
        ------
        ValueError
            If a key is not one of ``x, y, z, alpha, beta`` or a value is not a
            finite number.
        """
        unknown = set(data) - set(AXES)
        if unknown:
            raise ValueError(f"unknown position key(s) {sorted(unknown)}; expected {list(AXES)}")
        values = []
        for axis in AXES:
            value = data.get(axis, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"position key '{axis}' must be a finite number, got {value!r}")
            values.append(float(value))
        return cls(*values)

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        return (self.x_nm, self.y_nm, self.z_nm, self.alpha_deg, self.beta_deg)

    def as_array(self) -> np.ndarray:
        """Return ``[x_nm, y_nm, z_nm, alpha_deg, beta_deg]`` as a float array."""
        return np.array(self.as_tuple(), dtype=float)

    @classmethod
    def from_array(cls, values) -> "StagePosition":
        values = np.asarray(values, dtype=float)
        if values.shape != (5,):
            raise ValueError(f"a stage position needs 5 values (x, y, z, alpha, beta), got shape {values.shape}")
        return cls(*(float(v) for v in values))

    def xy_nm(self) -> np.ndarray:
        return np.array([self.x_nm, self.y_nm], dtype=float)


@dataclass(frozen=True)
class StageToImage:
    """Rotation and flip between stage axes and image axes (recording-v1)."""

    rotation_deg: float = 0.0
    flip_y: bool = False

    def matrix(self) -> np.ndarray:
        """The 2x2 matrix ``R(rotation) . diag(1, s)`` (dimensionless)."""
        return stage_to_image_matrix(self.rotation_deg, self.flip_y)


def rotation_matrix(angle_deg: float) -> np.ndarray:
    """Counter-clockwise rotation matrix ``[[cos, -sin], [sin, cos]]``.

    Parameters
    ----------
    angle_deg : float
        Rotation angle in degrees.

    Returns
    -------
    ndarray, shape (2, 2)
    """
    theta = np.deg2rad(angle_deg)
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def stage_to_image_matrix(rotation_deg: float, flip_y: bool) -> np.ndarray:
    """Return ``R(rotation_deg) . diag(1, s)`` with ``s = -1`` if `flip_y`.

    Parameters
    ----------
    rotation_deg : float
        Stage-to-image rotation in degrees.
    flip_y : bool
        Whether the stage y axis is mirrored in the image.

    Returns
    -------
    ndarray, shape (2, 2)
    """
    return rotation_matrix(rotation_deg) @ np.diag([1.0, -1.0 if flip_y else 1.0])


def stage_nm_to_image_px(u_nm, pixel_size_nm: float, transform: StageToImage) -> np.ndarray:
    """Image displacement of the specimen's features for a stage move.

    Parameters
    ----------
    u_nm : array_like, shape (2,) or (n, 2)
        Stage displacement(s) ``(dx, dy)`` in nm.
    pixel_size_nm : float
        Calibrated pixel size in nm per pixel.
    transform : StageToImage
        Rotation and flip.

    Returns
    -------
    ndarray, same shape as `u_nm`
        Displacement(s) in pixels, ``(column, row)``.
    """
    if not pixel_size_nm > 0:
        raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    u = np.asarray(u_nm, dtype=float)
    return (u @ transform.matrix().T) / pixel_size_nm


def image_px_to_stage_nm(d_px, pixel_size_nm: float, transform: StageToImage) -> np.ndarray:
    """Stage displacement that moves the specimen's features by `d_px`.

    The inverse of :func:`stage_nm_to_image_px`.

    Parameters
    ----------
    d_px : array_like, shape (2,) or (n, 2)
        Image displacement(s) in pixels, ``(column, row)``.
    pixel_size_nm : float
        Calibrated pixel size in nm per pixel.
    transform : StageToImage
        Rotation and flip.

    Returns
    -------
    ndarray, same shape as `d_px`
        Stage displacement(s) ``(dx, dy)`` in nm.
    """
    if not pixel_size_nm > 0:
        raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    d = np.asarray(d_px, dtype=float)
    inverse = np.linalg.inv(transform.matrix())
    return (d @ inverse.T) * pixel_size_nm

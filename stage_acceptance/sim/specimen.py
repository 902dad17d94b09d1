"""A procedural, deterministic, unbounded specimen: nanoparticles on a support film.

The specimen looks like a HAADF STEM image of metal nanoparticles on an amorphous
support film. It is defined at every point of the plane (the stage travels tens of
micrometres) and can be evaluated in any window without generating anything outside
it:

* **Particles.** The plane is cut into square cells of :data:`CELL_NM`. Cell
  ``(i, j)`` holds ``Poisson(density * area)`` particles whose positions and radii
  are drawn from a counter-based hash (splitmix64) of ``(seed, i, j, slot)``, so any
  cell is reproduced on its own, in any order. Radii follow a log-normal law
  (median :data:`RADIUS_MEDIAN_NM`, log-sigma :data:`RADIUS_LOG_SIGMA`) truncated to
  ``[RADIUS_MIN_NM, RADIUS_MAX_NM]``: small particles are far more numerous than big
  ones. A particle of radius ``R`` is a Gaussian of sigma ``R / 2`` (the best
  positive-Gaussian fit to the projected thickness of a sphere) whose peak
  ``particle_contrast * (1 - exp(-R / RADIUS_SATURATION_NM))`` grows with thickness
  and saturates for the biggest ones.
* **Film.** ``exp(film_contrast * g - film_contrast**2 * var(g) / 2)``, where ``g``
  is a sum of :data:`FILM_WAVES` plane waves with random directions and phases and
  wavelengths log-uniform in :data:`FILM_WAVELENGTH_NM` (equal power per octave): a
  mottled, statistically stationary field with correlation lengths from a few tens
  of nm to about a micrometre, mean about 1 and positive everywhere. It never
  repeats (the frequencies are incommensurate) and needs no grid at all.

Rendering is analytic. The blur of the probe and pixel, a Gaussian of sigma
``blur_nm``, is applied exactly: a particle's sigma becomes
``sqrt(sigma**2 + blur_nm**2)`` (with its integral kept) and each film wave is
attenuated by its Gaussian transfer ``exp(-2 pi**2 blur_nm**2 |f|**2)``. Sampling at
any continuous (sub-pixel, rotated, mirrored) position is therefore exact and, for a
blur of about a pixel or more, free of aliasing: the rendered intensity is a function
of the specimen point alone, ``I(q)``, which is what makes sub-pixel registration of
simulated frames unbiased. A particle's contribution is cut off beyond
:data:`CUTOFF_SIGMAS` of its blurred sigma (an error below 2e-5 of the film), with a
circular cut-off so that the cut, too, depends on ``q`` alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import tifffile
from scipy import ndimage
from scipy.special import ndtr, ndtri
from scipy.stats import poisson

CELL_NM = 500.0
"""Side of the square hash-grid cells that hold the particles, nm."""

RADIUS_MIN_NM = 2.0
RADIUS_MAX_NM = 60.0
RADIUS_MEDIAN_NM = 5.0
RADIUS_LOG_SIGMA = 0.8
"""Particle radii: log-normal, median 5 nm, sigma of ln(radius) 0.8, truncated to 2-60 nm."""

RADIUS_SATURATION_NM = 20.0
"""Radius scale over which a particle's peak brightness saturates, nm."""

SIGMA_PER_RADIUS = 0.5
"""Gaussian sigma of a particle per unit radius (fit to a sphere's projected thickness)."""

CUTOFF_SIGMAS = 5.0
"""A particle contributes only within this many blurred sigmas of its centre."""

FILM_WAVES = 256
FILM_WAVELENGTH_NM = (40.0, 2000.0)
"""The film: 256 plane waves, wavelengths log-uniform between 40 nm and 2 um."""

_TAIL_PROBABILITY = 1e-15  # particles per cell are capped where the Poisson tail is below this
_FILM_STREAM = 0x46494C4D  # "FILM": seeds the film's waves apart from the particles
_CELL_STREAM = 0x50415254  # "PART"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _uniform(key: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from the splitmix64 stream ``key`` at ``counter``."""
    z = _mix(key + (counter.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)


def _check_finite_array(name: str, value) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _check_blur(blur_nm) -> float:
    if isinstance(blur_nm, bool) or not isinstance(blur_nm, (int, float, np.integer, np.floating)):
        raise ValueError(f"blur_nm must be a number, got {blur_nm!r}")
    if not (math.isfinite(blur_nm) and blur_nm >= 0):
        raise ValueError(f"blur_nm must be finite and >= 0, got {blur_nm}")
    return float(blur_nm)


class Specimen:
    """Nanoparticles on a mottled support film, defined on the whole plane.

    See the module docstring for the model. All coordinates are specimen
    coordinates in nm; the intensity is dimensionless, about 1 on bare film.

    Parameters
    ----------
    seed : int, optional
        Non-negative seed; the same seed always gives the same specimen.
    particle_density_per_um2 : float, optional
        Mean number of particles per square micrometre (>= 0; 0 gives bare film).
    film_contrast : float, optional
        Relative rms fluctuation of the film, in [0, 1).
    particle_contrast : float, optional
        Peak brightness above the film of a particle much bigger than
        :data:`RADIUS_SATURATION_NM`, unblurred (>= 0).

    Raises
    ------
    ValueError
        If a parameter is out of range or not a number.

    Examples
    --------
    >>> specimen = Specimen(seed=3)
    >>> x_nm, y_nm = np.meshgrid(np.arange(64) * 7.32, np.arange(64) * 7.32)
    >>> specimen.render(x_nm, y_nm, blur_nm=5.0).shape
    (64, 64)
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        particle_density_per_um2: float = 40.0,
        film_contrast: float = 0.1,
        particle_contrast: float = 4.0,
    ):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0 or seed >= 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        for name, value in (
            ("particle_density_per_um2", particle_density_per_um2),
            ("film_contrast", film_contrast),
            ("particle_contrast", particle_contrast),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if film_contrast >= 1:
            raise ValueError(f"film_contrast must be < 1, got {film_contrast}")
        self.seed = int(seed)
        self.particle_density_per_um2 = float(particle_density_per_um2)
        self.film_contrast = float(film_contrast)
        self.particle_contrast = float(particle_contrast)

        # Particles per cell: Poisson, inverted through a table of its CDF.
        self._mean_per_cell = self.particle_density_per_um2 * (CELL_NM / 1000.0) ** 2
        if self._mean_per_cell > 0:
            k_max = int(poisson.isf(_TAIL_PROBABILITY, self._mean_per_cell)) + 1
            self._count_cdf = poisson.cdf(np.arange(k_max + 1), self._mean_per_cell)
            self._count_cdf[-1] = 1.0
        else:
            self._count_cdf = np.ones(1)
        self._cell_key = _mix(np.array([self.seed], dtype=np.uint64) ^ np.uint64(_CELL_STREAM))[0]
        self._log_median = math.log(RADIUS_MEDIAN_NM)
        self._cdf_lo = float(ndtr((math.log(RADIUS_MIN_NM) - self._log_median) / RADIUS_LOG_SIGMA))
        self._cdf_hi = float(ndtr((math.log(RADIUS_MAX_NM) - self._log_median) / RADIUS_LOG_SIGMA))

        # Film: plane waves, equal amplitude, log-uniform wavelength, random direction.
        rng = np.random.default_rng([self.seed, _FILM_STREAM])
        lo, hi = FILM_WAVELENGTH_NM
        wavelength_nm = np.exp(rng.uniform(math.log(lo), math.log(hi), FILM_WAVES))
        direction = rng.uniform(0.0, np.pi, FILM_WAVES)
        self._film_freq_per_nm = np.stack([np.cos(direction), np.sin(direction)], axis=1) / wavelength_nm[:, None]
        self._film_phase = rng.uniform(0.0, 2 * np.pi, FILM_WAVES)
        self._film_amplitude = np.full(FILM_WAVES, math.sqrt(2.0 / FILM_WAVES))  # rms of g is 1

    def __repr__(self) -> str:
        return (
            f"Specimen(seed={self.seed}, particle_density_per_um2={self.particle_density_per_um2}, "
            f"film_contrast={self.film_contrast}, particle_contrast={self.particle_contrast})"
        )

    # ------------------------------------------------------------------ particles

    def particles(self, x_range_nm, y_range_nm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The particles whose centres lie in a rectangle (the ground truth).

        Parameters
        ----------
        x_range_nm, y_range_nm : tuple of float
            ``(min, max)`` of the rectangle in specimen coordinates, nm.

        Returns
        -------
        x_nm, y_nm, radius_nm : ndarray, shape (n,)
            Centres and radii of the particles, in a deterministic order.

        Raises
        ------
        ValueError
            If a range is not two finite numbers with ``min <= max``.
        """
        (x0, x1), (y0, y1) = self._check_range("x_range_nm", x_range_nm), self._check_range("y_range_nm", y_range_nm)
        x, y, r = self._particles_in_cells(x0, x1, y0, y1)
        keep = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        return x[keep], y[keep], r[keep]

    @staticmethod
    def _check_range(name: str, value) -> tuple[float, float]:
        array = np.asarray(value, dtype=float)
        if array.shape != (2,) or not np.all(np.isfinite(array)) or array[0] > array[1]:
            raise ValueError(f"{name} must be (min, max) finite numbers with min <= max, got {value!r}")
        return float(array[0]), float(array[1])

    def _particles_in_cells(self, x0: float, x1: float, y0: float, y1: float):
        """All particles of the cells that overlap ``[x0, x1] x [y0, y1]``."""
        empty = np.empty(0)
        if self._count_cdf.size == 1:
            return empty, empty, empty
        i = np.arange(math.floor(x0 / CELL_NM), math.floor(x1 / CELL_NM) + 1, dtype=np.int64)
        j = np.arange(math.floor(y0 / CELL_NM), math.floor(y1 / CELL_NM) + 1, dtype=np.int64)
        if i.size * j.size > 10_000_000:
            raise ValueError(f"window of {x1 - x0:.0f} x {y1 - y0:.0f} nm is too large to render")
        ii, jj = (a.ravel() for a in np.meshgrid(i, j, indexing="ij"))
        with np.errstate(over="ignore"):
            key = _mix(_mix(self._cell_key ^ ii.view(np.uint64)) ^ jj.view(np.uint64))
            counter0 = np.zeros(key.size, dtype=np.uint64)
            count = np.searchsorted(self._count_cdf, _uniform(key, counter0), side="right")
            count = np.minimum(count, self._count_cdf.size - 1)
            cell = np.repeat(np.arange(key.size), count)
            slot = np.arange(cell.size) - np.repeat(np.cumsum(count) - count, count)
            k = key[cell]
            base = 1 + 3 * slot.astype(np.uint64)
            ux = _uniform(k, base)
            uy = _uniform(k, base + np.uint64(1))
            ur = _uniform(k, base + np.uint64(2))
        x = (ii[cell] + ux) * CELL_NM
        y = (jj[cell] + uy) * CELL_NM
        p = self._cdf_lo + ur * (self._cdf_hi - self._cdf_lo)
        radius = np.exp(self._log_median + RADIUS_LOG_SIGMA * ndtri(p))
        radius = np.clip(radius, RADIUS_MIN_NM, RADIUS_MAX_NM)
        return x, y, radius

    def _blurred_particles(self, x0, x1, y0, y1, blur_nm):
        """Particles that can reach the window, with their blurred sigma, peak and reach."""
        max_reach_nm = CUTOFF_SIGMAS * math.hypot(SIGMA_PER_RADIUS * RADIUS_MAX_NM, blur_nm)
        x, y, radius = self._particles_in_cells(x0 - max_reach_nm, x1 + max_reach_nm,
                                                y0 - max_reach_nm, y1 + max_reach_nm)
        sigma2 = (SIGMA_PER_RADIUS * radius) ** 2
        sigma2_eff = sigma2 + blur_nm**2
        peak = self.particle_contrast * -np.expm1(-radius / RADIUS_SATURATION_NM) * sigma2 / sigma2_eff
        reach_nm = CUTOFF_SIGMAS * np.sqrt(sigma2_eff)
        keep = (
            (x + reach_nm >= x0) & (x - reach_nm <= x1) & (y + reach_nm >= y0) & (y - reach_nm <= y1) & (peak > 0)
        )
        return x[keep], y[keep], sigma2_eff[keep], peak[keep], reach_nm[keep]

    # ------------------------------------------------------------------ film

    def _film_waves(self, blur_nm: float):
        """Blur-attenuated amplitudes of the film waves and the film's log-normal offset."""
        f2 = np.sum(self._film_freq_per_nm**2, axis=1)
        amplitude = self.film_contrast * self._film_amplitude * np.exp(-2 * np.pi**2 * blur_nm**2 * f2)
        log_offset = -0.5 * np.sum(amplitude**2) / 2  # -var/2: the film's mean is 1
        return amplitude, log_offset

    # ------------------------------------------------------------------ rendering

    def render(self, x_nm, y_nm, *, blur_nm: float) -> np.ndarray:
        """Intensity at arbitrary specimen points, band-limited by a Gaussian blur.

        This is the general (slower) path; for a regular grid, as in an image, use
        :meth:`render_grid`, which gives the same values.

        Parameters
        ----------
        x_nm, y_nm : array_like
            Specimen coordinates in nm, arrays of equal shape (any shape).
        blur_nm : float
            Sigma of the Gaussian probe/pixel blur, nm (>= 0).

        Returns
        -------
        ndarray of float64, same shape as `x_nm`
            Intensity: about 1 on bare film, brighter on particles, > 0 everywhere.

        Raises
        ------
        ValueError
            If the shapes differ, a coordinate is not finite or `blur_nm` is
            negative or not finite.
        """
        x = _check_finite_array("x_nm", x_nm)
        y = _check_finite_array("y_nm", y_nm)
        if x.shape != y.shape:
            raise ValueError(f"x_nm and y_nm must have the same shape, got {x.shape} and {y.shape}")
        blur_nm = _check_blur(blur_nm)
        shape = x.shape
        x, y = x.ravel(), y.ravel()
        if x.size == 0:
            return np.empty(shape)

        amplitude, log_offset = self._film_waves(blur_nm)
        log_film = np.full(x.size, log_offset)
        for start in range(0, FILM_WAVES, 16):
            f = self._film_freq_per_nm[start:start + 16]
            phase = 2 * np.pi * (f[:, 0:1] * x + f[:, 1:2] * y) + self._film_phase[start:start + 16, None]
            log_film += amplitude[start:start + 16] @ np.cos(phase)
        intensity = np.exp(log_film)

        px, py, sigma2_eff, peak, reach_nm = self._blurred_particles(x.min(), x.max(), y.min(), y.max(), blur_nm)
        if px.size:
            from scipy.spatial import cKDTree

            tree = cKDTree(np.stack([x, y], axis=1))
            hits = tree.query_ball_point(np.stack([px, py], axis=1), r=reach_nm)
            lengths = np.fromiter((len(h) for h in hits), dtype=np.intp, count=len(hits))
            if lengths.sum():
                point = np.concatenate([np.asarray(h, dtype=np.intp) for h in hits])
                owner = np.repeat(np.arange(px.size), lengths)
                r2 = (x[point] - px[owner]) ** 2 + (y[point] - py[owner]) ** 2
                inside = r2 < reach_nm[owner] ** 2
                value = peak[owner] * np.exp(-r2 / (2 * sigma2_eff[owner]))
                intensity += np.bincount(point[inside], weights=value[inside], minlength=x.size)
        return intensity.reshape(shape)

    def render_grid(self, origin_nm, col_step_nm, row_step_nm, shape, *, blur_nm: float) -> np.ndarray:
        """Intensity on a regular (possibly rotated, sheared or mirrored) grid.

        Pixel ``[row, col]`` samples the specimen point
        ``origin_nm + col * col_step_nm + row * row_step_nm``. Equal to
        :meth:`render` at those points, but fast: the film is a sum of separable
        plane waves (one complex matrix product) and each particle is added only to
        the patch of pixels it reaches.

        Parameters
        ----------
        origin_nm : array_like, shape (2,)
            Specimen point ``(x, y)`` of pixel ``[0, 0]``, nm.
        col_step_nm, row_step_nm : array_like, shape (2,)
            Specimen displacement ``(x, y)`` of one pixel along a row (next column)
            and down a column (next row), nm; they must not be parallel.
        shape : tuple of int
            ``(rows, cols)`` of the output, each >= 1.
        blur_nm : float
            Sigma of the Gaussian probe/pixel blur, nm (>= 0).

        Returns
        -------
        ndarray of float64, shape `shape`
            Intensity: about 1 on bare film, brighter on particles, > 0 everywhere.

        Raises
        ------
        ValueError
            If a vector is not two finite numbers, the steps are parallel, the shape
            is not two positive integers, or `blur_nm` is negative or not finite.
        """
        vectors = []
        for name, value in (("origin_nm", origin_nm), ("col_step_nm", col_step_nm), ("row_step_nm", row_step_nm)):
            array = np.asarray(value, dtype=float)
            if array.shape != (2,) or not np.all(np.isfinite(array)):
                raise ValueError(f"{name} must be two finite numbers (x, y), got {value!r}")
            vectors.append(array)
        origin, col_step, row_step = vectors
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in shape)
        ):
            raise ValueError(f"shape must be (rows, cols), two integers >= 1, got {shape!r}")
        rows, cols = int(shape[0]), int(shape[1])
        blur_nm = _check_blur(blur_nm)
        basis = np.stack([col_step, row_step], axis=1)  # q = origin + basis @ (col, row)
        scale = max(np.hypot(*col_step), np.hypot(*row_step))
        if scale == 0 or abs(np.linalg.det(basis)) <= 1e-9 * scale**2:
            raise ValueError(f"col_step_nm {col_step.tolist()} and row_step_nm {row_step.tolist()} are parallel")

        # Film: sum_k a_k cos(phi_k + 2 pi f_k . q) = Re[(V^T diag(c)) @ U], separable.
        amplitude, log_offset = self._film_waves(blur_nm)
        f = self._film_freq_per_nm
        phase0 = np.mod(self._film_phase + 2 * np.pi * (f @ origin), 2 * np.pi)
        coefficient = amplitude * np.exp(1j * phase0)
        u = np.exp(2j * np.pi * np.outer(f @ col_step, np.arange(cols)))  # (K, cols)
        v = np.exp(2j * np.pi * np.outer(f @ row_step, np.arange(rows)))  # (K, rows)
        intensity = np.exp(((v.T * coefficient) @ u).real + log_offset)

        # Particles: each added to the patch of pixels within its reach.
        corners = origin + np.array([[0, 0], [cols - 1, 0], [0, rows - 1], [cols - 1, rows - 1]]) @ basis.T
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        px, py, sigma2_eff, peak, reach_nm = self._blurred_particles(x0, x1, y0, y1, blur_nm)
        if px.size == 0:
            return intensity
        inverse = np.linalg.inv(basis)
        centre_px = (np.stack([px, py], axis=1) - origin) @ inverse.T  # (n, 2) as (col, row)
        half_px = np.ceil(reach_nm * np.linalg.norm(inverse, 2)).astype(np.intp)
        col_c, row_c = centre_px[:, 0], centre_px[:, 1]
        keep = (col_c + half_px >= 0) & (col_c - half_px <= cols - 1) & (row_c + half_px >= 0) & (row_c - half_px <= rows - 1)
        gram = basis.T @ basis  # squared specimen distance = d^T gram d for a pixel offset d
        flat = intensity.ravel()
        for half in np.unique(half_px[keep]):
            group = keep & (half_px == half)
            offsets = np.arange(-half, half + 1)
            col = np.rint(col_c[group]).astype(np.intp)[:, None] + offsets  # (n, w)
            row = np.rint(row_c[group]).astype(np.intp)[:, None] + offsets
            dc = (col - col_c[group, None])[:, None, :]  # (n, 1, w)
            dr = (row - row_c[group, None])[:, :, None]  # (n, w, 1)
            r2 = gram[0, 0] * dc**2 + 2 * gram[0, 1] * dc * dr + gram[1, 1] * dr**2  # (n, w, w)
            value = peak[group, None, None] * np.exp(-r2 / (2 * sigma2_eff[group, None, None]))
            inside = (
                (r2 < reach_nm[group, None, None] ** 2)
                & ((col >= 0) & (col < cols))[:, None, :]
                & ((row >= 0) & (row < rows))[:, :, None]
            )
            index = row[:, :, None] * cols + col[:, None, :]
            flat += np.bincount(index[inside], weights=value[inside], minlength=flat.size)
        return intensity


def read_image(path) -> np.ndarray:
    """A single 2-D image from a TIFF or MRC file, as float64.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` (tifffile) or ``.mrc``/``.st`` (mrcfile, first section of a
        stack).

    Raises
    ------
    ValueError
        Naming the file: unreadable, not 2-D, not finite, or constant.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mrc", ".st", ".mrcs", ".tif", ".tiff"):
        raise ValueError(f"{path}: specimen image must be .tif, .tiff or .mrc, got '{suffix}'")
    try:
        if suffix in (".tif", ".tiff"):
            data = np.asarray(tifffile.imread(path), dtype=float)
        else:
            with mrcfile.open(path, permissive=True) as mrc:
                data = np.asarray(mrc.data, dtype=float)
            if data.ndim == 3:
                data = data[0]
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise ValueError(f"{path}: cannot read specimen image: {exc}") from None
    if data.ndim != 2 or min(data.shape) < 8:
        raise ValueError(f"{path}: specimen image must be 2-D and at least 8 x 8 pixels, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or np.ptp(data) == 0:
        raise ValueError(f"{path}: specimen image must be finite and not constant")
    return data


class ImageSpecimen:
    """A real image used as the specimen texture, tiled by mirroring without end.

    The image's intensity is scaled to a mean of 1 and kept positive, like the
    procedural :class:`Specimen`; outside the image the plane is filled with mirrored
    copies (``d c b | a b c d | c b a``), so any travel finds texture.

    Parameters
    ----------
    image : ndarray, 2-D
        The texture, ``[row, column]`` = specimen ``(y, x)``.
    pixel_size_nm : float
        Size of one image pixel on the specimen, nm.
    """

    def __init__(self, image: np.ndarray, pixel_size_nm: float):
        image = np.asarray(image, dtype=float)
        if image.ndim != 2 or min(image.shape) < 8:
            raise ValueError(f"specimen image must be 2-D and at least 8 x 8 pixels, got shape {image.shape}")
        if not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise ValueError(f"specimen pixel size must be finite and > 0 nm, got {pixel_size_nm}")
        low = np.percentile(image, 0.5)
        positive = np.clip(image - low, 0.0, None) + 0.05 * np.ptp(image)
        self.image = positive / positive.mean()
        self.pixel_size_nm = float(pixel_size_nm)
        self._filtered: dict[float, np.ndarray] = {}

    def _prefiltered(self, blur_px: float) -> np.ndarray:
        key = round(blur_px, 6)
        if key not in self._filtered:
            blurred = ndimage.gaussian_filter(self.image, blur_px, mode="mirror") if blur_px > 0 else self.image
            self._filtered[key] = ndimage.spline_filter(blurred, order=3, mode="mirror")
        return self._filtered[key]

    def render_grid(self, origin_nm, col_step_nm, row_step_nm, shape, *, blur_nm: float) -> np.ndarray:
        """Intensity on a regular grid, as :meth:`Specimen.render_grid` (cubic spline)."""
        origin = _check_finite_array("origin_nm", origin_nm)
        col_step = _check_finite_array("col_step_nm", col_step_nm)
        row_step = _check_finite_array("row_step_nm", row_step_nm)
        blur_nm = _check_blur(blur_nm)
        rows, cols = (int(n) for n in shape)
        r, c = np.mgrid[0:rows, 0:cols]
        x = origin[0] + c * col_step[0] + r * row_step[0]
        y = origin[1] + c * col_step[1] + r * row_step[1]
        coefficients = self._prefiltered(blur_nm / self.pixel_size_nm)
        coords = np.array([y / self.pixel_size_nm, x / self.pixel_size_nm])
        return ndimage.map_coordinates(coefficients, coords, order=3, mode="mirror", prefilter=False)

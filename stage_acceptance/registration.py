"""Displacement between two overlapping images.

The *actual* displacement of a stage move is measured by registering the image taken
after the move against an earlier, overlapping one (Fiedler et al. 2023, Materials and
Methods). Each image is prepared once (:func:`prepare_frame`), however many pairs it is
in, and each pair is registered from the two prepared frames
(:func:`register_prepared`); :func:`register` does both for one pair.

**Preparing a frame** (one forward and one inverse FFT, float32, :mod:`scipy.fft`):
the image is converted to float32, transformed and its mean taken out (the
correlation coefficients do not depend on the scale). Kept are the image, a *band image* (difference of Gaussians,
sigma :data:`SIGNIFICANCE_BAND_PX`, computed through the spectrum) and its spectrum,
the radial power profile and its white-noise floor, and the low-frequency part of the
spectrum, *whitened* and weighted by the square root of the fraction of the power at
each frequency that is not noise (the generalised cross-correlation of Knapp & Carter
1976), after removing the smooth component that carries the jumps between opposite
edges (Moisan 2011). About 3.3 times the float32 image in memory.

**Registering a pair**:

1. **Search.** The product of the two whitened spectra gives, by one inverse FFT, the
   *circular* cross-correlation at the frame size (at half resolution for frames of
   256 px or more): a sharp peak whose height does not depend on the texture's
   spectrum. Its highest local maximum among the candidate shifts (an overlap of at
   least ``min_overlap`` and, with a prior, within ``search_radius_px`` of it) is
   located to a quarter pixel by an upsampled DFT of the cross-power spectrum
   (Guizar-Sicairos et al. 2008). A circular lag ``(dy, dx)`` stands for up to four
   shifts, ``dx`` or ``dx - columns`` and ``dy`` or ``dy - rows``; the one whose
   overlap correlates best in the band images is the shift, so large shifts (70 % of
   the field) are found without zero-padding.
2. **Trust.** The band images' correlation over the overlap is expressed in standard
   deviations of chance, ``r_b * sqrt(n / a)`` over ``n`` pixels, where ``a`` is the
   correlation area of the two band images (the sum over lags of the product of their
   autocorrelation functions, from the power profiles; Bartlett 1935). The peak is
   trusted when ``r`` of the overlapping pixels (the paper's score, `confidence`)
   reaches ``min_confidence``, this *significance* reaches :data:`MIN_SIGNIFICANCE`,
   the peak is distinct (chance measured from the images themselves, which matters for
   sparse textures whose chance correlations have heavy tails): its significance is at
   least :data:`MIN_DISTINCTNESS` times that of the runner-up of the correlation map
   (over the runner-up's own overlap), or its height in the map at least that many
   times the runner-up's; each third of the
   overlap is significant on its own (:data:`MIN_PART_SIGNIFICANCE`: a coincidence of
   one bright particle is not) and no neighbour outside the search region correlates
   better.
3. **Sub-pixel refinement.** Gauss-Newton (Lucas-Kanade) on the band images over the
   overlap: each step warps the moving band image to the current estimate by a phase
   ramp on its spectrum (one inverse FFT, exact for the band-limited image) and solves
   for the remaining shift with the symmetric gradient; the expected share of the
   noise in the squared gradients (errors in variables) and the bias of central
   differences are taken out using the power profiles. The search's peak is usually
   within a tenth of a pixel and the symmetric gradient makes each step exact to second
   order, so after a first step of at most :data:`_LINEAR_STEP_PX` the residual is
   predicted from the linearisation instead of by another warp; differences far
   beyond the noise (a feature in one image only) are then limited to
   :data:`_HUBER_K` robust sigmas in one last step (Huber's modified residuals).
   Larger first steps are followed by further warps, at most
   :data:`REFINE_MAX_ITERATIONS`, until a step is below 0.01 px.

Shifts are ``(column, row)`` = image ``(x, y)`` in pixels, the displacement of the
specimen's features from `reference` to `moving` (recording-v1, see
:mod:`stage_acceptance.geometry`). :func:`normalised_cross_correlation` gives the
paper's full linear normalised cross-correlation map (Padfield 2012) for inspection;
the registration does not need it. ``benchmarks/bench_registration.py`` measures the
speed and accuracy against scikit-image and the cost of three FFTs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

DEFAULT_MIN_CONFIDENCE = 0.1
"""Default lowest peak correlation coefficient of a trusted registration.

Low on purpose: a low-contrast specimen at a low dose gives ``r`` of 0.2 for a
certain match. Whether a peak is real is decided by the significance tests."""

DEFAULT_MIN_OVERLAP = 0.1
"""Default smallest overlap of a candidate shift, as a fraction of the frame area."""

DEFAULT_UPSAMPLE = 1000
"""Default sub-pixel resolution, 1/1000 px (see ``upsample`` of :func:`register_prepared`)."""

DEFAULT_SEARCH_FRACTION = 0.25
"""Default search radius around a prior, as a fraction of the larger frame side."""

MIN_SIGNIFICANCE = 7.0
"""Lowest band-passed correlation over the overlap, in standard deviations of chance, to trust."""

MIN_DISTINCTNESS = 2.0
"""Lowest ratio of the peak's significance (or height in the correlation map) to the
runner-up's."""

MIN_PART_SIGNIFICANCE = 3.0
"""Lowest significance, in sigma of chance, of each third of the overlap on its own."""

SIGNIFICANCE_BAND_PX = (1.0, 8.0)
"""Gaussian sigmas (px) of the difference-of-Gaussians band-pass of the trust test and
of the sub-pixel refinement."""

WINSOR_SIGMAS = 3.0
"""The exact search clips the band images to this many robust standard deviations, so
that no single bright particle dominates a chance correlation."""

REFINE_MAX_ITERATIONS = 3
"""Most warps of the moving frame (one FFT each) in the sub-pixel refinement. Usually
one: a first step of at most 0.1 px leaves an error of a few thousandths of a pixel,
and the robust last step is then taken on the residual predicted from the
linearisation. Otherwise the refinement warps again until a step is below 0.01 px or
below 1/upsample px."""

_MIN_SIDE_PX = 8
_MIN_OVERLAP_PX = 16
_MAX_PEAKS = 5
_PEAK_SEPARATION_PX = 24  # 3 coarse sigmas of the band: the runner-up lies beyond the peak's own correlation
_HALF_RESOLUTION_SIDE_PX = 256  # frames at least this large are searched at half resolution
_BAND_MARGIN_PX = 6  # the band images, filtered circularly, are left out this near the edges
_REFINE_MAX_MOVE_PX = 1.5
_FINAL_STEP_PX = 0.01  # a refinement step this small is the last one
_LINEAR_STEP_PX = 0.1  # after a first refinement step this small, the residual is predicted, not warped
_HUBER_K = 3.0
_NOISE_BINS = 0.1  # the outermost tenth of the radial power profile measures the white noise


@dataclass(frozen=True, eq=False)
class Registration:
    """Result of registering two overlapping images.

    Attributes
    ----------
    shift_px : ndarray, shape (2,)
        Displacement ``(column, row)`` = image ``(x, y)`` of the features from
        `reference` to `moving`, in pixels (read-only). NaN when no candidate shift
        existed at all.
    confidence : float
        Pearson correlation coefficient of the overlapping pixels at the integer peak
        of the normalised cross-correlation (the paper's score), clipped to
        ``[0, 1]``. About 1 for noise-free copies (0.98 half a pixel off the grid);
        lower with noise and low contrast (0.8 for a contrasted HAADF texture at 20
        counts per pixel, 0.2-0.4 for a faint one); near 0 for unrelated images with
        a large overlap, but up to 0.8 for unrelated small frames at a small overlap,
        which is why `ok` also requires the peak to be significant.
    overlap_fraction : float
        Area of the overlap of the two frames at `shift_px` divided by the frame area.
    ok : bool
        False when the pair cannot be trusted; `reason` says why.
    reason : str
        ``""`` when `ok`, otherwise a one-line human-readable explanation.
    """

    shift_px: np.ndarray
    confidence: float
    overlap_fraction: float
    ok: bool
    reason: str


def unregistered(reason: str) -> Registration:
    """The result for a pair that could not be registered at all, and why (one line)."""
    return Registration(_frozen([np.nan, np.nan]), 0.0, 0.0, False, reason)



@dataclass(frozen=True, eq=False)
class PreparedFrame:
    """One image, checked, converted and transformed once for any number of registrations.

    Made by :func:`prepare_frame`; read by :func:`register_prepared`. Every array is
    read-only. About 3.3 times the memory of the image in float32
    (:attr:`nbytes`).

    Attributes
    ----------
    image : ndarray of float32, shape (rows, columns)
        The image less its mean; `Registration.confidence` (a correlation
        coefficient, blind to the scale) is computed from it.
    band : ndarray of float32, shape (rows, columns)
        The image band-passed by a difference of Gaussians
        (:data:`SIGNIFICANCE_BAND_PX`), computed through the spectrum of the periodic component;
        the registration leaves 6 px at the edges out.
    band_spectrum : ndarray of complex64, shape (rows, columns // 2 + 1)
        ``scipy.fft.rfft2(band)``.
    phase : ndarray of complex64
        The low-frequency part of the image's spectrum (half the frequencies along each
        axis for frames of 256 px or more, all of them for smaller ones), whitened and
        weighted by the square root of the fraction of the power at each spatial
        frequency that is not white noise.
    power : ndarray of float64
        Mean power of the image's spectrum in rings of spatial frequency 1 / (smaller
        side) wide, from zero frequency outwards.
    noise : float
        Power of the white noise in that spectrum (the median of its outermost tenth).
    """

    image: np.ndarray
    band: np.ndarray
    band_spectrum: np.ndarray
    phase: np.ndarray
    power: np.ndarray
    noise: float

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the image."""
        return self.image.shape

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of this frame."""
        return sum(a.nbytes for a in (self.image, self.band, self.band_spectrum, self.phase, self.power))


def prepare_frame(image, *, workers: int = 1) -> PreparedFrame:
    """Check, convert and transform one image once, for any number of registrations.

    Parameters
    ----------
    image : array_like, shape (rows, columns)
        A real 2-D image, any integer or float dtype, finite, not constant, at least
        8 px on each side.
    workers : int, optional
        Threads of each FFT (:mod:`scipy.fft`). Keep 1 when frames are prepared in
        several threads at once.

    Returns
    -------
    PreparedFrame

    Raises
    ------
    ValueError
        If the image is not 2-D, not real, smaller than 8 px on a side, contains
        non-finite values or is constant (one line, naming the problem).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> frame = prepare_frame(rng.poisson(20.0, (64, 96)))
    >>> frame.shape, frame.image.dtype
    ((64, 96), dtype('float32'))
    """
    return _prepare(image, "image", workers)


def register(
    reference,
    moving,
    *,
    prior_shift_px=None,
    search_radius_px=None,
    min_overlap=DEFAULT_MIN_OVERLAP,
    min_confidence=DEFAULT_MIN_CONFIDENCE,
    upsample=DEFAULT_UPSAMPLE,
    workers: int = 1,
) -> Registration:
    """Measure the displacement of the features between two overlapping images.

    The same as ``register_prepared(prepare_frame(reference), prepare_frame(moving),
    ...)``; prepare each frame once with :func:`prepare_frame` when it takes part in
    several registrations.

    Parameters
    ----------
    reference, moving : array_like, shape (rows, columns)
        Two real 2-D images of the same shape, any integer or float dtype, finite and
        not constant. If ``moving[r, c] == reference[r - dy, c - dx]`` the result is
        ``shift_px == (dx, dy)``.
    prior_shift_px, search_radius_px, min_overlap, min_confidence, upsample, workers
        See :func:`register_prepared`.

    Returns
    -------
    Registration

    Raises
    ------
    ValueError
        If an image is not 2-D, not real, smaller than 8 px on a side, contains
        non-finite values or is constant; if the shapes differ; or if a parameter is
        out of range (`search_radius_px` without `prior_shift_px`, a non-finite
        prior, ``min_overlap`` outside ``(0, 1]``, ...).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> scene = rng.random((160, 160))
    >>> reference, moving = scene[20:148, 20:148], scene[15:143, 23:151]
    >>> result = register(reference, moving)
    >>> result.ok, np.round(result.shift_px, 2)
    (True, array([-3.,  5.]))
    """
    return register_prepared(_prepare(reference, "reference", workers), _prepare(moving, "moving", workers),
                             prior_shift_px=prior_shift_px, search_radius_px=search_radius_px,
                             min_overlap=min_overlap, min_confidence=min_confidence, upsample=upsample,
                             workers=workers)


def register_prepared(
    reference: PreparedFrame,
    moving: PreparedFrame,
    *,
    prior_shift_px=None,
    search_radius_px=None,
    min_overlap=DEFAULT_MIN_OVERLAP,
    min_confidence=DEFAULT_MIN_CONFIDENCE,
    upsample=DEFAULT_UPSAMPLE,
    workers: int = 1,
) -> Registration:
    """Measure the displacement of the features between two prepared frames.

    Thread-safe: frames may be shared by registrations running in several threads.

    Parameters
    ----------
    reference, moving : PreparedFrame
        Two frames of the same shape from :func:`prepare_frame`. If
        ``moving[r, c] == reference[r - dy, c - dx]`` the result is
        ``shift_px == (dx, dy)``.
    prior_shift_px : array_like, shape (2,), optional
        Predicted displacement ``(column, row)`` in pixels, e.g. from the move the
        microscope reports. When given, only shifts within `search_radius_px` of it
        are searched.
    search_radius_px : float, optional
        Radius of the search around `prior_shift_px` in pixels. Defaults to
        :data:`DEFAULT_SEARCH_FRACTION` of the larger side of the frame. Requires
        `prior_shift_px`.
    min_overlap : float, optional
        Smallest overlap area, as a fraction of the frame area, for a shift to be a
        candidate, in ``(0, 1]``. Correlation peaks at small overlaps are unreliable.
    min_confidence : float, optional
        Smallest peak correlation coefficient (`Registration.confidence`) for the
        result to be ``ok``, in ``[0, 1]``. Besides it, the peak must be significant
        and distinct (:data:`MIN_SIGNIFICANCE`, :data:`MIN_DISTINCTNESS`; see the
        module documentation).
    upsample : int, optional
        Sub-pixel resolution ``1 / upsample`` px: the refinement stops when its step
        is below it or below 0.01 px (:data:`REFINE_MAX_ITERATIONS`). ``1`` skips the refinement and returns the
        integer shift nearest to the correlation peak.
    workers : int, optional
        Threads of each FFT (:mod:`scipy.fft`). Keep 1 when registering in several
        threads at once.

    Returns
    -------
    Registration
        The shift, confidence, overlap fraction and whether it can be trusted. The
        highest correlation peak is returned unless it fails the trust tests and one
        of the next four passes them. An untrusted result (``ok`` False) carries the
        highest peak, refined, except when no shift was a candidate (then NaN).

    Raises
    ------
    TypeError
        If a frame is not a :class:`PreparedFrame`.
    ValueError
        If the shapes differ or a parameter is out of range (`search_radius_px`
        without `prior_shift_px`, a non-finite prior, ``min_overlap`` outside
        ``(0, 1]``, ...).

    References
    ----------
    .. [1] Fiedler KR, Olszta MJ, Yano KH, et al. (2023). Evaluating stage motion for
       automated electron microscopy. Microsc Microanal 29, 1931-1939.
       https://doi.org/10.1093/micmic/ozad108
    .. [2] Knapp CH & Carter GC (1976). The generalized correlation method for
       estimation of time delay. IEEE Trans Acoust Speech Signal Process 24, 320-327.
    .. [3] Lucas BD & Kanade T (1981). An iterative image registration technique with
       an application to stereo vision. Proc. IJCAI 81, 674-679.
    .. [4] Bartlett MS (1935). Some aspects of the time-correlation problem in regard
       to tests of significance. J R Stat Soc 98, 536-543.
    .. [5] Moisan L (2011). Periodic plus smooth image decomposition. J Math Imaging
       Vis 39, 161-179. https://doi.org/10.1007/s10851-010-0227-1
    .. [6] Guizar-Sicairos M, Thurman ST & Fienup JR (2008). Efficient subpixel image
       registration algorithms. Opt Lett 33, 156-158.
    .. [7] Huber PJ (1981). Robust Statistics. Wiley, section 7.8 (modified residuals).
    """
    for name, frame in (("reference", reference), ("moving", moving)):
        if not isinstance(frame, PreparedFrame):
            raise TypeError(f"{name} must be a PreparedFrame from prepare_frame(), got {type(frame).__name__}")
    if reference.shape != moving.shape:
        raise ValueError(f"reference and moving must have the same shape, got {reference.shape} and {moving.shape}")
    prior, radius = _search_region(prior_shift_px, search_radius_px, reference.shape)
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {upsample!r}")

    grid = _grid(reference.shape)
    h, w = grid.shape
    least_overlap_px = max(min_overlap * h * w, _MIN_OVERLAP_PX)
    candidate = _candidate_lags(grid, least_overlap_px, prior, radius)
    if not candidate.any():
        where = "" if prior is None else f" within {radius:.1f} px of the prior {_fmt(prior)}"
        return Registration(
            _frozen([np.nan, np.nan]), 0.0, 0.0, False,
            f"no integer shift{where} has an overlap >= {min_overlap:.0%} of the frame",
        )

    area = _correlation_area(reference, moving, grid)
    if min(h, w) >= _HALF_RESOLUTION_SIDE_PX:
        cross = np.conj(reference.phase) * moving.phase
        correlation = sfft.irfft2(cross, grid.search_shape, workers=workers)
        pair = _Pair(reference, moving, grid, area, cross, reference.band, moving.band)
        peaks = _highest_peaks(correlation, candidate, grid)
        result, located = _judge_peak(pair, correlation, candidate, peaks, least_overlap_px, prior, radius,
                                      min_confidence, upsample, workers)
        if result.ok or located:
            return result
    # small frames, or a peak of the fast search that cannot be trusted: the exact search
    pair = _Pair(reference, moving, grid, area, None, _winsorised(reference.band), _winsorised(moving.band))
    return _judge_linear(pair, least_overlap_px, prior, radius, min_confidence, upsample, workers)


CENTRAL_FRACTION = 0.5
"""Side of the central region, as a fraction of the frame's side (:func:`register_central`)."""
CENTRAL_MIN_SIDE_PX = 256
"""Smallest side of the central region: a frame of up to this many pixels is registered
whole (its distortion in pixels is small, and a smaller region registers less precisely)."""


def central_region_shape(shape, fraction: float = CENTRAL_FRACTION) -> tuple[int, int]:
    """``(rows, columns)`` of the central region :func:`register_central` registers in a
    frame of `shape`: `fraction` of each side, at least :data:`CENTRAL_MIN_SIDE_PX`,
    at most the frame."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return tuple(min(int(side), max(CENTRAL_MIN_SIDE_PX, int(round(side * fraction)))) for side in shape)


def register_central(reference: PreparedFrame, moving: PreparedFrame, *, coarse_shift_px=None,
                     fraction: float = CENTRAL_FRACTION, workers: int = 1) -> Registration:
    """Displacement of the centre of the field between two frames that differ by more than a shift.

    Across a tilt change the image is foreshortened perpendicular to the tilt axis by
    ``cos(tilt)``, and a specimen that is not level or not flat changes scale and
    shears with the tilt (the NIST Titan frames of ``tests/data`` 10 degrees apart:
    the quadrants of the 512 px field move by -3.8 to +2.2 px in y), so the displacement varies
    across the field and a whole-frame registration measures a feature-weighted mean
    of it. Here the central region of `reference` (`fraction` of each side) is
    registered against the window of `moving` where it went (displaced by the nearest
    integer to `coarse_shift_px`, kept inside the frame), and that offset is added
    back: the result is the displacement of the field's centre, with the distortion
    across the region `fraction` times that across the frame. The region's side is at
    least :data:`CENTRAL_MIN_SIDE_PX` (or the frame's).

    Parameters
    ----------
    reference, moving : PreparedFrame
        Two frames of the same shape (their images, less the mean, are cropped).
    coarse_shift_px : array_like, shape (2,), optional
        An estimate of the displacement ``(column, row)``, e.g. the whole-frame
        registration; also the prior of the search. Without it (or when not finite)
        both regions are central and the search is free.
    fraction : float, optional
        Side of the region as a fraction of the frame's side, in ``(0, 1]``.
    workers : int, optional
        Threads of each FFT.

    Returns
    -------
    Registration
        The shift of the centre; the confidence and trust of the central
        registration; the overlap as a fraction of the whole frame. When the central
        region cannot be registered, ``ok`` is False and the reason says so.

    Raises
    ------
    TypeError, ValueError
        For frames that are not prepared frames of one shape, or `fraction` out of range.
    """
    for name, frame in (("reference", reference), ("moving", moving)):
        if not isinstance(frame, PreparedFrame):
            raise TypeError(f"{name} must be a PreparedFrame from prepare_frame(), got {type(frame).__name__}")
    if reference.shape != moving.shape:
        raise ValueError(f"reference and moving must have the same shape, got {reference.shape} and {moving.shape}")
    rows, cols = reference.shape
    h, w = central_region_shape(reference.shape, fraction)
    r0, c0 = (rows - h) // 2, (cols - w) // 2
    coarse = None if coarse_shift_px is None else np.asarray(coarse_shift_px, dtype=np.float64)
    if coarse is not None and (coarse.shape != (2,) or not np.all(np.isfinite(coarse))):
        coarse = None
    dx, dy = (0, 0) if coarse is None else (int(np.rint(coarse[0])), int(np.rint(coarse[1])))
    mr0, mc0 = min(max(r0 + dy, 0), rows - h), min(max(c0 + dx, 0), cols - w)
    offset = np.array([mc0 - c0, mr0 - r0], dtype=np.float64)
    where = f"central region ({w} x {h} px)"
    try:
        sub = register(reference.image[r0:r0 + h, c0:c0 + w], moving.image[mr0:mr0 + h, mc0:mc0 + w],
                       prior_shift_px=None if coarse is None else coarse - offset, workers=workers)
    except ValueError as exc:
        return unregistered(f"{where}: {str(exc).splitlines()[0]}")
    return Registration(_frozen(offset + sub.shift_px), sub.confidence, sub.overlap_fraction * h * w / (rows * cols),
                        sub.ok, "" if sub.ok else f"{where}: {sub.reason}")


def normalised_cross_correlation(reference, moving):
    """Normalised linear cross-correlation of two images at every integer shift.

    Each value is the Pearson correlation coefficient of the pixels in which the two
    frames overlap at that shift (masked normalised cross-correlation, [1]_), so the
    map is not biased towards small shifts. The cross term is computed with a
    zero-padded FFT (a linear correlation, free of wrap-around); the local sums with
    summed-area tables.

    Parameters
    ----------
    reference, moving : array_like, shape (rows, columns)
        Real, finite 2-D images of the same shape.

    Returns
    -------
    ncc : ndarray, shape (2 * rows - 1, 2 * columns - 1)
        Correlation coefficient in ``[-1, 1]``; ``ncc[dy + rows - 1, dx + columns - 1]``
        belongs to the shift ``(dx, dy)`` with ``moving[r, c] ~ reference[r - dy, c - dx]``.
        0 where either overlapping region is constant.
    overlap_px : ndarray, same shape as `ncc`
        Number of overlapping pixels at each shift.

    Raises
    ------
    ValueError
        If the inputs are not 2-D or their shapes differ.

    References
    ----------
    .. [1] Padfield D (2012). Masked object registration in the Fourier domain. IEEE
       Trans Image Process 21, 2706-2718. https://doi.org/10.1109/TIP.2011.2181402
    """
    f = np.asarray(reference, dtype=np.float64)
    g = np.asarray(moving, dtype=np.float64)
    if f.ndim != 2 or f.shape != g.shape:
        raise ValueError(f"need two 2-D images of the same shape, got {f.shape} and {g.shape}")
    f = f - f.mean()
    g = g - g.mean()
    h, w = f.shape
    shifts_r = np.arange(-(h - 1), h)
    shifts_c = np.arange(-(w - 1), w)
    # rows and columns of `moving` inside the overlap; those of `reference` are offset
    g_rows = (np.maximum(0, shifts_r), np.minimum(h, h + shifts_r))
    g_cols = (np.maximum(0, shifts_c), np.minimum(w, w + shifts_c))
    f_rows = (g_rows[0] - shifts_r, g_rows[1] - shifts_r)
    f_cols = (g_cols[0] - shifts_c, g_cols[1] - shifts_c)
    n = np.outer(g_rows[1] - g_rows[0], g_cols[1] - g_cols[0]).astype(np.float64)
    sum_f = _window_sums(f, f_rows, f_cols)
    sum_ff = _window_sums(f * f, f_rows, f_cols)
    sum_g = _window_sums(g, g_rows, g_cols)
    sum_gg = _window_sums(g * g, g_rows, g_cols)

    size = _padded_size(f.shape)
    cross = sfft.irfft2(sfft.rfft2(g, size) * np.conj(sfft.rfft2(f, size)), size)
    rows = np.r_[size[0] - (h - 1):size[0], 0:h]
    cols = np.r_[size[1] - (w - 1):size[1], 0:w]
    sum_fg = cross[np.ix_(rows, cols)]

    # sums of squared deviations and of products of deviations over each overlap
    inverse_n = 1.0 / n
    sum_ff -= sum_f * sum_f * inverse_n
    sum_gg -= sum_g * sum_g * inverse_n
    sum_fg -= sum_f * sum_g * inverse_n
    # below this an overlapping region is constant up to rounding
    valid = (sum_ff > 1e-12 * n * np.mean(f * f)) & (sum_gg > 1e-12 * n * np.mean(g * g))
    sum_ff *= sum_gg
    np.sqrt(sum_ff, out=sum_ff, where=valid)
    ncc = np.zeros_like(n)
    np.divide(sum_fg, sum_ff, out=ncc, where=valid)
    return np.clip(ncc, -1.0, 1.0, out=ncc), n


def _window_sums(a, rows, cols):
    """Sums of `a` over the rectangles ``rows[0][i]:rows[1][i], cols[0][j]:cols[1][j]``."""
    by_rows = np.zeros((a.shape[0] + 1, a.shape[1]))
    np.cumsum(a, axis=0, out=by_rows[1:])
    strips = by_rows[rows[1]] - by_rows[rows[0]]
    by_cols = np.zeros((strips.shape[0], strips.shape[1] + 1))
    np.cumsum(strips, axis=1, out=by_cols[:, 1:])
    return by_cols[:, cols[1]] - by_cols[:, cols[0]]


def _padded_size(shape):
    return tuple(sfft.next_fast_len(2 * n - 1, real=True) for n in shape)



def _prepare(image, name, workers):
    """The :class:`PreparedFrame` of `image`; `name` is used in error messages."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got {a.ndim} dimension(s) with shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"{name} must have a real numeric dtype, got {a.dtype}")
    if min(a.shape) < _MIN_SIDE_PX:
        raise ValueError(f"{name} must be at least {_MIN_SIDE_PX} px on each side, got shape {a.shape}")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            raise ValueError(f"{name} contains {a.size - int(np.count_nonzero(finite))} non-finite value(s) "
                             "(NaN or inf)")
    low, high = float(a.min()), float(a.max())
    if not high > low:
        raise ValueError(f"{name} is constant; a constant image cannot be registered")
    f = a.astype(np.float32)
    grid = _grid(f.shape)
    spectrum = sfft.rfft2(f, workers=workers)
    f -= np.float32(spectrum[0, 0].real / f.size)  # zero mean: exact sums of squares for the confidence
    spectrum[0, 0] = 0.0
    sampled = spectrum[::grid.profile_stride]
    power = np.bincount(grid.profile_bins, weights=(sampled.real ** 2 + sampled.imag ** 2).ravel(),
                        minlength=grid.bin_count.size)
    power = _filled(power / np.maximum(grid.profile_count, 1), grid.profile_count > 0)
    noise = float(np.median(power[grid.noise_bins]))
    noise_share = np.divide(noise, power, out=np.full_like(power, np.inf), where=power > 0)
    signal_fraction = np.clip(1.0 - noise_share, 0.0, 1.0)
    signal_fraction[0] = 0.0  # the mean carries no position

    spectrum -= _smooth_component(f, grid)
    low_frequencies = spectrum[grid.search_rows, :grid.search_shape[1] // 2 + 1]
    magnitude = np.abs(low_frequencies)
    weight = np.sqrt(signal_fraction).astype(np.float32)[grid.search_bins]
    np.divide(weight, magnitude, out=weight, where=magnitude > 0)
    phase = low_frequencies * weight

    spectrum *= grid.band_transfer
    band = sfft.irfft2(spectrum, f.shape, workers=workers)
    for array in (f, band, spectrum, phase, power):
        array.setflags(write=False)
    return PreparedFrame(f, band, spectrum, phase, power, noise)


def _smooth_component(f, grid):
    """The rfft2 spectrum of the smooth component of `f` (Moisan 2011).

    An image is the sum of a periodic component and a smooth one that carries the jumps
    between its opposite edges, which a circular correlation would otherwise see as
    features at every shift along the axes. The smooth component's spectrum is the
    spectrum of the edge jumps divided by the discrete Laplacian's: a sum of two outer
    products (one matrix product) times the inverse Laplacian.
    """
    h, w = grid.shape
    edges = np.empty((h, 2), dtype=np.complex64)
    jumps = np.empty((2, w // 2 + 1), dtype=np.complex64)
    edges[:, 0] = grid.edge_y
    edges[:, 1] = sfft.fft(f[:, -1] - f[:, 0])  # jumps between the last and the first column
    jumps[0] = sfft.rfft(f[-1] - f[0])  # ... row
    jumps[1] = grid.edge_x
    smooth = edges @ jumps
    smooth *= grid.inverse_laplacian
    return smooth


def _filled(values, valid):
    """`values` with the entries that are not `valid` interpolated from their neighbours."""
    if valid.all():
        return values
    index = np.arange(values.size)
    return np.interp(index, index[valid], values[valid])


@dataclass(frozen=True, eq=False)
class _Grid:
    """Everything that depends on the frame shape alone (cached per shape)."""

    shape: tuple  # (rows, columns)
    search_shape: tuple  # shape of the correlation map searched for peaks
    search_rows: np.ndarray  # rows of the rfft2 spectrum kept for the search
    search_bins: np.ndarray  # radial bin of each kept frequency
    band_transfer: np.ndarray  # difference of Gaussians, float32, rfft2 layout
    profile_stride: int  # every this many rows of the spectrum enter the power profile
    profile_bins: np.ndarray  # radial bin of each frequency of those rows (flattened)
    profile_count: np.ndarray  # frequencies per bin among those rows
    bin_count: np.ndarray  # frequencies per radial bin in the whole (two-sided) spectrum
    band_power: np.ndarray  # squared band transfer per radial bin
    noise_bins: slice  # the outermost bins, where white noise dominates
    search_step: float  # px between neighbouring lags of the search map
    gradient_noise: tuple  # noise variance of the central differences (x, y) of the band image, per unit noise power
    band_noise: float  # noise variance of the band image per unit noise power
    gradient_bias: tuple  # per radial bin, sums of (k sin k, sin^2 k) for k = kx and for k = ky
    kx: np.ndarray  # angular frequency (rad/px) of each rfft2 column
    ky: np.ndarray  # angular frequency (rad/px) of each rfft2 row
    edge_x: np.ndarray  # 1 - exp(i kx), complex64: the spectrum of a jump between the first and last column
    edge_y: np.ndarray  # 1 - exp(i ky), complex64: ... row
    inverse_laplacian: np.ndarray  # 1 / the discrete Laplacian's spectrum, float32, 0 at zero frequency


@lru_cache(maxsize=8)
def _grid(shape):
    h, w = shape
    fy = sfft.fftfreq(h)
    fx = sfft.rfftfreq(w)
    radius = np.hypot(fy[:, None], fx[None, :])
    unit = 1.0 / min(h, w)
    bins = np.rint(radius / unit).astype(np.intp)
    nbins = int(bins.max()) + 1
    two_sided = np.full(fx.size, 2.0)
    two_sided[0] = 1.0
    if w % 2 == 0:
        two_sided[-1] = 1.0
    bin_count = np.bincount(bins.ravel(), weights=np.broadcast_to(two_sided, bins.shape).ravel(), minlength=nbins)
    stride = max(1, h // 128)
    profile_bins = bins[::stride].ravel()
    fine, coarse = SIGNIFICANCE_BAND_PX
    squared = (2 * np.pi * radius) ** 2
    transfer = np.exp(-0.5 * fine**2 * squared) - np.exp(-0.5 * coarse**2 * squared)
    ring = np.arange(nbins) * unit * 2 * np.pi
    band_power = (np.exp(-0.5 * fine**2 * ring**2) - np.exp(-0.5 * coarse**2 * ring**2)) ** 2

    factor = 2 if min(h, w) >= _HALF_RESOLUTION_SIDE_PX else 1
    hs, ws = h // factor, w // factor
    rows = np.r_[0:(hs + 1) // 2, h - hs // 2:h] if factor > 1 else np.arange(h)
    search_bins = bins[rows, :ws // 2 + 1]
    return _Grid(
        shape=(h, w), search_shape=(hs, ws), search_rows=rows, search_bins=search_bins,
        band_transfer=transfer.astype(np.float32), profile_stride=stride, profile_bins=profile_bins,
        profile_count=np.bincount(profile_bins, minlength=nbins), bin_count=bin_count, band_power=band_power,
        noise_bins=slice(int(nbins * (1 - _NOISE_BINS)), nbins), search_step=max(h / hs, w / ws),
        band_noise=float(np.sum(two_sided * transfer**2)) / (h * w) ** 2,
        gradient_bias=tuple(
            (np.bincount(bins.ravel(), (two_sided * k * np.sin(k)).ravel(), nbins),
             np.bincount(bins.ravel(), (two_sided * np.sin(k) ** 2).ravel(), nbins))
            for k in np.broadcast_arrays(2 * np.pi * fx[None, :], 2 * np.pi * fy[:, None])),
        gradient_noise=tuple(float(np.sum(two_sided * transfer**2 * 4 * np.sin(k) ** 2)) / (h * w) ** 2
                             for k in np.broadcast_arrays(2 * np.pi * fx[None, :], 2 * np.pi * fy[:, None])),
        kx=2 * np.pi * fx, ky=2 * np.pi * fy,
        edge_x=(1 - np.exp(2j * np.pi * fx)).astype(np.complex64),
        edge_y=(1 - np.exp(2j * np.pi * fy)).astype(np.complex64),
        inverse_laplacian=_inverse_laplacian(2 * np.pi * fy, 2 * np.pi * fx),
    )


def _inverse_laplacian(ky, kx):
    """1 / (2 cos ky + 2 cos kx - 4), float32, with 0 at zero frequency."""
    laplacian = (2 * np.cos(ky) - 2)[:, None] + (2 * np.cos(kx) - 2)[None, :]
    laplacian[0, 0] = 1.0
    inverse = 1.0 / laplacian
    inverse[0, 0] = 0.0
    return inverse.astype(np.float32)


def _correlation_area(f, g, grid):
    """Sum over lags of the product of the autocorrelation functions of the two band images.

    The variance of the correlation coefficient of two independent textures over ``n``
    pixels is ``area / n`` (Bartlett 1935). Computed by Parseval from the radial power
    profiles.
    """
    pf = grid.band_power * f.power
    pg = grid.band_power * g.power
    h, w = grid.shape
    return float(h * w * np.sum(grid.bin_count * pf * pg) / (np.sum(grid.bin_count * pf) * np.sum(grid.bin_count * pg)))


def _candidate_lags(grid, least_overlap_px, prior, radius):
    """Which lags of the search map have at least one alias that is a candidate shift
    (read-only; cached per frame shape and least overlap when there is no prior)."""
    if prior is None:
        return _candidate_lags_anywhere(grid.shape, float(least_overlap_px))
    return _candidate_lags_near(grid, least_overlap_px, prior, radius)


@lru_cache(maxsize=8)
def _candidate_lags_anywhere(shape, least_overlap_px):
    candidate = _candidate_lags_near(_grid(shape), least_overlap_px, None, None)
    candidate.setflags(write=False)
    return candidate


def _candidate_lags_near(grid, least_overlap_px, prior, radius):
    h, w = grid.shape
    hs, ws = grid.search_shape
    lag_y = np.arange(hs) * (h / hs)
    lag_x = np.arange(ws) * (w / ws)
    candidate = np.zeros((hs, ws), dtype=bool)
    for dy in (lag_y, lag_y - h):
        for dx in (lag_x, lag_x - w):
            ok = np.multiply.outer(h - np.abs(dy), w - np.abs(dx)) >= least_overlap_px
            if prior is not None:
                ok &= np.hypot(dx[None, :] - prior[0], dy[:, None] - prior[1]) <= radius
            candidate |= ok
    return candidate


def _highest_peaks(correlation, candidate, grid, count=2):
    """Indices of the `count` highest local maxima of `correlation` among `candidate`
    lags, highest first, at least :data:`_PEAK_SEPARATION_PX` apart (periodic map)."""
    hs, ws = correlation.shape
    h, w = grid.shape
    separation = (max(1, round(_PEAK_SEPARATION_PX * hs / h)), max(1, round(_PEAK_SEPARATION_PX * ws / w)))
    score = np.where(candidate, correlation, -np.inf)
    remaining = score.copy()
    peaks = []
    while len(peaks) < count:
        i, j = divmod(int(np.argmax(remaining)), ws)
        if not np.isfinite(remaining[i, j]):
            break
        if score[i, j] >= score[np.ix_(np.arange(i - 1, i + 2) % hs, np.arange(j - 1, j + 2) % ws)].max():
            peaks.append((i, j))
        remaining[np.ix_(np.arange(i - separation[0], i + separation[0] + 1) % hs,
                         np.arange(j - separation[1], j + separation[1] + 1) % ws)] = -np.inf
    return peaks


def _peak_position(correlation, peak, grid):
    """Sub-pixel lag ``(row, column)`` in px of the frame, in ``[0, rows) x [0, columns)``,
    of the peak at index `peak` (a Gaussian through three values along each axis)."""
    hs, ws = correlation.shape
    i, j = peak
    centre = correlation[i, j]
    dy = _vertex(correlation[(i - 1) % hs, j], centre, correlation[(i + 1) % hs, j])
    dx = _vertex(correlation[i, (j - 1) % ws], centre, correlation[i, (j + 1) % ws])
    h, w = grid.shape
    return ((i + dy) * h / hs) % h, ((j + dx) * w / ws) % w


def _interpolated_peak(pair, lag):
    """The top of the search map near `lag` ``(row, column)``, px, from its values on a
    9 x 9 grid of quarter pixels around it, computed from the cross-power spectrum by
    matrix products (an upsampled DFT; Guizar-Sicairos et al. 2008)."""
    grid = pair.grid
    offsets = _UPSAMPLED_OFFSETS_PX
    ys, xs = lag[0] + offsets, lag[1] + offsets
    fy, fx, row_steps, col_steps = _upsampling_factors(grid.shape)
    rows = np.exp(1j * lag[0] * fy).astype(np.complex64) * row_steps
    cols = np.exp(1j * lag[1] * fx).astype(np.complex64)[:, None] * col_steps
    values = ((rows @ pair.cross) @ cols).real
    i, j = np.unravel_index(np.argmax(values), values.shape)
    i, j = min(max(i, 1), 7), min(max(j, 1), 7)
    dy = _vertex(values[i - 1, j], values[i, j], values[i + 1, j], gaussian=False)
    dx = _vertex(values[i, j - 1], values[i, j], values[i, j + 1], gaussian=False)
    h, w = grid.shape
    return (ys[i] + 0.25 * dy) % h, (xs[j] + 0.25 * dx) % w


_UPSAMPLED_OFFSETS_PX = np.arange(-4, 5) * 0.25


@lru_cache(maxsize=8)
def _upsampling_factors(shape):
    """Angular frequencies (rad/px) of the search spectrum's rows and columns, and the
    factors of the upsampled DFT for :data:`_UPSAMPLED_OFFSETS_PX` around a lag (the
    columns weighted 2, but the first, for the half spectrum)."""
    grid = _grid(shape)
    fy = grid.ky[grid.search_rows]
    fx = grid.kx[:grid.search_shape[1] // 2 + 1]
    weight = np.full(fx.size, 2.0)
    weight[0] = 1.0
    row_steps = np.exp(1j * np.multiply.outer(_UPSAMPLED_OFFSETS_PX, fy)).astype(np.complex64)
    col_steps = (np.exp(1j * np.multiply.outer(fx, _UPSAMPLED_OFFSETS_PX)) * weight[:, None]).astype(np.complex64)
    for array in (fy, fx, row_steps, col_steps):
        array.setflags(write=False)
    return fy, fx, row_steps, col_steps


def _vertex(minus, centre, plus, gaussian=True):
    """Offset in ``[-0.5, 0.5]`` of the top of a Gaussian (or parabola) through 3 values."""
    if gaussian and minus > 0 and centre > 0 and plus > 0:
        minus, centre, plus = np.log(minus), np.log(centre), np.log(plus)
    curvature = minus - 2.0 * centre + plus
    if not curvature < 0:
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


@dataclass(frozen=True, eq=False)
class _Pair:
    """Two prepared frames being registered."""

    f: PreparedFrame
    g: PreparedFrame
    grid: _Grid
    area: float  # correlation area of the two band images, px
    cross: np.ndarray  # the whitened cross-power spectrum of the search map (None for the exact search)
    f_band: np.ndarray  # the band images the trust tests correlate: f.band and g.band, or
    g_band: np.ndarray  # (exact search) both winsorised
    sums: dict = field(default_factory=dict)  # band_sums by integer shift

    def regions(self, shift, margin=0):
        """Slices of `f` and `g` that overlap at the integer `shift` ``(dx, dy)``, less
        `margin` px on every side (fewer when the overlap is too thin for it)."""
        dx, dy = shift
        h, w = self.grid.shape
        m = max(0, min(margin, (min(h - abs(dy), w - abs(dx)) - 8) // 2))
        rows, cols = slice(max(0, dy) + m, h + min(0, dy) - m), slice(max(0, dx) + m, w + min(0, dx) - m)
        ref = (slice(rows.start - dy, rows.stop - dy), slice(cols.start - dx, cols.stop - dx))
        return ref, (rows, cols)

    def band_regions(self, shift):
        ref, mov = self.regions(shift, _BAND_MARGIN_PX)
        return self.f_band[ref], self.g_band[mov]

    def band_sums(self, shift):
        """``(n, a.a, b.b, a.b)`` of the band images over each third (along its longer
        side) of the overlap at the integer `shift`, one row per third (computed once
        per shift)."""
        key = (int(shift[0]), int(shift[1]))
        sums = self.sums.get(key)
        if sums is None:
            a, b = self.band_regions(key)
            axis = 0 if a.shape[0] >= a.shape[1] else 1
            sums = np.array([[p.size, _dot(p, p), _dot(q, q), _dot(p, q)]
                             for p, q in zip(np.array_split(a, 3, axis), np.array_split(b, 3, axis))])
            self.sums[key] = sums
        return sums

    def significance(self, shift):
        """Band-passed correlation over the overlap at `shift`, in sigmas of chance."""
        return _sigmas(*self.band_sums(shift).sum(axis=0), self.area)


def _sigmas(n, aa, bb, ab, area):
    """Correlation of two band images over `n` pixels, from their sums of products, in
    standard deviations of chance."""
    energy = aa * bb if n else 0.0
    if not energy > 0:
        return 0.0
    return float(ab / np.sqrt(energy) * np.sqrt(n / area))


def _resolve_alias(pair, lag, least_overlap_px, prior, radius):
    """The shift ``(dx, dy)`` among the aliases of the periodic `lag` ``(row, column)``
    that is a candidate and correlates best over its overlap; None if none is a candidate."""
    h, w = pair.grid.shape
    whole = np.rint(lag).astype(int) % (h, w)
    fraction = np.asarray(lag) - np.rint(lag)
    aliases = []
    for dy in (whole[0], whole[0] - h):
        for dx in (whole[1], whole[1] - w):
            shift = np.array([dx + fraction[1], dy + fraction[0]])
            if (h - abs(dy)) * (w - abs(dx)) < least_overlap_px:
                continue
            if prior is not None and np.hypot(*(shift - prior)) > radius + pair.grid.search_step:
                continue  # the search map's lags are search_step px apart
            aliases.append(shift)
    if len(aliases) <= 1:
        return aliases[0] if aliases else None

    def score(shift):  # over every other row: half the pixels decide as surely
        a, b = pair.band_regions(np.rint(shift).astype(int))
        return _dot(a[::2], b[::2]) / np.sqrt(max(a[::2].size, 1))

    return max(aliases, key=score)


def _judge_peak(pair, correlation, candidate, peaks, least_overlap_px, prior, radius, min_confidence, upsample,
                workers):
    """Decide whether to trust the highest peak of the fast search, and refine it.

    Returns the registration and whether the peak is *located*: it passes every trust
    test but the paper's confidence (then the exact search would find the same shift
    and is not needed)."""
    lag = _interpolated_peak(pair, _peak_position(correlation, peaks[0], pair.grid))
    shift = _resolve_alias(pair, lag, least_overlap_px, prior, radius)
    whole = np.rint(shift).astype(int)
    sigmas = pair.significance(whole)
    chance, outstanding = 0.0, True
    if len(peaks) > 1:  # the runner-up of the correlation map
        outstanding = correlation[peaks[0]] >= MIN_DISTINCTNESS * max(correlation[peaks[1]], 0.0)
    if not outstanding:  # then the peak must be distinct from the runner-up over its own overlap
        other = _resolve_alias(pair, _peak_position(correlation, peaks[1], pair.grid), least_overlap_px, prior,
                               radius)
        if other is not None:
            a, b = pair.band_regions(np.rint(other).astype(int))
            chance = max(_sigmas(a.size, _dot(a, a), _dot(b, b), _dot(a, b), pair.area), 0.0)
    r = _confidence(pair, whole)
    trusted = _trust(pair, whole, sigmas, chance, outstanding, lambda: _beyond_edge(correlation, candidate, peaks[0]))
    reason = f"confidence {max(r, 0.0):.3f} < {min_confidence:g}" if r < min_confidence else trusted
    return _refined_result(pair, shift, r, reason, upsample, workers), trusted == ""


def _judge_linear(pair, least_overlap_px, prior, radius, min_confidence, upsample, workers):
    """The exact search: the highest significance of the band images' linear normalised
    cross-correlation among the candidate shifts, judged by the same trust tests and refined."""
    h, w = pair.grid.shape
    z, defined, candidate, dx, dy = _significance_map(pair, least_overlap_px, prior, radius, workers)
    if not candidate.any():
        return Registration(_frozen([np.nan, np.nan]), 0.0, 0.0, False,
                            "no candidate shift leaves an overlap thick enough to correlate")
    score = np.where(candidate, z, -np.inf)
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    whole = np.array([dx[j], dy[i]])
    sigmas = float(z[i, j])
    # the runner-up: the best significance beyond the peak's own correlation
    far = score.copy()
    s = _PEAK_SEPARATION_PX
    far[max(i - s, 0):i + s + 1, max(j - s, 0):j + s + 1] = -np.inf
    chance = max(float(far.max()), 0.0)
    # start the refinement at the top of a parabola through the peak and its neighbours
    rows, cols = z.shape
    offset = np.array([_vertex(z[i, j - 1], z[i, j], z[i, j + 1], gaussian=False) if 0 < j < cols - 1 else 0.0,
                       _vertex(z[i - 1, j], z[i, j], z[i + 1, j], gaussian=False) if 0 < i < rows - 1 else 0.0])
    near = (slice(max(i - 1, 0), i + 2), slice(max(j - 1, 0), j + 2))
    r = _confidence(pair, whole)
    if r < min_confidence:
        reason = f"confidence {max(r, 0.0):.3f} < {min_confidence:g}"
    else:
        reason = _trust(pair, whole, sigmas, chance, False,
                        lambda: bool(np.any(z[near][defined[near] & ~candidate[near]] > z[i, j])))
    # a start from integer lags is coarser than the fast search's: every step is warped
    return _refined_result(pair, whole + offset, r, reason, upsample, workers, predict=False)


def _confidence(pair, whole):
    """The paper's score: Pearson r of the overlapping pixels at the integer shift."""
    ref, mov = pair.regions(whole)
    return _pearson(pair.f.image[ref], pair.g.image[mov])


def _trust(pair, whole, sigmas, chance, outstanding, beyond_edge):
    """Why the peak at the integer shift `whole` cannot be trusted ("" when it can), from
    its significance, the runner-up's and the parts of the overlap."""
    if not sigmas >= MIN_SIGNIFICANCE:
        return (f"peak not significant: band-passed correlation {sigmas:.1f} < "
                f"{MIN_SIGNIFICANCE:.0f} sigma of chance")
    if not (sigmas >= MIN_DISTINCTNESS * chance or outstanding):
        return (f"peak not distinct: band-passed correlation {sigmas:.1f} sigma < "
                f"{MIN_DISTINCTNESS:.0f} x the {chance:.1f} sigma reached at another shift")
    if not (weakest := _weakest_part_significance(pair, whole)) >= MIN_PART_SIGNIFICANCE:
        return (f"peak not supported across the overlap: one third of it correlates at "
                f"{weakest:.1f} < {MIN_PART_SIGNIFICANCE:.0f} sigma of chance")
    if beyond_edge():
        return "peak at the edge of the search region: the best match lies outside it"
    return ""


def _refined_result(pair, shift, r, reason, upsample, workers, predict=True):
    """The registration at `shift`, refined to sub-pixel unless `upsample` is 1 (`predict`:
    see :func:`_refine`)."""
    h, w = pair.grid.shape
    whole = np.rint(shift).astype(int)
    if upsample > 1:
        refined = _refine(pair, shift, 1.0 / upsample, workers, predict)
        if not np.all(np.isfinite(refined)):
            reason = reason or "sub-pixel refinement failed (the overlap is too thin or has no texture)"
        elif np.abs(refined - shift).max() > _REFINE_MAX_MOVE_PX:
            reason = reason or (f"sub-pixel refinement moved {_fmt(refined - shift)} px away from the "
                                "correlation peak")
        else:
            shift = refined
    else:
        shift = whole.astype(float)
    overlap_fraction = max(0.0, (w - abs(shift[0])) * (h - abs(shift[1])) / (h * w))
    return Registration(_frozen(shift), float(np.clip(r, 0.0, 1.0)), float(overlap_fraction), reason == "", reason)


def _winsorised(band):
    """`band` clipped to :data:`WINSOR_SIGMAS` robust standard deviations (1.4826 times
    the median absolute value, from every other pixel), read-only float32."""
    h, w = band.shape
    step = max(1, round(np.sqrt(h * w / 65536)))  # a sample of at most 256 x 256 pixels
    sample = band[::step, ::step]
    sigma = 1.4826 * float(np.median(np.abs(sample)))
    if not sigma > 0:
        sigma = float(np.sqrt(np.mean(np.square(sample, dtype=np.float64))))
    limit = np.float32(WINSOR_SIGMAS * sigma)
    clipped = np.clip(band, -limit, limit) if limit > 0 else band.copy()
    clipped.setflags(write=False)
    return clipped


def _significance_map(pair, least_overlap_px, prior, radius, workers):
    """Significance of the band images' linear normalised cross-correlation at integer shifts.

    The band images, less :data:`_BAND_MARGIN_PX` at every edge, are correlated with a
    zero-padded FFT over the bounding box of the candidate shifts and one shift around
    it (only as large as those shifts need). Returns ``(z, defined, candidate, dx,
    dy)``: the significance ``r_b * sqrt(n / area)`` indexed ``[row, column]`` for the
    shifts ``(dx[column], dy[row])``, where it is defined (at least
    ``_MIN_OVERLAP_PX`` pixels overlap) and which shifts are candidates.
    """
    h, w = pair.grid.shape
    m = max(0, min(_BAND_MARGIN_PX, (min(h, w) - _MIN_SIDE_PX) // 2))
    a = pair.f_band[m:h - m, m:w - m]
    b = pair.g_band[m:h - m, m:w - m]
    hc, wc = a.shape
    if prior is None:
        lo, hi = np.array([-(wc - 1), -(hc - 1)]), np.array([wc - 1, hc - 1])
    else:
        lo = np.maximum(np.floor(prior - radius).astype(int) - 1, [-(wc - 1), -(hc - 1)])
        hi = np.minimum(np.ceil(prior + radius).astype(int) + 1, [wc - 1, hc - 1])
    if np.any(hi < lo):
        empty = np.zeros((0, 0))
        return empty, empty.astype(bool), empty.astype(bool), np.zeros(0, int), np.zeros(0, int)
    dx, dy = np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1)
    r, n = _ncc_block(a, b, dy, dx, workers)
    z = r * np.sqrt(n / pair.area)
    defined = n >= _MIN_OVERLAP_PX
    candidate = defined & (np.multiply.outer(h - np.abs(dy), w - np.abs(dx)) >= least_overlap_px)
    if prior is not None:
        candidate &= np.hypot(dx[None, :] - prior[0], dy[:, None] - prior[1]) <= radius
    return z, defined, candidate, dx, dy


def _ncc_block(a, b, dy, dx, workers):
    """Pearson r of `a` and `b` over their overlap at the shifts ``(dx[j], dy[i])``
    (``b[r, c] ~ a[r - dy, c - dx]``, as :func:`normalised_cross_correlation`), and the
    number of overlapping pixels; consecutive shifts, each within the images."""
    h, w = a.shape
    size = (sfft.next_fast_len(h + max(dy[-1], -dy[0]), real=True),
            sfft.next_fast_len(w + max(dx[-1], -dx[0]), real=True))
    a32 = np.ascontiguousarray(a, dtype=np.float32)
    b32 = np.ascontiguousarray(b, dtype=np.float32)
    cross = sfft.irfft2(sfft.rfft2(b32, size, workers=workers) * np.conj(sfft.rfft2(a32, size, workers=workers)),
                        size, workers=workers)
    sum_ab = cross[np.ix_(dy % size[0], dx % size[1])].astype(np.float64)
    b_rows = (np.maximum(0, dy), np.minimum(h, h + dy))
    b_cols = (np.maximum(0, dx), np.minimum(w, w + dx))
    a_rows = (b_rows[0] - dy, b_rows[1] - dy)
    a_cols = (b_cols[0] - dx, b_cols[1] - dx)
    n = np.outer(b_rows[1] - b_rows[0], b_cols[1] - b_cols[0]).astype(np.float64)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    sum_a = _window_sums(a64, a_rows, a_cols)
    sum_aa = _window_sums(a64 * a64, a_rows, a_cols)
    sum_b = _window_sums(b64, b_rows, b_cols)
    sum_bb = _window_sums(b64 * b64, b_rows, b_cols)
    inverse_n = 1.0 / np.maximum(n, 1.0)
    sum_aa -= sum_a * sum_a * inverse_n
    sum_bb -= sum_b * sum_b * inverse_n
    sum_ab -= sum_a * sum_b * inverse_n
    valid = (n > 0) & (sum_aa > 1e-12 * n * np.mean(a64 * a64)) & (sum_bb > 1e-12 * n * np.mean(b64 * b64))
    sum_aa *= sum_bb
    np.sqrt(sum_aa, out=sum_aa, where=valid)
    r = np.zeros_like(n)
    np.divide(sum_ab, sum_aa, out=r, where=valid)
    return np.clip(r, -1.0, 1.0, out=r), n


def _pearson(a, b):
    """Pearson correlation coefficient of two equally shaped 2-D arrays (0 if one is flat)."""
    n = a.size
    sa, sb = _sum(a), _sum(b)
    saa = _dot(a, a) - sa * sa / n
    sbb = _dot(b, b) - sb * sb / n
    sab = _dot(a, b) - sa * sb / n
    return sab / np.sqrt(saa * sbb) if saa > 0 and sbb > 0 else 0.0


def _sum(a):
    """Sum of a 2-D float32 array (a strided block too), as a float."""
    return float(np.vecdot(a, np.ones(a.shape[1], dtype=a.dtype)).sum(dtype=np.float64)) if a.size else 0.0


def _weakest_part_significance(pair, shift):
    """Lowest significance of the three thirds (along its longer side) of the overlap.

    A chance coincidence of one feature (a bright particle in each image) is
    significant in the third that holds it only; a real match in all three.
    """
    return min(_sigmas(*part, pair.area) for part in pair.band_sums(shift))


def _beyond_edge(correlation, candidate, peak):
    """Whether a neighbour of `peak` outside the search region correlates better."""
    hs, ws = correlation.shape
    near = np.ix_(np.arange(peak[0] - 1, peak[0] + 2) % hs, np.arange(peak[1] - 1, peak[1] + 2) % ws)
    return bool(np.any(correlation[near][~candidate[near]] > correlation[peak]))


def _refine(pair, shift, tolerance_px, workers, predict=True):
    """Sub-pixel shift ``(dx, dy)`` by Gauss-Newton (Lucas-Kanade) on the band images.

    Each step warps the moving band image to the current estimate by a phase ramp on
    its spectrum (exact for the band-limited image), then solves the linearised
    least-squares problem ``g_warped - f = -step . grad((f + g_warped) / 2)`` over the
    overlap (the mean gradient of both images makes the step exact to second order).
    Once a step is at most :data:`_LINEAR_STEP_PX`, the residual after it is predicted
    from that linearisation instead of by another warp, and the differences far beyond
    the noise (a feature in one image only) are limited to :data:`_HUBER_K` robust
    sigmas in one last, robust, step (Huber's modified residuals); without `predict`,
    every step is warped and from the second on the differences are limited. Stops after
    :data:`REFINE_MAX_ITERATIONS` warps at most, when a step is below `tolerance_px`,
    or returns NaNs when the overlap is too thin or the iteration diverges.
    """
    f, g, grid = pair.f, pair.g, pair.grid
    whole = np.rint(shift).astype(int)
    residual = np.asarray(shift, dtype=float) - whole  # (dx, dy)
    ref, mov = pair.regions(whole, _BAND_MARGIN_PX)
    a = f.band[ref]
    if min(a.shape) < 5:
        return np.full(2, np.nan)
    a_energy = _dot(a, a)
    count = (a.shape[0] - 2) * (a.shape[1] - 2)
    # a central difference underestimates a derivative by sin(k) / k at angular frequency k:
    # the steps are scaled back by the ratio expected for the two images' power spectra
    signal = grid.band_power * (np.maximum(f.power - f.noise, 0.0) + np.maximum(g.power - g.noise, 0.0))
    scale = np.array([np.sum(signal * ksin) / max(np.sum(signal * sin2), 1e-300)
                      for ksin, sin2 in grid.gradient_bias])
    # rows: 4 x the gradient (x, y) of (a + b) / 2 and the difference b - a, over the
    # overlap less one pixel at each edge
    work = np.empty((3, a.shape[0] - 2, a.shape[1] - 2), dtype=np.float32)
    columns = work.reshape(3, count)
    for iteration in range(REFINE_MAX_ITERATIONS):
        spectrum = g.band_spectrum * np.exp(1j * grid.ky * residual[1]).astype(np.complex64)[:, None]
        spectrum *= np.exp(1j * grid.kx * residual[0]).astype(np.complex64)
        b = sfft.irfft2(spectrum, grid.shape, workers=workers)[mov]  # g.band(x + residual)
        gain = np.sqrt(a_energy / max(_dot(b, b), 1e-300))
        b *= np.float32(gain)
        both = a + b
        np.subtract(both[1:-1, 2:], both[1:-1, :-2], out=work[0])
        np.subtract(both[2:, 1:-1], both[:-2, 1:-1], out=work[1])
        np.subtract(b[1:-1, 1:-1], a[1:-1, 1:-1], out=work[2])
        noise_power = f.noise + gain**2 * g.noise
        limit = _HUBER_K * np.sqrt(noise_power * grid.band_noise)  # at least 3 sigmas of the noise
        if iteration:
            limit = np.float32(max(limit, _HUBER_K * _robust_sigma(work[2])))
            np.clip(work[2], -limit, limit, out=work[2])
        gx, gy, difference = columns
        sxx, syy, sxy = _dot(gx, gx), _dot(gy, gy), _dot(gx, gy)
        # the noise of both images inflates the squared gradients and would shorten each
        # step (errors in variables); its expected share is known from the noise power
        noise = count * noise_power
        sxx = max(sxx - noise * grid.gradient_noise[0], 0.2 * sxx)
        syy = max(syy - noise * grid.gradient_noise[1], 0.2 * syy)
        det = sxx * syy - sxy * sxy
        if not det > 0:
            return np.full(2, np.nan)

        def solve(bx, by):
            return -4.0 * np.array([syy * bx - sxy * by, sxx * by - sxy * bx]) / det / scale

        step = solve(_dot(gx, difference), _dot(gy, difference))
        residual += step
        if np.abs(residual).max() > 2 * _REFINE_MAX_MOVE_PX:
            return np.full(2, np.nan)
        size = np.abs(step).max()
        if size < tolerance_px or (iteration and size < _FINAL_STEP_PX):
            break  # the error left is a fraction of this step
        if predict and not iteration and size <= _LINEAR_STEP_PX:
            # the differences after the step, to first order, limited robustly: only what
            # the limit removes moves the estimate further
            slope = np.array([*(scale / 4.0 * step), 1.0], dtype=np.float32)
            predicted = slope @ columns
            limit = np.float32(max(limit, _HUBER_K * _robust_sigma(predicted.reshape(work.shape[1:]))))
            beyond = np.flatnonzero(np.abs(predicted) > limit)
            if beyond.size:
                values = predicted[beyond]
                excess = values - np.clip(values, -limit, limit)
                residual -= solve(*(columns[:2, beyond] @ excess).astype(np.float64))
            break
    return whole + residual


def _robust_sigma(values):
    """1.4826 x the median absolute value of a regular sample of at most about 4,000
    of the pixels of `values` (within about 3 % of that of all pixels)."""
    step = max(1, int(np.ceil(np.sqrt(values.size / 4096))))
    sample = np.abs(values[::step, ::step]).ravel()
    middle = sample.size // 2
    return 1.4826 * float(np.partition(sample, middle)[middle])


def _dot(a, b):
    """Sum of the products of two equally shaped float32 arrays, as a float."""
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return float(np.dot(a.ravel(), b.ravel()))
    return float(np.vecdot(a, b).sum(dtype=np.float64))  # row by row: no copy of a strided block


def _search_region(prior_shift_px, search_radius_px, shape):
    """Validated ``(prior, radius)``; ``(None, None)`` without a prior."""
    if prior_shift_px is None:
        if search_radius_px is not None:
            raise ValueError("search_radius_px needs prior_shift_px (the centre of the search)")
        return None, None
    prior = np.asarray(prior_shift_px, dtype=np.float64)
    if prior.shape != (2,) or not np.all(np.isfinite(prior)):
        raise ValueError(f"prior_shift_px must be 2 finite numbers (column, row), got {prior_shift_px!r}")
    if search_radius_px is None:
        return prior, DEFAULT_SEARCH_FRACTION * max(shape)
    try:
        radius = float(search_radius_px)
    except (TypeError, ValueError):
        radius = float("nan")
    if not (np.isfinite(radius) and radius >= 0):
        raise ValueError(f"search_radius_px must be a finite number >= 0, got {search_radius_px!r}")
    return prior, radius


def _frozen(values):
    array = np.array(values, dtype=np.float64)
    array.setflags(write=False)
    return array


def _fmt(vector):
    return "(" + ", ".join(f"{v:.2f}" for v in vector) + ")"

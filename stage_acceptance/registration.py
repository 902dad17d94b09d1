"""Displacement between two overlapping images.

The *actual* displacement of a stage move is measured by registering the image taken
after the move against an earlier, overlapping one (Fiedler et al. 2023, Materials and
Methods). :func:`register` does this in three steps:

1. **Integer peak of the normalised cross-correlation.** Both images are converted to
   float and normalised to zero mean and maximum absolute value 1, as in the paper.
   Their *linear* cross-correlation (no wrap-around) is computed with
   :mod:`scipy.fft` and normalised over the overlap of the two frames at every shift
   (Padfield 2012), so that each value is the Pearson correlation coefficient ``r`` of
   the overlapping pixels and large shifts are not biased towards zero. Only shifts
   whose overlap is at least ``min_overlap`` of the frame (and, given a prior, that
   lie within ``search_radius_px`` of it) are candidates.
2. **Sub-pixel refinement.** The two overlapping regions at the integer peak are
   smoothed with a 1 px Gaussian and the residual shift is found by Gauss-Newton
   (Lucas-Kanade) iteration, resampling one region with cubic splines, fitting a
   gain and an offset between the two images, and weighting pixels with Huber's
   weights so that a feature present in only one image barely pulls the result. At
   20 counts per pixel on the test texture of ``tests/test_registration.py`` this
   reaches 0.02 px RMS on 512 x 512 frames, close to the Cramer-Rao bound of the
   Poisson noise; a parabola through the correlation peak and an upsampled-DFT
   cross-correlation (Guizar-Sicairos 2008) of Hann-windowed regions were measured
   at 2 and 5 times that error (``benchmarks/bench_registration.py``).
3. **Trust.** Two unrelated images reach a sizeable ``r`` by chance when the overlap
   is small or the texture coarse (0.8 on 64 px frames), so ``r`` alone cannot tell.
   Both images are band-passed (difference of Gaussians, sigma 1 and 4 px) and
   clipped to 3 robust standard deviations, so that no single bright particle
   dominates, and their normalised cross-correlation is expressed at every shift in
   standard deviations of chance correlation: ``r_b * sqrt(n / a)`` over ``n``
   overlapping pixels, where ``a`` is the correlation area of the two band-passed
   textures (the sum over lags of the product of their autocorrelation functions;
   Bartlett 1935). The peak is trusted when this *significance* reaches
   :data:`MIN_SIGNIFICANCE` **and** is at least :data:`MIN_DISTINCTNESS` times the best
   significance anywhere else in the search region. The second test measures chance
   from the images themselves, which matters for sparse textures (a few particles on
   a flat support), whose chance correlations have heavy tails. If the highest
   correlation peak is not trusted, up to four lower local maxima are tried in turn.

Shifts are ``(column, row)`` = image ``(x, y)`` in pixels, the displacement of the
specimen's features from `reference` to `moving` (recording-v1, see
:mod:`stage_acceptance.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

DEFAULT_MIN_CONFIDENCE = 0.1
"""Default lowest peak correlation coefficient of a trusted registration.

Low on purpose: a low-contrast specimen at a low dose gives ``r`` of 0.2 for a
certain match. Whether a peak is real is decided by the significance tests."""

DEFAULT_UPSAMPLE = 1000
"""Default sub-pixel resolution: the refinement stops below 1/1000 px."""

DEFAULT_SEARCH_FRACTION = 0.25
"""Default search radius around a prior, as a fraction of the larger frame side."""

MIN_SIGNIFICANCE = 7.0
"""Lowest band-passed peak correlation, in standard deviations of chance, to trust."""

MIN_DISTINCTNESS = 2.0
"""Lowest ratio of the peak's significance to the best significance elsewhere."""

MIN_PART_SIGNIFICANCE = 3.0
"""Lowest significance, in sigma of chance, of each third of the overlap on its own."""

SIGNIFICANCE_BAND_PX = (1.0, 4.0)
"""Gaussian sigmas (px) of the difference-of-Gaussians band-pass of the trust test."""

WINSOR_SIGMAS = 3.0
"""Band-passed values are clipped to this many robust sigmas (1.4826 MAD) of their median."""

REFINE_SMOOTHING_PX = 1.0
"""Gaussian sigma (px) applied to the overlapping regions before sub-pixel refinement."""

_MIN_SIDE_PX = 8
_MIN_OVERLAP_PX = 16
_MAX_PEAKS = 5
_PEAK_SEPARATION_PX = 8
_REFINE_MARGIN_PX = 4
_REFINE_MAX_ITERATIONS = 20
_REFINE_MAX_MOVE_PX = 1.5
_HUBER_K = 1.345


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


def register(
    reference,
    moving,
    *,
    prior_shift_px=None,
    search_radius_px=None,
    min_overlap=0.1,
    min_confidence=DEFAULT_MIN_CONFIDENCE,
    upsample=DEFAULT_UPSAMPLE,
) -> Registration:
    """Measure the displacement of the features between two overlapping images.

    Parameters
    ----------
    reference, moving : array_like, shape (rows, columns)
        Two real 2-D images of the same shape, any integer or float dtype, finite and
        not constant. If ``moving[r, c] == reference[r - dy, c - dx]`` the result is
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
        Sub-pixel resolution ``1 / upsample`` px: the refinement iterates until its
        update is below it. ``1`` skips the refinement and returns the integer peak.

    Returns
    -------
    Registration
        The shift, confidence, overlap fraction and whether it can be trusted. The
        highest correlation peak is returned unless it fails the trust tests and one
        of the next four local maxima passes them. An untrusted result (``ok``
        False) carries the highest peak, refined, except when no shift was a
        candidate (then NaN).

    Raises
    ------
    ValueError
        If an image is not 2-D, not real, smaller than 8 px on a side, contains
        non-finite values or is constant; if the shapes differ; or if a parameter is
        out of range (`search_radius_px` without `prior_shift_px`, a non-finite
        prior, ``min_overlap`` outside ``(0, 1]``, ...).

    References
    ----------
    .. [1] Fiedler KR, Olszta MJ, Yano KH, et al. (2023). Evaluating stage motion for
       automated electron microscopy. Microsc Microanal 29, 1931-1939.
       https://doi.org/10.1093/micmic/ozad108
    .. [2] Padfield D (2012). Masked object registration in the Fourier domain. IEEE
       Trans Image Process 21, 2706-2718. https://doi.org/10.1109/TIP.2011.2181402
    .. [3] Lucas BD & Kanade T (1981). An iterative image registration technique with
       an application to stereo vision. Proc. IJCAI 81, 674-679.
    .. [4] Bartlett MS (1935). Some aspects of the time-correlation problem in regard
       to tests of significance. J R Stat Soc 98, 536-543.
    .. [5] Guizar-Sicairos M, Thurman ST & Fienup JR (2008). Efficient subpixel image
       registration algorithms. Opt Lett 33, 156-158 (measured, not used).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> scene = ndimage.gaussian_filter(rng.random((160, 160)), 2)
    >>> reference, moving = scene[20:148, 20:148], scene[15:143, 23:151]
    >>> result = register(reference, moving)
    >>> result.ok, np.round(result.shift_px, 2)
    (True, array([-3.,  5.]))
    """
    f = _as_normalised_image(reference, "reference")
    g = _as_normalised_image(moving, "moving")
    if f.shape != g.shape:
        raise ValueError(f"reference and moving must have the same shape, got {f.shape} and {g.shape}")
    prior, radius = _search_region(prior_shift_px, search_radius_px, f.shape)
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {upsample!r}")

    h, w = f.shape
    ncc, overlap_px = normalised_cross_correlation(f, g)
    candidate = overlap_px >= max(min_overlap * h * w, _MIN_OVERLAP_PX)
    if prior is not None:
        dy, dx = np.ogrid[-(h - 1):h, -(w - 1):w]
        candidate &= np.hypot(dx - prior[0], dy - prior[1]) <= radius
    if not candidate.any():
        where = "" if prior is None else f" within {radius:.1f} px of the prior {_fmt(prior)}"
        return Registration(
            _frozen([np.nan, np.nan]), 0.0, 0.0, False,
            f"no integer shift{where} has an overlap >= {min_overlap:.0%} of the frame",
        )

    maps = _Maps(ncc, *_significance_maps(f, g), candidate, overlap_px >= _MIN_OVERLAP_PX)
    first = None
    for peak in _highest_peaks(np.where(candidate, ncc, -np.inf), _MAX_PEAKS):
        result = _judge_peak(f, g, maps, peak, min_confidence, upsample, always_refine=first is None)
        if result.ok:
            return result
        if first is None:
            first = result
        if result.confidence < min_confidence:
            break  # the remaining peaks are lower still
    return first


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


def _as_normalised_image(image, name):
    """Float64 copy with zero mean and maximum absolute value 1 (as in the paper)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got {a.ndim} dimension(s) with shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"{name} must have a real numeric dtype, got {a.dtype}")
    if min(a.shape) < _MIN_SIDE_PX:
        raise ValueError(f"{name} must be at least {_MIN_SIDE_PX} px on each side, got shape {a.shape}")
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        raise ValueError(f"{name} contains {a.size - int(finite.sum())} non-finite value(s) (NaN or inf)")
    a -= a.mean()
    peak = np.abs(a).max()
    if not peak > 0:
        raise ValueError(f"{name} is constant; a constant image cannot be registered")
    return a / peak


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


def _overlapping_regions(f, g, shift):
    """The parts of `f` and `g` that overlap at the integer `shift` ``(dx, dy)``."""
    dx, dy = (int(v) for v in shift)
    h, w = f.shape
    moving = g[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
    reference = f[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
    return reference, moving


def _significance_maps(f, g):
    """Band-passed normalised cross-correlation in standard deviations of chance.

    The variance of the correlation coefficient of two independent textures over
    ``n`` pixels is ``area / n`` (Bartlett 1935), with ``area`` the sum over all lags
    of the product of their autocorrelation functions.

    Returns the map, the two band-passed images and their correlation area.
    """
    f_band = _winsorised(_band_passed(f))
    g_band = _winsorised(_band_passed(g))
    area = _correlation_area(f_band, g_band)
    r_band, overlap_px = normalised_cross_correlation(f_band, g_band)
    return r_band * np.sqrt(overlap_px / area), f_band, g_band, area


def _correlation_area(a, b):
    """Sum over lags of the product of the autocorrelation functions of `a` and `b`.

    Computed by Parseval from the zero-padded power spectra; `a`, `b` have zero mean.
    """
    size = _padded_size(a.shape)
    power_a = np.abs(sfft.rfft2(a, size)) ** 2
    power_b = np.abs(sfft.rfft2(b, size)) ** 2
    weight = np.full(power_a.shape[1], 2.0)  # rfft2 holds half of the spectrum
    weight[0] = 1.0
    if size[1] % 2 == 0:
        weight[-1] = 1.0
    products = np.sum(power_a * power_b * weight) / (size[0] * size[1])
    return float(products / (np.sum(a * a) * np.sum(b * b)))


def _band_passed(a):
    """Difference of Gaussians with the sigmas of SIGNIFICANCE_BAND_PX."""
    fine, coarse = SIGNIFICANCE_BAND_PX
    return ndimage.gaussian_filter(a, fine, mode="nearest") - ndimage.gaussian_filter(a, coarse, mode="nearest")


def _winsorised(a):
    """`a` clipped to its median +- WINSOR_SIGMAS robust sigmas, minus its mean."""
    median = np.median(a)
    sigma = _robust_sigma(a)
    if not sigma > 0:
        sigma = a.std()
    clipped = np.clip(a, median - WINSOR_SIGMAS * sigma, median + WINSOR_SIGMAS * sigma)
    return clipped - clipped.mean()


def _highest_peaks(score, count):
    """Indices of the `count` highest local maxima of `score`, highest first."""
    window = 2 * _PEAK_SEPARATION_PX + 1
    local = (score == ndimage.maximum_filter(score, size=window, mode="constant", cval=-np.inf))
    flat = np.flatnonzero(local & np.isfinite(score))
    order = np.argsort(score.ravel()[flat], kind="stable")[::-1][:count]
    return [np.unravel_index(index, score.shape) for index in flat[order]]


@dataclass(frozen=True, eq=False)
class _Maps:
    """Per-shift maps of one registration, indexed like :func:`normalised_cross_correlation`."""

    ncc: np.ndarray  # correlation coefficient
    sigmas: np.ndarray  # band-passed correlation in standard deviations of chance
    f_band: np.ndarray  # band-passed, winsorised reference
    g_band: np.ndarray  # band-passed, winsorised moving
    area: float  # correlation area of f_band and g_band, px
    candidate: np.ndarray  # searched shifts
    defined: np.ndarray  # shifts with enough overlap for a correlation


def _judge_peak(f, g, maps, peak, min_confidence, upsample, always_refine=True):
    """Decide whether to trust the correlation peak at index `peak`, and refine it.

    A peak that fails a test before the refinement is refined only if `always_refine`.
    """
    h, w = f.shape
    r = float(maps.ncc[peak])
    integer_shift = np.array([peak[1] - (w - 1), peak[0] - (h - 1)])
    sigmas, chance, best = _peak_significance(maps.sigmas, maps.candidate, peak)
    if r < min_confidence:
        reason = f"confidence {max(r, 0.0):.3f} < {min_confidence:g}"
    elif not sigmas >= MIN_SIGNIFICANCE:
        reason = (f"peak not significant: band-passed correlation {sigmas:.1f} < "
                  f"{MIN_SIGNIFICANCE:.0f} sigma of chance")
    elif not sigmas >= MIN_DISTINCTNESS * chance:
        reason = (f"peak not distinct: band-passed correlation {sigmas:.1f} sigma < "
                  f"{MIN_DISTINCTNESS:.0f} x the {chance:.1f} sigma reached at another shift")
    elif not (weakest := _weakest_part_significance(maps, best)) >= MIN_PART_SIGNIFICANCE:
        reason = (f"peak not supported across the overlap: one third of it correlates at "
                  f"{weakest:.1f} < {MIN_PART_SIGNIFICANCE:.0f} sigma of chance")
    elif _beyond_edge(maps.ncc, maps.defined, maps.candidate, peak):
        reason = "peak at the edge of the search region: the best match lies outside it"
    else:
        reason = ""

    residual = np.zeros(2)
    if upsample > 1 and (always_refine or not reason):
        ref_region, mov_region = _overlapping_regions(f, g, integer_shift)
        residual = _refine(ref_region, mov_region, 1.0 / upsample)
        if not np.all(np.isfinite(residual)):
            residual = np.zeros(2)
            reason = reason or (f"sub-pixel refinement failed (diverged, or the {ref_region.shape[1]} x "
                                f"{ref_region.shape[0]} px overlap is too thin)")
        elif np.abs(residual).max() > _REFINE_MAX_MOVE_PX:
            reason = reason or f"sub-pixel refinement moved {_fmt(residual)} px away from the correlation peak"
    shift = integer_shift + residual
    overlap_fraction = max(0.0, (w - abs(shift[0])) * (h - abs(shift[1])) / (h * w))
    return Registration(_frozen(shift), float(np.clip(r, 0.0, 1.0)), float(overlap_fraction),
                        reason == "", reason)


def _peak_significance(sigmas, candidate, peak):
    """Significance at `peak` (best of its 3 x 3 neighbourhood), best elsewhere, and
    the index of the former."""
    i, j = peak
    near = (slice(max(i - 1, 0), i + 2), slice(max(j - 1, 0), j + 2))
    local = np.where(candidate[near], sigmas[near], -np.inf)
    offset = np.unravel_index(np.argmax(local), local.shape)
    best = (near[0].start + offset[0], near[1].start + offset[1])
    at_peak = float(local[offset])
    away = (slice(max(i - _PEAK_SEPARATION_PX, 0), i + _PEAK_SEPARATION_PX + 1),
            slice(max(j - _PEAK_SEPARATION_PX, 0), j + _PEAK_SEPARATION_PX + 1))
    elsewhere = np.where(candidate, sigmas, -np.inf)
    elsewhere[away] = -np.inf
    return at_peak, max(float(elsewhere.max()), 0.0), best


def _weakest_part_significance(maps, index):
    """Lowest significance of the three thirds (along its longer side) of the overlap.

    A chance coincidence of one feature (a bright particle in each image) is
    significant in the third that holds it only; a real match in all three.
    """
    h, w = maps.f_band.shape
    shift = (index[1] - (w - 1), index[0] - (h - 1))
    a, b = _overlapping_regions(maps.f_band, maps.g_band, shift)
    axis = 0 if a.shape[0] >= a.shape[1] else 1
    return min(_pearson(part_a, part_b) * np.sqrt(part_a.size / maps.area)
               for part_a, part_b in zip(np.array_split(a, 3, axis), np.array_split(b, 3, axis)))


def _pearson(a, b):
    a = a - a.mean()
    b = b - b.mean()
    energy = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / energy) if energy > 0 else 0.0


def _beyond_edge(ncc, defined, candidate, peak):
    """Whether a defined non-candidate neighbour of `peak` correlates better."""
    i, j = peak
    rows = slice(max(i - 1, 0), i + 2)
    cols = slice(max(j - 1, 0), j + 2)
    outside = defined[rows, cols] & ~candidate[rows, cols]
    return bool(np.any(ncc[rows, cols][outside] > ncc[peak]))


def _refine(reference, moving, tolerance_px):
    """Sub-pixel residual ``(column, row)`` by Gauss-Newton on the overlapping regions.

    Iteratively reweighted least squares (Huber) for the shift, a gain and an offset;
    stops when the shift changes by less than `tolerance_px`. Returns NaNs when the
    overlap is too thin or the iteration diverges.
    """
    if min(reference.shape) < 2 * _REFINE_MARGIN_PX + 3:
        return np.full(2, np.nan)
    a = _standardised(ndimage.gaussian_filter(reference, REFINE_SMOOTHING_PX, mode="nearest"))
    b = _standardised(ndimage.gaussian_filter(moving, REFINE_SMOOTHING_PX, mode="nearest"))
    inner = (slice(_REFINE_MARGIN_PX, -_REFINE_MARGIN_PX),) * 2
    b_coefficients = ndimage.spline_filter(b, order=3, mode="nearest")
    residual = np.zeros(2)  # (row, column)
    photometric = np.zeros(2)  # b ~ (1 + gain) a + offset
    for _ in range(_REFINE_MAX_ITERATIONS):
        # b resampled at x + residual, which matches a(x) when residual is right
        b_moved = ndimage.shift(b_coefficients, -residual, order=3, mode="nearest", prefilter=False)
        grad_r, grad_c = (d[inner] for d in np.gradient(0.5 * (a + b_moved)))
        difference = (b_moved - a)[inner]
        # linearised: difference = -grad . step + gain * a + offset
        design = np.stack([-grad_r.ravel(), -grad_c.ravel(), a[inner].ravel(), np.ones(grad_r.size)], axis=1)
        misfit = difference.ravel() - design[:, 2:] @ photometric
        # Huber weights: features present in one image only must not pull the shift
        weight = np.minimum(1.0, _HUBER_K * _robust_sigma(misfit) / np.maximum(np.abs(misfit), 1e-300))
        weighted = design * weight[:, None]
        solution = np.linalg.lstsq(weighted.T @ design, weighted.T @ difference.ravel(), rcond=None)[0]
        step, photometric = solution[:2], solution[2:]
        residual += step
        if np.abs(residual).max() > 2 * _REFINE_MAX_MOVE_PX:
            return np.full(2, np.nan)
        if np.abs(step).max() < tolerance_px:
            break
    return residual[::-1].copy()


def _robust_sigma(a):
    """1.4826 x the median absolute deviation (the standard deviation for normal data)."""
    return 1.4826 * float(np.median(np.abs(a - np.median(a))))


def _standardised(a):
    """`a` minus its median, over its robust sigma (or standard deviation)."""
    sigma = _robust_sigma(a)
    if not sigma > 0:
        sigma = a.std() if a.std() > 0 else 1.0
    return (a - np.median(a)) / sigma


def _frozen(values):
    array = np.array(values, dtype=np.float64)
    array.setflags(write=False)
    return array


def _fmt(vector):
    return "(" + ", ".join(f"{v:.2f}" for v in vector) + ")"

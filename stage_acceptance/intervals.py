"""95 % intervals of the metrics, from the data.

Plain functions on numpy arrays. Where the estimator is a mean, a slope through the
origin or a standard deviation of normally distributed errors, the interval is the
exact analytic one (Student t, chi-square); where it is not (a ratio, an RMS, an
angle between fitted directions), it is a percentile bootstrap over the steps with a
fixed seed, so the same data always give the same interval.

Every function returns ``(low, high)``; none of them decides anything.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
"""Confidence level of every interval."""

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20231
"""Fixed, so that an analysis is reproducible to the last digit."""


def t_interval(value: float, standard_error: float, dof: float) -> tuple[float, float]:
    """``value -+ t(0.975, dof) * standard_error``.

    Parameters
    ----------
    value : float
    standard_error : float
        Non-negative.
    dof : float
        Degrees of freedom, > 0.
    """
    if dof <= 0:
        raise ValueError(f"need dof > 0, got {dof}")
    half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * float(standard_error)
    return float(value) - half, float(value) + half


def mean_difference_interval(a, b) -> tuple[float, float]:
    """Interval of ``mean(a) - mean(b)`` (Welch's t, unequal variances).

    Parameters
    ----------
    a, b : array_like
        Two samples with at least two values each.

    References
    ----------
    Welch BL (1947). The generalization of 'Student's' problem when several different
    population variances are involved. Biometrika 34, 28-35.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two values in each sample, got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    difference = float(a.mean() - b.mean())
    se2 = va + vb
    if se2 == 0:
        return difference, difference
    dof = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t_interval(difference, np.sqrt(se2), dof)


def slope_through_origin(x, y) -> tuple[float, float, int]:
    """Least-squares slope of `y` on `x` through the origin, its standard error and dof.

    Returns
    -------
    slope, standard_error, dof : float, float, int
        ``dof = n - 1``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 2:
        raise ValueError(f"need two points for a slope with an error, got {len(x)}")
    sxx = float(x @ x)
    if sxx == 0:
        raise ValueError("all x are 0: no slope")
    slope = float(x @ y) / sxx
    residual = y - slope * x
    dof = len(x) - 1
    return slope, float(np.sqrt(residual @ residual / dof / sxx)), dof


def std_interval(std: float, dof: int) -> tuple[float, float]:
    """Interval of a standard deviation estimated with `dof` degrees of freedom (chi-square)."""
    if dof < 1:
        raise ValueError(f"need dof >= 1, got {dof}")
    alpha = 1.0 - LEVEL
    low = std * np.sqrt(dof / stats.chi2.ppf(1.0 - alpha / 2, dof))
    high = std * np.sqrt(dof / stats.chi2.ppf(alpha / 2, dof))
    return float(low), float(high)


def max_std_interval(stds: Sequence[float], dofs: Sequence[int]) -> tuple[float, float]:
    """Bounds of the largest of several standard deviations.

    ``[max_j low_j, max_j high_j]`` with ``[low_j, high_j]`` the chi-square interval of
    each. It always holds the largest estimate; it is the interval of the largest
    spread among the groups (ISO 230-2 takes the largest over target positions).
    """
    if len(stds) == 0 or len(stds) != len(dofs):
        raise ValueError(f"need matching non-empty stds and dofs, got {len(stds)} and {len(dofs)}")
    bounds = np.array([std_interval(s, d) for s, d in zip(stds, dofs)])
    return float(bounds[:, 0].max()), float(bounds[:, 1].max())


def magnitude_interval(vector, standard_error: float, dof: float) -> tuple[float, float]:
    """Interval of the length of a 2-D vector whose components share one standard error.

    The 95 % confidence circle of the vector has radius
    ``se * sqrt(2 F(0.95; 2, dof))``; the length lies within the vector's length -+
    that radius (clipped at 0). Conservative: the circle covers the vector itself
    with 95 %.
    """
    if dof <= 0:
        raise ValueError(f"need dof > 0, got {dof}")
    length = float(np.hypot(*np.asarray(vector, dtype=float)))
    radius = float(standard_error) * float(np.sqrt(2.0 * stats.f.ppf(LEVEL, 2, dof)))
    return max(0.0, length - radius), length + radius


def bootstrap_interval(statistic: Callable[[list[np.ndarray]], float | None], groups: Sequence[np.ndarray],
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval, resampling each group of indices on its own.

    Parameters
    ----------
    statistic : callable
        Takes a list of index arrays (one per group, drawn with replacement from the
        corresponding group) and returns the value, or None when that resample
        cannot give one (left out).
    groups : sequence of ndarray of int
        Strata, e.g. the reversal and the plain steps, resampled separately so that
        each resample keeps their counts.
    resamples : int
    seed : int

    Returns
    -------
    (low, high)

    References
    ----------
    Efron B, Tibshirani RJ (1993). An Introduction to the Bootstrap, ch. 13.
    """
    rng = np.random.default_rng(seed)
    groups = [np.asarray(g, dtype=int) for g in groups]
    values = []
    for _ in range(resamples):
        drawn = [g[rng.integers(0, len(g), len(g))] if len(g) else g for g in groups]
        value = statistic(drawn)
        if value is not None and np.isfinite(value):
            values.append(value)
    if not values:
        raise ValueError("no bootstrap resample gave a value")
    alpha = 1.0 - LEVEL
    low, high = np.quantile(values, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)

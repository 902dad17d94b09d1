"""What the stage readback says about itself: the resolution it is written in and the
quantum it moves in.

A stage whose encoder (or its software) reports positions on a grid moves its
readback in multiples of a quantum: the NIST Titan of ``tests/data`` reports x in
multiples of 19.5 nm. The quantum bounds what the readback can tell (a readback
backlash or scatter below it is not seen) and is reported, not judged: results-v1
names no tolerance for it.

Plain functions on numpy arrays; distances in nm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_STEPS = 3
"""Least number of nonzero readback steps along an axis to estimate its quantum."""
MAX_MULTIPLE = 1000
"""Largest multiple of the quantum a step may be (the search stops at the smallest
step / this)."""
CHANCE = 0.01
"""Largest probability that steps of a readback that is not quantised fit a quantum by
chance (see :func:`readback_quantum_nm`)."""
_DECIMALS = range(3, -7, -1)
"""Powers of ten (nm) tried as the resolution the readings are written in: 1 um to 1 fm."""


def readback_resolution_nm(values_nm) -> float:
    """The decimal step the readings are written in, nm.

    The largest ``10**k`` nm (``k`` from 3 down to -6) of which every reading is an
    integer multiple, to a millionth of the step (floating-point conversions of
    decimal text, e.g. micrometres to nanometres, leave less). SerialEM writes
    ``StagePosition = -16.0095`` um: 0.1 nm.

    Parameters
    ----------
    values_nm : array_like
        Readings (any shape); non-finite ones are left out.

    Returns
    -------
    float
        ``1e-6`` when the readings are finer than that (e.g. float noise), or there
        are none.
    """
    values = np.asarray(values_nm, dtype=float).ravel()
    values = values[np.isfinite(values)]
    for k in _DECIMALS:
        step = 10.0 ** k
        scaled = values / step
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6):
            return step
    return 10.0 ** _DECIMALS[-1]


@dataclass(frozen=True)
class Quantum:
    """The quantum of one readback axis, or why it is not measured.

    Attributes
    ----------
    quantum_nm : float or None
        The largest ``q`` such that every nonzero readback step is an integer multiple
        of it, refined by least squares; None when not measured.
    steps : int
        Nonzero readback steps it rests on.
    multiples : tuple of int
        The multiple of the quantum each nonzero step is (signed, in session order).
    tolerance_nm : float
        The resolution of the readings: a step may lie 1.5 times this from its multiple.
    largest_misfit_nm : float or None
        The largest distance of a step from its multiple of the quantum.
    reason : str
        Why it is not measured ("" when it is).
    """

    quantum_nm: float | None
    steps: int
    multiples: tuple[int, ...] = ()
    tolerance_nm: float = 0.0
    largest_misfit_nm: float | None = None
    reason: str = ""
    evidence: dict = field(default_factory=dict)


def readback_quantum_nm(steps_nm, tolerance_nm: float) -> Quantum:
    """Estimate the quantum a readback moves in from its steps.

    The quantum is the largest ``q`` such that every nonzero step ``s_i`` lies within
    `tolerance_nm` of a nonzero integer multiple ``n_i q``. Candidates are
    ``min |s| / k`` for ``k = 1, 2, ...`` (the smallest step is one multiple of
    ``q``); each is refined by least squares, ``q = sum n_i |s_i| / sum n_i**2``, and
    the first (largest) that fits every step within ``1.5 tolerance`` (the readings'
    rounding, plus the refinement's share) is the quantum. A readback that is not
    quantised fits a small enough ``q`` by chance: a step lands within ``t = 1.5
    tolerance`` of a multiple of ``q`` with probability ``2 t / q``, so only
    ``q >= 2 t / CHANCE**(1 / (m - 1))`` is accepted for ``m`` steps (the other
    ``m - 1`` all fitting by chance has probability at most :data:`CHANCE`), and
    ``q >= min |s| / MAX_MULTIPLE``.

    Parameters
    ----------
    steps_nm : array_like, (n,)
        Readback changes between consecutive readings of one axis, nm; zeros and
        non-finite values are left out.
    tolerance_nm : float
        How far a step may lie from a multiple: the resolution of the readings
        (:func:`readback_resolution_nm`), > 0.

    Returns
    -------
    Quantum
        Not measured with fewer than :data:`MIN_STEPS` nonzero steps, or when no
        quantum above the chance floor fits. A quantum is unique only when the steps
        tell it apart within the tolerance: steps that are all about ``n`` or ``n + 1``
        quanta fit ``q`` and ``q (n + 1) / n`` alike once ``q / n`` nears the
        tolerance, and the larger is returned.

    Raises
    ------
    ValueError
        For a tolerance that is not a finite number > 0.

    Examples
    --------
    >>> q = readback_quantum_nm([-19.5, -19.5, 0.0, -78.0], tolerance_nm=0.1)
    >>> q.quantum_nm, q.multiples
    (19.5, (-1, -1, -4))
    """
    if not (np.isfinite(tolerance_nm) and tolerance_nm > 0):
        raise ValueError(f"tolerance_nm must be a finite number > 0, got {tolerance_nm!r}")
    steps = np.asarray(steps_nm, dtype=float).ravel()
    steps = steps[np.isfinite(steps) & (np.abs(steps) > tolerance_nm)]
    m = len(steps)
    evidence = {"steps": m}
    if m < MIN_STEPS:
        return Quantum(None, m, tolerance_nm=tolerance_nm, evidence=evidence,
                       reason=f"needs >= {MIN_STEPS} nonzero readback steps; the session has {m}")
    size = np.abs(steps)
    smallest = float(size.min())
    fit = 1.5 * tolerance_nm
    floor = max(2.0 * fit / CHANCE ** (1.0 / (m - 1)), smallest / MAX_MULTIPLE)
    k = 1
    while smallest / k >= floor:
        guess = smallest / k
        multiples = np.rint(size / guess)
        if np.all(multiples >= 1):
            q = float(multiples @ size / (multiples @ multiples))
            misfit = np.abs(size - multiples * q)
            if q >= floor and np.all(misfit <= fit):
                signed = tuple(int(n) for n in np.sign(steps) * multiples)
                return Quantum(q, m, signed, tolerance_nm, float(misfit.max()), evidence=evidence)
        k += 1
    return Quantum(None, m, tolerance_nm=tolerance_nm, evidence=evidence,
                   reason=(f"no quantum of {floor:.3g} nm or more fits the {m} readback steps within "
                           f"{fit:g} nm: the readback is not quantised at its resolution"))

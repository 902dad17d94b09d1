"""Accuracy and speed of :func:`stage_acceptance.registration.register`.

Registers 512 x 512 pairs of the analytic HAADF-like test specimen of
``tests/test_registration.py`` (Gaussian particles, sigma 0.8-8 px, on a smooth
background; Poisson counts, 20 per pixel on average) with random sub-pixel shifts,
and prints a table of the RMS and largest error of the shift, the fraction of pairs
trusted (``ok``) and the median time per registration. For comparison the same pairs
are refined by other sub-pixel methods: none (integer peak), a parabola through the
3 x 3 neighbourhood of the correlation peak, and an upsampled-DFT cross-correlation
of Hann-windowed overlapping regions (Guizar-Sicairos 2008, scikit-image; skipped
when scikit-image is not installed).

Usage::

    python benchmarks/bench_registration.py [--pairs 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

from stage_acceptance.registration import normalised_cross_correlation, register

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (512, 512)
DOSE = 20.0


def _test_images():
    """The image generator of tests/test_registration.py (one source of truth)."""
    spec = importlib.util.spec_from_file_location("_registration_images", ROOT / "tests" / "test_registration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parabola_vertex(minus, centre, plus):
    curvature = minus - 2.0 * centre + plus
    return 0.0 if curvature >= 0 else 0.5 * (minus - plus) / curvature


def parabola_refined(reference, moving):
    """Integer NCC peak refined by 1-D parabolas through its 3 x 3 neighbourhood."""
    ncc, overlap = normalised_cross_correlation(reference, moving)
    h, w = np.shape(reference)
    score = np.where(overlap >= 0.1 * h * w, ncc, -np.inf)
    i, j = np.unravel_index(np.argmax(score), score.shape)
    return np.array([j - (w - 1) + _parabola_vertex(*ncc[i, j - 1:j + 2]),
                     i - (h - 1) + _parabola_vertex(*ncc[i - 1:i + 2, j])])


def upsampled_dft_refined(reference, moving):
    """Integer peak of :func:`register` refined by scikit-image's upsampled DFT."""
    from skimage.registration import phase_cross_correlation

    dx, dy = (int(v) for v in register(reference, moving, upsample=1).shift_px)
    h, w = np.shape(reference)
    ref = np.asarray(reference, float)[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
    mov = np.asarray(moving, float)[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
    window = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1]))
    residual = phase_cross_correlation((ref - ref.mean()) * window, (mov - mov.mean()) * window,
                                       upsample_factor=100, normalization=None)[0]
    return np.array([dx - residual[1], dy - residual[0]])


def measure(pairs, method):
    """RMS and max error (px), fraction ok, median seconds of `method` over `pairs`."""
    errors, oks, seconds = [], [], []
    for shift, reference, moving, prior in pairs:
        start = time.perf_counter()
        result = method(reference, moving, prior)
        seconds.append(time.perf_counter() - start)
        if isinstance(result, np.ndarray):
            found, ok = result, True
        else:
            found, ok = result.shift_px, result.ok
        errors.append(np.asarray(found) - shift)
        oks.append(ok)
    errors = np.asarray(errors)
    norms = np.linalg.norm(errors, axis=1)
    finite = np.isfinite(norms)
    rms = float(np.sqrt(np.mean(norms[finite] ** 2))) if finite.any() else float("nan")
    largest = float(norms[finite].max()) if finite.any() else float("nan")
    return rms, largest, float(np.mean(oks)), float(np.median(seconds))


def make_pairs(images, rng, count, shift_of, dose=DOSE, prior_sigma_px=None, unrelated=False):
    pairs = []
    for _ in range(count):
        seed = int(rng.integers(2**32))
        shift = shift_of(rng)
        if unrelated:
            reference, moving = images.unrelated_pair(SHAPE, dose, seed)
        else:
            reference, moving = images.image_pair(shift, SHAPE, dose, seed)
        prior = None if prior_sigma_px is None else shift + rng.normal(0.0, prior_sigma_px, 2)
        pairs.append((shift, reference, moving, prior))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50, help="random pairs per main scenario (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images = _test_images()
    rng = np.random.default_rng(args.seed)
    h, w = SHAPE

    def within(fraction):
        return lambda r: r.uniform(-fraction, fraction, 2) * [w, h]

    def seventy_percent(r):
        axis, sign = r.integers(2), r.choice([-1.0, 1.0])
        shift = r.uniform(-0.5, 0.5, 2)
        shift[axis] += sign * 0.7 * SHAPE[1 - axis]
        return shift

    ours = lambda reference, moving, prior: register(reference, moving, prior_shift_px=prior)  # noqa: E731
    scenarios = [
        ("|shift| <= 40 %, dose 20", make_pairs(images, rng, args.pairs, within(0.4))),
        ("70 % along x or y, dose 20", make_pairs(images, rng, max(args.pairs // 2, 1), seventy_percent)),
        ("|shift| <= 40 %, prior +- 5 px", make_pairs(images, rng, max(args.pairs // 5, 1), within(0.4),
                                                      prior_sigma_px=5.0)),
        ("|shift| <= 40 %, noise-free", make_pairs(images, rng, max(args.pairs // 5, 1), within(0.4), dose=None)),
        ("unrelated images, dose 20", make_pairs(images, rng, max(args.pairs // 5, 1), within(0.0),
                                                 unrelated=True)),
    ]
    methods = [("register (Gauss-Newton)", ours)]
    alternatives = [
        ("integer NCC peak", lambda reference, moving, prior: register(reference, moving, upsample=1)),
        ("NCC peak + parabola", lambda reference, moving, prior: parabola_refined(reference, moving)),
    ]
    if importlib.util.find_spec("skimage") is not None:
        alternatives.append(("upsampled DFT x100, Hann", lambda reference, moving, prior:
                             upsampled_dft_refined(reference, moving)))

    print(f"registration of {h} x {w} px pairs, seed {args.seed}, {os.cpu_count()} CPU(s)")
    header = f"{'scenario':32s} {'method':26s} {'n':>4s} {'ok':>6s} {'RMS px':>8s} {'max px':>8s} {'ms':>6s}"
    print(header)
    print("-" * len(header))
    for index, (label, pairs) in enumerate(scenarios):
        for name, method in methods + (alternatives if index == 0 else []):
            rms, largest, ok, seconds = measure(pairs, method)
            if label.startswith("unrelated"):
                rms = largest = float("nan")  # no true shift; only `ok` matters
            print(f"{label:32s} {name:26s} {len(pairs):4d} {ok:6.0%} {rms:8.4f} {largest:8.4f} {seconds * 1e3:6.0f}")


if __name__ == "__main__":
    main()

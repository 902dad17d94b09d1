"""Speed and accuracy of the registration against scikit-image and the FFT floor.

Every cell (texture x frame size x dose x shift range) is a chain of frames of one
specimen, each displaced from the previous one by a known sub-pixel shift; the pairs
are consecutive frames. On the same pairs, in the same run, interleaved pair by pair:

- **project, cold**: :func:`~stage_acceptance.registration.register` (both frames
  prepared for this pair alone);
- **project, session**: each frame prepared once with
  :func:`~stage_acceptance.registration.prepare_frame` and used by both pairs it is in,
  then :func:`~stage_acceptance.registration.register_prepared` (what the analysis
  does); time per pair = (all preparations + all registrations) / pairs;
- **skimage**: ``skimage.registration.phase_cross_correlation(reference, moving,
  upsample_factor=100)`` (skipped when scikit-image is not installed: ``pip install
  -e .[bench]``);
- **floor**: three float32 FFTs of the frame size (``scipy.fft.rfft2`` of each frame,
  ``irfft2`` of their product), ``workers=2``: what any FFT correlation of the two
  frames costs at least.

The project and the floor both run with ``workers=2`` FFTs. Times are medians over
the pairs of a cell; ratios are taken pair by pair in the same run.

Textures: ``real`` is the HAADF STEM frame in ``benchmarks/data`` (see its README),
tiled by mirroring, blurred by 1 px; ``procedural`` is the simulator's specimen
(:class:`stage_acceptance.sim.specimen.Specimen`, 7.32 nm pixels, 0.7 px blur).
Counts are Poisson with mean ``dose x intensity`` (intensity about 1).

Per cell the table gives the RMS error (length of the error vector) of the accepted
pairs, the Cramer-Rao bound of that RMS for the same pairs (``CRB``: no unbiased
estimator does better; from the noiseless frames, the Fisher information of a
shift under Poisson noise, ``sum dose (dI/dx)^2 / I`` over the overlap, of both
frames, since both are noisy), and counts of
*silent misses* (``ok`` but more than 1 px off) and *refusals* (not ``ok``; every pair
of these cells overlaps by at least 29 %). scikit-image has no ``ok``: every result
counts as accepted. A last block registers unrelated frames (nothing may be accepted).

Usage::

    python benchmarks/bench_registration.py [--sizes 512 1024] [--doses 5 20 100]
        [--pairs 8] [--textures real procedural] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft as sfft
import tifffile

from stage_acceptance.registration import prepare_frame, register, register_prepared
from stage_acceptance.sim.specimen import ImageSpecimen, Specimen

DATA = Path(__file__).resolve().parent / "data"
REAL_IMAGE = DATA / "nist-titan-haadf-1024.tif"
REAL_BLUR_PX = 1.0
PROCEDURAL_PIXEL_NM = 7.32
PROCEDURAL_BLUR_PX = 0.7
WORKERS = 2
SHIFT_RANGES = {"<=40%": (0.0, 0.4), "60-70%": (0.6, 0.7)}
MISS_PX = 1.0


@dataclass(frozen=True)
class Texture:
    """A specimen to image: `render(origin_px, shape)` gives the intensity of the frame
    whose pixel ``[r, c]`` sees the specimen point ``origin_px + (c, r)``."""

    name: str
    specimen: object
    pixel: float
    blur_px: float

    def render(self, origin_px, shape):
        return self.specimen.render_grid(np.asarray(origin_px) * self.pixel, (self.pixel, 0.0), (0.0, self.pixel),
                                         shape, blur_nm=self.blur_px * self.pixel)


def textures(names, seed):
    """The textures called `names` (``real``, ``procedural``)."""
    made = []
    for name in names:
        if name == "real":
            made.append(Texture("real", ImageSpecimen(tifffile.imread(REAL_IMAGE), 1.0), 1.0, REAL_BLUR_PX))
        elif name == "procedural":
            made.append(Texture("procedural", Specimen(seed=seed), PROCEDURAL_PIXEL_NM, PROCEDURAL_BLUR_PX))
        else:
            raise ValueError(f"unknown texture {name!r}; choose real or procedural")
    return made


def chain_shifts(rng, count, size, fraction_range):
    """`count` shifts ``(dx, dy)`` in px: within `fraction_range` of `size` along one axis
    (both axes up to it for a range starting at 0), within 3 % along the other."""
    low, high = fraction_range
    shifts = []
    for _ in range(count):
        if low == 0:
            shift = rng.uniform(-high, high, 2) * size
        else:
            axis = rng.integers(2)
            shift = rng.uniform(-0.03, 0.03, 2) * size
            shift[axis] = rng.choice([-1.0, 1.0]) * rng.uniform(low, high) * size
        shifts.append(shift)
    return shifts


def chain(texture, rng, size, dose, shifts):
    """Frames ``0..len(shifts)``; frame ``i + 1`` is frame ``i`` displaced by ``shifts[i]``.

    The frames wander around the origin of the texture: each shift is applied in the
    direction that brings the field back towards it (its size is kept).
    """
    origin = rng.uniform(0.0, 1.0, 2) + 0.25 * size
    origins, signed = [origin], []
    for shift in shifts:
        shift = np.where(origin - 0.25 * size > 0, np.abs(shift), -np.abs(shift)) if texture.name == "real" else shift
        origin = origin - shift  # moving[r, c] = reference[r - dy, c - dx]
        origins.append(origin)
        signed.append(shift)
    intensities = [texture.render(o, (size, size)) for o in origins]
    frames = [rng.poisson(dose * i).astype(np.uint16) for i in intensities]
    return frames, signed, [shift_fisher(texture, o, i, dose) for o, i in zip(origins, intensities)]


def shift_fisher(texture, origin, intensity, dose, step_px=0.05):
    """Per pixel Fisher information ``(F_x, F_y)`` of a frame about its own shift
    under Poisson noise: ``dose (dI/dx)^2 / I``, derivatives by central differences of
    renders `step_px` apart (exact up to the render's own accuracy)."""
    size = intensity.shape
    information = []
    for offset in ((step_px, 0.0), (0.0, step_px)):
        offset = np.asarray(offset)
        derivative = (texture.render(origin + offset, size) - texture.render(origin - offset, size)) / (2 * step_px)
        information.append(dose * derivative**2 / np.maximum(intensity, 1e-6))
    return information


def pair_crb(fisher_ref, fisher_mov, shift):
    """Variance bound (px^2) of the error length of the pair's shift: per axis, the
    inverse Fisher information of each frame over the overlap, summed over both frames."""
    dx, dy = np.rint(shift).astype(int)
    h, w = fisher_ref[0].shape
    mov = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    ref = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    return sum(1.0 / fr[ref].sum() + 1.0 / fm[mov].sum() for fr, fm in zip(fisher_ref, fisher_mov))


def unrelated_frames(texture, rng, size, dose):
    """Two frames that share no part of the specimen."""
    if texture.name == "real":  # the same field, once rotated by 90 degrees: no translation matches
        first = rng.poisson(dose * texture.render((0.3, 0.7), (size, size)))
        second = rng.poisson(dose * np.rot90(texture.render((0.6, 0.2), (size, size))))
    else:
        first = rng.poisson(dose * texture.render((0.0, 0.0), (size, size)))
        second = rng.poisson(dose * texture.render((50.0 * size, 17.0 * size), (size, size)))
    return first.astype(np.uint16), second.astype(np.uint16)


def floor_fft(reference32, moving32):
    """Three float32 FFTs of the frame size: the least an FFT correlation costs."""
    size = reference32.shape
    return sfft.irfft2(sfft.rfft2(reference32, workers=WORKERS) * sfft.rfft2(moving32, workers=WORKERS).conj(),
                       size, workers=WORKERS)


def skimage_shift(reference, moving):
    """scikit-image's phase correlation, upsampled 100 times, as a shift ``(dx, dy)``."""
    from skimage.registration import phase_cross_correlation

    shift_rc = phase_cross_correlation(reference, moving, upsample_factor=100)[0]
    return -np.asarray(shift_rc)[::-1]  # skimage moves `moving` back onto `reference`


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


@dataclass
class Tally:
    """Outcomes of one method over the pairs of a cell."""

    seconds: list
    errors: list  # error norm of the accepted pairs, px
    misses: int = 0
    refused: int = 0

    def add(self, seconds, shift, truth, ok):
        self.seconds.append(seconds)
        if not ok:
            self.refused += 1
            return
        error = float(np.hypot(*(np.asarray(shift) - truth)))
        if not error <= MISS_PX:
            self.misses += 1
        else:
            self.errors.append(error)

    @property
    def rms(self):
        return float(np.sqrt(np.mean(np.square(self.errors)))) if self.errors else float("nan")


def run_cell(texture, rng, size, dose, fraction_range, pairs, with_skimage):
    """Time and score every method on one chain; returns a dict of tallies."""
    frames, shifts, fisher = chain(texture, rng, size, dose, chain_shifts(rng, pairs, size, fraction_range))
    tallies = {name: Tally([], []) for name in ("cold", "session", "skimage", "floor")}
    tallies["crb"] = float(np.sqrt(np.mean([pair_crb(fisher[i], fisher[i + 1], shift)
                                            for i, shift in enumerate(shifts)])))
    prepared, prepare_seconds = [], []
    for frame in frames:
        frame_prepared, seconds = _timed(lambda f: prepare_frame(f, workers=WORKERS), frame)
        prepared.append(frame_prepared)
        prepare_seconds.append(seconds)
    for i, truth in enumerate(shifts):
        reference, moving = frames[i], frames[i + 1]
        result, seconds = _timed(lambda a, b: register(a, b, workers=WORKERS), reference, moving)
        tallies["cold"].add(seconds, result.shift_px, truth, result.ok)
        result, seconds = _timed(lambda a, b: register_prepared(a, b, workers=WORKERS), prepared[i], prepared[i + 1])
        # each frame's preparation is shared by the pairs it is in
        share = sum(prepare_seconds[j] / (1 + (0 < j < len(frames) - 1)) for j in (i, i + 1))
        tallies["session"].add(seconds + share, result.shift_px, truth, result.ok)
        if with_skimage:
            shift, seconds = _timed(skimage_shift, reference, moving)
            tallies["skimage"].add(seconds, shift, truth, True)
        as32 = reference.astype(np.float32), moving.astype(np.float32)
        _, seconds = _timed(floor_fft, *as32)
        tallies["floor"].add(seconds, truth, truth, True)
    return tallies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="frame sides, px")
    parser.add_argument("--doses", type=float, nargs="+", default=[5.0, 20.0, 100.0], help="mean counts per pixel")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per cell (default 8)")
    parser.add_argument("--shifts", nargs="+", default=list(SHIFT_RANGES), choices=list(SHIFT_RANGES))
    parser.add_argument("--textures", nargs="+", default=["real", "procedural"], choices=["real", "procedural"])
    parser.add_argument("--unrelated", type=int, default=4, help="unrelated pairs per texture and size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with_skimage = importlib.util.find_spec("skimage") is not None
    rng = np.random.default_rng(args.seed)

    print(f"registration benchmark: {args.pairs} pairs per cell, seed {args.seed}, {os.cpu_count()} CPU(s), "
          f"FFT workers {WORKERS}{'' if with_skimage else ', scikit-image not installed'}")
    print("times: median ms per pair; ratios: median over pairs of time / floor time of the same pair")
    header = (f"{'texture':10s} {'px':>4s} {'dose':>4s} {'shift':>6s} | {'floor':>5s} {'cold':>6s} {'sess':>6s} "
              f"{'skimg':>6s} | {'cold/fl':>7s} {'sess/fl':>7s} {'skim/fl':>7s} | {'RMS px':>6s} {'miss':>4s} "
              f"{'refus':>5s} {'CRB':>6s} | {'skim RMS':>8s} {'miss':>4s}")
    print(header)
    print("-" * len(header))
    for texture in textures(args.textures, args.seed):
        for size in args.sizes:
            for dose in args.doses:
                for label in args.shifts:
                    t = run_cell(texture, rng, size, dose, SHIFT_RANGES[label], args.pairs, with_skimage)
                    floor = np.asarray(t["floor"].seconds)

                    def ms(name):
                        return np.median(t[name].seconds) * 1e3 if t[name].seconds else float("nan")

                    def ratio(name):
                        return np.median(np.asarray(t[name].seconds) / floor) if t[name].seconds else float("nan")

                    print(f"{texture.name:10s} {size:4d} {dose:4.0f} {label:>6s} | {ms('floor'):5.1f} {ms('cold'):6.1f} "
                          f"{ms('session'):6.1f} {ms('skimage'):6.1f} | {ratio('cold'):7.2f} {ratio('session'):7.2f} "
                          f"{ratio('skimage'):7.2f} | {t['cold'].rms:6.3f} {t['cold'].misses:4d} {t['cold'].refused:5d} {t['crb']:6.3f} | "
                          f"{t['skimage'].rms:8.3f} {t['skimage'].misses:4d}", flush=True)
    if args.unrelated:
        print()
        print(f"unrelated frames ({args.unrelated} pairs per texture and size, dose {max(args.doses):g}): accepted")
        for texture in textures(args.textures, args.seed):
            for size in args.sizes:
                accepted = sum(register(*unrelated_frames(texture, rng, size, max(args.doses))).ok
                               for _ in range(args.unrelated))
                print(f"  {texture.name:10s} {size:4d} px: {accepted} of {args.unrelated}")


if __name__ == "__main__":
    main()

"""Tests of :mod:`stage_acceptance.registration` on analytic HAADF-like image pairs.

The test specimen is a field of Gaussian particles (sigma 0.8-8 px, random
amplitudes) on a smooth background, evaluated analytically on the pixel grid, so a
sub-pixel displacement of the features is exact: the moving frame renders the same
particles at ``position + (dx, dy)``. Counts are Poisson with mean ``dose * intensity``
(intensity about 1 on average).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stage_acceptance.registration import (
    PreparedFrame,
    Registration,
    normalised_cross_correlation,
    prepare_frame,
    register,
    register_prepared,
)

MARGIN_PX = 40.0


def render(particles, background_phase, shape, shift=(0.0, 0.0)):
    """Noise-free intensity of the specimen with its features moved by `shift` (dx, dy)."""
    h, w = shape
    dx, dy = shift
    cols, rows = np.arange(w, dtype=float), np.arange(h, dtype=float)
    image = 0.6 + 0.15 * (np.sin((cols[None, :] - dx) / 37.0 + background_phase[0])
                          * np.cos((rows[:, None] - dy) / 53.0 + background_phase[1]))
    for x, y, sigma, amplitude in particles:
        x, y, reach = x + dx, y + dy, 4.5 * sigma
        c0, c1 = max(int(np.floor(x - reach)), 0), min(int(np.ceil(x + reach)) + 1, w)
        r0, r1 = max(int(np.floor(y - reach)), 0), min(int(np.ceil(y + reach)) + 1, h)
        if c0 < c1 and r0 < r1:  # cut off at `reach` from the centre, whatever the grid
            gx = np.exp(-0.5 * ((cols[c0:c1] - x) / sigma) ** 2) * (np.abs(cols[c0:c1] - x) <= reach)
            gy = np.exp(-0.5 * ((rows[r0:r1] - y) / sigma) ** 2) * (np.abs(rows[r0:r1] - y) <= reach)
            image[r0:r1, c0:c1] += amplitude * np.outer(gy, gx)
    return image


def image_pair(shift, shape=(192, 192), dose=20.0, seed=0):
    """``(reference, moving)`` Poisson counts whose features move by `shift` = (dx, dy).

    The particles cover both fields of view (plus a margin), so both frames are fully
    textured. `dose` None returns the noise-free intensities.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    dx, dy = shift
    low = (min(0.0, -dx) - MARGIN_PX, min(0.0, -dy) - MARGIN_PX)
    high = (w + max(0.0, -dx) + MARGIN_PX, h + max(0.0, -dy) + MARGIN_PX)
    count = rng.poisson(0.0045 * (high[0] - low[0]) * (high[1] - low[1]))
    particles = np.column_stack([
        rng.uniform(low[0], high[0], count),
        rng.uniform(low[1], high[1], count),
        np.exp(rng.uniform(np.log(0.8), np.log(8.0), count)),
        rng.uniform(0.3, 1.5, count),
    ])
    phase = rng.uniform(0.0, 2.0 * np.pi, 2)
    reference = render(particles, phase, shape)
    moving = render(particles, phase, shape, shift)
    if dose is None:
        return reference, moving
    return rng.poisson(dose * reference), rng.poisson(dose * moving)


def unrelated_pair(shape=(192, 192), dose=20.0, seed=0):
    """Two frames of two independent specimens."""
    return image_pair((0.0, 0.0), shape, dose, seed)[0], image_pair((0.0, 0.0), shape, dose, seed + 1)[0]


def sparse_frame(rng, shape, shift=(0.0, 0.0), particles=None, dose=20.0):
    """A few bright particles on a flat support (heavy-tailed chance correlations)."""
    h, w = shape
    if particles is None:
        count = rng.poisson(0.0003 * 9 * h * w)
        particles = np.column_stack([rng.uniform(-w, 2 * w, count), rng.uniform(-h, 2 * h, count),
                                     rng.uniform(1.5, 6.0, count), rng.uniform(2.0, 6.0, count)])
    return rng.poisson(dose * render(particles, np.zeros(2), shape, shift)), particles


def bright_spot(shape, x, y, counts=100.0, sigma=6.0):
    """A Gaussian spot of `counts` at its centre (x, y), e.g. a particle in one frame only."""
    rows, cols = np.indices(shape)
    return counts * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))


# --- the test images themselves ---------------------------------------------------


def test_generator_follows_the_sign_convention():
    reference, moving = image_pair((7.0, -5.0), shape=(64, 80), dose=None)
    # moving[r, c] == reference[r - dy, c - dx]
    np.testing.assert_allclose(moving[:-5, 7:], reference[5:, :-7], atol=1e-12)
    assert 0.8 < reference.mean() < 1.2


# --- the normalised cross-correlation map ------------------------------------------


def test_normalised_cross_correlation_is_pearson_r_over_the_overlap():
    reference, moving = image_pair((0.0, 0.0), shape=(40, 56), dose=20.0, seed=3)
    ncc, overlap = normalised_cross_correlation(reference, moving)
    h, w = reference.shape
    assert ncc.shape == overlap.shape == (2 * h - 1, 2 * w - 1)
    for dx, dy in [(0, 0), (9, -4), (-30, 17), (50, 35), (-50, -33)]:
        expected = np.corrcoef(moving[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)].ravel(),
                               reference[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)].ravel())[0, 1]
        assert ncc[dy + h - 1, dx + w - 1] == pytest.approx(expected, abs=1e-9)
        assert overlap[dy + h - 1, dx + w - 1] == (h - abs(dy)) * (w - abs(dx))


def test_normalised_cross_correlation_is_linear_not_circular():
    # a circular correlation would also match perfectly at dx - w = -19
    reference, moving = image_pair((45.0, 0.0), shape=(64, 64), dose=None, seed=4)
    ncc, _ = normalised_cross_correlation(reference, moving)
    assert ncc[63, 63 + 45] == pytest.approx(1.0, abs=1e-9)
    assert ncc[63, 63 + 45 - 64] < 0.5


# --- sub-pixel accuracy -----------------------------------------------------------


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    dx=st.floats(-0.4 * 192, 0.4 * 192, allow_nan=False),
    dy=st.floats(-0.4 * 192, 0.4 * 192, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_subpixel_shifts_are_recovered(dx, dy, seed):
    reference, moving = image_pair((dx, dy), shape=(192, 192), dose=20.0, seed=seed)
    result = register(reference, moving)
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, [dx, dy], atol=0.2)
    assert result.overlap_fraction == pytest.approx((1 - abs(dx) / 192) * (1 - abs(dy) / 192), abs=0.01)
    # the reverse pair gives the opposite shift
    np.testing.assert_allclose(register(moving, reference).shift_px, [-dx, -dy], atol=0.2)


def test_rms_error_at_dose_20_is_below_five_hundredths_of_a_pixel():
    rng = np.random.default_rng(2024)
    errors = []
    for seed in range(10):
        shift = rng.uniform(-64.0, 64.0, 2)
        result = register(*image_pair(shift, shape=(256, 256), dose=20.0, seed=100 + seed))
        assert result.ok, result.reason
        errors.append(result.shift_px - shift)
    rms = np.sqrt(np.mean(np.sum(np.square(errors), axis=1)))
    assert rms <= 0.05


def test_a_particle_in_one_frame_only_does_not_pull_the_shift():
    # a bright particle (contamination, a moving nanoparticle) 10x the specimen's
    # contrast in the middle of the overlap of the moving frame only: the refinement's
    # robust last step limits its differences (0.14 px RMS without it)
    errors = []
    for seed in range(8):
        shift = np.random.default_rng(seed).uniform(-40.0, 40.0, 2)
        reference, moving = image_pair(shift, shape=(256, 256), dose=20.0, seed=seed)
        moving = moving + bright_spot((256, 256), 128 + shift[0] / 2, 128 + shift[1] / 2, counts=200.0, sigma=3.0)
        result = register(reference, moving)
        assert result.ok, result.reason
        errors.append(result.shift_px - shift)
    assert np.sqrt(np.mean(np.sum(np.square(errors), axis=1))) <= 0.08


def test_noise_free_pairs_are_registered_to_a_few_thousandths_of_a_pixel():
    for seed, shift in enumerate([(0.5, -0.5), (12.25, 3.75), (-30.1, 41.9)]):
        result = register(*image_pair(shift, shape=(128, 160), dose=None, seed=seed))
        assert result.ok, result.reason
        np.testing.assert_allclose(result.shift_px, shift, atol=5e-3)
        assert result.confidence > 0.98  # r at the integer peak, up to half a pixel away


# --- large shifts: no aliasing, with and without a prior ----------------------------


LARGE_SHIFTS = [(0.7, 0.0), (0.0, 0.7), (-0.7, 0.0), (0.0, -0.7), (0.5, 0.5), (-0.5, 0.5), (0.5, -0.5)]


@pytest.mark.parametrize("with_prior", [False, True], ids=["no-prior", "prior"])
@pytest.mark.parametrize("fraction", LARGE_SHIFTS, ids=str)
def test_large_shifts_are_recovered(fraction, with_prior):
    shape = (192, 256)  # rows, columns: not square on purpose
    shift = np.array([fraction[0] * shape[1] + 0.3, fraction[1] * shape[0] - 0.6])
    prior = shift + [6.0, -4.0] if with_prior else None
    result = register(*image_pair(shift, shape=shape, seed=11), prior_shift_px=prior)
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, shift, atol=0.2)
    expected_overlap = (1 - abs(shift[0]) / shape[1]) * (1 - abs(shift[1]) / shape[0])
    assert result.overlap_fraction == pytest.approx(expected_overlap, abs=0.005)


# --- the prior --------------------------------------------------------------------


def test_prior_near_the_truth_finds_it():
    shift = np.array([-41.3, 23.8])
    result = register(*image_pair(shift, seed=21), prior_shift_px=shift + [9.0, 7.0], search_radius_px=15.0)
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, shift, atol=0.2)


@pytest.mark.parametrize(
    ("offset", "reason"),
    [((-100.0, 20.0), ("confidence", "peak not significant")), ((12.0, 0.0), "peak at the edge of the search region")],
    ids=["far", "just-outside"],
)
def test_prior_far_from_the_truth_is_not_trusted(offset, reason):
    truth = np.array([40.0, 10.0])
    prior, radius = truth + offset, 10.0
    result = register(*image_pair(truth, shape=(256, 256), seed=22), prior_shift_px=prior, search_radius_px=radius)
    assert not result.ok
    assert result.reason.startswith(reason)
    # the integer peak lies in the search disc; the refinement moves it by < 1.5 px per axis
    assert np.linalg.norm(result.shift_px - prior) <= radius + 1.5 * np.sqrt(2)


def test_prior_restricts_the_search_to_its_neighbourhood():
    # with a prior that leaves no candidate at all the result says so
    result = register(*image_pair((5.0, 5.0), seed=23), prior_shift_px=(1000.0, 0.0), search_radius_px=50.0)
    assert not result.ok
    assert np.all(np.isnan(result.shift_px))
    assert result.reason.startswith("no integer shift within 50.0 px of the prior (1000.00, 0.00)")


def test_default_search_radius_is_a_quarter_of_the_frame():
    truth = np.array([30.0, -20.0])
    pair = image_pair(truth, seed=24)
    inside = register(*pair, prior_shift_px=truth + [30.0, 0.0])  # 30 px < 48 px
    assert inside.ok, inside.reason
    np.testing.assert_allclose(inside.shift_px, truth, atol=0.2)
    outside = register(*pair, prior_shift_px=truth + [70.0, 0.0])  # 70 px > 48 px
    assert not outside.ok


# --- pairs that cannot be trusted -------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (128, 128), (192, 256)], ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_unrelated_images_are_not_ok(shape, seed):
    result = register(*unrelated_pair(shape, seed=10 * seed))
    assert not result.ok
    assert result.reason
    assert 0.0 <= result.confidence <= 1.0
    assert np.all(np.isfinite(result.shift_px))


def test_white_noise_is_not_ok():
    rng = np.random.default_rng(5)
    result = register(rng.normal(size=(128, 128)), rng.normal(size=(128, 128)))
    assert not result.ok
    assert result.reason.startswith(("confidence", "peak not significant"))


@pytest.mark.parametrize("seed", range(3))
def test_unrelated_sparse_particles_are_not_ok(seed):
    # the best chance coincidence of a few bright particles is far above Bartlett's
    # Gaussian estimate; the distinctness test must catch it
    rng = np.random.default_rng(40 + seed)
    reference, _ = sparse_frame(rng, (256, 256))
    moving, _ = sparse_frame(rng, (256, 256))
    result = register(reference, moving)
    assert not result.ok
    assert result.reason


def test_sparse_particles_are_registered():
    rng = np.random.default_rng(50)
    reference, particles = sparse_frame(rng, (256, 256))
    moving, _ = sparse_frame(rng, (256, 256), shift=(-61.3, 47.8), particles=particles)
    result = register(reference, moving)
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, [-61.3, 47.8], atol=0.2)


def test_a_coincidence_of_two_unmatched_bright_spots_does_not_win():
    # one bright spot in each frame, unrelated to the specimen, coincide at the shift
    # (-120, -120) and give the highest correlation; the true shift is a lower peak
    truth = np.array([30.0, 20.0])
    reference, moving = image_pair(truth, shape=(192, 192), seed=31)
    reference = reference + bright_spot(reference.shape, 160, 160)
    moving = moving + bright_spot(moving.shape, 40, 40)
    ncc, overlap = normalised_cross_correlation(reference, moving)
    top = np.unravel_index(np.argmax(np.where(overlap >= 0.1 * 192**2, ncc, -1)), ncc.shape)
    assert np.hypot(top[1] - 191 + 120, top[0] - 191 + 120) <= 2  # the spots win the raw NCC
    result = register(reference, moving)
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, truth, atol=0.25)  # least squares: 0.9 px off


@pytest.mark.parametrize("seed", range(3))
def test_one_coincident_bright_spot_is_not_a_match(seed):
    # flat, noisy support with one bright particle in each frame: at the shift that
    # puts one onto the other the correlation is strong but carried by that spot only
    rng = np.random.default_rng(60 + seed)
    reference = rng.poisson(20.0, (128, 128)) + bright_spot((128, 128), 100, 90, counts=200, sigma=5)
    moving = rng.poisson(20.0, (128, 128)) + bright_spot((128, 128), 30, 40, counts=200, sigma=5)
    result = register(reference, moving)
    np.testing.assert_allclose(result.shift_px, [-70.0, -50.0], atol=0.5)  # the spots' coincidence
    assert not result.ok
    # the spot alone is not significant over the whole overlap, nor in each third of it
    assert result.reason.startswith(("peak not significant", "peak not supported across the overlap"))


@pytest.mark.parametrize("shift", [(200.0, 0.0), (0.0, -195.0), (150.0, 150.0)], ids=str)
def test_frames_without_overlap_are_not_ok(shift):
    result = register(*image_pair(shift, shape=(128, 128), seed=6))
    assert not result.ok
    assert result.reason


def test_overlap_below_min_overlap_is_not_searched():
    shift = (0.95 * 192, 0.0)  # 5 % overlap
    result = register(*image_pair(shift, seed=7), min_overlap=0.1)
    assert not result.ok
    assert result.overlap_fraction >= 0.1 - 0.01


def test_low_confidence_is_reported_with_both_numbers():
    reference, moving = image_pair((10.2, -3.7), shape=(128, 128), dose=2.0, seed=8)
    result = register(reference, moving, min_confidence=0.95)
    assert not result.ok
    assert result.reason == f"confidence {result.confidence:.3f} < 0.95"


# --- results and options ----------------------------------------------------------


def test_result_is_frozen_and_shift_read_only():
    result = register(*image_pair((3.2, 1.1), shape=(96, 96), seed=9))
    assert isinstance(result, Registration)
    assert result.shift_px.shape == (2,)
    assert result.reason == "" and result.ok
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.ok = False
    with pytest.raises(ValueError):
        result.shift_px[0] = 0.0


def test_upsample_one_returns_the_integer_peak():
    result = register(*image_pair((17.3, -8.6), seed=10), upsample=1)
    assert result.ok, result.reason
    np.testing.assert_array_equal(result.shift_px, [17.0, -9.0])


def test_gain_and_offset_between_the_images_do_not_matter():
    reference, moving = image_pair((23.6, -14.2), shape=(128, 128), seed=14)
    result = register(reference, 3.5 * moving + 1000.0)
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, [23.6, -14.2], atol=0.2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int64, np.float32, np.float64])
def test_any_real_dtype(dtype):
    reference, moving = image_pair((-12.4, 6.9), shape=(128, 128), seed=12)
    result = register(reference.astype(dtype), (moving + 7).astype(dtype))
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, [-12.4, 6.9], atol=0.2)


# --- bad input --------------------------------------------------------------------


GOOD = image_pair((1.0, 1.0), shape=(32, 32), seed=13)[0].astype(float)


def _with(value, index=(3, 4)):
    image = GOOD.copy()
    image[index] = value
    return image


@pytest.mark.parametrize(
    ("reference", "moving", "kwargs", "message"),
    [
        (GOOD[0], GOOD[0], {}, r"reference must be a 2-D image, got 1 dimension\(s\) with shape \(32,\)"),
        (GOOD, np.stack([GOOD, GOOD]), {}, r"moving must be a 2-D image, got 3 dimension\(s\)"),
        (GOOD, GOOD[:, :30], {}, r"same shape, got \(32, 32\) and \(32, 30\)"),
        (_with(np.nan), GOOD, {}, r"reference contains 1 non-finite value\(s\)"),
        (GOOD, _with(np.inf), {}, r"moving contains 1 non-finite value\(s\)"),
        (np.full((32, 32), 7.0), GOOD, {}, "reference is constant"),
        (GOOD, np.zeros((32, 32), dtype=np.uint8), {}, "moving is constant"),
        (GOOD + 1j, GOOD, {}, "reference must have a real numeric dtype, got complex128"),
        (GOOD.astype(str), GOOD, {}, "reference must have a real numeric dtype"),
        (GOOD[:5], GOOD[:5], {}, r"at least 8 px on each side, got shape \(5, 32\)"),
        (GOOD, GOOD, {"min_overlap": 0.0}, r"min_overlap must be in \(0, 1\], got 0.0"),
        (GOOD, GOOD, {"min_overlap": 1.5}, r"min_overlap must be in \(0, 1\], got 1.5"),
        (GOOD, GOOD, {"min_confidence": -0.1}, r"min_confidence must be in \[0, 1\], got -0.1"),
        (GOOD, GOOD, {"upsample": 0}, "upsample must be an integer >= 1, got 0"),
        (GOOD, GOOD, {"upsample": 2.5}, "upsample must be an integer >= 1, got 2.5"),
        (GOOD, GOOD, {"search_radius_px": 5.0}, "search_radius_px needs prior_shift_px"),
        (GOOD, GOOD, {"prior_shift_px": (1.0, 2.0, 3.0)}, "prior_shift_px must be 2 finite numbers"),
        (GOOD, GOOD, {"prior_shift_px": (np.nan, 2.0)}, "prior_shift_px must be 2 finite numbers"),
        (GOOD, GOOD, {"prior_shift_px": (1.0, 2.0), "search_radius_px": -1.0},
         "search_radius_px must be a finite number >= 0, got -1.0"),
    ],
    ids=[
        "1-d", "3-d", "shapes-differ", "nan", "inf", "constant-reference", "constant-moving", "complex",
        "strings", "too-small", "min-overlap-0", "min-overlap-1.5", "min-confidence", "upsample-0",
        "upsample-float", "radius-without-prior", "prior-shape", "prior-nan", "radius-negative",
    ],
)
def test_bad_input_raises_precise_value_error(reference, moving, kwargs, message):
    with pytest.raises(ValueError, match=message):
        register(reference, moving, **kwargs)


# --- prepared frames ----------------------------------------------------------------


def test_register_is_register_prepared_of_prepared_frames():
    reference, moving = image_pair((-21.7, 9.4), shape=(160, 192), seed=70)
    direct = register(reference, moving, prior_shift_px=(-20.0, 10.0))
    prepared = register_prepared(prepare_frame(reference), prepare_frame(moving), prior_shift_px=(-20.0, 10.0))
    np.testing.assert_array_equal(direct.shift_px, prepared.shift_px)
    assert (direct.ok, direct.reason, direct.confidence) == (prepared.ok, prepared.reason, prepared.confidence)


def test_a_prepared_frame_serves_many_pairs_unchanged():
    rng = np.random.default_rng(71)
    scene = image_pair((0.0, 0.0), shape=(320, 320), dose=None, seed=72)[0]
    shifts = rng.integers(-50, 51, (4, 2))
    # moving[r, c] == reference[r - dy, c - dx]: the field moves by -(dx, dy)
    frames = [rng.poisson(20.0 * scene[64 - dy:256 - dy, 64 - dx:256 - dx]) for dx, dy in [(0, 0), *shifts]]
    prepared = [prepare_frame(frame) for frame in frames]
    before = prepared[0].band.copy()
    for frame, shift in zip(prepared[1:], shifts):
        result = register_prepared(prepared[0], frame)
        assert result.ok, result.reason
        np.testing.assert_allclose(result.shift_px, shift, atol=0.2)
    np.testing.assert_array_equal(prepared[0].band, before)
    for array in (prepared[0].image, prepared[0].band, prepared[0].band_spectrum, prepared[0].phase):
        assert not array.flags.writeable


@pytest.mark.parametrize("shape", [(512, 512), (256, 384), (100, 90)], ids=str)
def test_a_prepared_frame_holds_at_most_six_float32_images(shape):
    frame = prepare_frame(np.random.default_rng(73).poisson(20.0, shape))
    assert isinstance(frame, PreparedFrame) and frame.shape == shape
    assert frame.nbytes <= 6 * 4 * shape[0] * shape[1]


def test_registrations_in_threads_match_the_serial_ones():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(74)
    pairs = [image_pair(rng.uniform(-60.0, 60.0, 2), shape=(256, 256), seed=75 + i) for i in range(6)]
    prepared = [(prepare_frame(a), prepare_frame(b)) for a, b in pairs]
    serial = [register_prepared(a, b) for a, b in prepared]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(lambda ab: register_prepared(*ab), prepared))
    for one, other in zip(serial, threaded):
        np.testing.assert_array_equal(one.shift_px, other.shift_px)
        assert one.ok == other.ok


def test_fft_workers_do_not_change_the_result():
    reference, moving = image_pair((33.3, -12.1), shape=(256, 256), seed=76)
    one = register(reference, moving, workers=1)
    two = register(reference, moving, workers=2)
    np.testing.assert_allclose(one.shift_px, two.shift_px, atol=1e-4)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (GOOD[0], r"image must be a 2-D image, got 1 dimension\(s\)"),
        (_with(np.nan), r"image contains 1 non-finite value\(s\)"),
        (np.full((32, 32), 3, dtype=np.uint16), "image is constant"),
        (GOOD + 1j, "image must have a real numeric dtype"),
        (GOOD[:7], r"at least 8 px on each side, got shape \(7, 32\)"),
    ],
    ids=["1-d", "nan", "constant", "complex", "too-small"],
)
def test_prepare_frame_refuses_bad_images_in_one_line(image, message):
    with pytest.raises(ValueError, match=message) as error:
        prepare_frame(image)
    assert "\n" not in str(error.value)


def test_register_prepared_needs_prepared_frames_of_one_shape():
    a, b = prepare_frame(GOOD), prepare_frame(GOOD[:, :30])
    with pytest.raises(ValueError, match=r"same shape, got \(32, 32\) and \(32, 30\)"):
        register_prepared(a, b)
    with pytest.raises(TypeError, match="PreparedFrame"):
        register_prepared(GOOD, a)


@pytest.mark.parametrize("fraction", [(0.7, 0.02), (-0.02, -0.7), (0.6, 0.3)], ids=str)
def test_aliases_of_the_circular_correlation_are_resolved(fraction):
    # a circular correlation sees dx and dx - columns alike; the overlap decides
    shape = (256, 320)
    shift = np.array([fraction[0] * shape[1] + 0.4, fraction[1] * shape[0] - 0.3])
    result = register(*image_pair(shift, shape=shape, dose=20.0, seed=77))
    assert result.ok, result.reason
    np.testing.assert_allclose(result.shift_px, shift, atol=0.2)

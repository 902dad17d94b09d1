"""Tests of the simulated specimen and detector (stage_acceptance.sim.specimen, .imaging)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, optimize

from stage_acceptance.geometry import StageToImage
from stage_acceptance.sim.imaging import frame_intensity, render_frame
from stage_acceptance.sim.specimen import CELL_NM, Specimen

PIXEL_NM = 7.32
SPECIMEN = Specimen(seed=11)


def _frame(stage_xy_nm, transform=StageToImage(), frame_px=64, specimen=SPECIMEN, **kwargs):
    return frame_intensity(specimen, stage_xy_nm, pixel_size_nm=PIXEL_NM, frame_px=frame_px,
                           transform=transform, **kwargs)


# ---------------------------------------------------------------- determinism


def test_same_seed_and_position_give_identical_frames():
    kwargs = dict(pixel_size_nm=PIXEL_NM, frame_px=48, transform=StageToImage(30.0, True), dose=40.0)
    a = render_frame(Specimen(seed=5), (100.0, -200.0), rng=np.random.default_rng(3), **kwargs)
    b = render_frame(Specimen(seed=5), (100.0, -200.0), rng=np.random.default_rng(3), **kwargs)
    assert a.dtype == np.float32 and a.shape == (48, 48)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.rint(a))  # whole counts


def test_different_seeds_give_different_frames():
    kwargs = dict(pixel_size_nm=PIXEL_NM, frame_px=48, transform=StageToImage(), dose=40.0)
    a = render_frame(Specimen(seed=5), (0.0, 0.0), rng=np.random.default_rng(3), **kwargs)
    b = render_frame(Specimen(seed=6), (0.0, 0.0), rng=np.random.default_rng(3), **kwargs)
    c = render_frame(Specimen(seed=5), (0.0, 0.0), rng=np.random.default_rng(4), **kwargs)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)
    specimen_a = _frame((0.0, 0.0), specimen=Specimen(seed=5))
    specimen_b = _frame((0.0, 0.0), specimen=Specimen(seed=6))
    assert np.abs(specimen_a - specimen_b).mean() > 0.02


def _big_particle_at_a_cell_border():
    """``(x_nm, y_nm, radius_nm, border_x_nm)`` of a big particle whose centre is near a
    vertical hash-cell border, so that it reaches into the neighbouring cell."""
    x_nm, y_nm, radius_nm = SPECIMEN.particles((0.0, 20000.0), (0.0, 20000.0))
    border_x_nm = np.round(x_nm / CELL_NM) * CELL_NM
    straddling = (radius_nm > 12.0) & (np.abs(x_nm - border_x_nm) < 0.5 * radius_nm)
    assert straddling.any(), "no big particle near a cell border in the search area"
    k = np.flatnonzero(straddling)[0]
    return x_nm[k], y_nm[k], radius_nm[k], border_x_nm[k]


def test_window_does_not_change_values():
    """A point's intensity does not depend on the window it is rendered in, even when
    the window lies in one hash cell and the particle in the next."""
    x_nm, y_nm, _, border_x_nm = _big_particle_at_a_cell_border()
    side = 1.0 if x_nm < border_x_nm else -1.0  # the side of the border without the centre
    small_origin = (border_x_nm + side * 1.0, y_nm - 10.0)
    small = SPECIMEN.render_grid(small_origin, (side * 1.0, 0.0), (0.0, 1.0), (21, 20), blur_nm=4.0)
    big_origin = (border_x_nm - 100.0, y_nm - 100.0)
    big = SPECIMEN.render_grid(big_origin, (1.0, 0.0), (0.0, 1.0), (201, 201), blur_nm=4.0)
    columns = 100 + int(side) * np.arange(1, 21)
    np.testing.assert_allclose(small, big[90:111, columns], rtol=0, atol=1e-12)
    film = Specimen(seed=11, particle_density_per_um2=0.0)
    assert (small - film.render_grid(small_origin, (side * 1.0, 0.0), (0.0, 1.0), (21, 20), blur_nm=4.0)).max() > 0.5


def test_render_grid_equals_render_on_a_rotated_mirrored_grid():
    origin = np.array([-1234.5, 678.9])
    col_step = PIXEL_NM * np.array([np.cos(0.4), np.sin(0.4)])
    row_step = PIXEL_NM * np.array([np.sin(0.4), -np.cos(0.4)])  # mirrored
    rows, cols = 40, 50
    grid = SPECIMEN.render_grid(origin, col_step, row_step, (rows, cols), blur_nm=5.0)
    c, r = np.meshgrid(np.arange(cols), np.arange(rows))
    x = origin[0] + c * col_step[0] + r * row_step[0]
    y = origin[1] + c * col_step[1] + r * row_step[1]
    np.testing.assert_allclose(grid, SPECIMEN.render(x, y, blur_nm=5.0), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- the convention

K_PX = 5

# (rotation_deg, flip_y, stage move in pixels (x, y), expected feature shift (column, row)),
# written out by hand from recording-v1, independently of geometry.py.
CONVENTION_CASES = [
    (0.0, False, (K_PX, 0), (K_PX, 0)),  # +x moves features right
    (0.0, False, (0, K_PX), (0, K_PX)),  # +y moves features down
    (0.0, True, (K_PX, 0), (K_PX, 0)),
    (0.0, True, (0, K_PX), (0, -K_PX)),  # flipped: +y moves features up
    (90.0, False, (K_PX, 0), (0, K_PX)),  # R(90) maps (1, 0) to (0, 1): down
    (90.0, False, (0, K_PX), (-K_PX, 0)),
    (90.0, True, (0, K_PX), (K_PX, 0)),
    (180.0, False, (K_PX, 0), (-K_PX, 0)),
    (-90.0, False, (K_PX, 0), (0, -K_PX)),
]


def _shifted_view(image, d_col, d_row):
    """``image[r - d_row, c - d_col]`` over the region where it is defined, and that region's slices."""
    n_rows, n_cols = image.shape
    rows = slice(max(d_row, 0), n_rows + min(d_row, 0))
    cols = slice(max(d_col, 0), n_cols + min(d_col, 0))
    source = image[rows.start - d_row:rows.stop - d_row, cols.start - d_col:cols.stop - d_col]
    return source, (rows, cols)


@pytest.mark.parametrize("rotation_deg, flip_y, move_px, expected_px", CONVENTION_CASES)
def test_stage_move_shifts_features_by_the_convention(rotation_deg, flip_y, move_px, expected_px):
    transform = StageToImage(rotation_deg, flip_y)
    base_nm = np.array([3000.0, -2000.0])
    before = _frame(base_nm, transform)
    after = _frame(base_nm + np.array(move_px) * PIXEL_NM, transform)
    source, region = _shifted_view(before, *expected_px)
    np.testing.assert_allclose(after[region], source, rtol=0, atol=1e-6)
    # ... and not the other way round.
    wrong, wrong_region = _shifted_view(before, -expected_px[0], -expected_px[1])
    assert np.abs(after[wrong_region] - wrong).max() > 0.05


def test_noisy_frame_follows_the_convention():
    """Phase correlation of two high-dose detector frames finds the predicted shift."""
    kwargs = dict(pixel_size_nm=PIXEL_NM, frame_px=128, transform=StageToImage(), dose=2000.0)
    a = render_frame(SPECIMEN, (0.0, 0.0), rng=np.random.default_rng(1), **kwargs)
    b = render_frame(SPECIMEN, (7 * PIXEL_NM, -4 * PIXEL_NM), rng=np.random.default_rng(2), **kwargs)
    window = np.outer(np.hanning(128), np.hanning(128))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fb * fa.conj()
    correlation = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)).real
    row, col = np.unravel_index(np.argmax(correlation), correlation.shape)
    shift_col_row = ((col + 64) % 128 - 64, (row + 64) % 128 - 64)
    assert shift_col_row == (7, -4)  # +x right, -y up


@settings(max_examples=20, deadline=None)
@given(
    rotation_deg=st.floats(0.0, 360.0),
    flip_y=st.booleans(),
    move_px=st.tuples(st.floats(-3.0, 3.0), st.floats(-3.0, 3.0)),
    base_nm=st.tuples(st.floats(-30000.0, 30000.0), st.floats(-30000.0, 30000.0)),
)
def test_subpixel_move_shifts_the_frame_exactly(rotation_deg, flip_y, move_px, base_nm):
    """The frame after a sub-pixel move is the frame before, shifted by M u / pixel size."""
    transform = StageToImage(rotation_deg, flip_y)
    u_nm = np.array(move_px) * PIXEL_NM
    before = _frame(base_nm, transform)
    after = _frame(np.array(base_nm) + u_nm, transform)
    expected = transform.matrix() @ u_nm / PIXEL_NM  # (column, row)
    margin = 8

    def misfit(shift_col_row):
        moved = ndimage.shift(before, (shift_col_row[1], shift_col_row[0]), order=5, mode="nearest")
        return np.sum((moved - after)[margin:-margin, margin:-margin] ** 2)

    start = expected + 0.3  # not at the answer
    simplex = start + np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]])
    fit = optimize.minimize(misfit, start, method="Nelder-Mead",
                            options={"initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-14, "maxiter": 400})
    assert np.all(np.abs(fit.x - expected) < 0.02), (fit.x, expected)


# ---------------------------------------------------------------- the detector


def test_poisson_counts_on_flat_field():
    flat = Specimen(seed=1, particle_density_per_um2=0.0, film_contrast=0.0)
    dose = 50.0
    counts = render_frame(flat, (0.0, 0.0), pixel_size_nm=PIXEL_NM, frame_px=128, transform=StageToImage(),
                          dose=dose, rng=np.random.default_rng(0))
    n = counts.size
    assert abs(counts.mean() - dose) < 5 * np.sqrt(dose / n)
    assert abs(counts.var() / counts.mean() - 1.0) < 0.05  # Poisson: variance = mean


def test_poisson_counts_follow_the_intensity():
    kwargs = dict(pixel_size_nm=PIXEL_NM, frame_px=128, transform=StageToImage(20.0))
    dose = 30.0
    expected = dose * frame_intensity(SPECIMEN, (500.0, 700.0), **kwargs)
    counts = render_frame(SPECIMEN, (500.0, 700.0), dose=dose, rng=np.random.default_rng(9), **kwargs)
    residual = counts - expected
    assert abs(residual.mean()) < 5 * np.sqrt(expected.mean() / residual.size)
    assert abs(np.mean(residual**2) / expected.mean() - 1.0) < 0.05
    bright = expected > 2 * dose
    assert bright.sum() > 20
    assert counts[bright].mean() > 1.8 * dose


# ---------------------------------------------------------------- the specimen


def test_bare_film_mean_is_one_and_mottled():
    film = Specimen(seed=4, particle_density_per_um2=0.0, film_contrast=0.1)
    image = film.render_grid((-5000.0, -5000.0), (40.0, 0.0), (0.0, 40.0), (250, 250), blur_nm=5.0)
    assert abs(image.mean() - 1.0) < 0.02
    assert 0.05 < image.std() < 0.15
    assert image.min() > 0.5


def test_particles_are_brighter_than_film():
    x_nm, y_nm, radius_nm = SPECIMEN.particles((0.0, 4000.0), (0.0, 4000.0))
    big = radius_nm > 10.0
    assert big.sum() >= 5
    with_particles = SPECIMEN.render(x_nm[big], y_nm[big], blur_nm=5.0)
    film_only = Specimen(seed=11, particle_density_per_um2=0.0).render(x_nm[big], y_nm[big], blur_nm=5.0)
    assert np.all(with_particles - film_only > 0.5)
    image = _frame((0.0, 0.0), frame_px=256)
    assert image.min() > 0
    assert image.max() > 3.0  # a big particle is several times the film


def test_many_particle_sizes_small_ones_more_numerous():
    density = 40.0
    specimen = Specimen(seed=2, particle_density_per_um2=density)
    x_nm, _, radius_nm = specimen.particles((0.0, 10000.0), (0.0, 10000.0))
    assert abs(x_nm.size - density * 100.0) < 5 * np.sqrt(density * 100.0)
    assert radius_nm.min() >= 2.0 and radius_nm.max() <= 60.0
    assert radius_nm.min() < 2.5 and radius_nm.max() > 30.0
    counts, _ = np.histogram(radius_nm, bins=[2, 4, 8, 16, 32, 60])
    assert np.all(counts > 0)
    assert np.all(np.diff(counts[1:]) < 0)  # fewer and fewer above the mode
    assert counts[:2].sum() > 5 * counts[3:].sum()  # radius < 8 nm vs > 16 nm


def test_no_seam_at_hash_cell_borders():
    """A big particle straddling a cell border is rendered smoothly across it."""
    x_nm, y_nm, _, border_x_nm = _big_particle_at_a_cell_border()
    step_nm = 1.0
    cols, rows = 201, 101
    # columns at border_x - 100 nm ... border_x + 100 nm; the border lies between columns 100 and 101.
    origin = (border_x_nm - 100.5 * step_nm, y_nm - 50 * step_nm)
    image = SPECIMEN.render_grid(origin, (step_nm, 0.0), (0.0, step_nm), (rows, cols), blur_nm=5.0)
    gradient = np.abs(np.diff(image, axis=1))  # gradient[:, 100] crosses the border
    assert image[:, 95:106].max() > 1.5  # the particle is really there
    elsewhere = np.delete(gradient, 100, axis=1)
    assert gradient[:, 100].mean() <= elsewhere.mean(axis=0).max()
    assert gradient[:, 100].max() <= elsewhere.max()  # a seam would jump by about the particle's peak


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(particle_density_per_um2=-1.0), "particle_density_per_um2"),
        (dict(film_contrast=1.0), "film_contrast"),
        (dict(particle_contrast=float("nan")), "particle_contrast"),
    ],
)
def test_specimen_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Specimen(**kwargs)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        SPECIMEN.render(np.zeros(3), np.zeros(4), blur_nm=1.0)
    with pytest.raises(ValueError, match="blur_nm"):
        SPECIMEN.render(np.zeros(3), np.zeros(3), blur_nm=-1.0)
    with pytest.raises(ValueError, match="parallel"):
        SPECIMEN.render_grid((0, 0), (1.0, 0.0), (2.0, 0.0), (4, 4), blur_nm=1.0)
    with pytest.raises(ValueError, match="shape"):
        SPECIMEN.render_grid((0, 0), (1.0, 0.0), (0.0, 1.0), (4, 0), blur_nm=1.0)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(stage_xy_nm=(0.0, 0.0, 0.0)), "stage_xy_nm"),
        (dict(pixel_size_nm=0.0), "pixel_size_nm"),
        (dict(frame_px=8), "frame_px"),
        (dict(transform=(0.0, False)), "transform"),
        (dict(dose=0.0), "dose"),
        (dict(rng=np.random.RandomState(0)), "rng"),
        (dict(blur_px=-0.1), "blur_px"),
    ],
)
def test_render_frame_rejects_bad_arguments(override, message):
    kwargs = dict(stage_xy_nm=(0.0, 0.0), pixel_size_nm=PIXEL_NM, frame_px=32, transform=StageToImage(),
                  dose=10.0, rng=np.random.default_rng(0))
    kwargs.update(override)
    stage = kwargs.pop("stage_xy_nm")
    with pytest.raises(ValueError, match=message):
        render_frame(SPECIMEN, stage, **kwargs)

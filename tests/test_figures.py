"""The report's figures: captions, legends outside the data, overlays placed by the commanded move, size.

Most tests draw from a small hand-built analysis (:func:`fake_analysis`) whose ground
truth is known exactly: a stage that loses :data:`BACKLASH_NM` on the first step after
every reversal, drifts, and tilts with a known image shift and tilt backlash. One test
runs the real pipeline on a tiny simulated session.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from stage_acceptance import figures
from stage_acceptance.figures import (FIGURE_NAMES, all_figures, draw_figures, figure_caption, figure_overlays,
                                      overlay_image, overlay_panel, overlay_panels, png_base64)
from stage_acceptance.geometry import StageToImage, stage_nm_to_image_px

PIXEL_NM = 10.0
FRAME_PX = 64
STEP_NM = 300.0
BACKLASH_NM = 150.0
TILT_SHIFT_NM_PER_DEG = 10.0
TILT_BACKLASH_DEG = 0.5


# --------------------------------------------------------------------------- a hand-built analysis


class FakeSession:
    """The part of :class:`~stage_acceptance.session.Session` the figures use."""

    def __init__(self, targets_nm, actual_nm, protocols, times_s, transform, seed=0):
        self._targets = np.asarray(targets_nm, dtype=float)
        self._actual = np.asarray(actual_nm, dtype=float)
        self._protocols = list(protocols)
        self._times = np.asarray(times_s, dtype=float)
        self.pixel_size_nm = PIXEL_NM
        self.frames = list(range(len(self._targets)))
        self._specimen = np.random.default_rng(seed).random((800, 800))
        self._transform = transform

    def image(self, i):
        # The features move by d = stage_nm_to_image_px(actual) (recording-v1), so the
        # field of view moves over the specimen by -d.
        d = stage_nm_to_image_px(self._actual[i], PIXEL_NM, self._transform)
        col, row = (int(round(400 - FRAME_PX / 2 - v)) for v in d)
        return self._specimen[row:row + FRAME_PX, col:col + FRAME_PX].copy()

    def targets_nm(self):
        return self._targets.copy()

    def reported_nm(self):
        return self._targets.copy()

    def times_s(self):
        return self._times.copy()

    def protocols(self):
        return list(self._protocols)


class FakeSteps(SimpleNamespace):
    def __len__(self):
        return len(self.frame)


def _kinds(axis, direction):
    kind, last = [], {}
    for a, d in zip(axis, direction):
        if a < 0:
            kind.append("other")
        else:
            kind.append("first" if a not in last else ("reversal" if last[a] != d else "plain"))
            last[a] = d
    return np.array(kind)


def _walk(start, targets, lost):
    """Actual positions along one coordinate: each first step after a reversal loses `lost`."""
    actual, previous = [start], None
    for a, b in zip(targets[:-1], targets[1:]):
        step = b - a
        direction = np.sign(step)
        short = lost if previous is not None and direction != previous and step != 0 else 0.0
        actual.append(actual[-1] + step - direction * short)
        if step != 0:
            previous = direction
    return actual


def fake_analysis(transform=StageToImage(), transform_known=True, tilt_backlash_deg=TILT_BACKLASH_DEG):
    """An analysis of a small session with every protocol and a known stage."""
    rows = []  # (protocol, target x, y, alpha, beta, actual x, y, time)

    def add(protocol, xs, ys, alphas=None, betas=None, actual=None, times=None):
        n = len(xs)
        alphas = np.zeros(n) if alphas is None else alphas
        betas = np.zeros(n) if betas is None else betas
        actual = np.column_stack([xs, ys]) if actual is None else actual
        t0 = rows[-1][-1] + 10.0 if rows else 0.0
        times = t0 + 10.0 * np.arange(n) if times is None else t0 + np.asarray(times)
        rows.extend((protocol, x, y, a, b, ax, ay, t) for x, y, a, b, (ax, ay), t
                    in zip(xs, ys, alphas, betas, actual, times))

    line = np.array([0, 1, 2, 1, 0, 1, 2]) * STEP_NM
    zero = np.zeros(len(line))
    walk = np.array(_walk(0.0, line, BACKLASH_NM))
    add("hysteresis-x", line, zero, actual=np.column_stack([walk, zero]))
    add("hysteresis-y", zero, line, actual=np.column_stack([zero, walk]))
    arm = np.array([0, 1, 0, -1, 0, 0, 0, 0, 0]) * STEP_NM
    arm_y = np.array([0, 0, 0, 0, 0, 1, 0, -1, 0]) * STEP_NM
    add("cross", arm, arm_y)
    add("dwell", np.zeros(3), np.zeros(3), actual=[(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)], times=[0, 30, 60])
    angles = np.array([-2.0, 0, 2, 4, 2, 0, 2])
    sideways = TILT_SHIFT_NM_PER_DEG * np.array(_walk(-2.0, angles, TILT_BACKLASH_DEG))
    add("tilt-alpha", np.zeros(7), np.zeros(7), alphas=angles,
        actual=np.column_stack([np.zeros(7), sideways - sideways[0]]))
    add("tilt-beta", np.zeros(7), np.zeros(7), betas=angles,
        actual=np.column_stack([sideways - sideways[0], np.zeros(7)]))

    protocols = [r[0] for r in rows]
    targets = np.array([[r[1], r[2], 0.0, r[3], r[4]] for r in rows])
    actual = np.array([[r[5], r[6]] for r in rows])
    times = np.array([r[7] for r in rows])
    session = FakeSession(targets, actual, protocols, times, transform)

    frame = np.arange(1, len(rows))
    d_t = targets[frame] - targets[frame - 1]
    d_a = actual[frame] - actual[frame - 1]
    lateral = np.any(d_t[:, :2] != 0, axis=1) & np.all(d_t[:, 3:] == 0, axis=1)
    along = lateral & (np.count_nonzero(d_t[:, :2], axis=1) == 1)
    axis = np.where(along, np.argmax(np.abs(d_t[:, :2]), axis=1), -1)
    direction = np.where(axis >= 0, np.sign(d_t[np.arange(len(frame)), np.clip(axis, 0, 1)]), 0).astype(int)
    tilting = np.all(d_t[:, :2] == 0, axis=1) & (np.count_nonzero(d_t[:, 3:], axis=1) == 1)
    tilt_axis = np.where(tilting, np.argmax(np.abs(d_t[:, 3:]), axis=1), -1)
    tilt_direction = np.where(tilt_axis >= 0, np.sign(d_t[np.arange(len(frame)), 3 + np.clip(tilt_axis, 0, 1)]), 0)
    steps = FakeSteps(
        frame=frame, target_nm=d_t[:, :2], reported_nm=d_t[:, :2], actual_nm=d_a,
        shift_px=stage_nm_to_image_px(d_a, PIXEL_NM, transform), registered=np.ones(len(frame), dtype=bool),
        axis=axis, kind=_kinds(axis, direction), protocol=[protocols[f] for f in frame],
        tilt_deg=d_t[:, 3:], tilt_axis=tilt_axis, tilt_kind=_kinds(tilt_axis, tilt_direction.astype(int)))

    def revisits(k):
        groups = {}
        for f, a, d in zip(frame, axis, direction):
            if a == k:
                groups.setdefault((tuple(targets[f]), d), []).append(int(f))
        return [{"frames": g, "deviation_nm": [float(actual[f, k] - actual[g[0], k]) for f in g]}
                for g in groups.values() if len(g) >= 2]

    tilt = {"alpha": SimpleNamespace(shift_nm_per_deg=TILT_SHIFT_NM_PER_DEG, backlash_deg=tilt_backlash_deg,
                                     direction=(0.0, 1.0)),
            "beta": SimpleNamespace(shift_nm_per_deg=TILT_SHIFT_NM_PER_DEG, backlash_deg=None,
                                    direction=(1.0, 0.0))}
    return SimpleNamespace(session=session, steps=steps, transform=transform, transform_known=transform_known,
                           actual_positions_nm=actual - actual[0] + targets[0, :2],
                           revisits={"x": revisits(0), "y": revisits(1)},
                           drift_velocity_nm_per_min=np.array([2.0, 0.0]), tilt=tilt,
                           montage=fake_montage(transform, transform_known))


MONTAGE_ERRORS_NM = np.array([[0.0, 0.0], [5.0, -3.0], [8.0, 2.0], [-4.0, 6.0]])
"""Errors of the pieces of the hand-built 2 x 2 montage (serpentine order)."""


def fake_montage(transform, oriented=True):
    """A 2 x 2 montage of 64 px fields, 25 % overlap, whose pieces land :data:`MONTAGE_ERRORS_NM` off."""
    from stage_acceptance import montage
    from stage_acceptance.registration import Registration

    step_px = 48.0
    column, row = np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1])
    field = np.column_stack([column, row]) * step_px
    commanded = np.array([np.linalg.solve(transform.matrix(), -f * PIXEL_NM) for f in field])
    actual = commanded + MONTAGE_ERRORS_NM
    pairs = montage.overlap_pairs(column, row, field, (FRAME_PX, FRAME_PX))
    measured = actual[pairs[:, 1]] - actual[pairs[:, 0]]
    solution = montage.solve_positions(4, pairs, measured, np.ones(len(pairs)), fixed_position_nm=commanded[0])
    ok = Registration(np.zeros(2), 0.9, 0.25, True, "")
    errors = montage.piece_errors_nm(solution.positions_nm, commanded)
    return montage.Montage(
        frames=np.arange(100, 104), column=column, row=row, target_nm=commanded, reported_nm=commanded,
        commanded_nm=commanded, actual_nm=solution.positions_nm, sd_nm=solution.sd_nm, error_nm=errors,
        reported_error_nm=errors, commanded_error_nm=errors, pairs=pairs, registrations=[ok] * len(pairs),
        measured_nm=measured, weights=np.ones(len(pairs)), solution=solution,
        field_px=montage.expected_field_px(commanded, PIXEL_NM, transform),
        overlap_px=montage.overlap_width_px(column, row, field, (FRAME_PX, FRAME_PX)), pixel_size_nm=PIXEL_NM,
        frame_shape=(FRAME_PX, FRAME_PX), oriented=oriented)


@pytest.fixture(scope="module")
def analysis():
    return fake_analysis()


@pytest.fixture(scope="module")
def drawn(analysis):
    return draw_figures(analysis)


# --------------------------------------------------------------------------- helpers


def legends_over_data(fig) -> list[str]:
    """Texts of legends whose box intersects the plotting area of any axes of `fig`."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    over = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            area = ax.get_window_extent(renderer)
            if box.x0 < area.x1 - 0.5 and area.x0 < box.x1 - 0.5 and box.y0 < area.y1 - 0.5 and area.y0 < box.y1 - 0.5:
                over.append(" / ".join(t.get_text() for t in legend.get_texts()))
    return over


def legend_entries(fig) -> dict[str, object]:
    """Legend handle by label, over every legend of `fig`."""
    entries = {}
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    for legend in legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            entries[text.get_text()] = handle
    return entries


def titles(fig) -> str:
    parts = [ax.get_title() for ax in fig.axes]
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    return "\n".join(parts)


# --------------------------------------------------------------------------- captions


def test_every_figure_has_a_human_title_and_one_sentence_caption(drawn):
    assert set(drawn) == set(FIGURE_NAMES)  # the hand-built session supports every figure
    for name in FIGURE_NAMES:
        title, caption = figure_caption(name)
        assert title and caption and title != name
        assert caption[0].isupper() and caption.endswith(".") and caption.count(". ") == 0, caption
    assert figure_caption("hysteresis-y")[0] == "Hysteresis along y (Figure 3)"
    assert "tilt backlash" in figure_caption("tilt-beta")[1]


def test_an_unknown_figure_name_is_refused():
    with pytest.raises(ValueError, match="no figure named 'hysteresis-z'"):
        figure_caption("hysteresis-z")


def test_titles_inside_the_pngs_are_the_human_ones(drawn):
    for name in ("hysteresis-x", "overlay-x", "cross", "repeatability-y"):
        assert figure_caption(name)[0] in titles(drawn[name]), name


# --------------------------------------------------------------------------- legends, x and y


def test_no_legend_covers_data(drawn):
    assert {name: legends_over_data(fig) for name, fig in drawn.items() if legends_over_data(fig)} == {}


def test_the_legend_check_sees_a_legend_on_the_data():
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="data")
    ax.legend(loc="center")
    assert legends_over_data(fig) == ["data"]


@pytest.mark.parametrize("name, x_label, y_label", [("cross", "error in x", "error in y"), ("drift", "x", "y")])
def test_x_and_y_differ_in_colour_line_style_and_marker(drawn, name, x_label, y_label):
    entries = legend_entries(drawn[name])
    x, y = entries[x_label], entries[y_label]
    assert x.get_color() != y.get_color()
    assert x.get_linestyle() != y.get_linestyle()
    assert x.get_marker() != y.get_marker()


# --------------------------------------------------------------------------- overlays


def test_overlay_shows_a_reversal_and_a_plain_step(analysis):
    reversal, plain = overlay_panels(analysis, "x")
    assert (reversal.kind, plain.kind) == ("reversal", "plain")
    assert plain.frame > reversal.frame
    assert reversal.target_nm == pytest.approx(-STEP_NM)
    assert reversal.actual_nm == pytest.approx(-STEP_NM + BACKLASH_NM)


def test_overlay_places_the_second_frame_by_the_commanded_move(analysis):
    reversal, plain = overlay_panels(analysis, "x")
    assert reversal.offset_px == pytest.approx([STEP_NM / PIXEL_NM, 0.0])  # features move by -30 px
    assert reversal.misalignment_nm == pytest.approx([BACKLASH_NM, 0.0])
    assert reversal.misalignment_px == pytest.approx([BACKLASH_NM / PIXEL_NM, 0.0])
    assert plain.misalignment_nm == pytest.approx([0.0, 0.0])
    assert "misalignment 150 nm" in reversal.caption("x")
    assert "target -300 nm, actual -150 nm" in reversal.caption("x")
    assert reversal.caption("x").startswith("First step after a reversal")
    assert "misalignment 0 nm" in plain.caption("x")


def test_overlay_offset_follows_a_rotated_and_flipped_transform():
    transform = StageToImage(rotation_deg=30.0, flip_y=True)
    analysis = fake_analysis(transform=transform)
    reversal, plain = overlay_panels(analysis, "y")
    i = reversal.step
    expected = -stage_nm_to_image_px(analysis.steps.target_nm[i], PIXEL_NM, transform)
    assert reversal.offset_px == pytest.approx(expected)
    assert np.hypot(*reversal.misalignment_px) * PIXEL_NM == pytest.approx(BACKLASH_NM)
    assert np.hypot(*overlay_panel(analysis, plain.step, "y").misalignment_px) == pytest.approx(0.0, abs=1e-9)


def _overlap_correlation(analysis, panel):
    """Correlation of the overlay canvas with the first frame where the two frames overlap."""
    first = analysis.session.image(panel.frame - 1)
    canvas, boxes, factor = overlay_image(first, analysis.session.image(panel.frame), panel.offset_px)
    assert factor == 1
    (x0, y0, w, h), (x1, y1, _, _) = boxes
    c0, c1 = max(x0, x1), min(x0, x1) + w
    r0, r1 = max(y0, y1), min(y0, y1) + h
    shown = canvas[r0:r1, c0:c1].astype(float)
    under = first[r0 - y0:r1 - y0, c0 - x0:c1 - x0]
    return np.corrcoef(shown.ravel(), under.ravel())[0, 1]


def test_a_step_that_went_where_it_was_sent_lines_up_and_a_short_one_is_doubled(analysis):
    reversal, plain = overlay_panels(analysis, "x")
    assert _overlap_correlation(analysis, plain) > 0.99  # one sharp image
    assert _overlap_correlation(analysis, reversal) < 0.8  # two images 15 px apart


def test_overlay_image_downsamples_large_frames_and_keeps_the_offset():
    rng = np.random.default_rng(1)
    first = rng.random((512, 512))
    canvas, boxes, factor = overlay_image(first, first, (100.0, -40.0))
    assert factor == 2
    assert canvas.dtype == np.uint8
    assert canvas.shape == (256 + 20, 256 + 50)
    assert boxes == [(0, 20, 256, 256), (50, 0, 256, 256)]
    with pytest.raises(ValueError, match="same shape"):
        overlay_image(first, first[:10], (0, 0))


def test_without_a_known_transform_overlays_are_skipped_and_drift_is_in_image_axes():
    analysis = fake_analysis(transform_known=False)
    assert overlay_panels(analysis, "x") == []
    assert figure_overlays(analysis, "x") is None
    drawn = draw_figures(analysis)
    assert "overlay-x" not in drawn and "overlay-y" not in drawn
    entries = legend_entries(drawn["drift"])
    assert "image x" in entries and "image y" in entries and "x" not in entries


# --------------------------------------------------------------------------- tilt


def test_tilt_figure_shows_both_branches_the_reversals_and_the_backlash(drawn):
    fig = drawn["tilt-alpha"]
    assert "tilt backlash 0.50 deg" in titles(fig)
    assert f"{TILT_SHIFT_NM_PER_DEG:.2f} nm/deg" in titles(fig)
    entries = legend_entries(fig)
    increasing, decreasing = entries["tilt increasing"], entries["tilt decreasing"]
    assert increasing.get_color() != decreasing.get_color()
    assert increasing.get_linestyle() != decreasing.get_linestyle()
    assert any(label.startswith("first step after") for label in entries)


def test_montage_figure_draws_each_piece_off_by_its_magnified_error(drawn):
    fig = drawn["montage"]
    # largest error 8.2 nm against 0.48 um cells (64 px less the 16 px overlap, 10 nm pixels): x10
    assert "errors magnified 10 times" in titles(fig)
    ax = fig.axes[0]
    commanded, outline = ax.patches[3], ax.patches[5]  # piece 1: commanded cell, ..., actual outline
    offset_um = np.subtract(outline.get_xy(), commanded.get_xy())
    # the field moves against the stage: a stage error of (+5, -3) nm shows as (-5, +3) nm in the image
    assert offset_um == pytest.approx(10 * np.array([-5.0, 3.0]) / 1000.0)
    assert set(legend_entries(fig)) >= {"commanded", "actual (numbers: acquisition order)", "against the target"}


def test_tilt_figure_says_when_the_backlash_was_not_measured(drawn):
    assert "tilt backlash not measured" in titles(drawn["tilt-beta"])
    assert "tilt backlash not measured" not in titles(drawn["tilt-alpha"])


# --------------------------------------------------------------------------- size


def test_pngs_are_small_and_eight_bit(analysis):
    pngs = all_figures(analysis)
    assert list(pngs) == list(FIGURE_NAMES)
    for name, png in pngs.items():
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.mode in ("L", "P"), name
            assert image.width >= 400, name  # legible, not a thumbnail
    assert sum(map(len, pngs.values())) < 250_000
    assert png_base64(b"\x89PNG") == "iVBORw=="


def test_a_tiny_simulated_session_draws_small_figures(tmp_path):
    from conftest import CONFIGS, record_sim

    from stage_acceptance.analysis import analyse
    from stage_acceptance.config import load_microscope

    session, _ = record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec")
    analysis = analyse(session)
    drawn = draw_figures(analysis)
    assert {"hysteresis-x", "overlay-x", "overlay-y", "cross", "drift"} <= set(drawn)
    assert {name: legends_over_data(fig) for name, fig in drawn.items() if legends_over_data(fig)} == {}
    pngs = {name: figures._png(fig) for name, fig in drawn.items()}
    assert sum(map(len, pngs.values())) < 250_000
    for panel in overlay_panels(analysis, "x"):  # case a: the stage goes where it is sent
        assert np.hypot(*panel.misalignment_nm) < 5.0

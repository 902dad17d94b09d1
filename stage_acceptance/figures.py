"""The report's figures (matplotlib), each as PNG bytes.

Nothing here computes a metric: every figure draws what an
:class:`~stage_acceptance.analysis.Analysis` measured. :func:`draw_figures` returns
the matplotlib figures, :func:`all_figures` the same figures as PNG bytes, and
:func:`figure_caption` a human title and a one-sentence "what to look at" for each.

Conventions shared by every figure, so that a reader learns them once:

- legends sit outside the plotting area, never on the data;
- x is green, solid, with circles; y is purple, dashed, with triangles;
- reported positions are blue, actual (measured from the images) orange, targets grey;
- a red circle marks the first step after a reversal of direction.

The PNGs are kept small for a self-contained HTML report: plots are drawn at
:data:`PLOT_DPI`, overlay images are downsampled to at most
:data:`OVERLAY_MAX_PX` pixels a side, and every PNG is stored with 8 bits per pixel
(grey or a 256-colour palette).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from .analysis import AXIS_NAMES, TILT_NAMES, Analysis
from .geometry import stage_nm_to_image_px

PLOT_DPI = 100
"""Resolution of every figure (dots per inch)."""

OVERLAY_MAX_PX = 256
"""Largest side, in pixels, of a frame in an overlay panel (frames are block-averaged)."""

_COLOURS = {"target": "0.35", "reported": "#0072B2", "actual": "#E69F00", "reversal": "#C8102E"}
_AXIS_STYLE = {
    "x": {"color": "#009E73", "linestyle": "-", "marker": "o"},
    "y": {"color": "#AA4499", "linestyle": "--", "marker": "^"},
}
_BRANCH_STYLE = {
    +1: {"color": "#0072B2", "linestyle": "-", "marker": "^", "label": "tilt increasing"},
    -1: {"color": "#E69F00", "linestyle": "--", "marker": "v", "label": "tilt decreasing"},
}
_FRAME_STYLE = ({"edgecolor": "#0072B2", "linestyle": "-"}, {"edgecolor": "#E69F00", "linestyle": "--"})

_CAPTIONS = {
    "hysteresis": (
        "Hysteresis along {axis} (Figure 3)",
        "Reported and actual position minus target along {axis} while the stage steps back and forth; "
        "circled points are the first step after a reversal: a backlash shows as a jump there, after "
        "which the two directions of travel run on separate levels.",
    ),
    "overlay": (
        "Overlays along {axis} (Figure 3)",
        "Two consecutive frames at 50 % transparency, the second placed where the commanded move should "
        "put it: where the stage fell short (backlash after a reversal) features appear doubled, "
        "a good step lines up into one sharp image.",
    ),
    "cross": (
        "Cross: moves along x and y (Figure 4)",
        "Left, the target, reported and actual paths out and back along +x, -x, +y and -y; right, "
        "their errors in x and y frame by frame: an error across the arm's direction is axis coupling, "
        "an offset left after returning is lost motion.",
    ),
    "repeatability": (
        "Repeatability along {axis}",
        "Deviation of every revisit of a target from its first visit, arriving from the same "
        "direction: the vertical spread at one target is the repeatability (ISO 230-2), "
        "a difference between the two directions is backlash.",
    ),
    "drift": (
        "Drift while standing still",
        "Displacement of the image in x and y while the stage is not moved: the slope is the drift "
        "velocity, which adds to every measured step.",
    ),
    "tilt": (
        "Tilt {axis}: image shift and tilt backlash",
        "Sideways image shift against the {axis} tilt angle, increasing and decreasing tilt drawn "
        "differently: the slope is the specimen's height error from the tilt axis, and the two "
        "branches lying apart (circled first steps after a reversal off the line) is tilt backlash.",
    ),
    "montage": (
        "Montage: commanded and actual pieces",
        "Left, each piece (its field less the overlap) where it was commanded (grey, dashed) and where the "
        "images put it (orange, errors magnified as the title says), numbered in acquisition order, red where "
        "it is off its neighbour by more than the overlap; right, each piece's error against the target and the readback "
        "in acquisition order, with its trend: a growing error is a montage running away from its commands.",
    ),
}

FIGURE_NAMES = ("hysteresis-x", "hysteresis-y", "overlay-x", "overlay-y", "cross", "repeatability-x",
                "repeatability-y", "drift", "tilt-alpha", "tilt-beta", "montage")
"""Every name :func:`all_figures` can return, in report order."""


def figure_caption(name: str) -> tuple[str, str]:
    """Human title and a one-sentence caption saying what to look at.

    Parameters
    ----------
    name : str
        A figure name of :func:`all_figures` (one of :data:`FIGURE_NAMES`).

    Returns
    -------
    title, caption : str

    Raises
    ------
    ValueError
        For a name that is not a figure of :func:`all_figures`.
    """
    if name not in FIGURE_NAMES:
        raise ValueError(f"no figure named {name!r}; figures are {list(FIGURE_NAMES)}")
    family, _, axis = name.partition("-")
    title, caption = _CAPTIONS[family]
    return title.format(axis=axis), caption.format(axis=axis)


# --------------------------------------------------------------------------- PNG


def _png(fig: Figure, dpi: float = PLOT_DPI) -> bytes:
    """PNG bytes of a figure, 8 bits per pixel: grey if it has no colour, else a palette.

    The palette comes from an octree quantiser, which keeps the few colours of a plot
    exactly and posterises a grey image texture to a few dozen levels: an overlay
    figure shrinks about three times and its features stay as they were.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08, facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as opened:
        image = opened.convert("RGB")
    rgb = np.asarray(image)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        image = image.convert("L")
    else:
        image = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def figure_png(fig: Figure, dpi: float = PLOT_DPI) -> bytes:
    """PNG bytes of any matplotlib figure, stored as this module stores its own (8 bits per pixel)."""
    return _png(fig, dpi)


def png_base64(png: bytes) -> str:
    """Base64 text of PNG bytes (for pytest-html extras and inline images)."""
    return base64.b64encode(png).decode("ascii")


def _legend_right(ax, handles=None, **kwargs):
    """A legend to the right of the axes, outside the plotting area."""
    options = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, "fontsize": 8,
               "frameon": False}
    options.update(kwargs)
    if handles is None:
        return ax.legend(**options)
    return ax.legend(handles=handles, **options)


# --------------------------------------------------------------------------- helpers


def _transform_known(analysis: Analysis) -> bool:
    return bool(getattr(analysis, "transform_known", True))


def _frames_of(analysis: Analysis, protocol: str) -> np.ndarray:
    return np.array([i for i, p in enumerate(analysis.session.protocols()) if p == protocol], dtype=int)


def _step_index(analysis: Analysis) -> dict[int, int]:
    """Step index by the frame it arrives at."""
    return {int(f): i for i, f in enumerate(analysis.steps.frame)}


def chained_actual_nm(analysis: Analysis, frames) -> np.ndarray:
    """Actual (x, y) of `frames` relative to the first of them, by chaining measured steps.

    Parameters
    ----------
    analysis : Analysis
    frames : array_like of int
        Consecutive frame indices (e.g. those of one protocol).

    Returns
    -------
    ndarray, (len(frames), 2)
        nm; row 0 is zero. A frame not reached by a registered step from the previous
        frame, and every frame after it, is NaN (a gap, not a guess).
    """
    frames = np.asarray(frames, dtype=int)
    positions = np.full((len(frames), 2), np.nan)
    if len(frames) == 0:
        return positions
    positions[0] = 0.0
    index = _step_index(analysis)
    actual = np.asarray(analysis.steps.actual_nm, dtype=float)
    for j in range(1, len(frames)):
        i = index.get(int(frames[j]))
        if i is None or frames[j] - frames[j - 1] != 1:
            positions[j] = np.nan
        else:
            positions[j] = positions[j - 1] + actual[i]
    return positions


def _reversal_mask(analysis: Analysis, frames: np.ndarray, kinds) -> np.ndarray:
    by_frame = dict(zip(np.asarray(analysis.steps.frame).tolist(), np.asarray(kinds).tolist()))
    return np.array([by_frame.get(int(f)) == "reversal" for f in frames], dtype=bool)


def _axis_label(axis: str, known: bool) -> str:
    return axis if known else f"image {axis}"


# --------------------------------------------------------------------------- hysteresis


def hysteresis_curve(analysis: Analysis, axis: str) -> dict | None:
    """The points of the Figure 3 hysteresis along `axis`, as plain lists (for the
    results JSON and for comparing two runs).

    Returns
    -------
    dict or None
        ``target_nm`` (the target position along the axis), ``reported_error_nm`` and
        ``actual_error_nm`` (reported and actual minus target, nm; actual positions
        chained from the first frame, None where a step could not be registered), and
        ``reversal`` (the frame was reached by the first step after a reversal), one
        entry per frame of the ``hysteresis-<axis>`` protocol; None without it.
    """
    frames = _frames_of(analysis, f"hysteresis-{axis}")
    if len(frames) == 0:
        return None
    k = AXIS_NAMES.index(axis)
    session = analysis.session
    target = session.targets_nm()[frames, k]
    reported = session.reported_nm()[frames, k] - target
    actual = chained_actual_nm(analysis, frames)[:, k] + target[0] - target
    reversal = _reversal_mask(analysis, frames, analysis.steps.kind)

    def listed(values):
        return [float(v) if np.isfinite(v) else None for v in values]

    return {"target_nm": listed(target), "reported_error_nm": listed(reported), "actual_error_nm": listed(actual),
            "reversal": [bool(r) for r in reversal]}


def _curve_arrays(curve: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def floats(key):
        return np.array([np.nan if v is None else v for v in curve[key]], dtype=float)

    return floats("target_nm"), floats("reported_error_nm"), floats("actual_error_nm"), \
        np.asarray(curve["reversal"], dtype=bool)


def _draw_hysteresis(analysis: Analysis, axis: str) -> Figure | None:
    curve = hysteresis_curve(analysis, axis)
    if curve is None:
        return None
    known = _transform_known(analysis)
    target, reported, actual, reversal = _curve_arrays(curve)

    fig = Figure(figsize=(8.0, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(target, reported, "-o", color=_COLOURS["reported"], ms=4, lw=1, label="reported - target")
    actual_label = "actual - target" if known else f"actual (image {axis}) - target"
    ax.plot(target, actual, "--s", color=_COLOURS["actual"], ms=4, lw=1, label=actual_label)
    if reversal.any():
        ax.plot(target[reversal], actual[reversal], "o", ms=11, mfc="none", mec=_COLOURS["reversal"], mew=1.5,
                label="first step after\na reversal")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(f"target {axis} (nm)")
    ax.set_ylabel(f"position error along {axis} (nm)")
    ax.set_title(f"{figure_caption(f'hysteresis-{axis}')[0]}: steps back and forth along {axis}\n"
                 "actual positions from the images, counted from the first frame", fontsize=10)
    _legend_right(ax)
    ax.grid(alpha=0.3)
    return fig


def figure_hysteresis_since(before: dict, after: dict, *, before_label: str = "baseline",
                            after_label: str = "this run") -> bytes | None:
    """Figure 3 of two runs in one plot, one panel per axis, as PNG.

    Parameters
    ----------
    before, after : dict
        ``{axis: curve}`` with curves of :func:`hysteresis_curve` (as in the results
        JSON key ``hysteresis``); an axis missing from one run is drawn for the other.
    before_label, after_label : str
        Legend names of the two runs.

    Returns
    -------
    bytes or None
        None when neither run has a hysteresis line.
    """
    axes = [axis for axis in AXIS_NAMES if (before or {}).get(axis) or (after or {}).get(axis)]
    if not axes:
        return None
    fig = Figure(figsize=(8.0, 2.9 * len(axes) + 0.6), layout="constrained")
    panels = np.atleast_1d(fig.subplots(len(axes), 1, squeeze=False)[:, 0])
    for ax, axis in zip(panels, axes):
        for curve, label, colour, style in (((before or {}).get(axis), before_label, "0.45", "--o"),
                                            ((after or {}).get(axis), after_label, _COLOURS["actual"], "-s")):
            if not curve:
                continue
            target, _, actual, reversal = _curve_arrays(curve)
            ax.plot(target, actual, style, color=colour, ms=4, lw=1.2, label=f"{label}: actual - target")
            if reversal.any():
                ax.plot(target[reversal], actual[reversal], "o", ms=11, mfc="none", mec=_COLOURS["reversal"],
                        mew=1.2)
        ax.plot([], [], "o", ms=11, mfc="none", mec=_COLOURS["reversal"], mew=1.2,
                label="first step after\na reversal")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(f"target {axis} (nm)")
        ax.set_ylabel(f"error along {axis} (nm)")
        ax.set_title(f"Hysteresis along {axis} (Figure 3), {before_label} and {after_label}", fontsize=10)
        _legend_right(ax)
        ax.grid(alpha=0.3)
    return _png(fig)


def figure_hysteresis(analysis: Analysis, axis: str) -> bytes | None:
    """Figure 3 of the paper for one axis, as PNG.

    Reported - target and actual - target (nm) against the target position along the
    axis for the frames of the ``hysteresis-<axis>`` protocol; frames reached by the
    first step after a reversal are circled in red. ``None`` when the session has no
    such protocol.
    """
    fig = _draw_hysteresis(analysis, axis)
    return None if fig is None else _png(fig)


# --------------------------------------------------------------------------- cross


def _draw_cross(analysis: Analysis) -> Figure | None:
    frames = _frames_of(analysis, "cross")
    if len(frames) == 0:
        return None
    known = _transform_known(analysis)
    session = analysis.session
    target = session.targets_nm()[frames, :2]
    reported = session.reported_nm()[frames, :2]
    actual = chained_actual_nm(analysis, frames) + target[0]

    fig = Figure(figsize=(12.5, 5.6), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.35])
    ax = fig.add_subplot(grid[:, 0])
    ax.plot(*target.T, "-", color=_COLOURS["target"], lw=1, marker="+", ms=9, label="target")
    ax.plot(*reported.T, "-", color=_COLOURS["reported"], lw=1, marker="o", ms=3, label="reported")
    ax.plot(*actual.T, "--", color=_COLOURS["actual"], lw=1, marker="s", ms=3,
            label="actual" if known else "actual (image axes)")
    finite = np.flatnonzero(np.all(np.isfinite(actual), axis=1))
    if len(finite):
        ax.plot(*actual[finite[-1]], "*", color=_COLOURS["actual"], mec="k", mew=0.5, ms=13,
                label="actual, last frame")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title("Paths of the cross", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)

    ax_rep = fig.add_subplot(grid[0, 1])
    ax_act = fig.add_subplot(grid[1, 1], sharex=ax_rep)
    index = np.arange(len(frames))
    for panel, values, name in ((ax_rep, reported, "reported"), (ax_act, actual, "actual")):
        for k, axis in enumerate(AXIS_NAMES):
            style = _AXIS_STYLE[axis]
            panel.plot(index, values[:, k] - target[:, k], color=style["color"], ls=style["linestyle"],
                       marker=style["marker"], ms=3.5, lw=1, label=f"error in {axis}")
        panel.axhline(0, color="0.6", lw=0.8)
        panel.set_ylabel(f"{name} - target (nm)" if known or name == "reported"
                         else f"{name} - target (nm)\nactual in image axes")
        panel.grid(alpha=0.3)
    arm = (len(frames) - 1) // 4
    if arm > 0:
        for j, name in enumerate(("+x", "-x", "+y", "-y")):
            for panel in (ax_rep, ax_act):
                panel.axvline(j * arm, color="0.75", lw=0.8)
            ax_rep.text(j * arm + arm / 2, 1.02, f"{name} arm", transform=ax_rep.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=9)
    ax_rep.tick_params(labelbottom=False)
    ax_act.set_xlabel("frame of the cross")
    _legend_right(ax_rep)
    fig.suptitle(f"{figure_caption('cross')[0]}: where the stage was sent, what it reported, "
                 "where the images show it went", fontsize=11)
    return fig


def figure_cross(analysis: Analysis) -> bytes | None:
    """Figure 4 of the paper, as PNG.

    Left: target, reported and actual paths of the cross. Right: the errors that are
    too small to see on the left, reported - target (top) and actual - target (bottom)
    per frame, x and y drawn differently, with the four arms marked; actual positions
    are chained from the first frame of the cross, so the last point shows how far
    out-and-back fails to return.
    """
    fig = _draw_cross(analysis)
    return None if fig is None else _png(fig)


# --------------------------------------------------------------------------- overlays


@dataclass(frozen=True)
class OverlayPanel:
    """One overlay panel: a step whose second frame is placed by the commanded move.

    Attributes
    ----------
    step : int
        Index into ``analysis.steps``.
    frame : int
        The frame the step arrives at (the panel shows ``frame - 1`` and ``frame``).
    kind : str
        ``"reversal"`` or ``"plain"``.
    offset_px : ndarray, (2,)
        Position ``(column, row)`` of the second frame's corner relative to the first
        frame's: minus the image displacement the commanded move predicts, so that
        features line up exactly when the stage went where it was sent.
    misalignment_px : ndarray, (2,)
        Displacement ``(column, row)`` of the second frame's features from the first
        frame's in the overlay: measured minus predicted image shift.
    target_nm, actual_nm : float
        Commanded and measured step along the axis.
    misalignment_nm : ndarray, (2,)
        ``actual - target`` step ``(x, y)``, nm: how far the features are doubled.
    """

    step: int
    frame: int
    kind: str
    offset_px: np.ndarray
    misalignment_px: np.ndarray
    target_nm: float
    actual_nm: float
    misalignment_nm: np.ndarray

    def caption(self, axis: str) -> str:
        """Panel caption: which step, target and actual step, misalignment in nm."""
        label = "First step after a reversal" if self.kind == "reversal" else "Plain step"
        return (f"{label}\nframes {self.frame - 1} -> {self.frame} along {axis}\n"
                f"target {self.target_nm:+.0f} nm, actual {self.actual_nm:+.0f} nm\n"
                f"misalignment {float(np.hypot(*self.misalignment_nm)):.0f} nm")


def overlay_panel(analysis: Analysis, step: int, axis: str) -> OverlayPanel:
    """Place the second frame of step `step` where the commanded move predicts.

    Parameters
    ----------
    analysis : Analysis
    step : int
        Index into ``analysis.steps``; the step must be registered.
    axis : {"x", "y"}

    Returns
    -------
    OverlayPanel
    """
    steps = analysis.steps
    k = AXIS_NAMES.index(axis)
    predicted = stage_nm_to_image_px(np.asarray(steps.target_nm[step], dtype=float),
                                     analysis.session.pixel_size_nm, analysis.transform)
    shift = np.asarray(steps.shift_px[step], dtype=float)
    target = np.asarray(steps.target_nm[step], dtype=float)
    actual = np.asarray(steps.actual_nm[step], dtype=float)
    return OverlayPanel(step=int(step), frame=int(steps.frame[step]), kind=str(steps.kind[step]),
                        offset_px=-predicted, misalignment_px=shift - predicted,
                        target_nm=float(target[k]), actual_nm=float(actual[k]),
                        misalignment_nm=actual - target)


def overlay_panels(analysis: Analysis, axis: str) -> list[OverlayPanel]:
    """The steps the overlay figure of `axis` shows: a first step after a reversal, then a plain one.

    The first registered step after a reversal in the ``hysteresis-<axis>`` protocol,
    and the first registered plain step after it (or, if none follows, the first
    plain step). Empty when the stage-to-image transform is unknown (the commanded
    move cannot be placed in the image) or either kind is missing.
    """
    if not _transform_known(analysis):
        return []
    steps = analysis.steps
    k = AXIS_NAMES.index(axis)
    protocol = f"hysteresis-{axis}"
    candidates = [i for i in range(len(steps))
                  if steps.axis[i] == k and steps.registered[i] and steps.protocol[i] == protocol
                  and np.all(np.isfinite(steps.target_nm[i])) and np.all(np.isfinite(steps.actual_nm[i]))]
    reversal = next((i for i in candidates if steps.kind[i] == "reversal"), None)
    plain = [i for i in candidates if steps.kind[i] == "plain"]
    if reversal is None or not plain:
        return []
    after = [i for i in plain if i > reversal]
    return [overlay_panel(analysis, reversal, axis), overlay_panel(analysis, (after or plain)[0], axis)]


def _normalised(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=float)
    lo, hi = np.percentile(image, [1, 99.5])
    return np.clip((image - lo) / (hi - lo + 1e-12), 0.0, 1.0)


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return image
    rows, cols = (s // factor * factor for s in image.shape)
    return image[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))


def overlay_image(first, second, offset_px, max_px: int = OVERLAY_MAX_PX):
    """Two frames at 50 % transparency each, the second at `offset_px` from the first.

    Parameters
    ----------
    first, second : array_like, (rows, columns)
        The two frames (any dtype); each is scaled to its 1-99.5 % intensity range.
    offset_px : array_like, (2,)
        Position ``(column, row)`` of the second frame's corner relative to the
        first's, full-resolution pixels.
    max_px : int, optional
        Frames are block-averaged by the smallest integer factor that brings their
        larger side to at most this many pixels.

    Returns
    -------
    canvas : ndarray of uint8, (H, W)
        ``0.5 a + 0.5 b`` where ``a``, ``b`` are the frames and white outside a frame.
    boxes : list of (column, row, width, height)
        Where the first and the second frame lie in `canvas`, in canvas pixels.
    factor : int
        Downsampling factor.
    """
    first = np.asarray(first)
    second = np.asarray(second)
    if first.ndim != 2 or first.shape != second.shape:
        raise ValueError(f"need two 2-D frames of the same shape, got {first.shape} and {second.shape}")
    if max_px < 1:
        raise ValueError(f"max_px must be >= 1, got {max_px}")
    factor = max(1, int(np.ceil(max(first.shape) / max_px)))
    a = _downsample(_normalised(first), factor)
    b = _downsample(_normalised(second), factor)
    rows, cols = a.shape
    dx, dy = (int(round(float(v) / factor)) for v in offset_px)
    left, top = min(0, dx), min(0, dy)
    width, height = max(cols, dx + cols) - left, max(rows, dy + rows) - top
    layer_a = np.ones((height, width))
    layer_b = np.ones((height, width))
    layer_a[-top:-top + rows, -left:-left + cols] = a
    layer_b[dy - top:dy - top + rows, dx - left:dx - left + cols] = b
    canvas = np.round(255.0 * (0.5 * layer_a + 0.5 * layer_b)).astype(np.uint8)
    boxes = [(-left, -top, cols, rows), (dx - left, dy - top, cols, rows)]
    return canvas, boxes, factor


OVERLAY_PANEL_MIN_IN = 2.4
"""Smallest width of an overlay panel (inches), room for its caption."""


def _draw_overlays(analysis: Analysis, axis: str) -> Figure | None:
    panels = overlay_panels(analysis, axis)
    if len(panels) < 2:
        return None
    session = analysis.session
    images = [overlay_image(session.image(p.frame - 1), session.image(p.frame), p.offset_px) for p in panels]
    # Lay the panels out by hand so that a canvas pixel is a whole number of PNG
    # pixels: no resampling blur, and no bytes spent on interpolated pixels.
    scale = max(1, int(np.ceil(OVERLAY_PANEL_MIN_IN * PLOT_DPI / min(c.shape[1] for c, _, _ in images))))
    sizes_in = [(c.shape[1] * scale / PLOT_DPI, c.shape[0] * scale / PLOT_DPI) for c, _, _ in images]
    margin_in, gap_in, top_in, bottom_in = 0.1, 0.3, 1.2, 0.4
    height_in = max(h for _, h in sizes_in)
    fig_w = 2 * margin_in + gap_in + sum(w for w, _ in sizes_in)
    fig_h = top_in + height_in + bottom_in
    fig = Figure(figsize=(fig_w, fig_h))
    left_in = margin_in
    for panel, (canvas, boxes, _), (w_in, h_in) in zip(panels, images, sizes_in):
        ax = fig.add_axes((left_in / fig_w, (bottom_in + height_in - h_in) / fig_h, w_in / fig_w, h_in / fig_h))
        left_in += w_in + gap_in
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for (x0, y0, w, h), style in zip(boxes, _FRAME_STYLE):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, lw=1.2, **style))
        ax.set_title(panel.caption(axis), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=s["edgecolor"], ls=s["linestyle"], lw=1.5, label=label)
               for s, label in zip(_FRAME_STYLE, ("frame before the step",
                                                  "frame after the step, placed by the commanded move"))]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{figure_caption(f'overlay-{axis}')[0]}: 50 % transparency each\n"
                 "doubled features = the stage did not go where it was sent", fontsize=10,
                 y=1.0 - 0.08 / fig_h, va="top")
    return fig


def figure_overlays(analysis: Analysis, axis: str) -> bytes | None:
    """50 % transparent overlays: a first-after-reversal step next to a plain step.

    Each panel places the second frame of a step where the *commanded* (target) move
    predicts (:func:`overlay_panel`): a step that went where it was sent lines up, a
    step that fell short (backlash) shows doubled features. The caption gives target
    and actual step along the axis and the misalignment in nm. ``None`` without both
    kinds of step, or when the stage-to-image transform is unknown.
    """
    fig = _draw_overlays(analysis, axis)
    return None if fig is None else _png(fig)


# --------------------------------------------------------------------------- drift


def _draw_drift(analysis: Analysis) -> Figure | None:
    frames = _frames_of(analysis, "dwell")
    velocity = analysis.drift_velocity_nm_per_min
    if len(frames) < 2 or velocity is None:
        return None
    known = _transform_known(analysis)
    t_s = analysis.session.times_s()[frames]
    t_s = t_s - t_s[0]
    position = chained_actual_nm(analysis, frames)
    fig = Figure(figsize=(7.2, 3.4), layout="constrained")
    ax = fig.subplots()
    for k, axis in enumerate(AXIS_NAMES):
        style = _AXIS_STYLE[axis]
        label = _axis_label(axis, known)
        ax.plot(t_s, position[:, k], color=style["color"], ls=style["linestyle"], marker=style["marker"],
                ms=5, lw=1.2, label=label)
        ok = np.isfinite(position[:, k])
        if ok.sum() >= 2:
            centre_t, centre_p = t_s[ok].mean(), position[ok, k].mean()
            ax.plot(t_s, centre_p + velocity[k] / 60.0 * (t_s - centre_t), color=style["color"], ls=":", lw=1,
                    label=f"{label}: {velocity[k]:+.2f} nm/min")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("time since the first still frame (s)")
    ax.set_ylabel("displacement (nm)")
    ax.set_title(f"Drift while standing still: {float(np.hypot(*velocity)):.2f} nm/min\n"
                 f"{_axis_label('x', known)} {velocity[0]:+.2f} nm/min, "
                 f"{_axis_label('y', known)} {velocity[1]:+.2f} nm/min (dotted: fitted drift)", fontsize=10)
    _legend_right(ax)
    ax.grid(alpha=0.3)
    return fig


def figure_drift(analysis: Analysis) -> bytes | None:
    """Displacement of the image content during the dwell frames, x and y, as PNG.

    Axes are labelled "image x" and "image y" when the stage-to-image transform is
    unknown (the displacements are then in image axes).
    """
    fig = _draw_drift(analysis)
    return None if fig is None else _png(fig)


# --------------------------------------------------------------------------- repeatability


def _draw_repeatability(analysis: Analysis, axis: str) -> Figure | None:
    records = analysis.revisits.get(axis) or []
    if not records:
        return None
    k = AXIS_NAMES.index(axis)
    targets = analysis.session.targets_nm()
    steps = analysis.steps
    index = _step_index(analysis)
    styles = {+1: ("#0072B2", "^", f"arriving in +{axis}"), -1: ("#E69F00", "v", f"arriving in -{axis}"),
              0: ("0.4", "o", "arriving otherwise")}
    fig = Figure(figsize=(7.2, 3.4), layout="constrained")
    ax = fig.subplots()
    seen = set()
    for record in records:
        first = int(record["frames"][0])
        i = index.get(first)
        direction = 0 if i is None else int(np.sign(np.nan_to_num(steps.target_nm[i][k])))
        colour, marker, _ = styles[direction]
        deviation = np.asarray(record["deviation_nm"], dtype=float)
        ax.plot(np.full(len(deviation), targets[first, k]), deviation, ls="none", marker=marker, ms=6,
                mfc="none", mec=colour, mew=1.3)
        seen.add(direction)
    handles = [Line2D([], [], ls="none", marker=marker, ms=6, mfc="none", mec=colour, mew=1.3, label=label)
               for direction, (colour, marker, label) in styles.items() if direction in seen]
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(f"target {axis} (nm)")
    ax.set_ylabel("deviation from first visit (nm)")
    ax.set_title(f"{figure_caption(f'repeatability-{axis}')[0]}: "
                 "revisits of the same target from the same direction", fontsize=10)
    _legend_right(ax, handles=handles)
    ax.grid(alpha=0.3)
    return fig


def figure_repeatability(analysis: Analysis, axis: str) -> bytes | None:
    """Deviations of revisits of the same target from the first visit, as PNG."""
    fig = _draw_repeatability(analysis, axis)
    return None if fig is None else _png(fig)


# --------------------------------------------------------------------------- tilt


def _draw_tilt(analysis: Analysis, axis: str) -> Figure | None:
    frames = _frames_of(analysis, f"tilt-{axis}")
    metrics = analysis.tilt.get(axis)
    if len(frames) < 2 or metrics is None or metrics.direction is None:
        return None
    k = TILT_NAMES.index(axis)
    angle = analysis.session.targets_nm()[frames, 3 + k]
    position = chained_actual_nm(analysis, frames) @ np.asarray(metrics.direction, dtype=float)
    reversal = _reversal_mask(analysis, frames, analysis.steps.tilt_kind)
    branch = np.zeros(len(frames), dtype=int)
    branch[1:] = np.sign(np.diff(angle)).astype(int)
    shift = metrics.shift_nm_per_deg
    backlash = metrics.backlash_deg

    panels = [(position, "sideways image shift (nm)")]
    if shift is not None:
        # The loop of a tilt backlash is a few nm on a slope of tens of nm: drawn
        # again without the straight line (the measured shift per degree), it opens up.
        residual = position - shift * (angle - angle[0])
        panels.append((residual - np.nanmean(residual), "shift minus the\nstraight line (nm)"))
    fig = Figure(figsize=(8.0, 2.4 + 2.2 * len(panels)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    for ax, (values, ylabel) in zip(axes, panels):
        for sign, style in _BRANCH_STYLE.items():
            arriving = np.flatnonzero(branch == sign)
            if len(arriving) == 0:
                continue
            xs, ys = [], []
            for j in arriving:
                xs += [angle[j - 1], angle[j], np.nan]
                ys += [values[j - 1], values[j], np.nan]
            ax.plot(xs, ys, color=style["color"], ls=style["linestyle"], lw=1.2)
            ax.plot(angle[arriving], values[arriving], ls="none", marker=style["marker"], ms=6,
                    color=style["color"])
        ax.plot(angle[0], values[0], "s", color="k", ms=5)
        if reversal.any():
            ax.plot(angle[reversal], values[reversal], "o", ms=12, mfc="none", mec=_COLOURS["reversal"], mew=1.5)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=style["color"], ls=style["linestyle"], marker=style["marker"],
                      label=style["label"]) for sign, style in _BRANCH_STYLE.items() if np.any(branch == sign)]
    handles.append(Line2D([], [], ls="none", marker="s", color="k", ms=5, label="start"))
    if reversal.any():
        handles.append(Line2D([], [], ls="none", marker="o", ms=10, mfc="none", mec=_COLOURS["reversal"], mew=1.5,
                              label="first step after\na reversal"))
    shift_text = "image shift not measured" if shift is None else f"image shift {shift:.2f} nm/deg"
    backlash_text = "tilt backlash not measured" if backlash is None else f"tilt backlash {backlash:.2f} deg"
    if len(axes) > 1:
        axes[1].set_title(f"the same without the straight line of {shift:.2f} nm/deg: "
                          "tilt backlash opens a loop between the branches", fontsize=9)
    axes[-1].set_xlabel(f"target {axis} (deg)")
    axes[0].set_title(f"Tilt {axis}: {shift_text}, {backlash_text}\n"
                      f"image shift along the direction the specimen moves for increasing {axis}", fontsize=10)
    _legend_right(axes[0], handles=handles)
    return fig


def figure_tilt(analysis: Analysis, axis: str) -> bytes | None:
    """Sideways image shift against the tilt angle for the ``tilt-<axis>`` protocol.

    The shift is projected on the direction the specimen moves for increasing tilt;
    a eucentric specimen gives a flat line, a height error a slope (nm/deg), and tilt
    backlash a loop: the increasing-tilt and decreasing-tilt branches (drawn
    differently) lie apart. First steps after a reversal are circled; the title
    gives the shift per degree and the measured tilt backlash ("tilt backlash not
    measured" when there is none).
    """
    fig = _draw_tilt(analysis, axis)
    return None if fig is None else _png(fig)


# --------------------------------------------------------------------------- montage


def _nice_factor(value: float) -> int:
    """The largest of 1, 2, 5, 10, 20, 50, ... not above `value` (at least 1)."""
    if not value > 1:
        return 1
    exponent = 10 ** int(np.floor(np.log10(value)))
    return int(max(f * exponent for f in (1, 2, 5) if f * exponent <= value))


MONTAGE_DRAWN_ERROR = 0.25
"""The largest piece error is drawn at most this fraction of a piece's cell long (when it is smaller)."""


def _draw_montage(analysis: Analysis) -> Figure | None:
    result = getattr(analysis, "montage", None)
    if result is None or not result.oriented or not np.all(np.isfinite(result.field_px)):
        return None  # no orientation, or an image shift of unknown size: the fields cannot be placed
    transform = analysis.transform
    pixel = result.pixel_size_nm
    rows, columns = result.frame_shape
    overlap_px = result.overlap_px if result.overlap_px is not None else 0.0
    # each piece is drawn as its share of the montage: the field less the overlap (commanded cells tile the plane)
    cell_um = np.array([columns - overlap_px, rows - overlap_px]) * pixel / 1000.0
    commanded_um = result.field_px * pixel / 1000.0
    # a field lies where the stage and the image shift put it
    actual_px = -stage_nm_to_image_px(result.actual_nm + result.image_shift_nm - result.commanded_nm[0], pixel,
                                      transform)
    offset_um = actual_px * pixel / 1000.0 - commanded_um
    largest = float(np.nanmax(np.hypot(offset_um[:, 0], offset_um[:, 1]), initial=0.0))
    factor = _nice_factor(MONTAGE_DRAWN_ERROR * float(cell_um.min()) / largest) if largest > 0 else 1
    drawn_um = commanded_um + factor * offset_um
    pairs, misplacement = result.neighbour_errors()
    overlap = result.overlap_nm
    failing = set()
    if overlap is not None:
        for (a, b), size in zip(pairs, misplacement):
            if np.isfinite(size) and size > overlap:
                failing.update((int(a), int(b)))

    fig = Figure(figsize=(12.5, 5.4), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=[1, 1.25])
    ax = fig.add_subplot(grid[0, 0])
    half = cell_um / 2.0
    for i in range(len(result.frames)):
        ax.add_patch(Rectangle(tuple(commanded_um[i] - half), *cell_um, fill=False, edgecolor=_COLOURS["target"],
                               lw=0.9, ls="--"))
        if result.placed[i]:
            colour = _COLOURS["reversal"] if i in failing else _COLOURS["actual"]
            ax.add_patch(Rectangle(tuple(drawn_um[i] - half), *cell_um, fill=True, facecolor=colour, alpha=0.12,
                                   edgecolor="none"))
            ax.add_patch(Rectangle(tuple(drawn_um[i] - half), *cell_um, fill=False, edgecolor=colour, lw=1.4))
            ax.annotate("", xy=tuple(drawn_um[i]), xytext=tuple(commanded_um[i]),
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.0})
            ax.text(*(commanded_um[i] - 0.3 * half), str(i), ha="center", va="center", fontsize=9, color="0.25")
        else:
            ax.plot(*commanded_um[i], "x", color=_COLOURS["reversal"], ms=12, mew=2)
    span = np.concatenate([commanded_um, drawn_um[np.all(np.isfinite(drawn_um), axis=1)]])
    ax.set_xlim(span[:, 0].min() - 0.7 * cell_um[0], span[:, 0].max() + 0.7 * cell_um[0])
    ax.set_ylim(span[:, 1].max() + 0.7 * cell_um[1], span[:, 1].min() - 0.7 * cell_um[1])  # rows go down
    ax.set_aspect("equal")
    ax.set_xlabel("montage image x (um)")
    ax.set_ylabel("montage image y (um)")
    magnified = f"errors magnified {factor} times" if factor > 1 else "errors drawn to scale"
    moved = "" if result.moved_by == "stage" else f", moved by {result.moved_by}"
    ax.set_title(f"{len(result.frames)} pieces{moved}, {int(result.placed.sum())} placed; {magnified}\n"
                 "each piece drawn as its field less the overlap", fontsize=10)
    handles = [Line2D([], [], color=_COLOURS["target"], ls="--", label="commanded"),
               Line2D([], [], color=_COLOURS["actual"], label="actual (numbers: acquisition order)")]
    if failing:
        handles.append(Line2D([], [], color=_COLOURS["reversal"], label="off a neighbour by\nmore than the overlap"))
    if not result.placed.all():
        handles.append(Line2D([], [], ls="none", marker="x", color=_COLOURS["reversal"], mew=2,
                              label="not placed (no\nregistered overlap)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)

    ax_err = fig.add_subplot(grid[0, 1])
    order = result.order
    series = [(result.reported_error_nm, _COLOURS["reported"], "o", "-", "against the readback")]
    if result.has_target:
        series.insert(0, (result.error_nm, _COLOURS["actual"], "s", "--", "against the target"))
    top = 0.0
    for error, colour, marker, style, label in series:
        size = np.hypot(error[:, 0], error[:, 1])
        ax_err.plot(order, size, color=colour, marker=marker, ls=style, lw=1, ms=5, label=label)
        top = max(top, float(np.nanmax(size, initial=0.0)))
    growth = getattr(analysis, "metrics", {}).get("montage.growth_nm_per_piece")
    size = np.hypot(result.commanded_error_nm[1:, 0], result.commanded_error_nm[1:, 1])
    if growth is not None and growth.measured and np.isfinite(size).sum() >= 2:
        later = order[1:][np.isfinite(size)]
        centre = float(np.nanmean(size))
        ax_err.plot(later, centre + growth.value * (later - later.mean()), color="0.3", ls=":", lw=1.2,
                    label=f"trend: {growth.value:+.2f} nm per piece")
    ylim_top = max(top * 1.25, 1.0)
    overlap_text = ""
    if overlap is not None:
        if overlap <= ylim_top * 1.5:
            ylim_top = max(ylim_top, overlap * 1.1)
            ax_err.axhline(overlap, color=_COLOURS["reversal"], ls="--", lw=1, label=f"overlap width {overlap:.0f} nm")
        else:
            overlap_text = f"; the overlap width, {overlap:.0f} nm, lies far above"
    ax_err.set_ylim(0, ylim_top)
    ax_err.set_xlabel("piece, in acquisition order")
    ax_err.set_ylabel("error relative to the first piece (nm)")
    ax_err.set_title(f"Error of each piece{overlap_text}", fontsize=10)
    ax_err.grid(alpha=0.3)
    _legend_right(ax_err)
    fig.suptitle(f"{figure_caption('montage')[0]}: where the pieces were sent and where the images show they went",
                 fontsize=11)
    return fig


def figure_montage(analysis: Analysis) -> bytes | None:
    """The montage grid, as PNG: commanded and actual piece outlines, and the error per piece.

    Left, every piece's field outline where its commanded position puts it and where
    the solved position puts it, in the assembled montage image (image axes, rows
    downwards), the error magnified by a round factor so it shows; pieces off a
    neighbour by more than the overlap width in red, unplaced pieces crossed. Right,
    the length of each piece's error against the target and the readback over the
    acquisition order, the trend of the growth, and the overlap width. ``None``
    without a montage, or when the stage-to-image orientation is unknown.
    """
    fig = _draw_montage(analysis)
    return None if fig is None else _png(fig)


# --------------------------------------------------------------------------- all


def draw_figures(analysis: Analysis) -> dict[str, Figure]:
    """Every figure the session supports as a matplotlib :class:`~matplotlib.figure.Figure`.

    Keys are those of :data:`FIGURE_NAMES` the session supports. The figures are not
    registered with pyplot; they are freed when no longer referenced.
    """
    makers = {
        "hysteresis-x": lambda: _draw_hysteresis(analysis, "x"),
        "hysteresis-y": lambda: _draw_hysteresis(analysis, "y"),
        "overlay-x": lambda: _draw_overlays(analysis, "x"),
        "overlay-y": lambda: _draw_overlays(analysis, "y"),
        "cross": lambda: _draw_cross(analysis),
        "repeatability-x": lambda: _draw_repeatability(analysis, "x"),
        "repeatability-y": lambda: _draw_repeatability(analysis, "y"),
        "drift": lambda: _draw_drift(analysis),
        "tilt-alpha": lambda: _draw_tilt(analysis, "alpha"),
        "tilt-beta": lambda: _draw_tilt(analysis, "beta"),
        "montage": lambda: _draw_montage(analysis),
    }
    figures = {}
    for name, make in makers.items():
        fig = make()
        if fig is not None:
            figures[name] = fig
    return figures


def all_figures(analysis: Analysis) -> dict[str, bytes]:
    """Every figure the session supports as PNG bytes, keyed by a short name (:data:`FIGURE_NAMES`)."""
    return {name: _png(fig) for name, fig in draw_figures(analysis).items()}

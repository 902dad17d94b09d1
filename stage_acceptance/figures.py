"""The report's figures (matplotlib), each as PNG bytes.

Nothing here computes a metric: every figure draws what an
:class:`~stage_acceptance.analysis.Analysis` measured.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import AXIS_NAMES, Analysis  # noqa: E402

_COLOURS = {"target": "0.35", "reported": "tab:blue", "actual": "tab:orange", "reversal": "tab:red"}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def png_base64(png: bytes) -> str:
    """Base64 text of PNG bytes (for pytest-html extras and inline images)."""
    return base64.b64encode(png).decode("ascii")


def _frames_of(analysis: Analysis, protocol: str) -> np.ndarray:
    return np.array([i for i, p in enumerate(analysis.session.protocols()) if p == protocol], dtype=int)


def figure_hysteresis(analysis: Analysis, axis: str) -> bytes | None:
    """Figure 3 of the paper for one axis, as PNG.

    Reported - target and actual - target (nm) against the target position along the
    axis for the frames of the ``hysteresis-<axis>`` protocol; frames reached by the
    first step after a reversal are marked in red. ``None`` when the session has no
    such protocol.
    """
    frames = _frames_of(analysis, f"hysteresis-{axis}")
    if len(frames) == 0:
        return None
    k = AXIS_NAMES.index(axis)
    session = analysis.session
    target = session.targets_nm()[frames, k]
    reported = session.reported_nm()[frames, k] - target
    actual = analysis.actual_positions_nm[frames, k] - target
    actual = actual - actual[0]
    kinds = dict(zip(analysis.steps.frame.tolist(), analysis.steps.kind.tolist()))
    reversal = np.array([kinds.get(int(f)) == "reversal" for f in frames])

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(target, reported, "-o", color=_COLOURS["reported"], ms=4, lw=1, label="reported - target")
    ax.plot(target, actual, "-s", color=_COLOURS["actual"], ms=4, lw=1, label="actual - target")
    if reversal.any():
        ax.plot(target[reversal], actual[reversal], "o", ms=10, mfc="none", mec=_COLOURS["reversal"], mew=1.5,
                label="first step after a reversal")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel(f"target {axis} (nm)")
    ax.set_ylabel("error (nm)")
    ax.set_title(f"Hysteresis along {axis} (Figure 3 style); actual relative to the first frame")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def figure_cross(analysis: Analysis) -> bytes | None:
    """Figure 4 of the paper, as PNG.

    Left: target, reported and actual paths of the cross. Right: the errors that are
    too small to see on the left, reported - target and actual - target per frame,
    with the four arms marked; actual positions are chained from the first frame of
    the cross, so the last point shows how far out-and-back fails to return.
    """
    frames = _frames_of(analysis, "cross")
    if len(frames) == 0:
        return None
    session = analysis.session
    target = session.targets_nm()[frames, :2]
    reported = session.reported_nm()[frames, :2]
    actual = analysis.actual_positions_nm[frames]
    actual = actual - actual[0] + target[0]
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(11.5, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    ax.plot(*target.T, "-", color=_COLOURS["target"], lw=1, marker="+", ms=8, label="target")
    ax.plot(*reported.T, "-", color=_COLOURS["reported"], lw=1, marker="o", ms=3, label="reported")
    ax.plot(*actual.T, "-", color=_COLOURS["actual"], lw=1, marker="s", ms=3, label="actual")
    ax.plot(*actual[-1], "*", color=_COLOURS["actual"], ms=12, label="actual, last frame")
    ax.set_aspect("equal")
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title("Cross (Figure 4 style): paths", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)

    index = np.arange(len(frames))
    for k, (axis, style) in enumerate((("x", "-"), ("y", "--"))):
        ax_err.plot(index, reported[:, k] - target[:, k], style, color=_COLOURS["reported"], marker="o", ms=3,
                    label=f"reported - target, {axis}")
        ax_err.plot(index, actual[:, k] - target[:, k], style, color=_COLOURS["actual"], marker="s", ms=3,
                    label=f"actual - target, {axis}")
    arm = (len(frames) - 1) // 4
    if arm > 0:
        for j, name in enumerate(("+x", "-x", "+y", "-y")):
            ax_err.axvline(j * arm, color="0.8", lw=0.8)
            ax_err.text(j * arm + arm / 2, 1.0, name, transform=ax_err.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=9)
    ax_err.axhline(0, color="0.6", lw=0.8)
    ax_err.set_xlabel("frame of the cross")
    ax_err.set_ylabel("error (nm)")
    ax_err.legend(fontsize=7, loc="best")
    ax_err.grid(alpha=0.3)
    return _png(fig)


def _overlay(ax, first: np.ndarray, second: np.ndarray, shift_px: np.ndarray, title: str) -> None:
    rows, cols = first.shape
    dx, dy = shift_px
    left = min(0.0, dx)
    top = min(0.0, dy)
    width = cols + abs(dx)
    height = rows + abs(dy)

    def norm(image):
        image = image.astype(float)
        lo, hi = np.percentile(image, [1, 99.5])
        return np.clip((image - lo) / (hi - lo + 1e-12), 0, 1)

    ax.imshow(norm(first), cmap="gray", alpha=0.5, extent=(-left, cols - left, rows - top, -top))
    ax.imshow(norm(second), cmap="gray", alpha=0.5, extent=(dx - left, dx - left + cols, dy - top + rows, dy - top))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def figure_overlays(analysis: Analysis, axis: str) -> bytes | None:
    """50 % transparent overlays: a first-after-reversal step next to a plain step.

    Each panel places two consecutive frames at their measured (actual) offset; a
    blurred edge would show a bad registration. The caption gives target and actual
    step length along the axis. ``None`` without both kinds of step.
    """
    steps = analysis.steps
    k = AXIS_NAMES.index(axis)
    protocol = f"hysteresis-{axis}"
    chosen = {}
    for kind in ("reversal", "plain"):
        for i in range(len(steps)):
            if (steps.kind[i] == kind and steps.axis[i] == k and steps.registered[i]
                    and steps.protocol[i] == protocol):
                chosen[kind] = i
                break
    if len(chosen) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.2))
    session = analysis.session
    for ax, (kind, i) in zip(axes, (("reversal", chosen["reversal"]), ("plain", chosen["plain"]))):
        frame = int(steps.frame[i])
        label = "first step after a reversal" if kind == "reversal" else "plain step"
        title = (f"{label}: frames {frame - 1}->{frame}\n"
                 f"target {steps.target_nm[i, k]:+.0f} nm, actual {steps.actual_nm[i, k]:+.0f} nm along {axis}")
        _overlay(ax, session.image(frame - 1), session.image(frame), steps.shift_px[i], title)
    fig.suptitle(f"Overlays at 50 % transparency ({axis})", fontsize=10, y=1.03)
    return _png(fig)


def figure_drift(analysis: Analysis) -> bytes | None:
    """Actual displacement of the image content during dwell frames, as PNG."""
    frames = _frames_of(analysis, "dwell")
    if len(frames) < 2 or analysis.drift_velocity_nm_per_min is None:
        return None
    session = analysis.session
    t = session.times_s()[frames]
    pos = analysis.actual_positions_nm[frames]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if np.all(np.isfinite(pos)):
        for k, axis in enumerate(AXIS_NAMES):
            ax.plot(t - t[0], pos[:, k] - pos[0, k], "-o", label=f"{axis}")
    v = analysis.drift_velocity_nm_per_min
    ax.set_title(f"Drift while standing still: ({v[0]:+.2f}, {v[1]:+.2f}) nm/min", fontsize=9)
    ax.set_xlabel("time since first dwell frame (s)")
    ax.set_ylabel("displacement (nm)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def figure_repeatability(analysis: Analysis, axis: str) -> bytes | None:
    """Deviations of revisits of the same target from the first visit, as PNG."""
    records = analysis.revisits.get(axis) or []
    if not records:
        return None
    k = AXIS_NAMES.index(axis)
    targets = analysis.session.targets_nm()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for record in records:
        position = targets[record["frames"][0], k]
        ax.plot([position] * len(record["deviation_nm"]), record["deviation_nm"], "o", ms=4, color="tab:purple")
    ax.set_xlabel(f"target {axis} (nm)")
    ax.set_ylabel("deviation from first visit (nm)")
    ax.set_title(f"Revisits of the same target from the same direction ({axis})", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def figure_tilt(analysis: Analysis, axis: str) -> bytes | None:
    """Sideways image shift against the tilt angle for the ``tilt-<axis>`` protocol.

    The shift is projected on the direction the specimen moves for increasing tilt;
    a eucentric specimen gives a flat line, a height error a slope (nm/deg), and tilt
    backlash a loop; first steps after a reversal are circled.
    """
    frames = _frames_of(analysis, f"tilt-{axis}")
    metrics = analysis.tilt.get(axis)
    if len(frames) == 0 or metrics is None or metrics.direction is None:
        return None
    k = ("alpha", "beta").index(axis)
    angle = analysis.session.targets_nm()[frames, 3 + k]
    position = analysis.actual_positions_nm[frames] @ np.array(metrics.direction)
    position = position - position[0]
    kinds = dict(zip(analysis.steps.frame.tolist(), analysis.steps.tilt_kind.tolist()))
    reversal = np.array([kinds.get(int(f)) == "reversal" for f in frames])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(angle, position, "-s", color=_COLOURS["actual"], ms=4, lw=1, label="sideways image shift")
    if reversal.any():
        ax.plot(angle[reversal], position[reversal], "o", ms=10, mfc="none", mec=_COLOURS["reversal"], mew=1.5,
                label="first step after a reversal")
    ax.set_xlabel(f"target {axis} (deg)")
    ax.set_ylabel("shift (nm)")
    ax.set_title(f"Tilt {axis}: {metrics.shift_nm_per_deg:.2f} nm/deg", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def all_figures(analysis: Analysis) -> dict[str, bytes]:
    """Every figure the session supports, keyed by a short name."""
    makers = {
        "hysteresis-x": lambda: figure_hysteresis(analysis, "x"),
        "hysteresis-y": lambda: figure_hysteresis(analysis, "y"),
        "overlay-x": lambda: figure_overlays(analysis, "x"),
        "overlay-y": lambda: figure_overlays(analysis, "y"),
        "cross": lambda: figure_cross(analysis),
        "repeatability-x": lambda: figure_repeatability(analysis, "x"),
        "repeatability-y": lambda: figure_repeatability(analysis, "y"),
        "drift": lambda: figure_drift(analysis),
        "tilt-alpha": lambda: figure_tilt(analysis, "alpha"),
        "tilt-beta": lambda: figure_tilt(analysis, "beta"),
    }
    figures = {}
    for name, make in makers.items():
        png = make()
        if png is not None:
            figures[name] = png
    return figures

"""The simulated microscope: stage mechanics + specimen + detector behind the
:class:`~stage_acceptance.microscope.Microscope` interface, with a virtual clock."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import MicroscopeConfig
from ..geometry import StagePosition, StageToImage
from .imaging import render_frame
from .specimen import ImageSpecimen, Specimen, read_image
from .stage import SimulatedStage


BLUR_IN_FOCUS_PX = 0.7
"""Probe and pixel blur in focus (Gaussian sigma, pixels)."""


@dataclass(frozen=True)
class TruthRecord:
    """Ground truth of one acquired frame."""

    time_s: float
    target: StagePosition
    reported: StagePosition
    actual: StagePosition


class SimulatedMicroscope:
    """A deterministic simulated (S)TEM for a ``kind = "sim"`` config.

    Parameters
    ----------
    config : MicroscopeConfig
        A validated microscope config with a ``[sim]`` table.

    Attributes
    ----------
    truth : list of TruthRecord
        One record per acquired frame: the true (actual) specimen position.
    transform : StageToImage
        The true stage-to-image rotation and flip (``[sim] rotation_deg, flip_y``).
    """

    def __init__(self, config: MicroscopeConfig):
        if config.sim is None:
            raise ValueError(f"{config.path}: a simulated microscope needs kind = \"sim\"")
        self.config = config
        self.sim = config.sim
        self.name = config.name
        self.pixel_size_nm = config.pixel_size_nm
        self.frame_px = config.frame_px
        self.transform = StageToImage(self.sim.rotation_deg + self.sim.scan_rotation_deg, self.sim.flip_y)
        seeds = np.random.SeedSequence(self.sim.seed).spawn(3)
        self._stage = SimulatedStage(self.sim, np.random.default_rng(seeds[0]), np.random.default_rng(seeds[2]))
        self._detector_rng = np.random.default_rng(seeds[1])
        if self.sim.specimen == "procedural":
            self.specimen = Specimen(seed=self.sim.seed)
        else:
            self.specimen = ImageSpecimen(read_image(self.sim.specimen), self.sim.specimen_pixel_nm)
        self._clock_s = 0.0
        self.truth: list[TruthRecord] = []

    @property
    def stage(self) -> SimulatedStage:
        """The simulated stage mechanics (ground truth is readable from it)."""
        return self._stage

    def move_to(self, target: StagePosition) -> None:
        start = self._clock_s
        self._clock_s += self.sim.move_time_s
        self._stage.move_to(target, start, self._clock_s)

    def position(self) -> StagePosition:
        return self._stage.read_position()

    def acquire(self) -> np.ndarray:
        mid_frame_s = self._clock_s + self.sim.frame_time_s / 2.0
        actual = self._stage.actual(mid_frame_s)
        image = render_frame(
            self.specimen,
            actual.xy_nm(),
            pixel_size_nm=self.pixel_size_nm,
            frame_px=self.frame_px,
            transform=self.transform,
            dose=self.sim.dose,
            rng=self._detector_rng,
            blur_px=self.blur_px(actual.z_nm),
            scan_jitter_px=self.sim.scan_jitter_px,
            read_noise_counts=self.sim.read_noise_counts,
            tilt_deg=(actual.alpha_deg, actual.beta_deg),
        )
        self.truth.append(TruthRecord(mid_frame_s, self._stage.state.target, self._stage.reported(), actual))
        self._clock_s += self.sim.frame_time_s
        return image

    def blur_px(self, z_nm: float) -> float:
        """Probe blur (Gaussian sigma, pixels) at height `z_nm`: 0.7 px in focus, growing
        by ``defocus_blur_nm_per_um`` per micrometre away from ``focus_z_nm``."""
        defocus_nm = self.sim.defocus_blur_nm_per_um * abs(z_nm - self.sim.focus_z_nm) / 1000.0
        return float(np.hypot(BLUR_IN_FOCUS_PX, defocus_nm / self.pixel_size_nm))

    def wait(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"wait time must be >= 0 s, got {seconds}")
        self._clock_s += float(seconds)

    def time_s(self) -> float:
        return self._clock_s

    def stop(self) -> None:
        """A simulated move is instantaneous: there is never a move to abort."""

    def close(self) -> None:
        """Nothing to release for a simulation."""

"""Stand-in ``PyJEM.detector``: frames of the simulated specimen at the stand-in stage's position.

The detector images a 128 x 128 px field at 15 nm per pixel with no rotation.
"""

import numpy as np

from PyJEM import TEM3
from stage_acceptance.geometry import StageToImage
from stage_acceptance.sim.imaging import render_frame
from stage_acceptance.sim.specimen import Specimen

FRAME_PX = 128
PIXEL_SIZE_NM = 15.0


class Detector:
    """Stand-in ``Detector(detector_name)``; ``"missing"`` is not attached."""

    def __init__(self, detector_name):
        if detector_name == "missing":
            raise ValueError(f"detector {detector_name} is not attached")
        self.name = detector_name
        self._specimen = Specimen(seed=5)
        self._rng = np.random.default_rng(7)

    def snapshot_rawdata(self):
        """The frame at the stage's current x, y as little-endian uint16 bytes."""
        image = render_frame(self._specimen, np.array(TEM3.STAGE.pos[:2]), pixel_size_nm=PIXEL_SIZE_NM,
                             frame_px=FRAME_PX, transform=StageToImage(0.0, False), dose=40.0, rng=self._rng)
        return np.clip(image, 0, 65535).astype("<u2").tobytes()

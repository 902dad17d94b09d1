"""Validation against reality: real SerialEM frames from a FEI Titan (NIST, shipped in
tests/data/serialem-nist-titan, cropped to 512 x 512) show the readback jumping by 19.5 nm between two
frames taken at the same place while the image barely moves. The registration must
see that, and the twin must reproduce it."""

import dataclasses

import mdocfile
import mrcfile
import numpy as np
import pytest

from conftest import CONFIGS, SERIALEM_DATA, record_sim
from stage_acceptance.analysis import analyse
from stage_acceptance.config import load_microscope
from stage_acceptance.registration import register

DATA = SERIALEM_DATA


def real_pair(name):
    """The two frames of one SerialEM stack, their reported stage x, y (nm) and pixel size (nm)."""
    with mrcfile.open(DATA / f"{name}.mrc", permissive=True) as mrc:
        frames = np.asarray(mrc.data, dtype=np.float32)
    mdoc = mdocfile.read(DATA / f"{name}.mdoc")
    reported_nm = np.array([list(p) for p in mdoc["StagePosition"]]) * 1000.0  # um -> nm
    pixel_nm = float(mdoc["PixelSpacing"].iloc[0]) / 10.0  # Angstrom -> nm
    return frames, reported_nm, pixel_nm


@pytest.fixture(scope="module")
def titan():
    return {name: real_pair(name) for name in ("test_000", "test_001", "test_002")}


def test_real_readback_jumps_while_the_image_stands_still(titan):
    frames, reported_nm, pixel_nm = titan["test_000"]
    assert pixel_nm == pytest.approx(0.788)
    jump_nm = reported_nm[1] - reported_nm[0]
    assert jump_nm == pytest.approx([-19.5, 0.0], abs=0.05)
    result = register(frames[0], frames[1])
    assert result.ok, result.reason
    motion_nm = float(np.hypot(*result.shift_px)) * pixel_nm
    assert motion_nm < 1.0  # the specimen moved less than a nanometre
    assert abs(jump_nm[0]) > 15 * motion_nm


@pytest.mark.parametrize("name", ["test_001", "test_002"])
def test_real_frames_with_equal_readback_barely_move(titan, name):
    frames, reported_nm, pixel_nm = titan[name]
    np.testing.assert_allclose(reported_nm[1], reported_nm[0])
    result = register(frames[0], frames[1])
    assert result.ok, result.reason
    assert float(np.hypot(*result.shift_px)) * pixel_nm < 1.0


def test_the_twin_reproduces_the_readback_jump(tmp_path):
    base = load_microscope(CONFIGS / "case-a.toml")
    sim = dataclasses.replace(base.sim, readback_jump_nm=19.5, readback_jump_probability=1.0,
                              reported_noise_nm=0.0, drift_nm_per_min=(0.0, 0.0))
    session, microscope = record_sim(dataclasses.replace(base, sim=sim), tmp_path / "rec", protocols=["dwell"])
    analysis = analyse(session)
    steps = analysis.steps
    jumps = np.hypot(*(steps.reported_nm - steps.target_nm).T)
    motion = np.hypot(*steps.actual_nm.T)
    assert np.all(jumps == pytest.approx(19.5))  # every reading jumped by 19.5 nm
    # while the images show no motion: at 15 nm per pixel and 128 px the registration's
    # precision is about 0.05 px (0.75 nm) per axis, so 0.2 px (3 nm) is 3 sigma of the length
    assert np.all(motion < 3.0)
    truth = [r.actual for r in microscope.truth]
    assert truth[0] == truth[-1]

"""Image shift moves the image without moving the stage: its change is subtracted from the
registered motion, or, where it is known only in a tool's own units, the pair is not
measured. Frames across a tilt change are registered on the central region."""

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from conftest import CONFIGS
from stage_acceptance.analysis import analyse, image_shift_change_nm
from stage_acceptance.config import load_microscope
from stage_acceptance.geometry import StagePosition
from stage_acceptance.protocols import build
from stage_acceptance.registration import central_region_shape, prepare_frame, register, register_central
from stage_acceptance.session import RecordingWriter, read_recording
from stage_acceptance.sim.microscope import SimulatedMicroscope

NAN2 = [np.nan, np.nan]


def test_change_in_nm_is_the_difference():
    shift_nm = np.array([[10.0, -5.0], [40.0, 15.0]])
    change, reason = image_shift_change_nm(shift_nm, np.full((2, 2), np.nan), 0, 1)
    np.testing.assert_array_equal(change, [30.0, 20.0])
    assert reason == ""


def test_an_uncalibrated_change_is_unknown_and_an_unchanged_one_is_zero():
    raw = np.array([[0.28, -0.18], [0.28, -0.18], [0.60, -0.49]])
    nm = np.full((3, 2), np.nan)
    change, reason = image_shift_change_nm(nm, raw, 0, 1)
    np.testing.assert_array_equal(change, [0.0, 0.0])
    assert reason == ""
    change, reason = image_shift_change_nm(nm, raw, 1, 2)
    assert np.all(np.isnan(change))
    assert "changed by (+0.32, -0.31)" in reason and "no calibration" in reason


def test_a_frame_without_an_image_shift_beside_one_with_it_is_unknown():
    nm = np.array([[10.0, 0.0], NAN2])
    change, reason = image_shift_change_nm(nm, np.full((2, 2), np.nan), 0, 1)
    assert np.all(np.isnan(change)) and reason == "frame 0 records its image shift in nm and frame 1 does not"
    change, reason = image_shift_change_nm(np.full((2, 2), np.nan), np.full((2, 2), np.nan), 0, 1)
    np.testing.assert_array_equal(change, [0.0, 0.0])


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """A session whose microscope used image shift between frames: the field seen is the
    target plus the image shift, the stage went to the target. Three recordings of the
    same frames: image shift in nm, not recorded, and in uncalibrated units."""
    config = load_microscope(CONFIGS / "case-a.toml")
    microscope = SimulatedMicroscope(config)
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("image-shift")
    writer = RecordingWriter(root / "nm", {"microscope": "case-a", "pixel_size_nm": config.pixel_size_nm,
                                           "stage_to_image": {"rotation_deg": 0.0, "flip_y": False}})
    for protocol in build(config.protocol, ["hysteresis-x", "hysteresis-y"]):
        for visit in protocol.visits:
            target = visit.offset
            shift = rng.uniform(-150.0, 150.0, 2)  # up to 10 px
            microscope.move_to(StagePosition.from_array(target.as_array() + [*shift, 0.0, 0.0, 0.0]))
            writer.append(time_s=microscope.time_s(), target=target, reported=target, image=microscope.acquire(),
                          protocol=protocol.name, extra={"image_shift_nm": {"x": shift[0], "y": shift[1]}})
    writer.finish()
    for name, key, scale in (("none", None, None), ("raw", "image_shift_raw", 1e-3)):
        shutil.copytree(root / "nm", root / name)
        lines = [json.loads(line) for line in (root / "nm" / "frames.jsonl").read_text().splitlines()]
        for line in lines:
            shift = line.pop("image_shift_nm")
            if key:
                line[key] = {"x": shift["x"] * scale, "y": shift["y"] * scale}
        (root / name / "frames.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {name: analyse(read_recording(root / name), jobs=1) for name in ("nm", "none", "raw")}


def test_image_shift_in_nm_is_subtracted(shifted):
    analysis = shifted["nm"]
    assert not analysis.failed
    assert analysis.image_shift["recorded"] == "nm" and not analysis.image_shift["not_measured"]
    subtracted = {tuple(item["frames"]) for item in analysis.image_shift["subtracted"]}
    assert {(int(f) - 1, int(f)) for f in analysis.steps.frame} <= subtracted  # every step, and the revisits
    # the stage went to its targets (1 nm landing noise): actual agrees with target
    assert analysis.pairs["target_actual"].rms_nm < 5.0
    for axis in "xy":
        assert analysis.axes[axis].scale_error == pytest.approx(0.0, abs=0.01)


def test_without_the_image_shift_the_image_motion_is_taken_for_stage_motion(shifted):
    assert shifted["none"].image_shift["recorded"] == "none"
    assert shifted["none"].pairs["target_actual"].rms_nm > 50.0  # what the subtraction takes out


def test_an_uncalibrated_image_shift_leaves_the_pairs_not_measured(shifted):
    analysis = shifted["raw"]
    assert analysis.image_shift["recorded"] == "raw"
    assert len(analysis.image_shift["not_measured"]) > len(analysis.steps)  # every step, and the revisits
    assert all("no calibration" in why for why in analysis.steps.unmeasured)
    assert analysis.steps.registered.all() and np.all(np.isnan(analysis.steps.actual_nm))
    rms = analysis.pairs["target_actual"].rms
    assert not rms.measured and "needs >= 4 registered translation steps" in rms.reason
    assert analysis.pairs["target_reported"].rms.measured  # the readback does not need the image


# --------------------------------------------------------------------------- across a tilt


def foreshortened_pair(scale_y, shift_px, size=512):
    """A textured frame and the same field foreshortened by `scale_y` about the frame
    centre (as a tilt about the x axis) and displaced by `shift_px` (column, row)."""
    rng = np.random.default_rng(2)
    texture = ndimage.gaussian_filter(rng.random((size + 200, size + 200)), 2.0)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    centre = (size - 1) / 2.0
    reference = ndimage.map_coordinates(texture, [rows + 100, cols + 100], order=3)
    source_rows = centre + (rows - centre - shift_px[1]) / scale_y
    moving = ndimage.map_coordinates(texture, [source_rows + 100, cols - shift_px[0] + 100], order=3)
    return reference, moving


def test_the_central_region_gives_the_displacement_of_the_field_centre():
    reference, moving = foreshortened_pair(1.02, (23.4, -11.7))  # 2 %: +-5 px across the field
    a, b = prepare_frame(reference), prepare_frame(moving)
    whole = register(reference, moving)
    central = register_central(a, b, coarse_shift_px=whole.shift_px)
    assert central.ok, central.reason
    np.testing.assert_allclose(central.shift_px, [23.4, -11.7], atol=0.25)
    assert central_region_shape((512, 512)) == (256, 256) and central_region_shape((128, 128)) == (128, 128)


def test_the_central_region_without_a_coarse_shift_and_when_it_cannot_register():
    reference, moving = foreshortened_pair(1.0, (3.0, 2.0))
    a, b = prepare_frame(reference), prepare_frame(moving)
    np.testing.assert_allclose(register_central(a, b).shift_px, [3.0, 2.0], atol=0.05)
    other = prepare_frame(np.random.default_rng(9).random((512, 512)))
    result = register_central(a, other)
    assert not result.ok and result.reason.startswith("central region (256 x 256 px): ")

"""A recording written by another tool (no protocol labels, no stage_to_image, float
images, its own file names) is analysed and certified like our own."""

import json

import numpy as np
import pytest
import tifffile

from conftest import record_sim
from stage_acceptance.analysis import analyse
from stage_acceptance.certification import certify
from stage_acceptance.config import load_holder
from stage_acceptance.session import read_recording


def rewrite_as_foreign(session, directory):
    """Write `session` the way a minimal third-party script would."""
    (directory / "images" / "shots").mkdir(parents=True)
    (directory / "session.json").write_text(json.dumps({
        "format": "stage-acceptance/recording", "version": 1, "microscope": "foreign scope",
        "pixel_size_nm": session.pixel_size_nm, "acquired_by": "a SerialEM script"}))
    with open(directory / "frames.jsonl", "w") as handle:
        for frame in session.frames:
            name = f"images/shots/shot_{frame.index:03d}.tiff"  # any file names inside images/
            tifffile.imwrite(directory / name, session.image(frame.index).astype(np.float32) / 7.0)
            target = {k: v for k, v in frame.target.as_dict().items() if v != 0.0}
            handle.write(json.dumps({"index": frame.index, "time_s": frame.time_s, "target": target,
                                     "reported": frame.reported.as_dict(), "image": name}) + "\n")
    return directory


def test_foreign_recording_certifies_like_our_own(case_config, tmp_path):
    session, _ = record_sim(case_config("f"), tmp_path / "ours")
    ours = analyse(session)
    foreign = read_recording(rewrite_as_foreign(session, tmp_path / "foreign"))
    assert foreign.stage_to_image is None and foreign.frames[3].protocol is None
    theirs = analyse(foreign)
    holder = load_holder("default")
    assert certify(theirs, holder).case == certify(ours, holder).case == "f"
    assert theirs.transform_estimated and not ours.transform_estimated
    assert abs(theirs.transform.rotation_deg) < 0.3 and theirs.transform.flip_y is False
    for axis in "xy":
        assert theirs.axes[axis].backlash_nm == pytest.approx(ours.axes[axis].backlash_nm, abs=2.0)
        assert theirs.axes[axis].scale_error == pytest.approx(ours.axes[axis].scale_error, abs=0.002)

"""Bad recordings: an unusable frame is left out with its reason, a recording cut short
replays as incomplete, and no mutation of a recording gets past the reader as anything
but a one-line RecordingError or a session the analysis can take."""

import json
import shutil

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import CONFIGS, record_sim
from stage_acceptance.acceptance import AcceptanceRun
from stage_acceptance.analysis import analyse
from stage_acceptance.config import load_microscope
from stage_acceptance.geometry import StagePosition
from stage_acceptance.session import RecordingError, RecordingWriter, read_recording


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A case-a recording of the hysteresis along x (14 frames of 128 px)."""
    directory = tmp_path_factory.mktemp("good") / "rec"
    record_sim(load_microscope(CONFIGS / "case-a.toml"), directory, protocols=("hysteresis-x",))
    return directory


def test_unusable_frames_are_left_out_with_the_reason(recording, tmp_path):
    directory = tmp_path / "rec"
    shutil.copytree(recording, directory)
    images = directory / "images"
    tifffile.imwrite(images / "00003.tif", np.zeros((128, 128), dtype=np.uint16))  # constant
    nan = tifffile.imread(images / "00006.tif").astype(np.float32)
    nan[5, 5] = np.nan
    tifffile.imwrite(images / "00006.tif", nan)  # one NaN
    tifffile.imwrite(images / "00009.tif", np.ones((64, 64), dtype=np.uint16))  # wrong shape
    (images / "00011.tif").write_bytes(b"not a tiff at all")  # unreadable
    session = read_recording(directory)
    analysis = analyse(session)
    failed = "\n".join(analysis.failed)
    for frame, why in ((3, "constant"), (6, "finite"), (9, "has shape (64, 64)"), (11, "not a readable TIFF")):
        assert f"->{frame}: " in failed and why in failed, (frame, failed)
    assert "not a tiff at all" not in failed
    good = read_recording(recording)
    assert int(analysis.steps.registered.sum()) < len(good.frames) - 1
    assert analysis.metrics["x.backlash_nm"].evidence["plain_steps"] >= 1


def test_an_incomplete_recording_replays_as_incomplete_and_accepts_nothing(recording, tmp_path):
    directory = tmp_path / "rec"
    shutil.copytree(recording, directory)
    meta = json.loads((directory / "session.json").read_text())
    meta["stage_acceptance"]["complete"] = False
    (directory / "session.json").write_text(json.dumps(meta))
    run = AcceptanceRun("sim", "default", str(directory), reports_dir=tmp_path)
    run.evaluate()
    assert run.verdict.word == "incomplete" and run.verdict.headline.startswith("INCOMPLETE: the recording is")
    assert run.results({})["verdict"] == "incomplete"


def test_what_a_finished_run_writes_reads_as_complete(recording):
    session = read_recording(recording)
    assert session.incomplete is None and session.meta["stage_acceptance"]["complete"] is True
    assert session.meta["stage_acceptance"]["frames"] == len(session.frames) == 14


# --------------------------------------------------------------------------- fuzzing

def small_recording(directory):
    """Six frames of a 32 px texture, shifted by the moves."""
    rng = np.random.default_rng(3)
    scene = rng.random((96, 96)).astype(np.float32)
    writer = RecordingWriter(directory, {"microscope": "fuzz", "pixel_size_nm": 10.0,
                                         "stage_to_image": {"rotation_deg": 0.0, "flip_y": False}})
    for k, x in enumerate((0, 50, 100, 50, 0, 0)):
        writer.append(time_s=float(k), target=StagePosition(x_nm=x), reported=StagePosition(x_nm=x),
                      image=scene[20:52, 20 + x // 10:52 + x // 10], protocol="hysteresis-x")
    writer.finish()
    return directory


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30), st.sampled_from(["../x.tif", "/etc/passwd", "images/../../x", "images/00001.tif",
                                           "images", "", "images/" + "a" * 2000]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.sampled_from("xyzab"), st.floats(-1e9, 1e9), max_size=3),
)
FRAME_KEYS = st.sampled_from(["index", "time_s", "target", "reported", "image", "protocol", "image_shift_nm",
                              "image_shift_raw", "extra"])
SESSION_KEYS = st.sampled_from(["format", "version", "microscope", "holder", "pixel_size_nm", "stage_to_image",
                                "started", "notes", "stage_acceptance"])


def check_reads_or_refuses(directory):
    try:
        session = read_recording(directory)
    except RecordingError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 400, message
        assert str(directory) in message or message.startswith("frame "), message
        return
    analysis = analyse(session)  # a session the reader takes, the analysis takes too
    assert len(analysis.steps) <= len(session.frames) - 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(0, 5), key=FRAME_KEYS, value=VALUES, drop=st.booleans())
def test_a_mutated_frame_line_is_read_or_refused_in_one_line(tmp_path_factory, line, key, value, drop):
    directory = small_recording(tmp_path_factory.mktemp("fuzz") / "rec")
    path = directory / "frames.jsonl"
    records = [json.loads(text) for text in path.read_text().splitlines()]
    if drop:
        records[line].pop(key, None)
    else:
        records[line][key] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    check_reads_or_refuses(directory)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=SESSION_KEYS, value=VALUES)
def test_a_mutated_session_json_is_read_or_refused_in_one_line(tmp_path_factory, key, value):
    directory = small_recording(tmp_path_factory.mktemp("fuzz") / "rec")
    meta = json.loads((directory / "session.json").read_text())
    meta[key] = value
    (directory / "session.json").write_text(json.dumps(meta))
    check_reads_or_refuses(directory)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["frames.jsonl", "session.json"]), position=st.floats(0, 1),
       garbage=st.binary(min_size=1, max_size=40), cut=st.booleans())
def test_corrupted_bytes_are_read_or_refused_in_one_line(tmp_path_factory, which, position, garbage, cut):
    directory = small_recording(tmp_path_factory.mktemp("fuzz") / "rec")
    path = directory / which
    data = path.read_bytes()
    at = int(position * len(data))
    path.write_bytes(data[:at] if cut else data[:at] + garbage + data[at + len(garbage):])
    check_reads_or_refuses(directory)

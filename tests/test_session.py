"""recording-v1: what we write reads back identically; malformed folders get an error
naming the file and line."""

import json

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings, strategies as st

from stage_acceptance.geometry import StagePosition
from stage_acceptance.session import RecordingError, RecordingWriter, read_recording

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positions = st.builds(StagePosition, finite, finite, finite,
                      st.floats(-30, 30, allow_nan=False), st.floats(-25, 25, allow_nan=False))
dtypes = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64])


@settings(max_examples=25, deadline=None)
@given(
    frames=st.lists(st.tuples(positions, positions, st.sampled_from(["hysteresis-x", "cross", None])),
                    min_size=2, max_size=6),
    dtype=dtypes,
    rotation=st.one_of(st.none(), st.floats(-180, 180, allow_nan=False)),
    seed=st.integers(0, 2**32 - 1),
)
def test_recording_round_trips(tmp_path_factory, frames, dtype, rotation, seed):
    directory = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(seed)
    meta = {"microscope": "scope", "holder": "h", "pixel_size_nm": 3.5, "notes": "n", "custom": {"kept": 1}}
    if rotation is not None:
        meta["stage_to_image"] = {"rotation_deg": rotation, "flip_y": True}
    writer = RecordingWriter(directory, meta)
    images = []
    for k, (target, reported, protocol) in enumerate(frames):
        image = (rng.random((8, 12)) * 200).astype(dtype)
        images.append(image)
        writer.append(time_s=1.5 * k, target=target, reported=reported, image=image, protocol=protocol)
    written = writer.close()
    read = read_recording(directory)
    assert read.frames == written.frames
    assert read.meta["custom"] == {"kept": 1}
    assert read.meta["format"] == "stage-acceptance/recording" and read.meta["version"] == 1
    assert "started" in read.meta
    if rotation is None:
        assert read.stage_to_image is None
    else:
        assert read.stage_to_image.rotation_deg == rotation and read.stage_to_image.flip_y
    for k, image in enumerate(images):
        loaded = read.image(k)
        assert loaded.dtype == image.dtype
        np.testing.assert_array_equal(loaded, image)


def make_recording(directory, n=3, **session_overrides):
    (directory / "images").mkdir(parents=True)
    session = {"format": "stage-acceptance/recording", "version": 1, "microscope": "other tool",
               "pixel_size_nm": 2.0, **session_overrides}
    (directory / "session.json").write_text(json.dumps(session))
    lines = []
    for i in range(n):
        tifffile.imwrite(directory / "images" / f"f{i}.tif", np.full((16, 16), i, dtype=np.uint16))
        lines.append(json.dumps({"index": i, "time_s": float(i), "target": {"x": 100.0 * i},
                                 "reported": {"x": 100.0 * i, "y": 1.0}, "image": f"images/f{i}.tif"}))
    (directory / "frames.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def test_a_foreign_minimal_recording_reads(tmp_path):
    session = read_recording(make_recording(tmp_path / "r"))
    assert len(session.frames) == 3
    assert session.frames[2].target == StagePosition(x_nm=200.0)
    assert session.frames[1].reported == StagePosition(x_nm=100.0, y_nm=1.0)
    assert session.frames[0].protocol is None
    assert session.stage_to_image is None


def corrupt_line(directory, line_no, text):
    path = directory / "frames.jsonl"
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"index": 1, "time_s": 1', "not valid JSON"),
        ('{"index": 1, "time_s": 1.0, "target": {}, "reported": {}}', "missing required key 'image'"),
        ('{"index": 7, "time_s": 1.0, "target": {}, "reported": {}, "image": "images/f1.tif"}', "key 'index' is 7"),
        ('{"index": 1, "time_s": 1.0, "target": {"x": "far"}, "reported": {}, "image": "images/f1.tif"}',
         "key 'target.x' has bad value 'far'"),
        ('{"index": 1, "time_s": 1.0, "target": {"q": 1}, "reported": {}, "image": "images/f1.tif"}', "target"),
        ('{"index": 1, "time_s": 1.0, "target": {}, "reported": {}, "image": "images/missing.tif"}',
         "'images/missing.tif' not found"),
        ('{"index": 1, "time_s": NaN, "target": {}, "reported": {}, "image": "images/f1.tif"}', "not valid JSON"),
    ],
)
def test_malformed_frame_line_is_named(tmp_path, line, expected):
    directory = make_recording(tmp_path / "r")
    path = corrupt_line(directory, 2, line)
    with pytest.raises(RecordingError) as info:
        read_recording(directory)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and expected in message and "\n" not in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"format": "something-else"}, "key 'format'"),
        ({"version": 2}, "key 'version'"),
        ({"pixel_size_nm": 0}, "key 'pixel_size_nm'"),
        ({"stage_to_image": {"flip_y": True}}, "stage_to_image.rotation_deg"),
    ],
)
def test_malformed_session_json_is_named(tmp_path, override, expected):
    directory = make_recording(tmp_path / "r", **override)
    with pytest.raises(RecordingError, match=expected) as info:
        read_recording(directory)
    assert str(directory / "session.json") in str(info.value)


def test_images_of_different_shapes_are_refused(tmp_path):
    directory = make_recording(tmp_path / "r")
    tifffile.imwrite(directory / "images" / "f2.tif", np.zeros((8, 8), dtype=np.uint16))
    with pytest.raises(RecordingError, match=r"frames.jsonl:3: .*shape \(8, 8\)"):
        read_recording(directory)


def test_colour_image_is_refused(tmp_path):
    directory = make_recording(tmp_path / "r")
    tifffile.imwrite(directory / "images" / "f1.tif", np.zeros((16, 16, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(RecordingError, match=r"frames.jsonl:2: .*single-channel"):
        read_recording(directory)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(RecordingError, match="recording folder not found"):
        read_recording(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="session.json: missing"):
        read_recording(tmp_path / "empty")


def test_writer_refuses_to_overwrite_a_recording(tmp_path):
    make_recording(tmp_path / "r")
    with pytest.raises(RecordingError, match="already holds a recording"):
        RecordingWriter(tmp_path / "r", {"microscope": "m", "pixel_size_nm": 1.0})

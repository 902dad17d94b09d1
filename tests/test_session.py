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
        ('{"index": 1, "time_s": -1.0, "target": {}, "reported": {}, "image": "images/f1.tif"}',
         "key 'time_s' has bad value -1.0"),
        ('{"index": 1, "time_s": 1e400, "target": {}, "reported": {}, "image": "images/f1.tif"}',
         "key 'time_s'"),
        ('{"index": 1, "time_s": 1.0, "target": {"x": 1' + "0" * 5000 + '}, "reported": {}, "image": "images/f1.tif"}',
         "not valid JSON"),
        ('{"index": 1, "time_s": 1.0, "target": {"x": 1' + "0" * 50 + '}, "reported": {}, "image": "images/f1.tif"}',
         "key 'target.x'"),
        ('{"index": 1, "time_s": 1.0, "target": ' + "[" * 5000 + "]" * 5000 + ', "reported": {}, "image": "x"}',
         "not valid JSON"),
        ('{"index": 1, "time_s": 1.0, "target": {}, "reported": {}, "image": "../../etc/passwd"}',
         "key 'image' is '../../etc/passwd': a path with '..'"),
        ('{"index": 1, "time_s": 1.0, "target": {}, "reported": {}, "image": "/etc/passwd"}',
         "key 'image' is '/etc/passwd': an absolute path"),
        ('{"index": 1, "time_s": 1.0, "target": {}, "reported": {}, "image": "f1.tif"}',
         "not inside the recording's images/ folder"),
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


def test_a_frame_of_another_shape_is_marked_not_refused(tmp_path):
    directory = make_recording(tmp_path / "r")
    tifffile.imwrite(directory / "images" / "f2.tif", np.zeros((8, 8), dtype=np.uint16))
    session = read_recording(directory)
    assert session.unreadable == {2: "image 'images/f2.tif' has shape (8, 8), the session's frames are (16, 16)"}
    with pytest.raises(RecordingError, match=r"^frame 2: image 'images/f2.tif' has shape \(8, 8\)"):
        session.image(2)
    assert session.frame_shape == (16, 16)


def test_a_colour_missing_or_foreign_image_is_marked_without_echoing_it(tmp_path):
    directory = make_recording(tmp_path / "r")
    tifffile.imwrite(directory / "images" / "f1.tif", np.zeros((16, 16, 3), dtype=np.uint8), photometric="rgb")
    (directory / "images" / "f2.tif").write_text("root:x:0:0:root:/root:/bin/bash\n")
    session = read_recording(directory)
    assert "single-channel" in session.unreadable[1]
    assert session.unreadable[2] == "image 'images/f2.tif' is not a readable TIFF (TiffFileError)"
    (directory / "images" / "f2.tif").unlink()
    assert read_recording(directory).unreadable[2] == "image 'images/f2.tif' not found"


def test_a_symlink_out_of_the_images_folder_is_refused_unread(tmp_path):
    directory = make_recording(tmp_path / "r")
    secret = tmp_path / "secret.tif"
    tifffile.imwrite(secret, np.ones((16, 16), dtype=np.uint16))
    (directory / "images" / "f1.tif").unlink()
    (directory / "images" / "f1.tif").symlink_to(secret)
    with pytest.raises(RecordingError, match=r"frames.jsonl:2: key 'image' is 'images/f1.tif': a link out of"):
        read_recording(directory)
    # the images/ folder itself linked elsewhere
    other = make_recording(tmp_path / "o")
    (other / "images").rename(tmp_path / "elsewhere")
    (other / "images").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RecordingError, match="images/ folder that is a link out of the recording"):
        read_recording(other)


def test_frame_times_must_not_decrease(tmp_path):
    directory = make_recording(tmp_path / "r")
    corrupt_line(directory, 3, '{"index": 2, "time_s": 0.5, "target": {}, "reported": {}, "image": "images/f2.tif"}')
    with pytest.raises(RecordingError, match=r"frames.jsonl:3: key 'time_s' is 0.5, before the previous frame's 1"):
        read_recording(directory)


def test_a_torn_last_line_is_read_up_to_the_last_whole_frame_and_flagged(tmp_path):
    directory = make_recording(tmp_path / "r", n=4)
    text = (directory / "frames.jsonl").read_text()
    (directory / "frames.jsonl").write_text(text[:-20])  # the last line cut mid-way, as by a killed writer
    session = read_recording(directory)
    assert len(session.frames) == 3
    assert "frames.jsonl:4: the last line is torn" in session.incomplete
    # a bad line that is not the last is an error, not a tear
    corrupt_line(directory, 2, '{"index": 1, "time_s"')
    with pytest.raises(RecordingError, match="frames.jsonl:2: not valid JSON"):
        read_recording(directory)


def test_a_recording_says_whether_its_run_finished(tmp_path):
    meta = {"microscope": "scope", "pixel_size_nm": 2.0}
    for finish in (True, False):
        writer = RecordingWriter(tmp_path / str(finish), meta)
        for k in range(3):
            writer.append(time_s=float(k), target=StagePosition(), reported=StagePosition(),
                          image=np.full((16, 16), k, dtype=np.uint16), protocol=None)
        writer.finish() if finish else writer.close()
        session = read_recording(tmp_path / str(finish))
        assert session.meta["stage_acceptance"]["complete"] is finish
        assert (session.incomplete is None) is finish
        assert (tmp_path / str(finish) / "session.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("content, expected", [
    (b"\xff\xfe{\x00}\x00", "byte-order mark"),
    (b'{"format": "stage-acceptance/recording", "microscope": "\xe9"}', "not UTF-8 text (byte 56)"),
    (b"[" * 100_000, "not valid JSON"),
    (b" " * (2 << 20), "bytes, more than the"),
])
def test_malformed_session_json_is_one_line(tmp_path, content, expected):
    directory = make_recording(tmp_path / "r")
    (directory / "session.json").write_bytes(content)
    with pytest.raises(RecordingError) as info:
        read_recording(directory)
    assert expected in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 300


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


@pytest.mark.parametrize("values, dtype", [
    (np.array([[0.0, 3.0], [65535.0, 7.0]], dtype=np.float32), np.uint16),
    (np.array([[-5.0, 3.0], [100.0, 7.0]]), np.int16),
    (np.array([[0.0, 70000.0], [1.0, 2.0]]), np.int32),
    (np.array([[0.5, 3.0], [1.0, 2.0]], dtype=np.float32), np.float32),  # not counts: kept as it is
    (np.array([[1, 2], [3, 4]], dtype=np.uint8), np.uint8),
])
def test_counts_are_stored_in_an_integer_type_losslessly(values, dtype):
    from stage_acceptance.session import storable

    stored = storable(values)
    assert stored.dtype == dtype
    np.testing.assert_array_equal(stored, values)


def test_recorded_images_are_compressed_losslessly(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.poisson(40 * (0.5 + rng.random((256, 256)))).astype(np.float32)  # counts, as the simulator gives
    writer = RecordingWriter(tmp_path / "r", {"microscope": "scope", "pixel_size_nm": 1.0})
    for k in range(2):
        writer.append(time_s=float(k), target=StagePosition(), reported=StagePosition(), image=image, protocol=None)
    session = writer.finish()
    path = tmp_path / "r" / session.frames[0].image
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.pages[0].dtype == np.uint16
    assert path.stat().st_size < 0.5 * image.size * 2  # under half the raw 16-bit size
    np.testing.assert_array_equal(read_recording(tmp_path / "r").image(1), image)

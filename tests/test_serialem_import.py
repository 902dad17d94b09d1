"""The SerialEM importer: real NIST Titan stacks in, a recording-v1 folder out; bad input
refused in one line, with nothing written."""

import json
import shutil

import mrcfile
import numpy as np
import pytest

from conftest import SERIALEM_DATA
from stage_acceptance.cli import main
from stage_acceptance.importers.serialem import SerialEMImportError, import_serialem, stack_and_mdoc
from stage_acceptance.session import read_recording

NIST = [SERIALEM_DATA / f"test_00{k}.mrc" for k in range(3)]


@pytest.fixture(scope="module")
def nist(tmp_path_factory):
    out = tmp_path_factory.mktemp("import") / "nist"
    return import_serialem(NIST, out)


def test_frames_come_in_acquisition_order_with_readback_time_tilt_and_pixel_size(nist):
    assert nist.microscope == "NIST Titan D3094"
    assert nist.pixel_size_nm == pytest.approx(0.788)  # PixelSpacing 7.88 Angstrom
    assert nist.incomplete is None and nist.meta["stage_acceptance"]["complete"] is True
    assert "started" not in nist.meta  # SerialEM's DateTime is local time, not UTC
    files = [f.extra["serialem"]["file"] for f in nist.frames]
    assert files == ["test_000.mrc"] * 2 + ["test_002.mrc"] * 2 + ["test_001.mrc"] * 2  # by DateTime
    assert [f.time_s for f in nist.frames] == [0.0, 2.0, 25.0, 26.0, 170.0, 171.0]
    assert all(f.target is None for f in nist.frames)
    reported = nist.reported_nm()
    np.testing.assert_array_equal(reported[:, 0], [-15990.0, -16009.5, -16029.0, -16029.0, -16107.0, -16107.0])
    np.testing.assert_array_equal(reported[:, 1], [-8554.3] * 4 + [-8515.0] * 2)
    np.testing.assert_array_equal(reported[:, 2], [-123688.0] * 6)  # StageZ, um -> nm
    np.testing.assert_allclose(reported[:, 3], [-0.000488] * 2 + [-5.00151] * 2 + [5.00054] * 2)


def test_images_are_the_mrc_sections_unchanged(nist):
    with mrcfile.open(NIST[2], permissive=True) as mrc:
        sections = np.array(mrc.data)
    for index, z in ((2, 0), (3, 1)):
        image = nist.image(index)
        assert image.dtype == sections.dtype
        np.testing.assert_array_equal(image, sections[z])


def test_image_shift_is_kept_in_serialem_units_without_a_calibration(nist):
    shift_nm, shift_raw = nist.image_shifts()
    assert np.all(np.isnan(shift_nm))
    np.testing.assert_allclose(shift_raw[0], [0.282358, -0.180588])
    np.testing.assert_allclose(shift_raw[4], [0.600434, -0.490882])
    again = read_recording(nist.directory)  # what a replay reads
    np.testing.assert_array_equal(again.image_shifts()[1], shift_raw)
    assert "image-shift units, not calibrated" in again.meta["stage_acceptance"]["imported"]["image_shift"]


def test_a_calibration_writes_image_shift_in_nm(tmp_path):
    matrix = [[1000.0, 50.0], [-20.0, 900.0]]
    session = import_serialem(NIST[:1], tmp_path / "rec", image_shift_to_nm=matrix)
    shift_nm, shift_raw = session.image_shifts()
    assert np.all(np.isnan(shift_raw))
    np.testing.assert_allclose(shift_nm[0], np.array(matrix) @ [0.282358, -0.180588], atol=1e-4)


# --------------------------------------------------------------------------- small synthetic stacks

SECTION = """[ZValue = {z}]
TiltAngle = {tilt}
StagePosition = {x} -8.5543
StageZ = -123.688
Magnification = 115000
PixelSpacing = {pixel}
ImageShift = 0.25 -0.5
DateTime = 31-Mar-23  16:24:{second:02d}
"""


def write_stack(folder, name="s.mrc", frames=2, sections=None, size=32, pixel=7.88, mdoc_name=None, header=None,
                start=0):
    """A tiny SerialEM-like stack and its .mdoc (SerialEM's NAME.mrc.mdoc unless told)."""
    rng = np.random.default_rng(len(name))
    with mrcfile.new(folder / name, overwrite=True) as mrc:
        mrc.set_data(rng.integers(100, 4000, (frames, size, size)).astype(np.int16))
    sections = frames if sections is None else sections
    text = header if header is not None else (f"PixelSpacing = {pixel}\r\nImageFile = {name}\r\n"
                                              f"ImageSize = {size} {size}\r\nDataMode = 1\r\n\r\n"
                                              f"[T = SerialEM: Test Scope    31-Mar-23  16:24:14    ]\r\n\r\n")
    text += "\n".join(SECTION.format(z=z, tilt=0.0, x=-15.99 - 0.0195 * z, pixel=pixel, second=start + 2 * z)
                      for z in range(sections))
    mdoc = folder / (mdoc_name or name + ".mdoc")
    mdoc.write_text(text)
    return folder / name, mdoc


def refused(tmp_path, paths, match, out_name="out", **options):
    out = tmp_path / out_name
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SerialEMImportError, match=match) as info:
        import_serialem(paths, out, **options)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no scratch folder left
    return message


def test_serialem_naming_and_image_file_lookup(tmp_path):
    mrc, mdoc = write_stack(tmp_path, "a.mrc")
    assert stack_and_mdoc(mrc) == (mrc, mdoc) == stack_and_mdoc(mdoc)  # a.mrc.mdoc
    other, plain = write_stack(tmp_path, "b.st", mdoc_name="b.mdoc")
    assert stack_and_mdoc(plain) == (other, plain)  # b.mdoc names its stack by ImageFile


def montage_stack(folder, coordinates, name="m.mrc", spacing=None, size=32, start=0):
    """A SerialEM-like montage file: one section per piece, `coordinates` its PieceCoordinates."""
    mrc, mdoc = write_stack(folder, name, frames=len(coordinates), size=size, start=start)
    text = mdoc.read_text()
    if spacing is not None:
        text = text.replace("DataMode = 1", f"DataMode = 1\r\nMontage = 1\r\nPieceSpacing = {spacing}")
    for z, piece in enumerate(coordinates):
        text = text.replace(f"[ZValue = {z}]\n", f"[ZValue = {z}]\nPieceCoordinates = {piece}\n")
    mdoc.write_text(text)
    return mrc, mdoc


def test_montage_pieces_get_their_column_and_row_from_the_piece_coordinates(tmp_path):
    # a 3 x 2 montage of 32 px pieces 24 px apart, in SerialEM's column-by-column order
    places = [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]
    mrc, _ = montage_stack(tmp_path, [f"{24 * c} {24 * r} 0" for c, r in places])
    session = import_serialem([mrc], tmp_path / "rec")
    assert [f.extra["montage_piece"] for f in session.frames] == [{"column": c, "row": r} for c, r in places]
    assert session.frames[2].extra["serialem"]["piece_coordinates"] == [24.0, 24.0, 0]
    assert session.meta["stage_acceptance"]["imported"]["montage"] == {
        "file": "m.mrc", "pieces": 6, "grid": [3, 2], "spacing_px": [24.0, 24.0], "overlap": [0.25, 0.25]}
    again = read_recording(session.directory)  # what a replay reads: the montage analysis finds its pieces
    assert again.frames[4].extra["montage_piece"] == {"column": 2, "row": 0}


def test_a_missing_piece_keeps_the_grid_and_piece_spacing_is_used_when_given(tmp_path):
    mrc, _ = montage_stack(tmp_path, ["0 0 0", "48 0 0", "48 24 0"], name="a.mrc")  # column 1 was not taken
    assert [f.extra["montage_piece"] for f in import_serialem([mrc], tmp_path / "a").frames] == [
        {"column": 0, "row": 0}, {"column": 1, "row": 0}, {"column": 1, "row": 1}]  # 48 px apart seen as one step
    mrc, _ = montage_stack(tmp_path, ["0 0 0", "48 0 0", "48 24 0"], name="b.mrc", spacing="24 24")
    assert [f.extra["montage_piece"] for f in import_serialem([mrc], tmp_path / "b").frames] == [
        {"column": 0, "row": 0}, {"column": 2, "row": 0}, {"column": 2, "row": 1}]


def test_frames_beside_a_montage_keep_no_piece(tmp_path):
    single, _ = write_stack(tmp_path, "single.mrc")
    mrc, _ = montage_stack(tmp_path, ["0 0 0", "24 0 0"], start=10)
    session = import_serialem([single, mrc], tmp_path / "rec")
    assert ["montage_piece" in f.extra for f in session.frames] == [False, False, True, True]


@pytest.mark.parametrize("coordinates, spacing, match", [
    (["0 0 0", "24 0 0", "24 0 0"], None, r"m\.mrc\.mdoc:\d+: section \[ZValue = 2\]: key 'PieceCoordinates' has the "
                                          r"value of section \[ZValue = 1\] \(24 0 0\): two pieces at one place"),
    (["0 0 0", "24 0 0", "36 0 0"], "24 24", r"m\.mrc\.mdoc: key 'PieceCoordinates' x: 36 px lies 12 px off the "
                                             r"grid of pieces 24 px apart from 0 px"),
    (["0 0 0", "24 0 0", "0 0 1", "24 0 1"], None, r"the frames hold 2 montages \(PieceCoordinates m\.mrc\.mdoc z 0, "
                                                  r"m\.mrc\.mdoc z 1\); a recording holds one montage"),
    (["0 0 0", "24 0 0"], "24 abc", r"m\.mrc\.mdoc: key 'PieceSpacing' has bad value '24 abc': must be two numbers"),
    (["0 0 0", "24 0 0"], "0 24", r"key 'PieceSpacing' has bad value '0 24'"),
    (["0 0 0", "2e9 0 0"], None, r"section \[ZValue = 1\]: key 'PieceCoordinates' has bad value 2000000000\.0: "
                                 r"must be a finite number"),
    (["0 0 0", "24 0 0", "1999992 0 0"], None, r"key 'PieceCoordinates' x: 1999992 px is piece 83333 of the grid "
                                               r"of pieces 24 px apart: at most 10000 pieces a side"),
])
def test_a_montage_that_cannot_be_placed_is_refused_in_one_line(tmp_path, coordinates, spacing, match):
    mrc, _ = montage_stack(tmp_path, coordinates, spacing=spacing)
    refused(tmp_path, [mrc], match)


def test_a_montage_with_a_piece_without_coordinates_is_refused(tmp_path):
    mrc, mdoc = montage_stack(tmp_path, ["0 0 0", "24 0 0"])
    mdoc.write_text(mdoc.read_text().replace("PieceCoordinates = 24 0 0\n", ""))
    refused(tmp_path, [mrc], r"m\.mrc\.mdoc:\d+: section \[ZValue = 1\] has no 'PieceCoordinates' while others have")
    other, _ = montage_stack(tmp_path, ["0 0 0", "24 0 0"], name="n.mrc")
    first, _ = montage_stack(tmp_path, ["0 0 0", "24 0 0"], name="o.mrc")
    refused(tmp_path, [first, other], r"the frames hold 2 montages \(PieceCoordinates o\.mrc\.mdoc z 0, "
                                      r"n\.mrc\.mdoc z 0")


def test_missing_files_are_refused(tmp_path):
    assert "file not found" in refused(tmp_path, [tmp_path / "none.mrc"], "none.mrc")
    mrc, mdoc = write_stack(tmp_path)
    mrc.unlink()
    refused(tmp_path, [mdoc], r"s\.mrc\.mdoc: its image stack is missing")
    write_stack(tmp_path, "t.mrc").__getitem__(1).unlink()
    refused(tmp_path, [tmp_path / "t.mrc"], r"t\.mrc: no \.mdoc beside it")


def test_a_cut_stack_is_refused_before_anything_is_written(tmp_path):
    mrc, _ = write_stack(tmp_path)
    mrc.write_bytes(mrc.read_bytes()[:-100])
    refused(tmp_path, [mrc], r"s\.mrc: holds \d+ bytes, its header describes 2 images of 32 x 32 px in \d+ bytes")
    refused(tmp_path, [tmp_path], r"is a folder; give SerialEM \.mrc stacks")


def test_frame_counts_sizes_and_pixel_sizes_must_agree(tmp_path):
    mrc, _ = write_stack(tmp_path, frames=1, sections=2)
    refused(tmp_path, [mrc], r"describes 2 image\(s\), but s\.mrc holds 1")
    mrc, mdoc = write_stack(tmp_path, "t.mrc")
    mdoc.write_text(mdoc.read_text().replace("ImageSize = 32 32", "ImageSize = 64 64"))
    refused(tmp_path, [mrc], r"key 'ImageSize' is 64 64, but t\.mrc holds images of 32 x 32 px")
    first, _ = write_stack(tmp_path, "u.mrc")
    second, _ = write_stack(tmp_path, "v.mrc", pixel=15.76, start=10)
    refused(tmp_path, [first, second], r"different pixel sizes \(0\.788 nm \(u\.mrc\), 1\.576 nm \(v\.mrc\)\)")
    refused(tmp_path, [first, tmp_path / "u.mrc.mdoc"], r"names the stack u\.mrc again")


def test_missing_or_bad_keys_name_the_file_section_and_key(tmp_path):
    mrc, mdoc = write_stack(tmp_path)
    mdoc.write_text("\n".join(line for line in mdoc.read_text().splitlines() if "PixelSpacing" not in line))
    refused(tmp_path, [mrc], r"s\.mrc\.mdoc:\d+: section \[ZValue = 0\]: missing key 'PixelSpacing'")
    mrc, mdoc = write_stack(tmp_path, "t.mrc")
    mdoc.write_text(mdoc.read_text().replace("StagePosition = -15.99 -8.5543", "StagePosition = abc -8.5543"))
    refused(tmp_path, [mrc], r"t\.mrc\.mdoc:\d+: section \[ZValue = 0\]: key 'StagePosition' has bad value 'abc")
    mrc, mdoc = write_stack(tmp_path, "u.mrc")
    mdoc.write_text(mdoc.read_text().replace("StagePosition = -15.99 -8.5543", "StagePosition = nan -8.5543"))
    refused(tmp_path, [mrc], r"key 'StagePosition' has bad value nan: must be a finite number")
    mrc, mdoc = write_stack(tmp_path, "v.mrc")
    mdoc.write_text(mdoc.read_text().replace("DateTime = 31-Mar-23  16:24:02", "DateTime = yesterday"))
    refused(tmp_path, [mrc], r"section \[ZValue = 1\]: key 'DateTime' has bad value 'yesterday'")
    mrc, mdoc = write_stack(tmp_path, "w.mrc")
    mdoc.write_bytes(b"\x00\x01MRC")
    refused(tmp_path, [mrc], r"w\.mrc\.mdoc: not a text file")


def test_an_out_folder_with_content_is_refused(tmp_path):
    mrc, _ = write_stack(tmp_path)
    import_serialem([mrc], tmp_path / "rec")
    refused(tmp_path, [mrc], r"rec: already holds a recording", out_name="rec")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    refused(tmp_path, [mrc], r"busy: exists and is not an empty folder", out_name="busy")
    (tmp_path / "empty").mkdir()
    assert len(import_serialem([mrc], tmp_path / "empty").frames) == 2


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    from stage_acceptance.importers import serialem

    mrc, _ = write_stack(tmp_path)

    def broken(self, stack, z):
        raise SerialEMImportError(f"{stack.mrc}: image {z} cannot be read (disk gone)")

    monkeypatch.setattr(serialem._StackReader, "image", broken)
    refused(tmp_path, [mrc], r"image 0 cannot be read \(disk gone\)")


def test_cli_imports_and_refuses_in_one_line(tmp_path, capsys):
    mrc, _ = write_stack(tmp_path)
    assert main(["import", "serialem", str(mrc), "--out", str(tmp_path / "rec"), "--microscope", "Krios 3"]) == 0
    out = capsys.readouterr().out
    assert "imported 2 frames of Krios 3" in out and "--replay=" in out
    assert json.loads((tmp_path / "rec" / "session.json").read_text())["microscope"] == "Krios 3"
    assert main(["import", "serialem", str(mrc), "--out", str(tmp_path / "rec")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("stage-acceptance import: error: ") and "already holds" in err
    assert main(["import", "serialem", str(mrc), "--out", str(tmp_path / "m"), "--image-shift-matrix", "1", "0",
                 "0", "inf"]) == 2
    assert "--image-shift-matrix 1 0 0 inf: needs 4 finite numbers" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    # a readback-only recording answers no moves: serving it is refused in one line, not a traceback
    assert main(["serve", "--replay", str(tmp_path / "rec"), "--bind", "tcp://127.0.0.1:0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no recorded target (target: null)" in err


def test_a_stage_to_image_calibration_is_written_when_given(tmp_path, capsys):
    mrc, _ = write_stack(tmp_path)
    assert main(["import", "serialem", str(mrc), "--out", str(tmp_path / "rec"), "--stage-to-image", "-92.5",
                 "--flip-y"]) == 0
    assert "stage-to-image rotation -92.5 deg, flipped as given" in capsys.readouterr().out
    assert json.loads((tmp_path / "rec" / "session.json").read_text())["stage_to_image"] == {
        "rotation_deg": -92.5, "flip_y": True}
    for options, message in ((["--flip-y"], "--flip-y needs --stage-to-image DEG"),
                             (["--stage-to-image", "nan"], "--stage-to-image nan: needs a finite rotation within "
                                                           "-+360 deg"),
                             (["--stage-to-image", "400"], "--stage-to-image 400.0: needs a finite rotation")):
        assert main(["import", "serialem", str(mrc), "--out", str(tmp_path / "no"), *options]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
        assert not (tmp_path / "no").exists()


def test_a_copy_of_the_real_mdoc_without_its_stack_is_refused(tmp_path):
    shutil.copy(SERIALEM_DATA / "test_000.mdoc", tmp_path)
    message = refused(tmp_path, [tmp_path / "test_000.mdoc"], "its image stack is missing")
    assert "test0.mrc" in message  # the ImageFile the .mdoc names was looked for too

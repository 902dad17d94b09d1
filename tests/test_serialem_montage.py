"""End to end on a simulated SerialEM montage with known piece errors: the simulator's 3 x 3
montage of 128 px frames (``tests/configs/montage.toml``: backlash, scale error and landing
noise put the pieces tens of nm off) written as SerialEM writes a montage (an MRC stack and
its ``.mdoc`` with ``PieceCoordinates``, a readback of the motors quantised to 19.5 nm,
``ImageShift`` in SerialEM's units), imported with the command line and analysed. Taken by stage moves, and
by image shift with the stage standing still (its readback does not move)."""

import json
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta

import mrcfile
import numpy as np
import pytest

from conftest import CONFIGS, SUITES
from stage_acceptance.analysis import analyse
from stage_acceptance.certification import metric_checks
from stage_acceptance.cli import main
from stage_acceptance.config import load_holder, load_microscope
from stage_acceptance.figures import all_figures
from stage_acceptance.geometry import StagePosition, StageToImage
from stage_acceptance.protocols import build
from stage_acceptance.report import montage_json, notes_lines
from stage_acceptance.session import read_recording
from stage_acceptance.sim.microscope import SimulatedMicroscope

SPACING_PX = 90
"""SerialEM's piece spacing for 128 px frames at the montage's 30 % overlap (whole pixels)."""
IMAGE_SHIFT_NM_PER_UNIT = np.array([[980.0, 60.0], [-40.0, 1010.0]])
"""A Thermo Fisher-like image-shift calibration: close to 1 um per unit, turned a little."""
START = datetime(2023, 3, 31, 16, 24, 14)
READBACK_QUANTUM_NM = 19.5


def acquire(by_image_shift: bool):
    """Take the montage on the simulator; return images, readback, image shift (nm) and the true
    stage positions (nm), one row per piece, and each piece's (column, row)."""
    config = load_microscope(CONFIGS / "montage.toml")
    scope = SimulatedMicroscope(config)
    protocol, = build(config.protocol, ["montage"], field_nm=config.frame_px * config.pixel_size_nm,
                      stage_to_image=config.stage_to_image)
    origin = scope.position()
    images, readback, shift, stage, pieces = [], [], [], [], []
    for visit in protocol.visits:
        offset = visit.offset.as_array()
        # the simulated field is where the stage puts the specimen; by image shift the stage is
        # to stand at the origin and the beam is shifted by the piece's offset, so the field
        # seen is (true stage position + image shift): the stage's own errors stay in it
        scope.move_to(StagePosition.from_array(origin.as_array() + offset))
        images.append(scope.acquire())
        truth = scope.truth[-1]
        if by_image_shift:
            readback.append(origin.xy_nm())
            shift.append(offset[:2])
        else:  # a readback of the motors (where the stage was sent) on SerialEM's 19.5 nm grid of the Titan
            readback.append(np.round(np.asarray(truth.target.xy_nm()) / READBACK_QUANTUM_NM) * READBACK_QUANTUM_NM)
            shift.append(np.zeros(2))
        stage.append(np.asarray(truth.actual.xy_nm()) - shift[-1])
        pieces.append(visit.piece)
    return (np.array(images), np.array(readback, dtype=float), np.array(shift), np.array(stage),
            pieces, config.pixel_size_nm)


def write_serialem(folder, name, images, readback_nm, shift_nm, pieces, pixel_nm):
    """An MRC stack and its ``.mdoc`` as SerialEM writes a montage file."""
    with mrcfile.new(folder / name) as mrc:
        mrc.set_data(np.rint(images).astype(np.int16))
    shift_units = np.linalg.solve(IMAGE_SHIFT_NM_PER_UNIT, shift_nm.T).T
    lines = [f"PixelSpacing = {pixel_nm * 10:g}", "Voltage = 300",
             "Version = SerialEM Version 4.0.20 32-bit,  built Feb 17 2023  20:16:11", f"ImageFile = {name}",
             f"ImageSize = {images.shape[2]} {images.shape[1]}", "Montage = 1", "DataMode = 1",
             f"PieceSpacing = {SPACING_PX} {SPACING_PX}", "",
             f"[T = SerialEM: Simulated Titan    {START:%d-%b-%y  %H:%M:%S}    ]", "",
             "[T =     Tilt axis angle = -90.0, binning = 1  spot = 7  camera = 0]", ""]
    for z, ((column, row), (x, y), (ix, iy)) in enumerate(zip(pieces, readback_nm, shift_units)):
        taken = START + timedelta(seconds=7 * z + 1)
        lines += [f"[ZValue = {z}]", f"PieceCoordinates = {column * SPACING_PX} {row * SPACING_PX} 0",
                  f"MinMaxMean = {images[z].min():g} {images[z].max():g} {images[z].mean():.2f}",
                  "TiltAngle = -0.000488", f"StagePosition = {x / 1000:.4f} {y / 1000:.4f}", "StageZ = -123.688",
                  "Magnification = 115000", f"PixelSpacing = {pixel_nm * 10:g}", "SpotSize = 7",
                  f"ImageShift = {ix:.6f} {iy:.6f}", "ExposureTime = 0.524", "Binning = 1", "MagIndex = 10",
                  f"DateTime = {taken:%d-%b-%y  %H:%M:%S}", ""]
    (folder / f"{name}.mdoc").write_text("\r\n".join(lines))
    return folder / name


def true_errors(stage_nm, readback_nm):
    """Each piece's true stage error against its readback, counted from the first piece."""
    return (stage_nm - stage_nm[0]) - (readback_nm - readback_nm[0])


def rms(vectors):
    return float(np.sqrt(np.mean(np.sum(np.asarray(vectors) ** 2, axis=1))))


@pytest.fixture(scope="module")
def montages(tmp_path_factory):
    """Both montages written as SerialEM files and imported with the command line; the image-shift
    montage twice: calibrated (--image-shift-matrix) and in SerialEM's units only."""
    root = tmp_path_factory.mktemp("serialem-montage")
    made = {}
    for kind, by_image_shift in (("stage", False), ("shift", True)):
        images, readback, shift, stage, pieces, pixel = acquire(by_image_shift)
        mrc = write_serialem(root, f"{kind}.mrc", images, readback, shift, pieces, pixel)
        made[kind] = {"readback": readback, "stage": stage, "pieces": pieces, "mrc": mrc}
    matrix = ["--image-shift-matrix", *(str(v) for v in IMAGE_SHIFT_NM_PER_UNIT.ravel())]
    # with the calibrated stage-to-image rotation (the simulator's, 0 deg); estimated from the moves it
    # absorbs part of the stage's errors (about 0.1 deg here, 1-2 nm over the montage): "estimated"
    calibrated = ["--stage-to-image", "0"]
    for kind, source, options in (("stage", "stage", [*matrix, *calibrated]),
                                  ("shift", "shift", [*matrix, *calibrated]), ("raw", "shift", calibrated),
                                  ("estimated", "shift", matrix), ("unoriented", "shift", [])):
        out = root / f"{kind}-recording"
        assert main(["import", "serialem", str(made[source]["mrc"]) + ".mdoc", "--out", str(out), *options]) == 0
        made[kind] = {**made[source], "recording": out}
    return made


@pytest.fixture(scope="module")
def suites_run(montages, tmp_path_factory):
    """``pytest suites/ --replay -m montage`` on the stage montage, in a subprocess."""
    work = tmp_path_factory.mktemp("suites")
    shutil.copytree(SUITES, work / "suites")
    results = work / "r.json"
    run = subprocess.run([sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider", "-q", "-m", "montage",
                          f"--replay={montages['stage']['recording']}", f"--html={work / 'r.html'}",
                          f"--results-json={results}"], cwd=work, capture_output=True, text=True, timeout=300)
    return run, json.loads(results.read_text())


def test_the_import_places_every_piece_on_its_grid(montages):
    session = read_recording(montages["stage"]["recording"])
    assert session.stage_to_image == StageToImage(0.0, False)
    assert [tuple(f.extra["montage_piece"].values()) for f in session.frames] == montages["stage"]["pieces"]
    assert all(f.target is None for f in session.frames)
    imported = session.meta["stage_acceptance"]["imported"]["montage"]
    assert imported["grid"] == [3, 3] and imported["overlap"] == [pytest.approx(0.2969, abs=1e-4)] * 2


def test_a_stage_montage_replayed_by_the_suites_recovers_the_known_piece_errors(montages, suites_run):
    run, document = suites_run
    # both montage tests pass; a montage alone certifies no case, and -m montage asks for none
    assert run.returncode == 0, run.stdout[-3000:]
    assert document["verdict"] == "not certified" and document["tests"] == {"passed": 2, "failed": 0, "skipped": 0}
    # the raster neighbours, and diagonal ones where the quantised readback puts them 10 % of the field together
    assert re.search(r"montage of 9 pieces: registering \d more pair\(s\) of overlapping pieces \(1[2-6] in all\)",
                     run.stdout)
    montage = document["montage"]
    assert montage["grid"] == [3, 3] and montage["placed"] == 9 and montage["unplaced"] == []
    assert montage["against"] == "readback" and montage["moved_by"] == "stage"
    assert "placed by stage moves" in montage["measured"]
    expected = true_errors(montages["stage"]["stage"], montages["stage"]["readback"])
    assert rms(expected[1:]) > 20.0  # the stage errs well beyond 1 nm from where its readback says
    found = np.array([piece["reported_error_nm"] for piece in montage["pieces"]])
    assert rms(found - expected) < 1.0
    checks = document["checks"]
    assert checks["montage.neighbour_error_max_nm"]["passed"] is True
    assert checks["montage.unplaced_pieces"]["passed"] is True and checks["montage.unplaced_pieces"]["value"] == 0
    assert checks["montage.reported_error_rms_nm"]["value"] == pytest.approx(rms(expected[1:]), abs=1.0)
    assert "target null" in checks["montage.error_rms_nm"]["not_measured"]


@pytest.fixture(scope="module")
def shifted(montages):
    return analyse(read_recording(montages["shift"]["recording"]), jobs=1)


def test_a_montage_by_image_shift_measures_the_stage_standing_still(montages, shifted):
    result = shifted.montage
    assert result.moved_by == "image shift" and result.placed.all() and not result.stage_unknown
    assert np.ptp(result.reported_nm, axis=0).tolist() == [0.0, 0.0]  # the readback never moved
    expected = true_errors(montages["shift"]["stage"], montages["shift"]["readback"])
    assert rms(expected[1:]) > 20.0  # the stage moved tens of nm while its readback stood still
    assert rms(result.reported_error_nm - expected) < 1.0  # the image shift subtracted from every pair
    # relative to the first piece (a corner): the centre piece is one step along each axis from it
    assert result.image_shift_nm[0].tolist() == [0.0, 0.0]
    assert np.allclose(result.image_shift_nm[4], [-655.872, -655.872], atol=0.01)
    document = montage_json(shifted)
    assert document["moved_by"] == "image shift" and document["against"] == "readback"
    assert document["measured"].startswith("the pieces were placed by image shift while the stage was to stand "
                                           "still: each piece's error is the stage's own motion")
    assert any(line.startswith("montage: the pieces were placed by image shift") for line in notes_lines(shifted))
    # the non-consecutive pairs' image-shift changes are reported with the consecutive ones'
    subtracted = {tuple(item["frames"]) for item in shifted.image_shift["subtracted"]}
    registered = {(int(result.frames[a]), int(result.frames[b]))
                  for (a, b), r in zip(result.pairs, result.registrations) if r.ok}
    assert subtracted == registered and len(registered) >= 10 and len(result.pairs) == 12
    checks = metric_checks(shifted, load_holder("default"))
    assert checks["montage.neighbour_error_max_nm"].passed and checks["montage.unplaced_pieces"].value == 0


def test_the_image_shift_moves_alone_orient_the_image(montages):
    analysis = analyse(read_recording(montages["estimated"]["recording"]), jobs=1)
    assert analysis.stage_to_image.status == "estimated"  # the readback never moved: the image shift did
    assert abs(analysis.transform.rotation_deg) < 0.3 and not analysis.transform.flip_y
    result = analysis.montage
    expected = true_errors(montages["estimated"]["stage"], montages["estimated"]["readback"])
    assert result.placed.all() and rms(result.reported_error_nm - expected) < 0.1 * rms(expected[1:])
    assert analysis.metrics["montage.neighbour_error_max_nm"].measured


def test_an_uncalibrated_image_shift_leaves_the_stage_motion_unmeasured_and_says_why(montages):
    analysis = analyse(read_recording(montages["raw"]["recording"]), jobs=1)
    result = analysis.montage
    assert result.moved_by == "image shift"
    assert len(result.pairs) == 12  # the raster neighbours: the fields' offsets are unknown
    registered = [k for k, r in enumerate(result.registrations) if r.ok]
    assert len(registered) >= 10 and sorted(result.stage_unknown) == registered  # (no prior to help them)
    reasons = result.pair_reasons()
    assert all(reasons[k].startswith("registered, but its stage displacement is unknown: the image shift changed "
                                     "by") for k in registered)
    assert result.unplaced() == [] and not result.placed[1:].any()  # the pieces stitch, none has a stage position
    for name in ("montage.reported_error_rms_nm", "montage.growth_nm_per_piece", "montage.neighbour_error_max_nm"):
        reason = analysis.metrics[name].reason
        assert not analysis.metrics[name].measured and reason.endswith(
            f"; {len(registered)} registered pair(s) of pieces have no known stage displacement (the image shift "
            f"changed by {reason.split('changed by ', 1)[-1]}") and "no calibration of them to nm" in reason, reason
    assert len(analysis.image_shift["not_measured"]) == len(registered)
    document = montage_json(analysis)
    assert "only whether they stitch is measured there" in document["measured"]
    assert all_figures(analysis).get("montage") is None  # the fields cannot be placed: their image shift is unknown
    checks = metric_checks(analysis, load_holder("default"))
    unplaced = checks["montage.unplaced_pieces"]
    assert unplaced.value == 0 and unplaced.passed  # the stitching is measured: no failure for want of a calibration
    assert checks["montage.neighbour_error_max_nm"].passed is None
    # without the calibrated rotation nothing orients the image: the same montage measures nothing, saying why
    unoriented = analyse(read_recording(montages["unoriented"]["recording"]), jobs=1)
    assert unoriented.stage_to_image.status == "unknown"
    assert unoriented.metrics["montage.unplaced_pieces"].reason.startswith(
        "needs the stage-to-image orientation, which is unknown; ")
    assert "registered pair(s) of pieces have no known stage displacement" in unoriented.metrics[
        "montage.unplaced_pieces"].reason

"""End to end on real data: the six NIST Titan frames SerialEM recorded are imported with
the command line and analysed by the acceptance suites (``--replay``). SerialEM
recorded no command, so nothing is certified; the image shift (in SerialEM's units)
and the readback's 19.5 nm quantum are reported, and every pair is registered."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import SERIALEM_DATA, SUITES
from stage_acceptance.cli import main


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    root = tmp_path_factory.mktemp("nist")
    assert main(["import", "serialem", *(str(SERIALEM_DATA / f"test_00{k}.mdoc") for k in range(3)),
                 "--out", str(root / "recording")]) == 0
    return root


@pytest.fixture(scope="module")
def suites_run(replayed, tmp_path_factory):
    """``pytest suites/ --replay`` on the imported recording, in a subprocess."""
    work = tmp_path_factory.mktemp("suites")
    shutil.copytree(SUITES, work / "suites")
    html, results = work / "r.html", work / "r.json"
    run = subprocess.run([sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider", "-q",
                          f"--replay={replayed / 'recording'}", f"--html={html}", f"--results-json={results}"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    return run, json.loads(results.read_text()), html.read_text()


def test_no_lateral_command_certifies_nothing(suites_run):
    run, document, _ = suites_run
    assert run.returncode == 1, run.stdout[-2000:]
    assert "NIST Titan D3094, holder 'default': NOT CERTIFIED" in run.stdout
    assert document["verdict"] == "not certified" and document["certification"]["case"] is None
    assert document["tests"] == {"passed": 0, "failed": 1, "skipped": 22}  # the verdict test fails, the rest skip
    for pair in ("target_reported", "target_actual"):
        assert document["pairs"][pair]["agree"] is None
        assert all("target null in every frame" in why for why in document["pairs"][pair]["missing"])
    assert "target null in every frame" in document["checks"]["x.backlash_nm"]["not_measured"]


def test_every_pair_is_registered_and_the_tilt_pairs_on_the_central_region(suites_run):
    run, document, _ = suites_run
    steps = document["steps"]
    assert steps["total"] == steps["registered"] == 5 and steps["not_registered"] == []
    assert steps["across_tilt_central_region"] == [[1, 2], [3, 4]]  # 0 -> -5 deg, -5 -> +5 deg
    assert "2 pair(s) across a tilt change registered on the central region" in run.stdout


def test_the_uncalibrated_image_shift_is_reported_and_its_pairs_not_measured(suites_run):
    run, document, page = suites_run
    shift = document["image_shift"]
    assert shift["recorded"] == "raw" and shift["frames_with_image_shift"] == 6 and shift["subtracted"] == []
    assert [line.split(":")[0] for line in shift["not_measured"]] == ["frames 1->2", "frames 3->4"]
    assert "changed by (-0.037251, +0.161108)" in shift["not_measured"][0]
    assert "image shift (raw): 0 change(s) subtracted, 2 pair(s) not measured" in run.stdout
    assert "<h3>Image shift</h3>" in page and "frames 3-&gt;4: the image shift changed" in page


def test_the_readback_quantum_of_19_5_nm_is_reported(suites_run):
    run, document, page = suites_run
    assert document["readback"]["x"]["quantum_nm"] == pytest.approx(19.5)
    assert document["readback"]["x"]["multiples"] == [-1, -1, -4]
    assert document["readback"]["x"]["resolution_nm"] == pytest.approx(0.1)
    assert document["readback"]["y"]["quantum_nm"] is None  # one y step only
    assert "readback quantum: x 19.5 nm (3 steps)" in run.stdout
    assert "<h3>Readback quantum</h3>" in page and "19.5 nm" in page

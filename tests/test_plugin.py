"""The pytest plugin end to end: suites on a small simulated microscope, replay, errors."""

import json
import shutil

import pytest

from conftest import CONFIGS, SUITES
from stage_acceptance.session import read_recording


@pytest.fixture
def suites(pytester):
    """A copy of the project's suites/ in a fresh pytester directory."""
    shutil.copytree(SUITES, pytester.path / "suites")
    return pytester


def run_suites(pytester, *args):
    return pytester.runpytest_subprocess("suites", "-p", "no:cacheprovider", *args)


def test_live_run_certifies_writes_report_results_and_recording(suites, tmp_path):
    html, results, record = tmp_path / "r.html", tmp_path / "r.json", tmp_path / "rec"
    result = run_suites(suites, f"--microscope={CONFIGS / 'case-a.toml'}", "--html", str(html),
                        "--results-json", str(results), "--record", str(record))
    result.assert_outcomes(passed=21)
    result.stdout.fnmatch_lines(["*hysteresis-x: moving the stage, 14 frames*", "*case a (Ideal alignment): ACCEPTED*"])
    document = json.loads(results.read_text())
    assert document["schema"] == "stage-acceptance/results" and document["version"] == 1
    assert document["certification"]["case"] == "a" and document["certification"]["accepted"] is True
    assert document["source"] == "live" and document["session"] == str(record)
    assert document["tests"] == {"passed": 21, "failed": 0, "skipped": 0}
    assert set(document) >= {"schema", "version", "microscope", "holder", "source", "session", "certification",
                             "pairs", "axes", "coupling", "drift_nm_per_min", "stage_to_image", "frames", "tests"}
    assert set(document["certification"]) >= {"case", "title", "accepted", "reasons"}
    for pair in ("target_reported", "target_actual", "reported_actual"):
        assert set(document["pairs"][pair]) >= {"agree", "consistent", "rms_nm"}
    assert set(document["coupling"]) >= {"x_to_y", "y_to_x", "skew_deg"}
    assert document["stage_to_image"] == {"rotation_deg": 0.0, "flip_y": False, "estimated": False}
    assert set(document["axes"]["y"]) == set(document["axes"]["x"])
    assert set(document["axes"]["x"]) >= {"backlash_nm", "scale_error", "step_scatter_nm", "reported_backlash_nm",
                                          "reported_scale_error", "repeatability_nm"}
    assert document["frames"] == len(read_recording(record).frames) == 2 * 14 + 25 + 3 + 2 * 14
    page = html.read_text()
    assert "Case a: Ideal alignment" in page and "ACCEPTED" in page and "data:image/png;base64" in page


def test_failing_stage_fails_its_tests_and_is_not_accepted(suites, tmp_path):
    results = tmp_path / "f.json"
    result = run_suites(suites, f"--microscope={CONFIGS / 'case-f.toml'}", "--results-json", str(results))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    # backlash x and y, and the certification
    assert outcomes["failed"] == 3
    result.stdout.fnmatch_lines(["*FAILED suites/test_certification.py::test_certified_case_is_accepted*",
                                 "*FAILED suites/test_hysteresis.py::test_backlash?x?*"])
    document = json.loads(results.read_text())
    assert document["certification"]["case"] == "f" and not document["certification"]["accepted"]
    assert document["pairs"]["target_actual"]["consistent"] is False
    assert document["axes"]["x"]["backlash_nm"] == pytest.approx(150.0, abs=6.0)
    # the HTML report lands in <rootdir>/reports/ by default
    assert list((suites.path / "reports").glob("case-f-*.html"))
    assert list((suites.path / "reports").glob("case-f-*-recording/frames.jsonl"))


def test_replay_certifies_a_recording_the_same_way(suites, tmp_path):
    live, replay, record = tmp_path / "live.json", tmp_path / "replay.json", tmp_path / "rec"
    # case b is accepted, but its 8 % scale error fails the two scale-error tolerances
    run_suites(suites, f"--microscope={CONFIGS / 'case-b.toml'}", "--results-json", str(live),
               "--record", str(record)).assert_outcomes(passed=19, failed=2)
    result = run_suites(suites, "--replay", str(record), "--holder", "default", "--results-json", str(replay))
    result.assert_outcomes(passed=19, failed=2)
    a, b = json.loads(live.read_text()), json.loads(replay.read_text())
    assert b["source"] == "replay" and b["microscope"] == "case-b"
    assert a["certification"]["case"] == b["certification"]["case"] == "b"
    assert a["axes"] == b["axes"] and a["coupling"] == b["coupling"]


def test_marker_selection_runs_only_the_needed_protocols(suites, tmp_path):
    record = tmp_path / "rec"
    result = run_suites(suites, "-m", "drift", f"--microscope={CONFIGS / 'case-a.toml'}", "--record", str(record))
    result.assert_outcomes(passed=1, deselected=20)
    assert {f.protocol for f in read_recording(record).frames} == {"dwell"}


def test_unknown_microscope_lists_the_available_ones(suites):
    result = run_suites(suites, "--microscope", "no-such-scope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown microscope 'no-such-scope'*sim-grandarm*"])


def test_a_server_that_does_not_answer_is_a_usage_error_before_collection(suites, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "gone.toml"
    config.write_text(f'name = "gone"\nkind = "remote"\n[remote]\nendpoint = "tcp://127.0.0.1:{port}"\n'
                      f'timeout_s = 1.0\n')
    result = run_suites(suites, f"--microscope={config}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*remote microscope at tcp://127.0.0.1:{port}: no reply to 'describe' within 1 s*"])
    assert not (suites.path / "reports").exists()


def test_malformed_replay_names_file_and_line(suites, tmp_path):
    record = tmp_path / "rec"
    run_suites(suites, "-m", "drift", f"--microscope={CONFIGS / 'case-a.toml'}",
               "--record", str(record)).assert_outcomes(passed=1, deselected=20)
    lines = (record / "frames.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"time_s"', '"time"')
    (record / "frames.jsonl").write_text("\n".join(lines) + "\n")
    result = run_suites(suites, "--replay", str(record))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{record / 'frames.jsonl'}:2: missing required key 'time_s'*"])


def test_plugin_is_idle_outside_the_suites(pytester):
    pytester.makepyfile(test_plain="def test_one():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()

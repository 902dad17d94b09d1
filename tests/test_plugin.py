"""The pytest plugin end to end: suites on a small simulated microscope, replay, errors."""

import json
import shutil
from pathlib import Path

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
    result.assert_outcomes(passed=23)
    result.stdout.fnmatch_lines(["*hysteresis-x: moving the stage, 14 frames*",
                                 "case-a, holder 'default': ACCEPTED: case a (Ideal alignment), * within tolerance*"])
    document = json.loads(results.read_text())
    assert document["schema"] == "stage-acceptance/results" and document["version"] == 1
    assert document["verdict"] == "accepted" and document["verdict_headline"].startswith("ACCEPTED: case a")
    assert document["certification"]["case"] == "a" and document["certification"]["accepted"] is True
    assert document["source"] == "live" and document["session"] == str(record)
    assert document["tests"] == {"passed": 23, "failed": 0, "skipped": 0}
    assert set(document) >= {"schema", "version", "microscope", "holder", "source", "session", "certification",
                             "pairs", "axes", "coupling", "drift_nm_per_min", "stage_to_image", "frames", "tests"}
    assert set(document["certification"]) >= {"case", "title", "accepted", "reasons"}
    for pair in ("target_reported", "target_actual", "reported_actual"):
        entry = document["pairs"][pair]
        assert set(entry) >= {"agree", "consistent", "rms_nm", "rms_ci95"}
        assert entry["rms_ci95"][0] <= entry["rms_nm"] <= entry["rms_ci95"][1]
    for name, check in document["checks"].items():
        assert {"ci95", "marginal"} <= set(check), name
        if check["value"] is not None:
            low, high = check["ci95"]
            assert low <= check["value"] <= high, name
    assert set(document["coupling"]) >= {"x_to_y", "y_to_x", "skew_deg"}
    assert document["stage_to_image"]["status"] == "calibrated"
    assert {k: document["stage_to_image"][k] for k in ("rotation_deg", "flip_y", "estimated")} == {
        "rotation_deg": 0.0, "flip_y": False, "estimated": False}
    assert set(document["axes"]["y"]) == set(document["axes"]["x"])
    assert set(document["axes"]["x"]) >= {"backlash_nm", "scale_error", "step_scatter_nm", "reported_backlash_nm",
                                          "reported_scale_error", "repeatability_nm"}
    assert document["frames"] == len(read_recording(record).frames) == 2 * 14 + 25 + 3 + 2 * 14 + 9
    assert document["montage"]["grid"] == [3, 3] and document["montage"]["placed"] == 9
    assert document["checks"]["montage.neighbour_error_max_nm"]["passed"] is True
    page = html.read_text()
    assert "ACCEPTED: case a (Ideal alignment)" in page
    images = page.count("data:image/png;base64")
    assert images == page.count('<figure id="figure-') >= 8  # every figure once, in the certificate
    assert page.count('<figure id="figure-montage"') == 1
    # pytest-html writes its environment table first; the report's CSS shows it last
    assert "#environment-header, #environment { order: 2; }" in page


def test_failing_stage_fails_its_tests_and_is_not_accepted(suites, tmp_path):
    results = tmp_path / "f.json"
    result = run_suites(suites, f"--microscope={CONFIGS / 'case-f.toml'}", "--results-json", str(results))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    # backlash x and y, and the certification
    assert outcomes["failed"] == 3
    result.stdout.fnmatch_lines([
        "*_ test_verdict_is_accepted _*", "NOT ACCEPTED: case f (Misalignment: inconsistent) is not *",
        "*_ test_backlash?x? _*", "Backlash, x = 1* nm (95 % CI 1* to 1* nm), tolerance |.| <= 15 nm: FAIL",
        "*FAILED suites/test_certification.py::test_verdict_is_accepted*"])
    # a failure reads like a test report: one line, no Python
    assert "Check(" not in result.stdout.str() and " at 0x" not in result.stdout.str()
    document = json.loads(results.read_text())
    assert document["verdict"] == "not accepted"
    assert document["certification"]["case"] == "f" and not document["certification"]["accepted"]
    assert document["pairs"]["target_actual"]["consistent"] is False
    assert document["axes"]["x"]["backlash_nm"] == pytest.approx(150.0, abs=6.0)
    # the HTML report lands in <rootdir>/reports/ by default
    assert list((suites.path / "reports").glob("case-f-*.html"))
    assert list((suites.path / "reports").glob("case-f-*-recording/frames.jsonl"))


def test_replay_certifies_a_recording_the_same_way(suites, tmp_path):
    live, replay, record = tmp_path / "live.json", tmp_path / "replay.json", tmp_path / "rec"
    # case b is accepted, but its 8 % scale error fails the two scale-error tolerances, so
    # the run is not accepted: the two scale-error tests and the verdict fail
    run_suites(suites, f"--microscope={CONFIGS / 'case-b.toml'}", "--results-json", str(live),
               "--record", str(record)).assert_outcomes(passed=20, failed=3)
    result = run_suites(suites, "--replay", str(record), "--holder", "default", "--results-json", str(replay))
    result.assert_outcomes(passed=20, failed=3)
    result.stdout.fnmatch_lines(["*NOT ACCEPTED: case b (Misalignment: actual) is accepted, but 2 metric(s) outside "
                                 "tolerance: Scale error, x, Scale error, y*"])
    a, b = json.loads(live.read_text()), json.loads(replay.read_text())
    assert b["source"] == "replay" and b["microscope"] == "case-b"
    assert a["verdict"] == b["verdict"] == "not accepted"
    assert a["certification"]["case"] == b["certification"]["case"] == "b"
    assert a["axes"] == b["axes"] and a["coupling"] == b["coupling"]


def test_marker_selection_runs_only_the_needed_protocols(suites, tmp_path):
    record = tmp_path / "rec"
    result = run_suites(suites, "-m", "drift", f"--microscope={CONFIGS / 'case-a.toml'}", "--record", str(record))
    result.assert_outcomes(passed=1, deselected=22)
    assert {f.protocol for f in read_recording(record).frames} == {"dwell"}


def test_a_montage_alone_measures_the_montage_and_certifies_nothing(suites, tmp_path):
    record, results = tmp_path / "rec", tmp_path / "m.json"
    result = run_suites(suites, "-m", "montage", f"--microscope={CONFIGS / 'montage.toml'}", "--record", str(record),
                        "--results-json", str(results))
    result.assert_outcomes(passed=2, deselected=21)
    result.stdout.fnmatch_lines(["*montage: moving the stage, 9 frames*",
                                 "*montage of 9 pieces: registering 4 more pair(s) of overlapping pieces (12 in all)*",
                                 "*NOT CERTIFIED: the certification test was not selected*"])
    frames = read_recording(record).frames
    assert {f.protocol for f in frames} == {"montage"} and len(frames) == 9
    assert all("montage_piece" in f.extra for f in frames)
    document = json.loads(results.read_text())
    assert document["verdict"] == "not certified" and document["montage"]["placed"] == 9
    assert document["checks"]["montage.unplaced_pieces"]["value"] == 0


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
               "--record", str(record)).assert_outcomes(passed=1, deselected=22)
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


def test_drift_and_tilt_need_no_calibration(suites, tmp_path):
    """-m drift and -m tilt run on a config without [stage_to_image] and certify no case."""
    text = (CONFIGS / "case-a.toml").read_text().replace("[stage_to_image]\nrotation_deg = 0.0\nflip_y = false\n", "")
    assert "stage_to_image" not in text
    config = tmp_path / "uncalibrated.toml"
    config.write_text(text)
    for marker, passed in (("drift", 1), ("tilt", 4)):
        results = tmp_path / f"{marker}.json"
        result = run_suites(suites, "-m", marker, f"--microscope={config}", "--results-json", str(results))
        result.assert_outcomes(passed=passed, deselected=23 - passed)
        result.stdout.fnmatch_lines(["*NOT CERTIFIED: the certification test was not selected*"])
        document = json.loads(results.read_text())
        assert document["verdict"] == "not certified" and document["certification"]["case"] is None
        assert document["stage_to_image"]["status"] == "unknown"
        assert document["stage_to_image"]["rotation_deg"] is None


def test_a_recording_never_chooses_its_holder_file(suites, tmp_path):
    """A case-f recording that names a lenient holder file by path is judged by the default holder."""
    record = tmp_path / "rec"
    run_suites(suites, f"--microscope={CONFIGS / 'case-f.toml'}", "-m", "certification", "--record", str(record))
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('name = "lenient"\n[tolerances]\nagreement_nm = 1e6\nconsistency_nm = 1e6\n'
                       'backlash_nm = 1e6\nscale_error = 1.0\ncoupling = 1.0\nskew_deg = 90.0\n'
                       'repeatability_nm = 1e6\ndrift_nm_per_min = 1e6\n[limits]\nx_nm = [-1e7, 1e7]\n'
                       'y_nm = [-1e7, 1e7]\nz_nm = [-1e7, 1e7]\nalpha_deg = [-80, 80]\nbeta_deg = [-80, 80]\n'
                       '[acceptance]\naccepted_cases = ["a", "b", "c", "d", "e", "f"]\n')
    meta = json.loads((record / "session.json").read_text())
    meta["holder"] = str(lenient)
    (record / "session.json").write_text(json.dumps(meta))
    results = tmp_path / "replay.json"
    result = run_suites(suites, "--replay", str(record), "-m", "certification", "--results-json", str(results))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    document = json.loads(results.read_text())
    assert document["holder"] == "default" and document["certification"]["case"] == "f"
    assert document["verdict"] == "not accepted"
    assert "never chooses a tolerance file" in document["holder_source"]
    result.stdout.fnmatch_lines(["holder: Generic side-entry holder (the shipped default: the recording names "
                                 f"holder '{lenient}'*"])
    # --holder is the user's choice, and the report says so
    again = run_suites(suites, "--replay", str(record), "-m", "certification", f"--holder={lenient}",
                       "--results-json", str(results))
    assert again.ret == pytest.ExitCode.OK
    assert json.loads(results.read_text())["holder_source"] == f"chosen with --holder {lenient}"


def test_a_plan_the_holder_refuses_is_a_usage_error_and_moves_nothing(suites, tmp_path):
    holder = tmp_path / "narrow.toml"
    holder.write_text('name = "narrow"\n[tolerances]\nagreement_nm = 25.0\nconsistency_nm = 10.0\n'
                      'backlash_nm = 15.0\nscale_error = 0.01\ncoupling = 0.01\nskew_deg = 0.5\n'
                      'repeatability_nm = 40.0\ndrift_nm_per_min = 5.0\n[limits]\nx_nm = [-1000.0, 1000.0]\n'
                      'y_nm = [-1e6, 1e6]\nz_nm = [-2e5, 2e5]\nalpha_deg = [-30, 30]\nbeta_deg = [-25, 25]\n'
                      '[acceptance]\naccepted_cases = ["a"]\n')
    record = tmp_path / "rec"
    result = run_suites(suites, f"--microscope={CONFIGS / 'case-a.toml'}", f"--holder={holder}",
                        f"--record={record}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *case-a.toml: protocol hysteresis-x * is refused by holder 'narrow': "
                                 "move refused: x = 1200 nm is outside the holder limit x_nm = ?-1000, 1000?; "
                                 "nothing was sent to the stage"])
    assert len(result.stderr.lines) <= 2 and "Traceback" not in result.stderr.str()
    assert not record.exists()
    assert not (suites.path / "reports").exists()
    # a selection that does not go that far is not refused
    run_suites(suites, f"--microscope={CONFIGS / 'case-a.toml'}", f"--holder={holder}", "-m", "drift",
               f"--record={record}").assert_outcomes(passed=1, deselected=22)


def test_an_incomplete_recording_never_exits_0(suites, tmp_path):
    record = tmp_path / "rec"
    run_suites(suites, "-m", "drift", f"--microscope={CONFIGS / 'case-a.toml'}", f"--record={record}")
    text = (record / "frames.jsonl").read_text()
    (record / "frames.jsonl").write_text(text[:-30])  # a torn last line, as a killed run leaves it
    results = tmp_path / "r.json"
    result = run_suites(suites, "-m", "drift", f"--replay={record}", f"--results-json={results}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*INCOMPLETE: the recording is incomplete: *frames.jsonl:3: the last line is torn*"])
    assert json.loads(results.read_text())["verdict"] == "incomplete"


def test_the_analysis_progress_line_says_rate_and_time_left():
    from stage_acceptance.plugin import pairs_line

    assert pairs_line(40, 160, 2.0) == "  registered 40/160 pairs, 20.0 pairs/s, 6 s left"
    assert pairs_line(0, 160, 0.0) == "  registered 0/160 pairs, 0.0 pairs/s, time left unknown"
    assert pairs_line(160, 160, 8.04) == "  registered 160/160 pairs in 8.0 s"


def test_jobs_must_be_a_sane_number(suites):
    result = run_suites(suites, "--jobs=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--jobs 0: must be an integer from 1 to 256*"])


def test_a_service_visit_is_recorded_and_compared_with_the_last_accepted_run(suites, tmp_path):
    """Before the visit: an accepted run of case-a in reports/history.sqlite (analysed here,
    in-process, to keep the test fast). After it (60 nm of x backlash): --baseline last finds
    it, the regression test fails on the backlash, the results JSON has a baseline section,
    the report starts with "Since the baseline", and the run is recorded too."""
    from conftest import record_sim
    from stage_acceptance.acceptance import AcceptanceRun
    from stage_acceptance.config import load_microscope
    from stage_acceptance.history import History, history_url

    reports = suites.path / "reports"
    record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "before-rec")
    before = AcceptanceRun("sim", None, str(tmp_path / "before-rec"), reports_dir=reports,
                           results=str(tmp_path / "before.json"), label="SN 1234", note="before the service visit")
    before.evaluate()
    before.write_results({})
    assert before.record_history(None) == 1 and before.verdict.word == "accepted"
    before.close()
    database = reports / "history.sqlite"
    after = tmp_path / "after.json"
    result = run_suites(suites, "-m", "hysteresis or certification or regression",
                        f"--microscope={CONFIGS / 'case-a-after-service.toml'}", f"--results-json={after}",
                        "--baseline=last", "--note=service visit: x motor replaced")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*_ test_no_regression?x.backlash_nm? _*",
        "Backlash, x: * nm -> * nm, change +* nm (95 % CI * nm), significantly worse; * worse is beyond the "
        "regression tolerance 10 nm",
        "since the baseline: verdict accepted -> not accepted, case a -> f; * significantly worse beyond the "
        "regression tolerance: Backlash, x*",
        f"  baseline: the last accepted run in the history {database}: entry 1, measured *, note: before the "
        f"service visit",
        f"history: entry 2 in {database}"])
    outcomes = result.parseoutcomes()
    from stage_acceptance.analysis import MONTAGE_METRICS

    # tilt (4) and montage: measured in neither run
    assert outcomes["passed"] >= 20 and outcomes["skipped"] == 4 + len(MONTAGE_METRICS)
    document = json.loads(after.read_text())
    section = document["baseline"]
    assert (section["verdict"], section["case"], section["verdict_after"], section["case_after"]) == \
        ("accepted", "a", "not accepted", "f")
    assert section["date_utc"] == json.loads((tmp_path / "before.json").read_text())["date_utc"]
    assert "x.backlash_nm" in section["regressed"] and "y.backlash_nm" not in section["regressed"]
    backlash = section["metrics"]["x.backlash_nm"]
    assert backlash["significant"] and backlash["worse"] and backlash["change"] > 50
    assert set(document["hysteresis"]) == {"x", "y"}
    with History(history_url(str(database), tmp_path)) as history:
        runs = history.runs("case-a", "default")
    assert [(r.verdict, r.case, r.label, r.note) for r in runs] == [
        ("accepted", "a", "SN 1234", "before the service visit"),
        ("not accepted", "f", None, "service visit: x motor replaced")]
    assert runs[1].results == document and runs[1].results_path == str(after)
    assert runs[1].recording_path == document["session"]
    text = Path(runs[1].report_path).read_text()
    assert text.index("Since the baseline") < text.index('id="stage-acceptance-certificate"')
    assert "Hysteresis of both runs" in text


def test_the_framework_tests_and_only_they_are_spread_over_the_cores(monkeypatch):
    from types import SimpleNamespace

    from stage_acceptance.plugin import PROJECT_TESTS, pytest_load_initial_conftests

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    root = PROJECT_TESTS.parent

    def args_after(args, here=root, xdist=True):
        config = SimpleNamespace(pluginmanager=SimpleNamespace(has_plugin=lambda name: xdist),
                                 invocation_params=SimpleNamespace(dir=here))
        args = list(args)
        pytest_load_initial_conftests(config, None, args)
        return args

    assert args_after([]) == ["-n", "auto"]  # plain `pytest` in the project
    assert args_after(["-q", "-k", "readback"]) == ["-n", "auto", "-q", "-k", "readback"]
    assert args_after(["tests"]) == ["-n", "auto", "tests"]
    assert args_after(["tests/test_plugin.py"]) == ["tests/test_plugin.py"]  # one file: one process
    assert args_after(["suites/"]) == ["suites/"]  # an acceptance run drives one microscope
    assert args_after(["--replay=reports/x"], here=root / "suites") == ["--replay=reports/x"]
    assert args_after(["-n", "0"]) == ["-n", "0"]
    assert args_after(["-p", "no:xdist"]) == ["-p", "no:xdist"]
    assert args_after([], xdist=False) == []
    assert args_after([], here=root.parent) == []  # elsewhere: not the project's tests
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert args_after([]) == []

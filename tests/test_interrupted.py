"""A run that stops early: Ctrl-C stops the stage and leaves it there, the recording is
intact up to the last frame, and the partial report says the run is incomplete."""

import json
import shutil
import textwrap

import pytest

from conftest import CONFIGS, SUITES
from stage_acceptance import acceptance
from stage_acceptance.acceptance import AcceptanceRun
from stage_acceptance.session import read_recording
from failing_scope import FailingScope


@pytest.mark.parametrize("error, expected", [
    (KeyboardInterrupt(), "interrupted (Ctrl-C), stage stopped where it was"),
    (RuntimeError("remote microscope tcp://127.0.0.1:9: no reply within 2 s"), "no reply within 2 s"),
])
def test_an_interrupted_run_keeps_its_recording_and_says_it_is_incomplete(tmp_path, monkeypatch, error, expected):
    scopes = []

    def failing(config):
        scopes.append(FailingScope(config, 30, error))
        return scopes[0]

    monkeypatch.setattr(acceptance, "open_microscope", failing)
    run = AcceptanceRun(str(CONFIGS / "case-f.toml"), None, None, reports_dir=tmp_path)
    with pytest.raises(type(error)):
        run.session()
    assert (scopes[0].calls == ["stop"]) == isinstance(error, KeyboardInterrupt)
    assert "after 30 frame(s)" in run.incomplete and expected in run.incomplete
    assert len(read_recording(run.outputs.recording).frames) == 30
    analysis = run.evaluate_partial()
    assert analysis is not None and analysis.frames == 30
    assert run.certificate.accepted is False
    document = run.results({"passed": 0, "failed": 0, "skipped": 0})
    assert document["incomplete"] == run.incomplete and document["frames"] == 30


def test_the_partial_report_says_incomplete(pytester, tmp_path):
    shutil.copytree(SUITES, pytester.path / "suites")
    # A conftest beside the suites makes the simulated stage fail after 20 frames.
    pytester.makeconftest(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(CONFIGS.parent)!r})
        from stage_acceptance import acceptance
        from failing_scope import FailingScope

        acceptance.open_microscope = lambda config: FailingScope(config, 20, RuntimeError("server lost"))
    """))
    html, results = tmp_path / "r.html", tmp_path / "r.json"
    result = pytester.runpytest_subprocess("suites", "-p", "no:cacheprovider", f"--microscope={CONFIGS / 'case-a.toml'}",
                                           f"--html={html}", f"--results-json={results}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*INCOMPLETE RUN*", "*stopped after 20 frame(s): server lost*"])
    page = html.read_text()
    assert "INCOMPLETE RUN" in page and "server lost" in page
    document = json.loads(results.read_text())
    assert "server lost" in document["incomplete"] and document["certification"]["accepted"] is False


def test_ctrl_c_during_the_analysis_stops_it_and_marks_the_run_incomplete(tmp_path):
    import time

    from stage_acceptance.registry import register_all, registration_plan

    run = AcceptanceRun(str(CONFIGS / "case-a.toml"), None, None, reports_dir=tmp_path, jobs=2)
    session = run.session()
    calls = []

    def interrupt(done, total):
        calls.append((done, total, time.monotonic()))
        raise KeyboardInterrupt  # as Ctrl-C arrives in the main thread while pairs are registered

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run.evaluate(pairs_progress=interrupt)
    assert time.monotonic() - started < 30  # the first batch only, not the whole session
    assert len(calls) == 1 and calls[0][0] < calls[0][1]
    assert "interrupted (Ctrl-C) during the analysis" in run.incomplete
    assert run.analysis is None and read_recording(run.outputs.recording).incomplete is None
    # the registry itself: pairs not started are dropped, and a second run gives every pair
    plan = registration_plan(session)
    assert len(register_all(session, plan.pairs, session.stage_to_image, jobs=2)) == len(plan.pairs)

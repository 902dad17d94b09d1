"""AcceptanceRun: sources, holders and output paths, without pytest."""

from pathlib import Path

import pytest

from conftest import CONFIGS, record_sim
from stage_acceptance.acceptance import AcceptanceRun, default_outputs
from stage_acceptance.config import ConfigError, load_microscope


def test_outputs_default_to_reports_named_after_the_instrument(tmp_path):
    out = default_outputs(tmp_path, "sim grand/arm", "20261124T000000Z")
    assert out.html == tmp_path / "sim_grand_arm-20261124T000000Z.html"
    assert out.results_json == tmp_path / "sim_grand_arm-20261124T000000Z.json"
    assert out.recording == tmp_path / "sim_grand_arm-20261124T000000Z-recording"
    given = default_outputs(tmp_path, "m", "t", html="x/r.html", record="rec", replay=False)
    assert (given.html, given.results_json, given.recording) == (Path("x/r.html"), Path("x/r.json"), Path("rec"))


def test_replay_and_record_exclude_each_other(tmp_path):
    record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec", protocols=["dwell"])
    with pytest.raises(ConfigError, match="records nothing"):
        AcceptanceRun("sim", None, str(tmp_path / "rec"), reports_dir=tmp_path, record=str(tmp_path / "other"))


def test_replay_takes_the_recorded_holder_when_it_ships(tmp_path):
    record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec", protocols=["dwell"],
               holder="jeol-double-tilt")
    run = AcceptanceRun("sim", None, str(tmp_path / "rec"), reports_dir=tmp_path)
    assert run.holder.key == "jeol-double-tilt" and run.source == "replay"
    assert run.microscope_name == "case-a" and run.outputs.recording is None
    assert run.outputs.html.name.startswith("case-a-")


def test_live_run_refuses_an_existing_recording_before_moving(tmp_path):
    record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec", protocols=["dwell"])
    with pytest.raises(ConfigError, match="already holds a recording"):
        AcceptanceRun(str(CONFIGS / "case-a.toml"), None, None, reports_dir=tmp_path, record=str(tmp_path / "rec"))


def test_a_recording_as_baseline_is_analysed_with_this_runs_holder(tmp_path):
    record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "before", protocols=["dwell"])
    record_sim(load_microscope(CONFIGS / "case-a-after-service.toml"), tmp_path / "after", protocols=["dwell"])
    run = AcceptanceRun("sim", "jeol-double-tilt", str(tmp_path / "after"), reports_dir=tmp_path,
                        baseline=str(tmp_path / "before"))
    run.evaluate()
    comparison = run.comparison
    assert comparison.source == f"the recording {tmp_path / 'before'}, analysed again with holder 'jeol-double-tilt'"
    assert list(comparison.metrics) == ["drift_nm_per_min"]  # all a dwell measures
    drift = comparison.metrics["drift_nm_per_min"]
    assert drift.before is not None and drift.after is not None and drift.tolerance == 2.5
    document = run.results({})
    assert document["baseline"]["metrics"]["drift_nm_per_min"]["before"] == drift.before
    assert document["baseline"]["holder"] == "jeol-double-tilt"


def test_baseline_last_is_the_last_accepted_run_measured_before_this_one(tmp_path):
    from conftest import results_document as document
    from stage_acceptance.history import History, history_url

    record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec", protocols=["dwell"])
    database = tmp_path / "h.sqlite"
    with History(history_url(str(database), tmp_path)) as history:
        history.record(document("case-a", backlash_nm=1.0, measured="2026-01-01T00:00:00+00:00"), note="old")
        history.record(document("case-a", backlash_nm=2.0, measured="2026-02-01T00:00:00+00:00"), note="last")
        history.record(document("case-a", verdict="not accepted", measured="2026-03-01T00:00:00+00:00"))
        history.record(document("case-a", holder="jeol-double-tilt", measured="2026-03-02T00:00:00+00:00"))
        history.record(document("case-a", measured="2099-01-01T00:00:00+00:00"))  # measured after this recording
    run = AcceptanceRun("sim", "default", str(tmp_path / "rec"), reports_dir=tmp_path, baseline="last",
                        history=str(database))
    run.open_history()
    assert run.baseline_document["checks"]["x.backlash_nm"]["value"] == 2.0
    assert run.baseline_source.endswith("entry 2, measured 2026-02-01 00:00:00 UTC, note: last")
    run.close()
    other = AcceptanceRun("sim", "jeol-double-tilt", str(tmp_path / "rec"), reports_dir=tmp_path, baseline="last",
                          history=str(tmp_path / "empty.sqlite"))
    with pytest.raises(ConfigError, match=f"--baseline last: the history {tmp_path / 'empty.sqlite'} holds no "
                                          f"accepted run of 'case-a' with holder 'jeol-double-tilt' measured before "
                                          f"this one; give --baseline PATH"):
        other.open_history()  # the plugin calls it before any test runs: a usage error, nothing moves
    other.close()


def test_a_bad_history_or_baseline_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--baseline .*none.json: no such file or folder"):
        AcceptanceRun("sim", None, None, reports_dir=tmp_path, baseline=str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text('{"schema": "stage-acceptance/results"}')
    with pytest.raises(ConfigError, match="bad.json: missing required key 'version'"):
        AcceptanceRun("sim", None, None, reports_dir=tmp_path, baseline=str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="--note: must be one line|--note 'a\\\\nb': must be one line"):
        AcceptanceRun("sim", None, None, reports_dir=tmp_path, note="a\nb")
    with pytest.raises(ConfigError, match="database kind 'oracle' is not supported"):
        AcceptanceRun("sim", None, None, reports_dir=tmp_path, history="oracle://h/db")

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

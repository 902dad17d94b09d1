"""Fleet re-analysis: many recordings in one command, on local processes and on a Dask cluster."""

from __future__ import annotations

import json

import pytest

from conftest import CONFIGS, record_sim
from stage_acceptance.cli import main
from stage_acceptance.config import ConfigError, load_microscope
from stage_acceptance.fleet import analyse_recordings, find_recordings, output_stem
from stage_acceptance.history import History, history_url


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A night of recordings: two instruments' dwell runs, and one whose session.json is broken."""
    root = tmp_path_factory.mktemp("night")
    record_sim(load_microscope(CONFIGS / "case-a.toml"), root / "scope-a" / "rec", protocols=["dwell"])
    record_sim(load_microscope(CONFIGS / "case-b.toml"), root / "scope-b" / "rec", protocols=["dwell"])
    record_sim(load_microscope(CONFIGS / "case-b.toml"), root / "scope-c" / "rec", protocols=["dwell"])
    meta = json.loads((root / "scope-c" / "rec" / "session.json").read_text())
    meta["pixel_size_nm"] = -1.0
    (root / "scope-c" / "rec" / "session.json").write_text(json.dumps(meta))
    return root


def test_recordings_are_found_in_folders_each_once(night, tmp_path):
    recordings, problems = find_recordings([night, night / "scope-a" / "rec", tmp_path / "none", tmp_path])
    assert recordings == [night / "scope-a" / "rec", night / "scope-b" / "rec", night / "scope-c" / "rec"]
    assert [(p.recording, p.error) for p in problems] == [
        (str(tmp_path / "none"), "no such folder"),
        (str(tmp_path), "no recording (a folder with session.json) in it")]
    taken = set()
    assert [output_stem(r, "T", taken) for r in recordings] == ["rec-analysed-T", "rec-analysed-T-2",
                                                               "rec-analysed-T-3"]


def test_analyse_certifies_each_recording_and_a_failure_stops_no_other(night, tmp_path, capsys):
    reports = tmp_path / "reports"
    status = main(["analyse", str(night / "scope-a"), str(night / "scope-c"), str(tmp_path / "none"),
                   f"--reports={reports}", "--workers=2", "--note=re-analysis v0.2"])
    out = capsys.readouterr().out.splitlines()
    assert status == 2  # recordings could not be certified
    done = [line for line in out if line.startswith("[")]
    assert len(done) == 3 and all(line.split("]")[0].split("/")[1] == "3" for line in done)
    failed = [line for line in done if "FAILED" in line]
    assert f"{tmp_path / 'none'}: FAILED: no such folder" in failed[0]
    assert str(night / "scope-c" / "rec") in failed[1]
    assert "session.json: key 'pixel_size_nm' has bad value -1.0" in failed[1]
    [certified] = [line for line in done if "FAILED" not in line]
    assert certified.startswith(f"[3/3] {night / 'scope-a' / 'rec'}: NOT CERTIFIED (") or \
        certified.startswith(f"[2/3] {night / 'scope-a' / 'rec'}: NOT CERTIFIED (")
    assert out[-1] == (f"stage-acceptance analyse: 3 recording(s): 1 not certified, 2 failed; history: "
                       f"{reports.resolve() / 'history.sqlite'}")
    with History(history_url(None, reports)) as history:
        runs = history.runs()
    assert [r.instrument for r in runs] == ["case-a"]
    assert all(r.source == "replay" and r.note == "re-analysis v0.2" and r.verdict == "not certified" for r in runs)
    for run in runs:
        document = json.loads(open(run.results_path).read())
        assert document == run.results and document["session"] == run.recording_path
        assert open(run.report_path).read().count("NOT CERTIFIED") >= 1


def test_analyse_runs_on_a_dask_cluster(night, tmp_path):
    from distributed import LocalCluster

    reports = tmp_path / "reports"
    seen = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        outcomes = analyse_recordings([night / "scope-a", night / "scope-b"], reports_dir=reports,
                                      scheduler=cluster.scheduler_address, stamp="20260101T000000Z",
                                      progress=lambda done, total, outcome: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    assert sorted((o.error, o.verdict) for o in outcomes) == [(None, "not certified")] * 2
    assert {o.report for o in outcomes} == {str(reports.resolve() / "rec-analysed-20260101T000000Z.html"),
                                            str(reports.resolve() / "rec-analysed-20260101T000000Z-2.html")}
    with History(history_url(None, reports)) as history:
        assert sorted(r.instrument for r in history.runs()) == ["case-a", "case-b"]


def test_bad_fleet_options_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="--workers 0: must be an integer from 1 to 256"):
        analyse_recordings([tmp_path], reports_dir=tmp_path, workers=0, stamp="T")
    with pytest.raises(ConfigError, match="--scheduler 'http://h:1': must be tcp://HOST:PORT"):
        analyse_recordings([tmp_path], reports_dir=tmp_path, scheduler="http://h:1", stamp="T")
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigError, match=f"--scheduler tcp://127.0.0.1:{port}: cannot reach the Dask scheduler"):
        analyse_recordings([tmp_path], reports_dir=tmp_path, scheduler=f"tcp://127.0.0.1:{port}", stamp="T",
                           scheduler_timeout_s=1.0)

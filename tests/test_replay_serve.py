"""A recording played back as a microscope (backends/replay.py) and served with
``stage-acceptance serve --replay``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import CONFIGS, record_on
from stage_acceptance.acceptance import AcceptanceRun
from stage_acceptance.backends.replay import ReplayMicroscope, ReplayMismatch
from stage_acceptance.config import load_microscope
from stage_acceptance.protocols import FAMILIES
from stage_acceptance.session import read_recording
from test_remote import free_port, start_server, stop_server

CASE_C = str(CONFIGS / "case-c.toml")
"""Case c: the reported position follows the actual one, not the target (offsets matter)."""


def record(tmp_path, protocols, name="rec", config=CASE_C):
    """A recording made the way `pytest suites/` makes it (with our session.json extension)."""
    run = AcceptanceRun(config, None, None, reports_dir=tmp_path, record=str(tmp_path / name))
    run.session(protocols)
    return read_recording(tmp_path / name)


def play(session_or_microscope, tmp_path, protocols, config=CASE_C, name="played"):
    """Run `protocols` (with `config`'s [protocol]) against a replay; return the new session."""
    microscope = session_or_microscope
    if not isinstance(microscope, ReplayMicroscope):
        microscope = ReplayMicroscope(microscope)
    return record_on(microscope, tmp_path / name, load_microscope(config).protocol, protocols)


def same_frames(a, b):
    assert len(a.frames) == len(b.frames)
    for index, (x, y) in enumerate(zip(a.frames, b.frames, strict=True)):
        assert (x.target, x.reported, x.time_s, x.protocol) == (y.target, y.reported, y.time_s, y.protocol)
        np.testing.assert_array_equal(a.image(index), b.image(index))


def test_replaying_the_same_protocols_gives_the_recording_back_exactly(tmp_path):
    recorded = record(tmp_path, FAMILIES["certification"])
    assert recorded.meta["stage_acceptance"]["protocols"] == list(FAMILIES["certification"])
    same_frames(recorded, play(recorded, tmp_path, FAMILIES["certification"]))


def test_a_foreign_recording_replays_up_to_one_constant_offset(tmp_path):
    recorded = record(tmp_path, ("hysteresis-x", "dwell"))
    meta = json.loads((tmp_path / "rec" / "session.json").read_text())
    del meta["stage_acceptance"]  # as another tool would write it: no origin
    (tmp_path / "rec" / "session.json").write_text(json.dumps(meta))
    foreign = read_recording(tmp_path / "rec")
    played = play(foreign, tmp_path, ("hysteresis-x", "dwell"))
    offset = played.frames[0].target.as_array() - recorded.frames[0].target.as_array()
    assert np.any(offset != 0)  # the client started from frame 0's target, not the recorded origin
    for a, b in zip(recorded.frames, played.frames, strict=True):
        np.testing.assert_allclose(b.target.as_array() - a.target.as_array(), offset, atol=1e-6)
        np.testing.assert_allclose(b.reported.as_array() - a.reported.as_array(), offset, atol=1e-6)
        assert a.time_s == b.time_s


def test_a_different_protocol_is_refused_naming_the_frame(tmp_path):
    recorded = record(tmp_path, ("hysteresis-x",))
    other = tmp_path / "other.toml"
    other.write_text((CONFIGS / "case-c.toml").read_text().replace("step_nm = 600.0", "step_nm = 500.0"))
    with pytest.raises(ReplayMismatch, match=r"move to \(x=-500 nm.*differs from the target of recorded frame 0 "
                                             r"\(x=-600 nm.*\(hysteresis-x\): run the suites without -m/-k.*pytest suites/ --replay DIR"):
        play(recorded, tmp_path, ("hysteresis-x",), config=str(other))


def test_an_acquisition_where_the_recording_moved_is_refused(tmp_path):
    recorded = record(tmp_path, ("cross",))
    # dwell's first frame is at the origin like cross's, its second is taken without a move
    with pytest.raises(ReplayMismatch, match=r"recorded frame 1 was taken at \(x=600 nm.*last sent to \(x=0 nm"):
        play(recorded, tmp_path, ("dwell",))


def test_asking_for_more_frames_than_recorded_is_refused_and_rewind_starts_again(tmp_path):
    recorded = record(tmp_path, ("dwell",))
    microscope = ReplayMicroscope(recorded)
    play(microscope, tmp_path, ("dwell",), name="first")
    assert microscope.frames_served == len(recorded.frames)
    with pytest.raises(ReplayMismatch, match=rf"all {len(recorded.frames)} recorded frames have been served"):
        play(microscope, tmp_path, ("dwell",), name="second")
    microscope.rewind()
    same_frames(recorded, play(microscope, tmp_path, ("dwell",), name="third"))


def test_served_replay_certifies_exactly_as_a_local_replay(tmp_path):
    recorded = record(tmp_path, FAMILIES["certification"])
    port = free_port()
    process = start_server(None, port, "--replay", str(recorded.directory))
    try:
        local = AcceptanceRun("sim", None, str(recorded.directory), reports_dir=tmp_path / "local")
        runs = [AcceptanceRun(f"tcp://127.0.0.1:{port}", None, None, reports_dir=tmp_path / f"served{n}")
                for n in (1, 2)]  # the second client is served from frame 0 again
        for run in runs:
            assert run.outputs.html.name.startswith("case-c-") and run.holder.key == local.holder.key
            run.session(FAMILIES["certification"])
            same_frames(local.session(), run.session())
        local.evaluate()
        served = runs[0]
        served.evaluate()
        assert served.certificate == local.certificate and local.certificate.case == "c"
        assert served.checks == local.checks
    finally:
        stop_server(process)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "stage_acceptance.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_serve_replay_errors_are_one_line(tmp_path):
    missing = run_cli("serve", "--replay", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and str(tmp_path / "nowhere") in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    both = run_cli("serve", "--replay", str(tmp_path), "--microscope", "sim")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    client = tmp_path / "client.toml"
    client.write_text('name = "c"\nkind = "remote"\n')
    proxy = run_cli("serve", "--microscope", str(client))
    assert proxy.returncode == 2 and 'kind = "remote" is a client config' in proxy.stderr

"""The SerialEM backend (stage_acceptance/backends/serialem.py) against the stand-in
``serialem`` module (tests/standins/serialem.py): units um, readback lag, refusal out of
range, images of the simulated specimen; directly and served over ZeroMQ."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeClock
from stage_acceptance.acceptance import AcceptanceRun
from stage_acceptance.backends.serialem import (NOT_INSTALLED, SerialEMCamera, SerialEMError, SerialEMLink,
                                                SerialEMStage, load_serialem, open_serialem)
from stage_acceptance.config import ConfigError, load_holder, load_microscope
from stage_acceptance.geometry import StagePosition
from stage_acceptance.microscope import Envelope, MoveRefused
from stage_acceptance.protocols import FAMILIES
from stage_acceptance.remote.protocol import decode_reply, encode_request
from stage_acceptance.remote.server import Handler

TESTS = Path(__file__).parent
STANDINS = TESTS / "standins"
STANDIN_CONFIG = TESTS / "configs" / "serialem-standin.toml"


@pytest.fixture
def sem(monkeypatch):
    """The stand-in ``serialem`` module, importable in this process, with a new instrument."""
    sys.modules.pop("serialem", None)
    monkeypatch.syspath_prepend(str(STANDINS))
    module = importlib.import_module("serialem")
    module.reset()
    yield module
    sys.modules.pop("serialem", None)


def make_stage(sem, **options):
    clock = FakeClock()
    options = {"tolerance_nm": 5.0, "poll_s": 0.01, "beta_axis": True, **options}
    return SerialEMStage(SerialEMLink(load_serialem(), "127.0.0.1:48888"), clock=clock, sleep=clock.sleep,
                         **options), clock


def commands(sem, *names):
    return [call for call in sem.STATE.calls if call[0] in names]


# --------------------------------------------------------------------------- not installed, config


def test_missing_module_is_a_one_line_error():
    sys.modules.pop("serialem", None)
    with pytest.raises(SerialEMError) as error:
        load_serialem()
    assert str(error.value) == NOT_INSTALLED and "\n" not in NOT_INSTALLED


def test_without_the_module_a_serialem_run_stops_before_anything(tmp_path):
    sys.modules.pop("serialem", None)
    with pytest.raises(ConfigError, match=r"needs SerialEM's Python module 'serialem'.*--microscope tcp://"):
        AcceptanceRun(str(STANDIN_CONFIG), None, None, reports_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_serving_serialem_without_the_module_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "stage_acceptance.cli", "serve", "--microscope", "talos-serialem"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"stage-acceptance serve: error: {NOT_INSTALLED}"


def write(tmp_path, text):
    path = tmp_path / "scope.toml"
    path.write_text('name = "scope"\nkind = "serialem"\npixel_size_nm = 15.0\nframe_px = 128\n' + text)
    return path


@pytest.mark.parametrize("text, message", [
    ('[serialem]\nhost = "localhost"\n', r"key 'serialem.host' has bad value 'localhost': must be an IPv4 or IPv6"),
    ('[serialem]\nhost = "999.1.1.1"\n', r"key 'serialem.host' has bad value '999.1.1.1'"),
    ('[serialem]\nport = 0\n', r"key 'serialem.port' has bad value 0: must be an integer in \[1, 65535\]"),
    ('[serialem]\nport = 48888.0\n', r"key 'serialem.port' has bad value 48888.0"),
    ('[serialem]\nparameter_set = "search"\n', r"key 'serialem.parameter_set' has bad value 'search': must be one of"),
    ('[serialem]\nbinning = 64\n', r"key 'serialem.binning' has bad value 64: must be a number in \[0.5, 32\]"),
    ('[serialem]\nmove_timeout_s = 0\n', r"key 'serialem.move_timeout_s' has bad value 0"),
    ('[serialem]\nbeta_axis = 1\n', r"key 'serialem.beta_axis' has bad value 1: must be true or false"),
    ('[serialem]\npixel_size_tolerance = 2\n', r"key 'serialem.pixel_size_tolerance' has bad value 2"),
    ('[serialem]\nbinnig = 2\n', r"unknown key 'serialem.binnig' \(did you mean 'serialem.binning'\?\)"),
    ('[pyjem]\ndetector = "ADF1"\n', r"key 'pyjem' is only allowed with kind = \"pyjem\""),
])
def test_serialem_config_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as error:
        load_microscope(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_serialem_config_needs_pixel_and_frame_size(tmp_path):
    path = tmp_path / "scope.toml"
    path.write_text('name = "scope"\nkind = "serialem"\npixel_size_nm = 15.0\n')
    with pytest.raises(ConfigError, match=r"missing required key 'frame_px' \(needed for kind = \"serialem\"\)"):
        load_microscope(path)


def test_shipped_serialem_configs_are_a_thermo_and_a_jeol_microscope():
    talos, jeol = load_microscope("talos-serialem"), load_microscope("jeol-f200-serialem")
    assert talos.kind == jeol.kind == "serialem"
    assert talos.serialem.beta_axis and not jeol.serialem.beta_axis
    assert talos.serialem.port == jeol.serialem.port == 48888 and talos.serialem.host == "127.0.0.1"
    assert load_microscope(STANDIN_CONFIG).serialem.binning == 2.0


# --------------------------------------------------------------------------- the stage


@pytest.mark.parametrize("busy_during_lag", [True, False])
def test_moves_wait_for_the_lagging_readback_and_use_micrometres(sem, busy_during_lag):
    # Without busy_during_lag the stage says "not busy" while its readback still shows the
    # old position: only the readback check keeps the move from being confirmed early.
    sem.reset(lag_polls=12, move_polls=4, busy_during_lag=busy_during_lag)
    stage, _ = make_stage(sem)
    target = StagePosition(1000.0, -500.0, 0.0, 5.0, -2.0)
    stage.move_to(target)
    assert stage.position() == target
    assert commands(sem, "MoveStageTo", "TiltTo", "SetStageBAxis") == [
        ("MoveStageTo", 1.0, -0.5), ("TiltTo", 5.0), ("SetStageBAxis", -2.0)]
    assert len(commands(sem, "ReportStageBusy")) >= 3 * 4  # 4 readbacks a poll: 4 polls or more per command
    sem.STATE.calls.clear()
    stage.move_to(StagePosition(1000.0, -500.0, 200.0, 5.0, -2.0))  # z only: given to MoveStageTo, tilts alone
    assert commands(sem, "MoveStageTo", "TiltTo", "SetStageBAxis") == [("MoveStageTo", 1.0, -0.5, 0.2)]


def test_a_readback_that_never_arrives_times_out_naming_target_and_readback(sem):
    sem.reset(stuck=True)
    stage, clock = make_stage(sem, move_timeout_s=2.0)
    with pytest.raises(SerialEMError, match=r"stage did not reach x 0.0 nm, y 800.0 nm, .* within 2 s after "
                                            r"MoveStageTo \(reads x 0.0 nm, y 0.0 nm, .*still busy"):
        stage.move_to(StagePosition(0.0, 800.0))
    assert 2.0 <= clock.now_s < 2.1


def test_a_landing_outside_the_tolerance_is_not_confirmed(sem):
    sem.reset(landing_error_um=(0.12, 0.0, 0.0))
    stage, _ = make_stage(sem, move_timeout_s=1.0, tolerance_nm=50.0)
    with pytest.raises(SerialEMError, match=r"did not reach x 1000.0 nm.*reads x 1120.0 nm, .*at rest; "
                                            r"tolerance 50 nm"):
        stage.move_to(StagePosition(1000.0))
    sem.reset(landing_error_um=(0.03, 0.0, 0.0))
    tolerant, _ = make_stage(sem, tolerance_nm=50.0)
    tolerant.move_to(StagePosition(1000.0))
    assert tolerant.position().x_nm == pytest.approx(1030.0)


def test_serialem_refusals_are_one_line_errors(sem):
    stage, _ = make_stage(sem)
    with pytest.raises(SerialEMError, match=r"MoveStageTo\(1500, 0\) failed: SEMerror: .*failure to start stage "
                                            r"movement \(X 1500.00 um is outside the stage range\)"):
        stage.move_to(StagePosition(1.5e6))
    with pytest.raises(SerialEMError, match=r"TiltTo\(75\) failed: SEMerror: Attempt to tilt too high"):
        stage.move_to(StagePosition(alpha_deg=75.0))
    assert stage.position() == StagePosition()


def test_a_move_outside_the_holder_envelope_is_refused_before_any_call(sem):
    microscope = open_serialem(load_microscope(STANDIN_CONFIG))
    envelope = Envelope(microscope, load_holder("default").limits)  # alpha within +-30 deg
    sem.STATE.calls.clear()
    with pytest.raises(MoveRefused, match=r"alpha = 39 deg is outside the holder limit alpha_deg"):
        envelope.move_to(StagePosition(alpha_deg=39.0))
    with pytest.raises(MoveRefused, match=r"x = 2e\+06 nm"):
        envelope.move_to(StagePosition(x_nm=2.0e6))
    assert sem.STATE.calls == []


def test_beta_on_a_stage_without_b_axis_is_refused_before_any_call(sem):
    stage, _ = make_stage(sem, beta_axis=False)
    with pytest.raises(MoveRefused, match=r"beta = 2 deg, but this stage has no B axis .*beta_axis = false.*"
                                          r"-m \"not tilt\"\); nothing was sent to the stage"):
        stage.move_to(StagePosition(beta_deg=2.0))
    assert sem.STATE.calls == []
    assert stage.position().beta_deg == 0.0 and not commands(sem, "ReportStageBAxis")


def test_stop_from_another_thread_ends_the_move_and_sends_nothing_more(sem):
    sem.reset(stuck=True)
    stage = SerialEMStage(SerialEMLink(load_serialem(), "here"), move_timeout_s=30.0, poll_s=0.01, beta_axis=True)
    errors = []

    def move():
        try:
            stage.move_to(StagePosition(x_nm=10_000.0, alpha_deg=5.0))
        except SerialEMError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=move)
    thread.start()
    threading.Event().wait(0.1)
    stage.stop()
    thread.join(5.0)
    assert not thread.is_alive()
    assert errors and "aborted by stop at x 0.0 nm" in errors[0]
    assert commands(sem, "MoveStageTo", "TiltTo") == [("MoveStageTo", 10.0, 0.0)]  # the tilt was never sent


def test_serialem_stop_button_and_lost_connection_are_one_line_errors(sem):
    stage, _ = make_stage(sem)
    sem.STATE.user_stop = True
    with pytest.raises(SerialEMError, match=r"ended external control during ReportStageXYZ\(\) \(User STOP\): its "
                                            r"STOP button was pressed"):
        stage.position()
    sem.STATE.listening = False
    with pytest.raises(SerialEMError, match=r"SerialEM at 127.0.0.1:48888: ReportStageXYZ\(\) failed: "
                                            r"SEMmoduleError: Failed to connect"):
        open_serialem(load_microscope(STANDIN_CONFIG))


# --------------------------------------------------------------------------- the camera and the image shift


def test_frames_come_from_the_configured_parameter_set_binning_and_size(sem):
    microscope = open_serialem(load_microscope(STANDIN_CONFIG))
    assert sem.STATE.address == (48888, "127.0.0.1")
    assert commands(sem, "SetCenteredSize") == [("SetCenteredSize", "R", 2.0, 128, 128)]
    image = microscope.acquire()
    assert image.shape == (128, 128) and image.dtype == np.uint16 and image.std() > 0
    assert image.flags.c_contiguous  # copied out of SerialEM's padded buffer
    np.testing.assert_array_equal(image, sem.STATE.buffer[0])
    assert commands(sem, "Record") and not commands(sem, "Preview", "View")
    microscope.close()
    assert sem.STATE.calls[-1] == ("Exit", 1) and not sem.STATE.connected


def test_frames_of_another_size_or_pixel_size_are_refused(sem):
    link = SerialEMLink(load_serialem(), "here")
    too_big = SerialEMCamera(link, parameter_set="preview", binning=4, frame_px=512, pixel_size_nm=30.0)
    too_big.configure()  # SerialEM shrinks the area to what the camera holds: 256 x 256
    with pytest.raises(SerialEMError, match=r"Preview gave a 256 x 256 image at binning 4, expected 512 x 512 at "
                                            r"binning 4: frame_px times binning must fit the camera"):
        too_big.acquire()
    other_mag = SerialEMCamera(link, parameter_set="view", binning=2, frame_px=128, pixel_size_nm=20.0)
    other_mag.configure()
    with pytest.raises(SerialEMError, match=r"pixel size of 15 nm for this View image, but the config gives "
                                            r"pixel_size_nm = 20 \(more than 5 % apart\)"):
        other_mag.acquire()
    SerialEMCamera(link, parameter_set="view", binning=2, frame_px=128, pixel_size_nm=15.5).acquire()


def test_an_image_shift_that_changes_during_the_run_ends_it(sem):
    sem.STATE.image_shift = [0.5, 0.0]  # a constant image shift moves every frame alike: allowed
    microscope = open_serialem(load_microscope(STANDIN_CONFIG))
    microscope.acquire()
    sem.STATE.image_shift = [0.52, 0.0]  # 4 nm of stage equivalent: within 5 nm
    microscope.acquire()
    sem.STATE.image_shift = [0.6, 0.0]  # 20 nm
    with pytest.raises(SerialEMError, match=r"image shift changed during the run by 20.0 nm of stage equivalent "
                                            r"\(tolerance 5 nm\): IS 0.5, 0 when the run started, 0.6, 0 now"):
        microscope.acquire()
    sem.reset(is_calibrated=False)
    uncalibrated = open_serialem(load_microscope(STANDIN_CONFIG))
    sem.STATE.image_shift = [0.0, 0.01]
    with pytest.raises(SerialEMError, match=r"no image-shift calibration at this magnification: compared in IS units"):
        uncalibrated.acquire()


def test_the_server_refuses_out_of_envelope_moves_before_serialem_sees_them(sem):
    microscope = open_serialem(load_microscope(STANDIN_CONFIG))
    handler = Handler(microscope, load_holder("default").limits)
    sem.STATE.calls.clear()
    moved = decode_reply(handler.handle(encode_request(1, "move_to", {"target": StagePosition(600.0).as_dict()})))
    assert moved.ok and ("MoveStageTo", 0.6, 0.0) in sem.STATE.calls
    sem.STATE.calls.clear()
    refused = decode_reply(handler.handle(encode_request(2, "move_to",
                                                         {"target": StagePosition(alpha_deg=40.0).as_dict()})))
    assert not refused.ok and "alpha_deg" in refused.error and sem.STATE.calls == []
    acquired = decode_reply(handler.handle(encode_request(3, "acquire")))
    assert acquired.ok and acquired.image.shape == (128, 128)


# --------------------------------------------------------------------------- whole runs


def test_a_direct_run_records_readback_and_frames(sem, tmp_path):
    run = AcceptanceRun(str(STANDIN_CONFIG), None, None, reports_dir=tmp_path, record=str(tmp_path / "rec"))
    session = run.session(("hysteresis-x", "tilt-beta"))
    run.close()
    assert run.incomplete is None and len(session.frames) == 2 * (2 + 4 * 3)
    for frame in session.frames:  # the stand-in lands on the target; readback confirmed within 5 nm / 0.1 deg
        assert np.max(np.abs(frame.reported.as_array() - frame.target.as_array())) <= 5.0
    assert {f.reported.beta_deg for f in session.frames if f.protocol == "tilt-beta"} == {-2.0, 0.0, 2.0, 4.0, 6.0}
    assert session.image(3).shape == (128, 128)
    assert sem.STATE.calls[-1] == ("Exit", 1)


def test_serve_a_serialem_microscope_and_certify_it_remotely(tmp_path, monkeypatch):
    from test_remote import free_port, start_server, stop_server

    port = free_port()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDINS), os.environ.get("PYTHONPATH", "")]))
    process = start_server(str(STANDIN_CONFIG), port)  # the server imports the stand-in serialem module
    try:
        run = AcceptanceRun(f"tcp://127.0.0.1:{port}", None, None, reports_dir=tmp_path)
        assert run.outputs.html.name.startswith("serialem-standin-") and run.holder.key == "default"
        session = run.session(FAMILIES["certification"])
        run.evaluate()
    finally:
        stop_server(process)
    assert session.pixel_size_nm == 15.0 and session.image(0).shape == (128, 128)
    assert run.analysis.steps  # every step registered against the lagging stand-in's frames
    assert run.certificate.case == "a" and run.certificate.accepted


def test_a_plan_with_beta_on_a_stage_without_b_axis_is_refused_before_the_first_move(sem, tmp_path):
    text = STANDIN_CONFIG.read_text().replace("beta_axis = true", "beta_axis = false")
    assert "beta_axis = false" in text
    config = tmp_path / "no-b-axis.toml"
    config.write_text(text)
    run = AcceptanceRun(str(config), None, None, reports_dir=tmp_path, record=str(tmp_path / "rec"))
    with pytest.raises(MoveRefused, match=r"protocol tilt-beta .*refused .*no B axis"):
        run.session(("hysteresis-x", "tilt-beta"))
    run.close()
    assert not commands(sem, "MoveStageTo", "TiltTo", "SetStageBAxis")  # not even hysteresis-x ran
    assert not (tmp_path / "rec").exists()

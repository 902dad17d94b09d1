"""The PyJEM backend against a stand-in ``TEM3.Stage3`` (tests/pyjem_standin.py) and the
stand-in PyJEM package (tests/standins)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyjem_standin
from conftest import FakeClock
from stage_acceptance.acceptance import AcceptanceRun
from stage_acceptance.backends.pyjem import (PyJEMError, PyJEMMicroscope, PyJEMStage, detector_camera, load_stage3,
                                             open_pyjem, python_camera)
from stage_acceptance.config import ConfigError, load_holder, load_microscope
from stage_acceptance.protocols import FAMILIES
from stage_acceptance.geometry import StagePosition
from stage_acceptance.remote.protocol import decode_reply, encode_request
from stage_acceptance.remote.client import RemoteMicroscope
from stage_acceptance.remote.server import Handler


def make_stage(stand_in, **options):
    clock = FakeClock()
    return PyJEMStage(stand_in, clock=clock, sleep=clock.sleep, **options), clock


@pytest.fixture
def installed():
    stand_in = pyjem_standin.Stage3()
    pyjem_standin.install(stand_in)
    yield stand_in
    pyjem_standin.uninstall()


def test_missing_pyjem_is_a_one_line_error():
    pyjem_standin.uninstall()
    with pytest.raises(PyJEMError, match="PyJEM is not installed"):
        load_stage3()


def test_move_waits_past_the_early_at_rest_status_and_confirms(installed):
    stage, _ = make_stage(load_stage3())
    target = StagePosition(1000.0, -500.0, 0.0, 5.0, 0.0)
    stage.move_to(target)
    assert stage.position() == target
    assert installed.calls == [("SetX", 1000.0), ("SetY", -500.0), ("SetTiltXAngle", 5.0)]


def test_an_axis_that_never_arrives_is_stopped_and_reported():
    stand_in = pyjem_standin.Stage3(stuck_axis=1)
    stage, clock = make_stage(stand_in, move_timeout_s=2.0)
    with pytest.raises(PyJEMError, match=r"stage y did not reach 800 nm within 2 s .*stage stopped"):
        stage.move_to(StagePosition(0.0, 800.0))
    assert stand_in.calls[-1] == ("Stop",) and 2.0 <= clock.now_s < 2.2


def test_landing_outside_tolerance_is_not_confirmed():
    stand_in = pyjem_standin.Stage3(landing_error=(120.0, 0, 0, 0, 0))
    stage, _ = make_stage(stand_in, move_timeout_s=1.0, tolerance_nm=50.0)
    with pytest.raises(PyJEMError, match="stage x did not reach 1000 nm"):
        stage.move_to(StagePosition(1000.0))
    tolerant, _ = make_stage(pyjem_standin.Stage3(landing_error=(30.0, 0, 0, 0, 0)), tolerance_nm=50.0)
    tolerant.move_to(StagePosition(1000.0))


def test_hardware_limit_is_a_clear_error():
    stand_in = pyjem_standin.Stage3()
    stage, _ = make_stage(stand_in)
    with pytest.raises(PyJEMError, match="stage alpha hit a hardware limit moving to 60 deg"):
        stage.move_to(StagePosition(alpha_deg=60.0))


def test_bad_getpos_is_a_clear_error():
    stand_in = pyjem_standin.Stage3()
    stand_in.GetPos = lambda: [0.0, 1.0]
    stage, _ = make_stage(stand_in)
    with pytest.raises(PyJEMError, match="GetPos returned 2 values"):
        stage.position()


def test_pyjem_microscope_behind_the_server_enforces_limits():
    stand_in = pyjem_standin.Stage3()
    stage, clock = make_stage(stand_in)
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    microscope = PyJEMMicroscope(stage, lambda: image, name="jeol", pixel_size_nm=7.32, frame_px=64,
                                 clock=clock, sleep=clock.sleep)
    handler = Handler(microscope, load_holder("jeol-double-tilt").limits)
    moved = decode_reply(handler.handle(encode_request(1, "move_to", {"target": StagePosition(2000.0).as_dict()})))
    assert moved.ok and stand_in.pos[0] == 2000.0
    refused = decode_reply(handler.handle(encode_request(2, "move_to",
                                                         {"target": StagePosition(alpha_deg=39.0).as_dict()})))
    assert not refused.ok and "alpha_deg" in refused.error and ("SetTiltXAngle", 39.0) not in stand_in.calls
    acquired = decode_reply(handler.handle(encode_request(3, "acquire")))
    np.testing.assert_array_equal(acquired.image, image)
    stopped = decode_reply(handler.handle(encode_request(4, "stop")))
    assert stopped.result == {"stopped": True} and stand_in.calls[-1] == ("Stop",)
    microscope.wait(30.0)
    assert microscope.time_s() >= 30.0


def test_stop_from_another_thread_aborts_a_move_under_way():
    import threading

    stage3 = pyjem_standin.Stage3(stuck_axis=0)  # x never arrives on its own
    stage = PyJEMStage(stage3, move_timeout_s=30.0, poll_s=0.01)
    errors = []

    def move():
        try:
            stage.move_to(StagePosition(x_nm=10_000.0))
        except PyJEMError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=move)
    thread.start()
    threading.Event().wait(0.1)
    stage.stop()
    thread.join(5.0)
    assert not thread.is_alive()
    assert errors and "aborted by stop" in errors[0]


# --------------------------------------------------------------------------- kind = "pyjem" configs

STANDINS = Path(__file__).parent / "standins"
PYJEM_STANDIN = Path(__file__).parent / "configs" / "pyjem-standin.toml"


@pytest.fixture
def standin_package(monkeypatch):
    """The stand-in PyJEM package (tests/standins) importable in this process."""
    pyjem_standin.uninstall()
    monkeypatch.syspath_prepend(str(STANDINS))
    yield
    for name in [name for name in sys.modules if name == "PyJEM" or name.startswith("PyJEM.")]:
        del sys.modules[name]


def write(tmp_path, text, name="jeol.toml"):
    path = tmp_path / name
    path.write_text('name = "jeol"\nkind = "pyjem"\npixel_size_nm = 15.0\nframe_px = 128\n' + text)
    return path


@pytest.mark.parametrize("text, message", [
    ("", r"needs exactly one of 'pyjem.detector'"),
    ('[pyjem]\ndetector = "ADF1"\ncamera = "cam:grab"\n', r"needs exactly one of 'pyjem.detector'"),
    ('[pyjem]\ncamera = "no colon"\n', r"key 'pyjem.camera' has bad value 'no colon'"),
    ('[pyjem]\ndetector = "ADF1"\npoll_s = 0\n', r"key 'pyjem.poll_s' has bad value 0"),
    ('[pyjem]\ndetector = "ADF1"\n[sim]\nseed = 1\n', r"key 'sim' is only allowed with kind = \"sim\""),
])
def test_pyjem_config_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as error:
        load_microscope(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_shipped_grandarm_config_is_a_pyjem_microscope():
    config = load_microscope("grandarm")
    assert config.kind == "pyjem" and config.pyjem.detector and config.holder == "jeol-double-tilt"


def test_without_pyjem_a_pyjem_run_stops_before_anything(tmp_path):
    pyjem_standin.uninstall()
    with pytest.raises(ConfigError, match=r"needs PyJEM, which is not installed here.*--microscope tcp://"):
        AcceptanceRun("grandarm", None, None, reports_dir=tmp_path)
    assert not (tmp_path / "reports").exists()


def test_python_camera_is_found_next_to_the_config(tmp_path, standin_package):
    (tmp_path / "lab_camera.py").write_text("import numpy as np\n\ndef grab():\n"
                                            "    return np.full((128, 128), 7, dtype=np.uint16)\n")
    config = load_microscope(write(tmp_path, '[pyjem]\ncamera = "lab_camera:grab"\n'))
    microscope = open_pyjem(config)
    assert microscope.acquire().sum() == 7 * 128 * 128 and microscope.name == "jeol"
    with pytest.raises(PyJEMError, match=r"camera 'lab_camera:nothing': lab_camera has no function 'nothing'"):
        python_camera("lab_camera:nothing", tmp_path)
    with pytest.raises(PyJEMError, match=r"cannot import 'no_such_module'.*next to the microscope config"):
        python_camera("no_such_module:grab", tmp_path)
    sys.modules.pop("lab_camera", None)


def test_detector_frames_are_checked_against_frame_px(tmp_path, standin_package):
    image = detector_camera("ADF1", 128)()
    assert image.shape == (128, 128) and image.dtype == np.uint16 and image.std() > 0
    with pytest.raises(PyJEMError, match=r"returned 32768 bytes, expected 8192 for a 64 x 64 16-bit frame"):
        detector_camera("ADF1", 64)()
    with pytest.raises(PyJEMError, match=r"cannot open PyJEM detector 'missing'"):
        detector_camera("missing", 128)


def test_serve_a_pyjem_microscope_and_certify_it_remotely(tmp_path, monkeypatch):
    from test_remote import free_port, start_server, stop_server

    port = free_port()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDINS), str(Path(__file__).parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    process = start_server(str(PYJEM_STANDIN), port)  # the server imports the stand-in PyJEM
    try:
        run = AcceptanceRun(f"tcp://127.0.0.1:{port}", None, None, reports_dir=tmp_path)
        assert run.outputs.html.name.startswith("jeol-standin-") and run.holder.key == "jeol-double-tilt"
        session = run.session(FAMILIES["certification"])
        run.evaluate()
        client = RemoteMicroscope(f"tcp://127.0.0.1:{port}", 5.0)
        assert client.max_move_s == 5 * 120.0  # every axis may take move_timeout_s: the client waits as long
        client.close()
    finally:
        stop_server(process)
    assert session.pixel_size_nm == 15.0 and session.image(0).shape == (128, 128)
    first = session.frames[1]  # the stand-in lands exactly: reported = target = actual
    assert abs(first.reported.x_nm - first.target.x_nm) <= 5.0
    assert run.certificate.case == "a" and run.certificate.accepted


def test_serving_pyjem_without_pyjem_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "stage_acceptance.cli", "serve", "--microscope", "grandarm"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("stage-acceptance serve: error: PyJEM is not installed: the PyJEM backend "
                                     "runs on the JEOL microscope PC (pip install PyJEM there)")

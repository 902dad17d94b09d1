"""The PyJEM backend against a stand-in ``TEM3.Stage3`` (tests/pyjem_standin.py)."""

from __future__ import annotations

import numpy as np
import pytest

import pyjem_standin
from stage_acceptance.backends.pyjem import PyJEMError, PyJEMMicroscope, PyJEMStage, load_stage3
from stage_acceptance.config import load_holder
from stage_acceptance.geometry import StagePosition
from stage_acceptance.remote.protocol import decode_reply, encode_request
from stage_acceptance.remote.server import Handler


class FakeClock:
    """A clock that advances only when slept."""

    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


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

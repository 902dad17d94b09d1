"""Nothing ever moves outside the holder's limits: refused before the backend sees it."""

import numpy as np
import pytest

from stage_acceptance.config import load_holder, ProtocolConfig
from stage_acceptance.geometry import StagePosition
from stage_acceptance.microscope import Envelope, MoveRefused
from stage_acceptance.protocols import build
from stage_acceptance.session import RecordingWriter, run_protocols


class RecordingBackend:
    """A fake microscope that remembers every call it receives."""

    name = "fake"
    pixel_size_nm = 10.0
    frame_px = 32

    def __init__(self, start=StagePosition()):
        self.calls = []
        self._position = start
        self._t = 0.0

    def move_to(self, target):
        self.calls.append(("move_to", target))
        self._position = target

    def position(self):
        return self._position

    def acquire(self):
        self.calls.append(("acquire",))
        return np.zeros((32, 32), dtype=np.uint16)

    def wait(self, seconds):
        self._t += seconds

    def time_s(self):
        return self._t

    def close(self):
        self.calls.append(("close",))


LIMITS = load_holder("default").limits


@pytest.mark.parametrize(
    "target, key",
    [
        (StagePosition(x_nm=1.0e6 + 1), "x_nm"),
        (StagePosition(y_nm=-2.0e6), "y_nm"),
        (StagePosition(z_nm=3.0e5), "z_nm"),
        (StagePosition(alpha_deg=31.0), "alpha_deg"),
        (StagePosition(beta_deg=-26.0), "beta_deg"),
        (StagePosition(x_nm=float("nan")), "x_nm"),
    ],
)
def test_out_of_limit_move_never_reaches_the_backend(target, key):
    backend = RecordingBackend()
    envelope = Envelope(backend, LIMITS)
    with pytest.raises(MoveRefused, match=key):
        envelope.move_to(target)
    assert backend.calls == []


def test_in_limit_move_passes_through():
    backend = RecordingBackend()
    Envelope(backend, LIMITS).move_to(StagePosition(x_nm=5.0e5, alpha_deg=-29.0))
    assert backend.calls == [("move_to", StagePosition(x_nm=5.0e5, alpha_deg=-29.0))]


def test_a_protocol_that_would_leave_the_envelope_is_refused_before_the_first_move(tmp_path):
    # Start 2 um from the +x limit: the hysteresis line would go 5 um further.
    backend = RecordingBackend(start=StagePosition(x_nm=1.0e6 - 2000.0))
    writer = RecordingWriter(tmp_path / "rec", {"microscope": "fake", "pixel_size_nm": 10.0})
    with pytest.raises(MoveRefused, match=r"x = 1.001e\+06 nm is outside"):
        run_protocols(Envelope(backend, LIMITS), build(ProtocolConfig(), ["hysteresis-x"]), writer)
    assert backend.calls == []


def test_a_tilt_protocol_beyond_the_alpha_limit_is_refused_before_moving(tmp_path):
    backend = RecordingBackend()
    writer = RecordingWriter(tmp_path / "rec", {"microscope": "fake", "pixel_size_nm": 10.0})
    protocol = build(ProtocolConfig(tilt_step_deg=8.0, tilt_steps=4), ["tilt-alpha"])
    with pytest.raises(MoveRefused, match="alpha = 32 deg is outside the holder limit alpha_deg"):
        run_protocols(Envelope(backend, LIMITS), protocol, writer)
    assert backend.calls == []

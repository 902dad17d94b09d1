"""Property-based fuzzing of the wire protocol (hypothesis), against a real server over loopback.

Whatever arrives (malformed headers, deep JSON, huge or big-integer numbers, NaN, wrong
types, many or oversized frames, from REQ or DEALER sockets), the server answers every
request with a reply or a one-line error, keeps serving, logs whole lines, raises in no
thread, and no move outside the holder's limits (and no wait beyond ``max_wait_s``)
reaches the backend. The client, given any ``describe`` reply, either has checked
settings or raises one-line :class:`RemoteError`.
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CONFIGS
from stage_acceptance.config import load_holder, load_microscope
from stage_acceptance.geometry import AXES, AXIS_FIELDS, StagePosition
from stage_acceptance.remote.client import RemoteError, RemoteMicroscope
from stage_acceptance.remote.protocol import (CALLS, MAX_ERROR_CHARS, PROTOCOL, ProtocolError, decode_reply,
                                              decode_request)
from stage_acceptance.remote.server import serve
from stage_acceptance.sim.microscope import SimulatedMicroscope
from test_remote import free_port

MAX_MESSAGE_BYTES = 256 * 1024
"""The fuzzed server's message limit: small, so oversized messages stay cheap to send."""

MAX_WAIT_S = 600.0
REPLY_TIMEOUT_MS = 5000
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])

LIMITS = load_holder("default").limits


class Recorder:
    """The simulated microscope, recording every move and wait that reaches it."""

    def __init__(self, microscope):
        self.microscope = microscope
        self.moves: list[StagePosition] = []
        self.waits: list[float] = []

    def move_to(self, target):
        self.moves.append(target)
        self.microscope.move_to(target)

    def wait(self, seconds):
        self.waits.append(seconds)
        self.microscope.wait(seconds)

    def __getattr__(self, name):
        return getattr(self.microscope, name)


@pytest.fixture(scope="module")
def fuzzed():
    """A server in a thread of this process: (endpoint, recorder, log lines, thread errors)."""
    recorder = Recorder(SimulatedMicroscope(load_microscope(CONFIGS / "case-a.toml")))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    lines, errors = [], []
    previous_hook = threading.excepthook
    threading.excepthook = lambda info: errors.append(f"{info.thread.name}: {info.exc_type.__name__}")
    done, listening = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(recorder, endpoint, LIMITS), daemon=True, kwargs={
        "max_message_bytes": MAX_MESSAGE_BYTES, "max_wait_s": MAX_WAIT_S, "stop_event": done,
        "ready": lambda _: listening.set(), "log": lines.append, "verbose": True})
    thread.start()
    assert listening.wait(10.0)
    context = zmq.Context()
    yield endpoint, recorder, lines, errors, thread, context
    context.term()
    done.set()
    thread.join(10.0)
    threading.excepthook = previous_hook
    assert not thread.is_alive()


def exchange(context, endpoint: str, frames: list[bytes], how: str) -> list[bytes]:
    """Send `frames` from a REQ socket, a DEALER with the empty delimiter, or a bare DEALER; the reply frames."""
    sock = context.socket(zmq.REQ if how == "req" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
    try:
        sock.connect(endpoint)
        sock.send_multipart(([b""] if how == "dealer" else []) + frames)
        try:
            reply = sock.recv_multipart()
        except zmq.Again:
            pytest.fail(f"no reply within {REPLY_TIMEOUT_MS} ms to {how} frames {[bytes(f[:60]) for f in frames]}")
        if how == "dealer" or (how == "bare" and frames[0] == b""):  # an empty first frame reads as the delimiter
            assert reply[0] == b""
            reply = reply[1:]
        return reply
    finally:
        sock.close(linger=0)


def check_reply(frames: list[bytes]):
    """The reply is valid protocol; an error is one line."""
    reply = decode_reply(frames, MAX_MESSAGE_BYTES + 64 * 1024 * 1024)
    if not reply.ok:
        assert reply.error and "\n" not in reply.error and len(reply.error) <= MAX_ERROR_CHARS
        assert "Traceback" not in reply.error
    return reply


def check_server(fuzzed) -> None:
    """Alive, no thread raised, whole log lines, nothing out of limits reached the backend."""
    endpoint, recorder, lines, errors, thread, context = fuzzed
    assert thread.is_alive() and not errors, errors
    assert all("\n" not in line and len(line) <= 2 * MAX_ERROR_CHARS for line in lines)
    for target in recorder.moves:
        for axis, value in zip(AXES, target.as_tuple()):
            low, high = LIMITS[AXIS_FIELDS[axis]]
            assert math.isfinite(value) and low <= value <= high, (axis, value)
    assert all(math.isfinite(s) and 0 <= s <= MAX_WAIT_S for s in recorder.waits), recorder.waits
    assert math.isfinite(recorder.microscope.time_s())


# --------------------------------------------------------------------------- strategies

NASTY_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-2**70, max_value=2**70),
    st.integers(min_value=10**18, max_value=10**400),
    st.integers(min_value=-10**400, max_value=-10**18),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, 2**63 - 1, -1, 10**20, 1e6, 1e6 + 1e-9,
                     -1e6 - 1e-9, 2e5, 30, 25.000001, MAX_WAIT_S, MAX_WAIT_S + 1e-9]),
)
SCALARS = st.none() | st.booleans() | NASTY_NUMBERS | st.text(max_size=30)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
POSITIONS = st.one_of(
    st.fixed_dictionaries({axis: NASTY_NUMBERS for axis in AXES}),
    st.fixed_dictionaries({axis: st.floats(1.2 * LIMITS[AXIS_FIELDS[axis]][0], 1.2 * LIMITS[AXIS_FIELDS[axis]][1])
                           for axis in AXES}),  # in and around the limits
    st.dictionaries(st.sampled_from(AXES + ("w", "")), JSON_VALUES, max_size=7),
    JSON_VALUES,
)
ARGS = {
    "move_to": st.fixed_dictionaries({"target": POSITIONS}),
    "wait": st.fixed_dictionaries({"seconds": st.floats(0, 1.1 * MAX_WAIT_S) | NASTY_NUMBERS | JSON_VALUES}),
}
ODDLY = st.integers(0, 9).map(lambda n: n == 0)
"""True one time in ten: how often a well-formed part of a header is replaced by something else."""


@st.composite
def headers(draw) -> dict:
    """Request headers: often well-formed in shape, else with wrong, missing or extra keys; nasty values."""
    call = draw(JSON_VALUES) if draw(ODDLY) else draw(st.sampled_from(CALLS))
    args = draw(JSON_VALUES) if draw(ODDLY) or not isinstance(call, str) else draw(ARGS.get(call, st.just({})))
    header = {
        "protocol": draw(JSON_VALUES) if draw(ODDLY) else PROTOCOL,
        "version": draw(JSON_VALUES) if draw(ODDLY) else 1,
        "id": draw(JSON_VALUES) if draw(ODDLY) else draw(st.integers(0, 2**63 - 1)),
        "call": call,
        "args": args,
    }
    if draw(ODDLY):
        for key in draw(st.lists(st.sampled_from(sorted(header)), min_size=1, max_size=2, unique=True)):
            del header[key]
    if draw(ODDLY):
        header.update(draw(st.dictionaries(st.text(max_size=6), JSON_VALUES, min_size=1, max_size=2)))
    return header


def encode(header) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity allowed, big integers as they are."""
    return json.dumps(header, allow_nan=True).encode("utf-8")


RAW_FRAMES = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 20_000).map(lambda n: b"[" * n),
    st.integers(1, 5_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(30, 200).map(lambda n: b'{"protocol":"stage-acceptance/remote","version":1,"id":1,"call":"wait",'
                                       b'"args":{"seconds":' + b"9" * n + b"}}"),
    st.text(max_size=100).map(lambda text: text.encode("utf-8")),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"NaN", b'{"id": 1e999}', b'"\xff"', b"\x00" * 10]),
    st.integers(64 * 1024 - 8, 64 * 1024 + 8).map(lambda n: b"{" + b" " * (n - 2) + b"}"),  # the header limit
)
OVERSIZED = st.integers(MAX_MESSAGE_BYTES - 1024, MAX_MESSAGE_BYTES + 64 * 1024).map(lambda n: b"\0" * n)
HOW = st.sampled_from(["req", "dealer", "bare"])


# --------------------------------------------------------------------------- properties over loopback


@FUZZ
@given(header=headers(), how=HOW)
def test_any_header_gets_one_reply(fuzzed, header, how):
    endpoint, _, _, _, _, context = fuzzed
    frames = [encode(header)]
    reply = check_reply(exchange(context, endpoint, frames, how))
    try:
        request = decode_request(frames, MAX_MESSAGE_BYTES, MAX_WAIT_S)
    except ProtocolError as exc:
        assert not reply.ok and "bad request" in reply.error
        assert reply.id == exc.request_id
    else:
        assert reply.id == request.id
        if request.call in ("describe", "position", "acquire", "time", "stop", "close", "wait"):
            assert reply.ok, reply.error  # a valid request of a call that cannot be refused
    check_server(fuzzed)


@FUZZ
@given(frames=st.lists(RAW_FRAMES, min_size=1, max_size=6) | st.integers(7, 300).map(lambda n: [b"x"] * n),
       how=HOW)
def test_any_frames_get_one_reply(fuzzed, frames, how):
    endpoint, _, _, _, _, context = fuzzed
    reply = check_reply(exchange(context, endpoint, frames, how))
    if len(frames) > 1 or not frames[0].startswith(b"{"):
        assert not reply.ok
    check_server(fuzzed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(header=headers(), extra=OVERSIZED, how=HOW)
def test_oversized_messages_get_an_error_reply(fuzzed, header, extra, how):
    endpoint, _, _, _, _, context = fuzzed
    frames = [encode(header), extra]
    reply = check_reply(exchange(context, endpoint, frames, how))
    assert not reply.ok
    if len(frames[0]) + len(extra) > MAX_MESSAGE_BYTES:
        assert "exceeds the maximum" in reply.error
    check_server(fuzzed)


@FUZZ
@given(target=POSITIONS, how=HOW)
def test_no_out_of_limit_move_reaches_the_backend(fuzzed, target, how):
    endpoint, recorder, _, _, _, context = fuzzed
    before = len(recorder.moves)
    header = {"protocol": PROTOCOL, "version": 1, "id": 5, "call": "move_to", "args": {"target": target}}
    reply = check_reply(exchange(context, endpoint, [encode(header)], how))
    inside = (isinstance(target, dict) and set(target) == set(AXES)
              and all(isinstance(target[axis], (int, float)) and not isinstance(target[axis], bool)
                      and math.isfinite(float(target[axis]) if abs(target[axis]) < 1e300 else math.inf)
                      and LIMITS[AXIS_FIELDS[axis]][0] <= target[axis] <= LIMITS[AXIS_FIELDS[axis]][1]
                      for axis in AXES))
    assert reply.ok == inside, (target, reply.error)
    assert len(recorder.moves) == before + (1 if inside else 0)
    check_server(fuzzed)


@FUZZ
@given(seconds=st.floats(0, 1.1 * MAX_WAIT_S) | NASTY_NUMBERS | JSON_VALUES, how=HOW)
def test_no_wait_beyond_the_limit_reaches_the_backend(fuzzed, seconds, how):
    endpoint, recorder, _, _, _, context = fuzzed
    before, clock_s = len(recorder.waits), recorder.microscope.time_s()
    header = {"protocol": PROTOCOL, "version": 1, "id": 6, "call": "wait", "args": {"seconds": seconds}}
    reply = check_reply(exchange(context, endpoint, [encode(header)], how))
    allowed = (isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
               and 0 <= seconds <= MAX_WAIT_S)  # NaN compares false
    assert reply.ok == allowed, (seconds, reply.error)
    assert len(recorder.waits) == before + (1 if allowed else 0)
    assert recorder.microscope.time_s() == (clock_s + float(seconds) if allowed else clock_s)
    check_server(fuzzed)


def test_the_server_still_serves_after_the_fuzzing(fuzzed):
    endpoint, recorder, lines, errors, thread, context = fuzzed
    import collections, os
    if os.environ.get("FUZZ_STATS"):
        print("\nMOVES", len(recorder.moves), "WAITS", len(recorder.waits), "LOGLINES", len(lines),
              collections.Counter(l.split(":")[0].split(" ")[0] for l in lines).most_common(12))
    client = RemoteMicroscope(endpoint, timeout_s=5.0)
    try:
        assert client.name == "case-a" and client.max_wait_s == MAX_WAIT_S
        client.move_to(StagePosition(x_nm=100.0))
        assert abs(client.position().x_nm - 100.0) < 5.0
        assert client.acquire().shape == (128, 128)
    finally:
        client.close()
    check_server(fuzzed)


# --------------------------------------------------------------------------- pure decoders


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(RAW_FRAMES | st.builds(encode, JSON_VALUES), min_size=0, max_size=3))
def test_decoders_raise_only_protocol_errors(frames):
    for decode in (decode_request, decode_reply):
        try:
            decode(frames)
        except ProtocolError as exc:
            assert "\n" not in str(exc) and len(str(exc)) <= MAX_ERROR_CHARS


DESCRIBE_KEYS = st.fixed_dictionaries({}, optional={
    "name": st.just("scope") | JSON_VALUES,
    "pixel_size_nm": st.just(7.5) | NASTY_NUMBERS | JSON_VALUES,
    "frame_px": st.just(128) | NASTY_NUMBERS,
    "limits": st.just({key: [-1.0, 1.0] for key in LIMITS}) | st.dictionaries(
        st.sampled_from(sorted(LIMITS) + ["w_nm"]), st.lists(NASTY_NUMBERS, max_size=3) | JSON_VALUES, max_size=6),
    "max_wait_s": NASTY_NUMBERS | JSON_VALUES,
    "max_move_s": NASTY_NUMBERS | JSON_VALUES,
    "holder": JSON_VALUES,
    "stage_to_image": st.fixed_dictionaries({"rotation_deg": NASTY_NUMBERS}) | JSON_VALUES,
    "protocol": st.dictionaries(st.sampled_from(["steps", "step_nm", "settle_s", "stride"]), NASTY_NUMBERS,
                                max_size=3) | JSON_VALUES,
})


@pytest.fixture(scope="module")
def hostile_server():
    """A server that answers every request with the describe result the test sets: (endpoint, slot)."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    slot = {"result": {}}
    done = threading.Event()

    def run():
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not done.is_set():
            if not poller.poll(50):
                continue
            identity, empty, request = sock.recv_multipart()
            request_id = json.loads(request)["id"]
            reply = {"protocol": PROTOCOL, "version": 1, "id": request_id, "ok": True, "result": slot["result"]}
            sock.send_multipart([identity, empty, encode(reply)])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}", slot
    done.set()
    thread.join(5.0)
    sock.close(linger=0)
    context.term()


@settings(max_examples=60, deadline=None)
@given(result=DESCRIBE_KEYS)
def test_the_client_takes_only_a_sound_describe(hostile_server, result):
    endpoint, slot = hostile_server
    slot["result"] = result
    try:
        client = RemoteMicroscope(endpoint, timeout_s=5.0)
    except RemoteError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 1000
        assert "no reply" not in str(exc)  # the hostile server always answers
        return
    try:
        assert isinstance(client.name, str) and client.name
        assert math.isfinite(client.pixel_size_nm) and client.pixel_size_nm > 0
        assert isinstance(client.frame_px, int) and client.frame_px > 0
        for low, high in client.limits.values():
            assert math.isfinite(low) and math.isfinite(high) and low <= high
        assert client.max_wait_s is None or (math.isfinite(client.max_wait_s) and client.max_wait_s > 0)
        assert client.max_move_s is None or 0 < client.max_move_s <= 86400.0
    finally:
        client.close()

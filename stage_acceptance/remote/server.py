"""Serve any :class:`~stage_acceptance.microscope.Microscope` over ZeroMQ (protocol v1).

The server answers requests on a ROUTER socket. The serving loop only reads, checks and
dispatches: every call that reaches the backend (a move, a wait, an acquisition, ...)
runs in one worker thread, one call at a time, and the worker hands its reply back over
an in-process socket the loop waits on, so a finished call is answered at once and a
``stop`` (sent on a second connection, as the client does) is answered at once too: it
stops the stage, which ends a move under way; any other call while the worker is busy
is refused as busy. The server enforces the holder's travel limits itself (an
:class:`~stage_acceptance.microscope.Envelope` sits between the socket and the
backend), so a misbehaving client cannot drive the stage out of limits, and bounds
``wait`` (``max_wait_s``). Whatever a client sends gets a reply or a one-line error and
the server keeps serving: frame count, sizes and JSON nesting are bounded before a
header is parsed, and any failure while decoding or answering one request is caught for
that request. It binds loopback unless CURVE keys are given. Every client starts with
``describe``; a backend with a ``rewind()`` method (a replay) is rewound then, so each
client is served the recording from its first frame.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import itertools
import math
import queue
import re
import threading
import time
from pathlib import Path
from typing import Callable

import zmq

from ..config import ProtocolConfig
from ..geometry import AXES, AXIS_UNITS, StageToImage
from ..microscope import Envelope, Microscope, MoveRefused
from .keys import authorized_dir, server_secret
from .protocol import (MAX_MESSAGE_BYTES, MAX_WAIT_S, ProtocolError, Request, decode_request, encode_error,
                       encode_reply, one_line, position_from_wire, position_to_wire, wire_image)

POLL_INTERVAL_S = 0.1
"""How often the serving loop looks at its stop event (replies never wait for it)."""

MAX_KEPT_FRAMES = 8
"""Frames of one incoming message that are kept (identity, delimiter, request, ...); the
rest are read, counted and dropped."""

SHUTDOWN_WAIT_S = 10.0
"""How long stopping the server waits for a call under way after stopping the stage (a
``wait`` under way is not waited for)."""

HARD_LIMIT_MARGIN_BYTES = 16 * 1024 * 1024
"""A single frame larger than the message limit plus this is dropped unread by ZeroMQ."""

_TCP = re.compile(r"^tcp://(\[[^\]]+\]|[^:/]+):([0-9]+)$")


class ServeError(ValueError):
    """The server cannot start with these settings. The message is one line."""


def is_loopback(bind: str) -> bool:
    """Whether a ``tcp://HOST:PORT`` endpoint binds the loopback interface only.

    Raises
    ------
    ServeError
        For an endpoint that is not ``tcp://HOST:PORT``.
    """
    match = _TCP.match(bind)
    if not match:
        raise ServeError(f"bind endpoint {bind!r} must look like tcp://HOST:PORT")
    host = match.group(1).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe(microscope: Microscope, limits: dict[str, tuple[float, float]], settings: dict | None = None,
             max_wait_s: float | None = None) -> dict:
    """The ``describe`` result: name, pixel size, frame size, axes and limits.

    `settings` adds the optional keys (``holder``, ``protocol``, ``stage_to_image``)
    that a client without a config of its own uses (see :func:`served_settings`);
    `max_wait_s`, if given, the optional key ``max_wait_s`` (longest ``wait`` served);
    a microscope with a ``max_move_s`` (a real stage: the longest one move may take)
    adds ``max_move_s``.
    """
    info = {
        "name": str(microscope.name),
        "pixel_size_nm": float(microscope.pixel_size_nm),
        "frame_px": int(microscope.frame_px),
        "axes": [{"name": axis, "unit": AXIS_UNITS[axis]} for axis in AXES],
        "limits": {key: [float(low), float(high)] for key, (low, high) in limits.items()},
    }
    if max_wait_s is not None:
        info["max_wait_s"] = float(max_wait_s)
    max_move_s = getattr(microscope, "max_move_s", None)
    if isinstance(max_move_s, (int, float)) and math.isfinite(max_move_s) and max_move_s > 0:
        info["max_move_s"] = float(max_move_s)
    info.update(settings or {})
    return info


def served_settings(holder: str | None = None, protocol: ProtocolConfig | None = None,
                    stage_to_image: StageToImage | None = None) -> dict:
    """The optional ``describe`` keys for what the server knows of its instrument.

    Parameters
    ----------
    holder : str, optional
        Name of the holder whose limits the server enforces.
    protocol : ProtocolConfig, optional
        The measurement sequences suited to this instrument (step lengths fit its field
        of view).
    stage_to_image : StageToImage, optional
        The calibrated stage-to-image relation.
    """
    settings: dict = {}
    if holder:
        settings["holder"] = str(holder)
    if protocol is not None:
        settings["protocol"] = dataclasses.asdict(protocol)
    if stage_to_image is not None:
        settings["stage_to_image"] = {"rotation_deg": float(stage_to_image.rotation_deg),
                                      "flip_y": bool(stage_to_image.flip_y)}
    return settings


_ALWAYS_LOGGED = ("describe", "stop", "close")


def _summary(request: Request) -> str:
    """One log line for a served call."""
    if request.call == "move_to":
        target = request.args["target"]
        return "move_to " + " ".join(f"{axis}={target[axis]:g}" for axis in AXES)
    if request.call == "wait":
        return f"wait {request.args['seconds']:g} s"
    return {"describe": "describe (a client starts)", "close": "close (the client is done)",
            "stop": "stop (stage stopped where it is)"}.get(request.call, request.call)


class Handler:
    """Turns request frames into reply frames for one microscope (no sockets).

    Parameters
    ----------
    microscope : Microscope
        The backend.
    limits : dict
        Holder limits (``x_nm``, ..., ``beta_deg``), enforced on every ``move_to``.
    delay_s : float
        Delay before every reply (to test slow servers and slow instruments).
    max_message_bytes : int
        Larger requests get an error reply.
    max_wait_s : float
        Longest ``wait`` served; a longer one gets an error reply.
    settings : dict, optional
        Optional ``describe`` keys (:func:`served_settings`).
    log : callable, optional
        ``log(line)`` for every error reply and every ``describe``, ``stop`` and
        ``close``; with `verbose` for every call. Called under a lock, one line at a
        time, from the serving loop and from the worker thread.
    verbose : bool
        Log every call, moves with their targets.
    """

    def __init__(self, microscope: Microscope, limits: dict[str, tuple[float, float]], *,
                 delay_s: float = 0.0, max_message_bytes: int = MAX_MESSAGE_BYTES, max_wait_s: float = MAX_WAIT_S,
                 settings: dict | None = None, log: Callable[[str], None] | None = None, verbose: bool = False):
        if not delay_s >= 0:
            raise ServeError(f"delay_s must be >= 0, got {delay_s}")
        if not 0 < max_wait_s < float("inf"):
            raise ServeError(f"max_wait_s must be a finite number > 0, got {max_wait_s}")
        self.envelope = Envelope(microscope, limits)
        self.limits = dict(limits)
        self.delay_s = float(delay_s)
        self.max_message_bytes = int(max_message_bytes)
        self.max_wait_s = float(max_wait_s)
        self.settings = dict(settings or {})
        self.log = log
        self.verbose = bool(verbose)
        self._log_lock = threading.Lock()

    def decode(self, frames: list) -> Request:
        """Decode a request; any failure (not only a malformed message) is a ProtocolError.

        Raises
        ------
        ProtocolError
            One line, with the request id when it could be read.
        """
        try:
            return decode_request(frames, self.max_message_bytes, self.max_wait_s)
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - no input may stop the server
            raise ProtocolError(f"request could not be read ({type(exc).__name__})") from None

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """Answer one request's frames (after `delay_s`); never raises for anything a client sends."""
        try:
            request = self.decode(frames)
        except ProtocolError as exc:
            return self.bad_request(exc)
        return self.answer(request)

    def bad_request(self, problem: ProtocolError) -> list[bytes]:
        """The error reply to a request that could not be decoded (after `delay_s`)."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.refuse(problem)

    def refuse(self, problem: ProtocolError) -> list[bytes]:
        """The error reply to a request that could not be decoded, at once."""
        return self.error(problem.request_id, "request", f"bad request: {problem}")

    def answer(self, request: Request) -> list[bytes]:
        """Answer a decoded request (after `delay_s`); never raises."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.reply(request)

    def reply(self, request: Request) -> list[bytes]:
        """Answer a decoded request at once; never raises."""
        try:
            reply = self._call(request)
        except MoveRefused as exc:
            return self.error(request.id, request.call, str(exc))
        except Exception as exc:  # a backend failure is reported to the client, not fatal to the server
            return self.error(request.id, request.call,
                              f"{request.call} failed on the microscope: {type(exc).__name__}: {exc}")
        if self.verbose or request.call in _ALWAYS_LOGGED:
            self.write_log(_summary(request))
        return reply

    def error(self, request_id: int | None, call: str, message: str) -> list[bytes]:
        """An error reply, logged."""
        self.write_log(f"{call}: error: {one_line(message)}")
        return encode_error(request_id, message)

    def write_log(self, line: str) -> None:
        """Log one line (whole, under a lock); a failing log never fails a reply."""
        if self.log is None:
            return
        with self._log_lock:
            try:
                self.log(one_line(line))
            except Exception:  # noqa: BLE001 - e.g. a closed stdout; serving goes on
                pass

    def _call(self, request: Request) -> list[bytes]:
        microscope = self.envelope
        if request.call == "describe":
            rewind = getattr(microscope.microscope, "rewind", None)
            if callable(rewind):  # every client starts with describe: a replay starts again at frame 0
                rewind()
            return encode_reply(request.id, describe(microscope.microscope, self.limits, self.settings,
                                                     self.max_wait_s))
        if request.call == "move_to":
            microscope.move_to(position_from_wire(request.args["target"], "move_to target"))
            return encode_reply(request.id, {})
        if request.call == "position":
            return encode_reply(request.id, {"position": position_to_wire(microscope.position())})
        if request.call == "acquire":
            return encode_reply(request.id, {}, image=wire_image(microscope.acquire()))
        if request.call == "wait":
            microscope.wait(float(request.args["seconds"]))
            return encode_reply(request.id, {})
        if request.call == "time":
            return encode_reply(request.id, {"time_s": float(microscope.time_s())})
        if request.call == "stop":
            stop = getattr(microscope.microscope, "stop", None)
            if callable(stop):
                stop()
            return encode_reply(request.id, {"stopped": callable(stop)})
        # close: the client is done; the backend stays open for the next client.
        return encode_reply(request.id, {})


class _Worker:
    """The one thread that makes backend calls; each reply goes back over an in-process socket.

    The serving loop polls that socket next to its ROUTER socket, so a finished call
    is answered at once (no polling interval).
    """

    def __init__(self, context: zmq.Context, address: str, handler: Handler):
        self.context, self.address, self.handler = context, address, handler
        self.busy: str | None = None
        """The call under way (set and cleared by the serving loop), or None."""
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="stage-acceptance-worker", daemon=True)
        self._thread.start()

    def submit(self, envelope: list, request: Request) -> None:
        self.busy = request.call
        self._jobs.put((envelope, request))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            envelope, request = job
            try:
                reply = self.handler.answer(request)
            except BaseException as exc:  # noqa: BLE001 - the loop must get a reply whatever happens
                reply = encode_error(request.id, f"{request.call} failed in the server: {type(exc).__name__}")
            try:
                sender = self.context.socket(zmq.PUSH)
            except zmq.ZMQError:
                return  # the server has ended
            try:
                sender.setsockopt(zmq.LINGER, 1000)
                sender.connect(self.address)
                sender.send_multipart(list(envelope) + reply, copy=False)
            except zmq.ZMQError:
                return
            finally:
                sender.close()

    def finish(self, timeout_s: float) -> bool:
        """Let the worker end after its call under way; whether it ended within `timeout_s`."""
        self._jobs.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _receive(socket: zmq.Socket, max_frames: int) -> tuple[list, int]:
    """One incoming message: its first `max_frames` frames (``zmq.Frame``) and how many it had."""
    kept, count = [], 0
    while True:
        frame = socket.recv(copy=False)
        count += 1
        if count <= max_frames:
            kept.append(frame)
        if not frame.more:
            return kept, count


def _split(frames: list, count: int) -> tuple[list[bytes], list]:
    """(envelope, payload) of a message read by a ROUTER socket.

    The envelope is the peer identity and, from a REQ socket, the empty delimiter; a
    DEALER that sends no delimiter gets its reply without one.
    """
    identity = frames[0].bytes
    if count > 1 and len(frames[1]) == 0:
        return [identity, b""], frames[2:]
    return [identity], frames[1:]


def serve(microscope: Microscope, bind: str, limits: dict[str, tuple[float, float]], *,
          keys_dir: str | Path | None = None, delay_s: float = 0.0,
          max_message_bytes: int = MAX_MESSAGE_BYTES, max_wait_s: float = MAX_WAIT_S,
          stop_event: threading.Event | None = None, ready=None, settings: dict | None = None,
          log: Callable[[str], None] | None = None, verbose: bool = False) -> None:
    """Serve `microscope` on `bind` until `stop_event` is set or Ctrl-C.

    Parameters
    ----------
    microscope : Microscope
        The backend; closed when serving ends.
    bind : str
        ``tcp://HOST:PORT``. A non-loopback host needs `keys_dir`.
    limits : dict
        Holder travel limits, enforced by the server on every move.
    keys_dir : str or Path, optional
        A folder made by ``stage-acceptance keys``: enables CURVE; only client public
        keys in ``keys_dir/authorized/`` may connect. Its secret key must not be
        readable by group or others.
    delay_s : float
        Delay before every reply.
    max_message_bytes : int
        Larger requests get an error reply.
    max_wait_s : float
        Longest ``wait`` served (said in ``describe`` as ``max_wait_s``).
    stop_event : threading.Event, optional
        Set it to stop serving. The stage is then stopped (``stop``) if a call is under
        way, which is waited for up to :data:`SHUTDOWN_WAIT_S` (a ``wait`` is not).
    ready : callable, optional
        Called with the bound endpoint once the socket listens.
    settings : dict, optional
        Optional ``describe`` keys (:func:`served_settings`).
    log : callable, optional
        ``log(line)`` for errors, ``describe``, ``stop`` and ``close`` (all calls with
        `verbose`); called one line at a time under a lock.
    verbose : bool
        Log every call.

    Raises
    ------
    ServeError
        For a non-loopback bind without keys, a bad endpoint, or a port in use.
    KeysError
        For a key folder that lacks a key or whose secret key others may read.
    """
    try:
        handler = Handler(microscope, limits, delay_s=delay_s, max_message_bytes=max_message_bytes,
                          max_wait_s=max_wait_s, settings=settings, log=log, verbose=verbose)
        if not is_loopback(bind) and keys_dir is None:
            raise ServeError(f"bind {bind} is not loopback: give CURVE keys (--keys DIR, made by "
                             f"'stage-acceptance keys DIR') to serve on the network")
        keys = None
        if keys_dir is not None:
            keys = server_secret(keys_dir), authorized_dir(keys_dir)
    except Exception:
        microscope.close()
        raise
    context = zmq.Context()
    authenticator = None
    socket = context.socket(zmq.ROUTER)
    results = context.socket(zmq.PULL)
    worker = None
    try:
        socket.setsockopt(zmq.LINGER, 0)
        # A frame far beyond the limit is dropped by ZeroMQ (the peer is disconnected)
        # instead of being read into memory; a slightly oversized one gets an error reply.
        socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + HARD_LIMIT_MARGIN_BYTES)
        results.setsockopt(zmq.LINGER, 0)
        address = f"inproc://stage-acceptance-replies-{id(results):x}"
        results.bind(address)
        if keys is not None:
            from zmq.auth.thread import ThreadAuthenticator

            (public, secret), authorized = keys
            authenticator = ThreadAuthenticator(context)
            authenticator.start()
            authenticator.configure_curve(domain="*", location=str(authorized))
            socket.curve_publickey = public
            socket.curve_secretkey = secret
            socket.curve_server = True
        try:
            socket.bind(bind)
        except zmq.ZMQError as exc:
            raise ServeError(f"cannot bind {bind}: {exc}") from None
        worker = _Worker(context, address, handler)
        if ready is not None:
            ready(bind)
        _serve_loop(socket, results, worker, handler, stop_event)
    finally:
        ended = True
        if worker is not None:
            if worker.busy is not None:  # e.g. Ctrl-C during a move: stop the stage where it is
                _stop_backend(microscope)
            # A wait moves nothing and may be long: it is left at once; anything else is
            # given time to end (a move ends at the stop).
            ended = worker.finish(0.0 if worker.busy == "wait" else SHUTDOWN_WAIT_S)
            if not ended:
                handler.write_log(f"stopping: leaving the '{worker.busy}' under way unfinished")
        socket.close(linger=0)
        results.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        if ended:
            context.term()
        microscope.close()


def _stop_backend(microscope: Microscope) -> None:
    stop = getattr(microscope, "stop", None)
    if callable(stop):
        try:
            stop()
        except Exception:  # noqa: BLE001 - stopping is best effort on the way out
            pass


def _serve_loop(socket: zmq.Socket, results: zmq.Socket, worker: _Worker, handler: Handler,
                stop_event: threading.Event | None) -> None:
    """Read, check and dispatch requests until `stop_event` is set; never raises for a client's input."""
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(results, zmq.POLLIN)
    delayed: list = []  # (due, sequence, frames): replies made by the loop itself, held back delay_s
    sequence = itertools.count()

    def send(frames: list) -> None:
        try:
            socket.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:  # e.g. the peer went away; nothing to answer any more
            handler.write_log(f"reply not sent: {exc}")

    def answer_now(envelope: list, reply: list) -> None:
        if handler.delay_s:
            heapq.heappush(delayed, (time.monotonic() + handler.delay_s, next(sequence), envelope + reply))
        else:
            send(envelope + reply)

    while stop_event is None or not stop_event.is_set():
        now = time.monotonic()
        while delayed and delayed[0][0] <= now:
            send(heapq.heappop(delayed)[2])
        timeout_s = POLL_INTERVAL_S if not delayed else min(POLL_INTERVAL_S, max(0.0, delayed[0][0] - now))
        events = dict(poller.poll(max(0, int(timeout_s * 1000))))
        if results in events:
            send(results.recv_multipart(copy=False))
            worker.busy = None
        if socket in events:
            try:
                _dispatch(socket, worker, handler, answer_now)
            except zmq.ZMQError as exc:
                handler.write_log(f"request not read: {exc}")
            except Exception as exc:  # noqa: BLE001 - one request never ends the serving
                handler.write_log(f"request: error: {type(exc).__name__}")


_UNDER_WAY = {"move_to": "a move", "wait": "a wait", "acquire": "an acquisition"}


def _dispatch(socket: zmq.Socket, worker: _Worker, handler: Handler, answer_now) -> None:
    """Read one message and answer it, or hand it to the worker; whatever fails, the sender gets a reply."""
    frames, count = _receive(socket, MAX_KEPT_FRAMES)
    envelope, payload = _split(frames, count)
    request_id = None
    try:
        if count > MAX_KEPT_FRAMES:
            answer_now(envelope, handler.refuse(ProtocolError(f"a request is one frame, got {count - len(envelope)}")))
            return
        try:
            request, problem = handler.decode(payload), None
        except ProtocolError as exc:
            request, problem = None, exc
        request_id = request.id if request is not None else problem.request_id
        call = request.call if request is not None else None
        if worker.busy is not None and call != "stop":
            under_way = _UNDER_WAY.get(worker.busy, f"a '{worker.busy}' call")
            answer_now(envelope, handler.error(request_id, call or "request",
                                               f"busy: {under_way} is under way; only 'stop' is served until it "
                                               f"ends (got '{call or 'a bad request'}')"))
        elif problem is not None:
            answer_now(envelope, handler.refuse(problem))
        elif call == "stop":  # at once, even while the worker moves the stage: it ends that move
            answer_now(envelope, handler.reply(request))
        else:
            worker.submit(envelope, request)
    except Exception as exc:  # noqa: BLE001 - a reply, whatever went wrong with this one request
        answer_now(envelope, handler.error(request_id, "request", f"request could not be answered: "
                                                                  f"{type(exc).__name__}"))

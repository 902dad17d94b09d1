"""Serve any :class:`~stage_acceptance.microscope.Microscope` over ZeroMQ (protocol v1).

The server answers requests on a ROUTER socket. A ``move_to`` runs in a worker thread
while the socket stays open, so a ``stop`` (sent on a second connection, as the client
does) aborts a move under way; any other call during a move is refused as busy. It
enforces the holder's
travel limits itself (an :class:`~stage_acceptance.microscope.Envelope` sits between
the socket and the backend), so a misbehaving client cannot drive the stage out of
limits. A malformed or oversized message gets an error reply; the server keeps
serving. It binds loopback unless CURVE keys are given. Every client starts with
``describe``; a backend with a ``rewind()`` method (a replay) is rewound then, so each
client is served the recording from its first frame.
"""

from __future__ import annotations

import dataclasses
import ipaddress
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
from .protocol import (MAX_MESSAGE_BYTES, ProtocolError, Request, decode_request, encode_error, encode_reply,
                       one_line, position_from_wire, position_to_wire, wire_image)

POLL_INTERVAL_S = 0.1
"""How often the serving loop looks at its stop event."""

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


def describe(microscope: Microscope, limits: dict[str, tuple[float, float]], settings: dict | None = None) -> dict:
    """The ``describe`` result: name, pixel size, frame size, axes and limits.

    `settings` adds the optional keys (``holder``, ``protocol``, ``stage_to_image``)
    that a client without a config of its own uses (see :func:`served_settings`).
    """
    info = {
        "name": str(microscope.name),
        "pixel_size_nm": float(microscope.pixel_size_nm),
        "frame_px": int(microscope.frame_px),
        "axes": [{"name": axis, "unit": AXIS_UNITS[axis]} for axis in AXES],
        "limits": {key: [float(low), float(high)] for key, (low, high) in limits.items()},
    }
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
    settings : dict, optional
        Optional ``describe`` keys (:func:`served_settings`).
    log : callable, optional
        ``log(line)`` for every error reply and every ``describe``, ``stop`` and
        ``close``; with `verbose` for every call.
    verbose : bool
        Log every call, moves with their targets.
    """

    def __init__(self, microscope: Microscope, limits: dict[str, tuple[float, float]], *,
                 delay_s: float = 0.0, max_message_bytes: int = MAX_MESSAGE_BYTES, settings: dict | None = None,
                 log: Callable[[str], None] | None = None, verbose: bool = False):
        if delay_s < 0:
            raise ServeError(f"delay_s must be >= 0, got {delay_s}")
        self.envelope = Envelope(microscope, limits)
        self.limits = dict(limits)
        self.delay_s = float(delay_s)
        self.max_message_bytes = int(max_message_bytes)
        self.settings = dict(settings or {})
        self.log = log
        self.verbose = bool(verbose)

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """Answer one request's frames; never raises for anything a client sends."""
        try:
            request = decode_request(frames, self.max_message_bytes)
        except ProtocolError as exc:
            return self.bad_request(exc)
        return self.answer(request)

    def bad_request(self, problem: ProtocolError) -> list[bytes]:
        """The error reply to a request that could not be decoded."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.error(problem.request_id, "request", f"bad request: {problem}")

    def answer(self, request: Request) -> list[bytes]:
        """Answer a decoded request; never raises."""
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            reply = self._call(request)
        except MoveRefused as exc:
            return self.error(request.id, request.call, str(exc))
        except Exception as exc:  # a backend failure is reported to the client, not fatal to the server
            return self.error(request.id, request.call,
                              f"{request.call} failed on the microscope: {type(exc).__name__}: {exc}")
        if self.log is not None and (self.verbose or request.call in _ALWAYS_LOGGED):
            self.log(_summary(request))
        return reply

    def error(self, request_id: int | None, call: str, message: str) -> list[bytes]:
        """An error reply, logged."""
        if self.log is not None:
            self.log(f"{call}: error: {one_line(message)}")
        return encode_error(request_id, message)

    def _call(self, request: Request) -> list[bytes]:
        microscope = self.envelope
        if request.call == "describe":
            rewind = getattr(microscope.microscope, "rewind", None)
            if callable(rewind):  # every client starts with describe: a replay starts again at frame 0
                rewind()
            return encode_reply(request.id, describe(microscope.microscope, self.limits, self.settings))
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


class _Move:
    """A ``move_to`` request being handled in a worker thread."""

    def __init__(self, envelope: list[bytes], handler: Handler, request: Request):
        self.envelope = envelope
        self.reply: list[bytes] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(handler, request), daemon=True)
        self._thread.start()

    def _run(self, handler: Handler, request: Request) -> None:
        try:
            self.reply = handler.answer(request)
        finally:
            self.done.set()


def serve(microscope: Microscope, bind: str, limits: dict[str, tuple[float, float]], *,
          keys_dir: str | Path | None = None, delay_s: float = 0.0,
          max_message_bytes: int = MAX_MESSAGE_BYTES, stop_event: threading.Event | None = None,
          ready=None, settings: dict | None = None, log: Callable[[str], None] | None = None,
          verbose: bool = False) -> None:
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
        keys in ``keys_dir/authorized/`` may connect.
    delay_s : float
        Delay before every reply.
    max_message_bytes : int
        Larger requests get an error reply.
    stop_event : threading.Event, optional
        Set it to stop serving.
    ready : callable, optional
        Called with the bound endpoint once the socket listens.
    settings : dict, optional
        Optional ``describe`` keys (:func:`served_settings`).
    log : callable, optional
        ``log(line)`` for errors, ``describe``, ``stop`` and ``close`` (all calls with
        `verbose`).
    verbose : bool
        Log every call.

    Raises
    ------
    ServeError
        For a non-loopback bind without keys, a bad endpoint, or a port in use.
    """
    try:
        handler = Handler(microscope, limits, delay_s=delay_s, max_message_bytes=max_message_bytes,
                          settings=settings, log=log, verbose=verbose)
        if not is_loopback(bind) and keys_dir is None:
            raise ServeError(f"bind {bind} is not loopback: give CURVE keys (--keys DIR, made by "
                             f"'stage-acceptance keys DIR') to serve on the network")
    except Exception:
        microscope.close()
        raise
    context = zmq.Context()
    authenticator = None
    socket = context.socket(zmq.ROUTER)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        # A frame far beyond the limit is dropped by ZeroMQ (the peer is disconnected)
        # instead of being read into memory; a slightly oversized one gets an error reply.
        socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + HARD_LIMIT_MARGIN_BYTES)
        if keys_dir is not None:
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = server_secret(keys_dir)
            authenticator = ThreadAuthenticator(context)
            authenticator.start()
            authenticator.configure_curve(domain="*", location=str(authorized_dir(keys_dir)))
            socket.curve_publickey = public
            socket.curve_secretkey = secret
            socket.curve_server = True
        try:
            socket.bind(bind)
        except zmq.ZMQError as exc:
            raise ServeError(f"cannot bind {bind}: {exc}") from None
        if ready is not None:
            ready(bind)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        mover: _Move | None = None
        while stop_event is None or not stop_event.is_set():
            if mover is not None and mover.done.is_set():
                socket.send_multipart(mover.envelope + mover.reply, copy=False)
                mover = None
            if not poller.poll(int(POLL_INTERVAL_S * 1000)):
                continue
            message = socket.recv_multipart(copy=True)
            try:
                split = message.index(b"")
            except ValueError:
                continue  # not a REQ-style message (no delimiter): nothing to answer
            envelope, payload = message[: split + 1], message[split + 1:]
            try:  # decoded once, here; the handler answers the decoded request
                request, problem = decode_request(payload, max_message_bytes), None
            except ProtocolError as exc:
                request, problem = None, exc
            call = request.call if request is not None else None
            if mover is not None and call != "stop":
                request_id = request.id if request is not None else problem.request_id
                reply = handler.error(request_id, call or "request", f"busy: a move is under way; only 'stop' is "
                                                                     f"served until it ends (got '{call}')")
            elif problem is not None:
                reply = handler.bad_request(problem)
            elif call == "move_to":
                mover = _Move(envelope, handler, request)
                continue
            else:
                reply = handler.answer(request)
            socket.send_multipart(envelope + reply, copy=False)
        if mover is not None:
            mover.done.wait()
    finally:
        socket.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        context.term()
        microscope.close()

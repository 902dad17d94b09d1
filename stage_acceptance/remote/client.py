"""A :class:`~stage_acceptance.microscope.Microscope` served over ZeroMQ (protocol v1).

Every call has a timeout. When a reply does not come within ``timeout_s`` the call
raises :class:`RemoteError` and the socket is replaced, so the next call reaches a
restarted server. Whatever the server sends back, a call either returns checked data
or raises :class:`RemoteError` with one line.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import zmq

from ..config import MICROSCOPE_SCHEMA, schema_problem
from ..geometry import AXIS_FIELDS, StagePosition, StageToImage
from .keys import client_keys
from .protocol import (MAX_MESSAGE_BYTES, ProtocolError, decode_reply, encode_request, finite_number, one_line,
                       position_from_wire, position_to_wire, shown)


MAX_WAIT_PARTS = 1000
"""Most parts a wait longer than the server's ``max_wait_s`` is sent in."""
MAX_MOVE_S = 86400.0
"""Longest move time a server may announce (``max_move_s``): a day."""


class RemoteError(RuntimeError):
    """The remote microscope failed, refused or did not answer. The message is one line."""


def _served_settings(info: dict) -> tuple[str | None, dict | None, StageToImage | None]:
    """The optional ``holder``, ``protocol`` and ``stage_to_image`` of a describe result.

    Raises
    ------
    ValueError
        One line naming the key and value that break the microscope-v1 schema.
    ProtocolError
        For a rotation that is not a finite number.
    """
    holder = info.get("holder")
    if holder is not None and not (isinstance(holder, str) and holder):
        raise ValueError(f"key 'holder' has bad value {shown(holder)}: must be a holder name")
    for key in ("protocol", "stage_to_image"):
        if key in info:
            problem = schema_problem({key: info[key]}, {"type": "object", "properties": {
                key: MICROSCOPE_SCHEMA["properties"][key]}})
            if problem:
                raise ValueError(one_line(problem)[:300])
    protocol = info.get("protocol")
    transform = info.get("stage_to_image")
    if transform is not None:
        rotation_deg = finite_number(transform["rotation_deg"], "key 'stage_to_image.rotation_deg'")
        transform = StageToImage(rotation_deg, bool(transform.get("flip_y", False)))
    return holder, protocol, transform


def served_limits(info: dict) -> dict[str, tuple[float, float]]:
    """The travel limits a describe result says the server enforces.

    An axis the server does not name is not limited by the server.

    Raises
    ------
    ValueError
        One line naming the key and value, for limits that are not ``[low, high]``
        pairs of finite numbers with ``low <= high``.
    """
    limits = info.get("limits")
    if not isinstance(limits, dict):
        raise ValueError(f"key 'limits' has bad value {shown(limits)}: must be an object of [low, high] pairs")
    served = {}
    for key in AXIS_FIELDS.values():
        if key not in limits:
            continue
        pair = limits[key]
        try:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ProtocolError("not a pair")
            low, high = (finite_number(value, key) for value in pair)
        except ProtocolError:
            raise ValueError(f"key 'limits.{key}' has bad value {shown(pair)}: must be [low, high], finite "
                             f"numbers") from None
        if low > high:
            raise ValueError(f"key 'limits.{key}' has bad value {shown(pair)}: low is above high")
        served[key] = (low, high)
    return served


def _optional_seconds(info: dict, key: str, most: float = math.inf) -> float | None:
    """The optional time `key` (``max_wait_s``, ``max_move_s``) of a describe result, a
    finite number in ``(0, most]`` (None if not given)."""
    if key not in info:
        return None
    value = info[key]
    try:
        seconds = finite_number(value, key)
    except ProtocolError:
        seconds = math.nan
    if not 0 < seconds <= most:
        bound = "" if math.isinf(most) else f" and at most {most:g}"
        raise ValueError(f"key '{key}' has bad value {shown(value)}: must be a finite number > 0{bound}")
    return seconds


class RemoteMicroscope:
    """The client side: a microscope at a ZeroMQ endpoint.

    ``name``, ``pixel_size_nm``, ``frame_px`` and ``limits`` (the travel limits the
    server enforces, per axis it names) come from the server's ``describe``, asked when
    the client is created, and so do the optional ``holder`` (a holder name),
    ``protocol`` (``[protocol]`` keys), ``stage_to_image``, ``max_wait_s`` (the
    longest ``wait`` the server serves; longer waits are sent in parts) and
    ``max_move_s`` (the longest a move may take on its stage: the client waits that much
    longer for the reply to ``move_to``) (None when the server does not give them).

    Parameters
    ----------
    endpoint : str
        ``tcp://HOST:PORT`` of a ``stage-acceptance serve`` (or compatible) server.
    timeout_s : float
        Longest wait for any reply.
    keys_dir : str or Path, optional
        A key folder (``stage-acceptance keys``): connect with CURVE.
    max_message_bytes : int
        Larger replies are refused.

    Raises
    ------
    RemoteError
        If the server does not answer ``describe``.
    """

    def __init__(self, endpoint: str, timeout_s: float = 30.0, *, keys_dir: str | Path | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.max_message_bytes = int(max_message_bytes)
        self._keys = client_keys(keys_dir) if keys_dir is not None else None
        self._ids = itertools.count(1)
        self._context = zmq.Context()
        self._socket = None
        self._answered = True  # did the last call get a reply? (close() never waits on a lost server)
        self._connect()
        try:
            info = self._request("describe")
            name = info["name"]
            if not (isinstance(name, str) and name):
                raise ValueError(f"key 'name' has bad value {shown(name)}: must be a non-empty string")
            self.name = name
            self.pixel_size_nm = finite_number(info["pixel_size_nm"], "pixel_size_nm")
            if not self.pixel_size_nm > 0:
                raise ValueError(f"key 'pixel_size_nm' has bad value {shown(info['pixel_size_nm'])}: must be > 0")
            frame_px = info["frame_px"]
            if (isinstance(frame_px, bool) or not isinstance(frame_px, (int, float))
                    or not 1 <= frame_px <= 1 << 20 or frame_px != int(frame_px)):
                raise ValueError(f"key 'frame_px' has bad value {shown(frame_px)}: must be a positive integer")
            self.frame_px = int(frame_px)
            self.limits = served_limits(info)
            self.max_wait_s = _optional_seconds(info, "max_wait_s")
            self.max_move_s = _optional_seconds(info, "max_move_s", MAX_MOVE_S)
            self.holder, self.protocol, self.stage_to_image = _served_settings(info)
        except KeyError as exc:
            self._release()
            raise RemoteError(f"remote microscope at {endpoint}: bad describe reply: it lacks key {exc}") from None
        except (TypeError, ValueError, ArithmeticError, ProtocolError) as exc:
            self._release()
            raise RemoteError(f"remote microscope at {endpoint}: bad describe reply: {one_line(exc)}") from None
        except RemoteError:
            self._release()
            raise

    # ------------------------------------------------------------------- transport

    def _connect(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = self._new_socket()

    def _new_socket(self):
        socket = self._context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        timeout_ms = max(1, int(self.timeout_s * 1000))
        socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
        socket.setsockopt(zmq.SNDTIMEO, timeout_ms)
        if self._keys is not None:
            public, secret, server_public = self._keys
            socket.curve_publickey = public
            socket.curve_secretkey = secret
            socket.curve_serverkey = server_public
        socket.connect(self.endpoint)
        return socket

    def _request(self, call: str, args: dict | None = None, *, want_image: bool = False,
                 extra_s: float = 0.0):
        """Send one call and return its checked result; wait `extra_s` longer than
        ``timeout_s`` for the reply."""
        if self._socket is None:
            raise RemoteError(f"remote microscope at {self.endpoint}: {call} after close()")
        request_id = next(self._ids)
        timeout_s = self.timeout_s + extra_s
        try:
            self._socket.send_multipart(encode_request(request_id, call, args))
            if extra_s:
                self._socket.setsockopt(zmq.RCVTIMEO, max(1, int(timeout_s * 1000)))
            try:
                frames = self._socket.recv_multipart()
            finally:
                if extra_s:
                    self._socket.setsockopt(zmq.RCVTIMEO, max(1, int(self.timeout_s * 1000)))
        except zmq.Again:
            self._answered = False
            self._connect()  # a fresh socket: the next call reaches a restarted server
            raise RemoteError(f"remote microscope at {self.endpoint}: no reply to '{call}' within "
                              f"{timeout_s:g} s (server stopped, unreachable or refusing our keys)") from None
        except zmq.ZMQError as exc:
            self._answered = False
            self._connect()
            raise RemoteError(f"remote microscope at {self.endpoint}: '{call}' failed: {exc}") from None
        self._answered = True
        try:
            reply = decode_reply(frames, self.max_message_bytes)
        except ProtocolError as exc:
            raise RemoteError(f"remote microscope at {self.endpoint}: bad reply to '{call}': {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever a server sends, the caller gets one line
            raise RemoteError(f"remote microscope at {self.endpoint}: bad reply to '{call}': "
                              f"{type(exc).__name__}") from None
        if reply.id != request_id:
            self._connect()
            raise RemoteError(f"remote microscope at {self.endpoint}: reply to '{call}' has id {reply.id}, "
                              f"expected {request_id}")
        if not reply.ok:
            raise RemoteError(f"remote microscope at {self.endpoint}: {call}: {reply.error}")
        if want_image:
            if reply.image is None:
                raise RemoteError(f"remote microscope at {self.endpoint}: reply to '{call}' has no image")
            return reply.result, reply.image
        return reply.result

    # ------------------------------------------------------------------- Microscope

    def move_to(self, target: StagePosition) -> None:
        """Move the stage; the reply may take the server's ``max_move_s`` more than ``timeout_s``."""
        self._request("move_to", {"target": position_to_wire(target)}, extra_s=self.max_move_s or 0.0)

    def position(self) -> StagePosition:
        result = self._request("position")
        try:
            return position_from_wire(result.get("position"))
        except ProtocolError as exc:
            raise RemoteError(f"remote microscope at {self.endpoint}: bad position reply: {exc}") from None

    def acquire(self) -> np.ndarray:
        _, image = self._request("acquire", want_image=True)
        return image

    def wait(self, seconds: float) -> None:
        """Let `seconds` of instrument time pass.

        The wait is sent in parts of at most the server's ``max_wait_s`` and half the
        reply timeout: a real instrument waits in real time, and each part must be
        answered within ``timeout_s``.
        """
        seconds = float(seconds)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"wait time must be a finite number >= 0 s, got {seconds}")
        part_s = min(self.max_wait_s or math.inf, self.timeout_s / 2)
        if seconds > MAX_WAIT_PARTS * part_s:
            which = ("the server's max_wait_s" if self.max_wait_s is not None and self.max_wait_s <= self.timeout_s / 2
                     else "half the reply timeout timeout_s")
            raise RemoteError(f"remote microscope at {self.endpoint}: a wait of {seconds:g} s needs more than "
                              f"{MAX_WAIT_PARTS} waits of {which} = {part_s:g} s")
        while True:
            step_s = min(seconds, part_s)
            self._request("wait", {"seconds": step_s})
            seconds -= step_s
            if seconds <= 0:
                return

    def time_s(self) -> float:
        value = self._request("time").get("time_s")
        try:
            return finite_number(value, "time_s")
        except ProtocolError:
            raise RemoteError(f"remote microscope at {self.endpoint}: bad time reply {shown(value)}") from None

    def stop(self) -> None:
        """Ask the server to stop the stage where it is, even during a move.

        Sent on a connection of its own, so it works while another call (a move)
        still waits for its reply, e.g. after Ctrl-C.

        Raises
        ------
        RemoteError
            If the server does not confirm within ``timeout_s``.
        """
        socket = self._new_socket()
        request_id = next(self._ids)
        try:
            socket.send_multipart(encode_request(request_id, "stop", {}))
            reply = decode_reply(socket.recv_multipart(), self.max_message_bytes)
        except zmq.Again:
            raise RemoteError(f"remote microscope at {self.endpoint}: no reply to 'stop' within "
                              f"{self.timeout_s:g} s") from None
        except (zmq.ZMQError, ProtocolError) as exc:
            raise RemoteError(f"remote microscope at {self.endpoint}: 'stop' failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - one line whatever the server sent
            raise RemoteError(f"remote microscope at {self.endpoint}: 'stop' failed: {type(exc).__name__}") from None
        finally:
            socket.close(linger=0)
        if not reply.ok:
            raise RemoteError(f"remote microscope at {self.endpoint}: stop: {reply.error}")

    def close(self) -> None:
        """Tell the server we are done and release the socket.

        After a call that got no reply the server is not asked (that would wait another
        ``timeout_s``); the socket is released either way.
        """
        if self._socket is None:
            return
        try:
            if self._answered:
                self._request("close")
        except RemoteError:
            pass  # the server went away just now; there is nothing left to release on its side
        finally:
            self._release()

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._context.term()

"""The stage-acceptance remote protocol, version 1: encoding and validation of messages.

A message is a ZeroMQ multipart message. Frame 0 is a UTF-8 JSON header; a reply that
carries an image has the raw pixel bytes as frame 1. ``docs/protocol.md`` is the
complete description for anyone writing a server for another vendor.

Everything here is pure: bytes in, plain data out, :class:`ProtocolError` (one line)
for anything malformed. Sizes and JSON nesting are checked before a header is parsed,
and every number is checked to be finite (integers of any length included) before it
is used; an echoed value is cut to :data:`MAX_SHOWN_CHARS` characters.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..geometry import AXES, StagePosition

PROTOCOL = "stage-acceptance/remote"
"""The value of every header's ``protocol`` key."""

VERSION = 1
"""The protocol version this module speaks."""

CALLS = ("describe", "move_to", "position", "acquire", "wait", "time", "stop", "close")
"""Every call a server answers."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default largest message (all frames together) a server or client accepts."""

MAX_HEADER_BYTES = 64 * 1024
"""Largest JSON header accepted."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of JSON arrays and objects accepted in a header (checked before parsing)."""

MAX_WAIT_S = 3600.0
"""Default longest ``wait`` a server accepts (it says its own limit as ``max_wait_s``)."""

MAX_ERROR_CHARS = 500
"""Longest error text sent; longer texts are cut."""

MAX_SHOWN_CHARS = 60
"""Longest echo of a received value in an error text."""

DTYPES = ("uint8", "uint16", "int16", "int32", "float32", "float64")
"""Pixel types an image frame may carry (always little-endian on the wire)."""

_REQUEST_KEYS = {"protocol", "version", "id", "call", "args"}
_REPLY_KEYS = {"protocol", "version", "id", "ok", "result", "error"}
_CALL_ARGS = {
    "describe": set(),
    "move_to": {"target"},
    "position": set(),
    "acquire": set(),
    "wait": {"seconds"},
    "time": set(),
    "stop": set(),
    "close": set(),
}


class ProtocolError(ValueError):
    """A message does not follow the protocol. The message is one line.

    Attributes
    ----------
    request_id : int or None
        The request id, if it could be read before the problem was found (so the
        error reply can carry it).
    """

    def __init__(self, message: str, request_id: int | None = None):
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """A validated request."""

    id: int
    call: str
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A validated reply: ``ok`` with a result (and maybe an image), or an error."""

    id: int | None
    ok: bool
    result: dict = field(default_factory=dict)
    error: str = ""
    image: np.ndarray | None = None


def one_line(text: str) -> str:
    """`text` on one line, at most :data:`MAX_ERROR_CHARS` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[: MAX_ERROR_CHARS - 3] + "..."


def shown(value) -> str:
    """A short representation of a received value for an error text (never the whole of a huge input).

    Strings and containers are cut to :data:`MAX_SHOWN_CHARS` characters; an integer of
    more than 30 digits is shown by its number of digits.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # beyond Python's int-to-text limit
            return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - whatever it is, it is named by its type
        return f"a {type(value).__name__}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def finite_number(value, what: str, request_id: int | None = None) -> float:
    """`value` as a float if it is a finite JSON number (not a bool).

    Integers of any length are accepted only if they fit a finite float.

    Raises
    ------
    ProtocolError
        Naming `what` and the (shortened) value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{what} must be a finite number, got {shown(value)}", request_id)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ProtocolError(f"{what} must be a finite number, got {shown(value)}", request_id)
    return number


def _dumps(header: dict) -> bytes:
    return json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _reject_constant(constant: str):
    raise ValueError(f"{constant} is not allowed")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in the JSON text `data` (brackets in strings do not count).

    A text that is not JSON gets some number; the parser then rejects it.
    """
    if data.count(b"[") + data.count(b"{") <= 1:
        return 1 if (b"[" in data or b"{" in data) else 0
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", data)):
        if bracket in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _parse_header(frames: list[bytes], max_message_bytes: int) -> dict:
    """Size and nesting checks, then JSON parsing of frame 0; raise ProtocolError."""
    if not frames:
        raise ProtocolError("empty message: expected a JSON header frame")
    total = sum(len(frame) for frame in frames)
    if total > max_message_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the maximum of {max_message_bytes} bytes")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(frames[0])} bytes exceeds the maximum of {MAX_HEADER_BYTES} bytes")
    data = bytes(frames[0])
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError(f"header nests arrays and objects {depth} deep; at most {MAX_JSON_DEPTH} are allowed")
    try:
        header = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {one_line(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def _request_id(header: dict) -> int | None:
    value = header.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _check_envelope(header: dict) -> None:
    request_id = _request_id(header)
    if header.get("protocol") != PROTOCOL:
        raise ProtocolError(f"header key 'protocol' must be {PROTOCOL!r}, got {shown(header.get('protocol'))}",
                            request_id)
    version = header.get("version")
    if isinstance(version, bool) or version != VERSION:
        raise ProtocolError(f"header key 'version' must be {VERSION}, got {shown(version)}", request_id)
    if request_id is None:
        raise ProtocolError(f"header key 'id' must be an integer in [0, 2**63), got {shown(header.get('id'))}")


# --------------------------------------------------------------------------- positions


def position_to_wire(position: StagePosition) -> dict[str, float]:
    """The recording-v1 position object ``{"x": nm, "y": nm, "z": nm, "alpha": deg, "beta": deg}``."""
    return position.as_dict()


def position_from_wire(data, what: str = "position") -> StagePosition:
    """Read a position object; all five axes are required, each a finite number.

    Raises
    ------
    ProtocolError
        Naming `what`, the bad key and its (shortened) value.
    """
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be an object with keys {list(AXES)}, got {type(data).__name__}")
    unknown = [key for key in data if key not in AXES]
    if unknown:
        raise ProtocolError(f"{what} has unknown key(s) {shown(sorted(map(str, unknown)))}; expected {list(AXES)}")
    missing = [axis for axis in AXES if axis not in data]
    if missing:
        raise ProtocolError(f"{what} lacks key(s) {missing}")
    return StagePosition(*(finite_number(data[axis], f"{what} key '{axis}'") for axis in AXES))


# --------------------------------------------------------------------------- requests


def encode_request(request_id: int, call: str, args: dict | None = None) -> list[bytes]:
    """The frames of a request.

    Raises
    ------
    ValueError
        For an unknown call.
    """
    if call not in CALLS:
        raise ValueError(f"unknown call {call!r}; known calls: {', '.join(CALLS)}")
    return [_dumps({"protocol": PROTOCOL, "version": VERSION, "id": int(request_id), "call": call,
                    "args": args or {}})]


def decode_request(frames: list[bytes], max_message_bytes: int = MAX_MESSAGE_BYTES,
                   max_wait_s: float = MAX_WAIT_S) -> Request:
    """Validate a request completely (header, call, argument names and values).

    Numbers come out as floats: a ``move_to`` target as the five-axis position object,
    ``wait`` seconds as a float in ``[0, max_wait_s]``.

    Parameters
    ----------
    frames : list of bytes
        The message (bytes-like frames).
    max_message_bytes : int
        Larger messages are refused before parsing.
    max_wait_s : float
        Longest ``wait`` accepted.

    Raises
    ------
    ProtocolError
        One line; ``request_id`` is set when the id could be read.
    """
    header = _parse_header(frames, max_message_bytes)
    _check_envelope(header)
    request_id = _request_id(header)
    unknown = sorted(set(header) - _REQUEST_KEYS)
    if unknown:
        raise ProtocolError(f"unknown request header key(s) {shown(unknown)}", request_id)
    if len(frames) != 1:
        raise ProtocolError(f"a request is one frame, got {len(frames)}", request_id)
    call = header.get("call")
    if not isinstance(call, str) or call not in CALLS:
        raise ProtocolError(f"unknown call {shown(call)}; known calls: {', '.join(CALLS)}", request_id)
    args = header.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(f"'args' of {call} must be an object, got {type(args).__name__}", request_id)
    expected = _CALL_ARGS[call]
    if set(args) != expected:
        raise ProtocolError(f"'args' of {call} must have exactly the keys {sorted(expected)}, got "
                            f"{shown(sorted(args))}", request_id)
    args = dict(args)
    if call == "move_to":
        try:
            args["target"] = position_to_wire(position_from_wire(args["target"], "move_to target"))
        except ProtocolError as exc:
            raise ProtocolError(str(exc), request_id) from None
    if call == "wait":
        try:
            seconds = finite_number(args["seconds"], "wait 'seconds'")
        except ProtocolError:
            seconds = math.nan
        if not 0 <= seconds <= max_wait_s:
            raise ProtocolError(f"wait 'seconds' must be a finite number >= 0 and at most max_wait_s = "
                                f"{max_wait_s:g}, got {shown(args['seconds'])}", request_id)
        args["seconds"] = seconds
    return Request(request_id, call, args)


# --------------------------------------------------------------------------- replies


def wire_image(image) -> np.ndarray:
    """`image` in a pixel type the wire carries (:data:`DTYPES`).

    A type the wire lacks is widened to the smallest one that holds every value
    (``int8`` -> ``int16``, ``float16`` -> ``float32``, ``bool`` -> ``uint8``); 32- and
    64-bit integers beyond ``int32`` go as ``float64`` (exact up to 2**53 counts).
    """
    image = np.asarray(image)
    if image.dtype.name in DTYPES or image.dtype.kind not in "biuf":
        return image  # already fine, or not a pixel type at all (encode_reply says so)
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    for name in DTYPES:
        if np.can_cast(image.dtype, name, casting="safe"):
            return image.astype(name)
    return image.astype(np.float64)


def encode_reply(request_id: int, result: dict, image: np.ndarray | None = None) -> list[bytes]:
    """The frames of a successful reply; an image adds ``dtype`` and ``shape`` to the result.

    Raises
    ------
    ValueError
        For an image that is not 2-D or has a pixel type outside :data:`DTYPES`.
    """
    result = dict(result)
    if image is None:
        return [_dumps({"protocol": PROTOCOL, "version": VERSION, "id": request_id, "ok": True, "result": result})]
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"an image must be 2-D (rows, columns), got shape {image.shape}")
    if image.dtype.name not in DTYPES:
        raise ValueError(f"image pixel type {image.dtype.name} is not one of {', '.join(DTYPES)}")
    wire = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    result["dtype"] = image.dtype.name
    result["shape"] = [int(image.shape[0]), int(image.shape[1])]
    header = {"protocol": PROTOCOL, "version": VERSION, "id": request_id, "ok": True, "result": result}
    return [_dumps(header), wire.tobytes()]


def encode_error(request_id: int | None, message: str) -> list[bytes]:
    """The frames of an error reply (``id`` is null when the request's id was unreadable)."""
    return [_dumps({"protocol": PROTOCOL, "version": VERSION, "id": request_id, "ok": False,
                    "error": one_line(message)})]


def decode_reply(frames: list[bytes], max_message_bytes: int = MAX_MESSAGE_BYTES) -> Reply:
    """Validate a reply and decode its image, if any.

    Raises
    ------
    ProtocolError
        One line.
    """
    header = _parse_header(frames, max_message_bytes)
    if header.get("protocol") != PROTOCOL:
        raise ProtocolError(f"reply key 'protocol' must be {PROTOCOL!r}, got {shown(header.get('protocol'))}")
    if header.get("version") != VERSION:
        raise ProtocolError(f"reply key 'version' must be {VERSION}, got {shown(header.get('version'))}")
    unknown = sorted(set(header) - _REPLY_KEYS)
    if unknown:
        raise ProtocolError(f"unknown reply header key(s) {shown(unknown)}")
    request_id = header.get("id")
    if request_id is not None and _request_id(header) is None:
        raise ProtocolError(f"reply key 'id' must be an integer or null, got {shown(request_id)}")
    ok = header.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError(f"reply key 'ok' must be true or false, got {shown(ok)}")
    if not ok:
        error = header.get("error")
        if not isinstance(error, str) or len(frames) != 1:
            raise ProtocolError("an error reply must have a string 'error' and no further frames")
        return Reply(request_id, False, error=one_line(error))
    result = header.get("result")
    if not isinstance(result, dict):
        raise ProtocolError(f"reply key 'result' must be an object, got {type(result).__name__}")
    if len(frames) == 1:
        if "dtype" in result or "shape" in result:
            raise ProtocolError("reply announces an image (dtype, shape) but has no image frame")
        return Reply(request_id, True, result=result)
    if len(frames) != 2:
        raise ProtocolError(f"a reply has one or two frames, got {len(frames)}")
    dtype, shape = result.get("dtype"), result.get("shape")
    if dtype not in DTYPES:
        raise ProtocolError(f"image 'dtype' must be one of {', '.join(DTYPES)}, got {shown(dtype)}")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= max_message_bytes for n in shape)):
        raise ProtocolError(f"image 'shape' must be [rows, columns] of positive integers, got {shown(shape)}")
    wire_dtype = np.dtype(dtype).newbyteorder("<")
    expected = shape[0] * shape[1] * wire_dtype.itemsize
    if len(frames[1]) != expected:
        raise ProtocolError(f"image frame has {len(frames[1])} bytes; dtype {dtype} and shape {shape} need {expected}")
    image = np.frombuffer(bytes(frames[1]), dtype=wire_dtype).reshape(shape).astype(np.dtype(dtype))
    result = {k: v for k, v in result.items() if k not in ("dtype", "shape")}
    return Reply(request_id, True, result=result, image=image)

"""Reading and validating microscope configs (microscope-v1) and holder files (results-v1).

Every default lives here, in the dataclasses below. Every key's type and bounded range
lives in the JSON schemas (`MICROSCOPE_SCHEMA`, `HOLDER_SCHEMA`), the single source of
truth; `describe_schema` lists them. Validation uses `jsonschema` on the parsed TOML
(integers must be integers: ``steps = 5.0`` is refused). A file that is not UTF-8, is
larger than 1 MiB, nests too deep, or holds NaN, infinities or integers beyond 64 bits
is refused too. Every error is one `ConfigError` line that names the file and, where
there is one, the key and the offending value (cut to 60 characters).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import ipaddress
import itertools
import math
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from .geometry import StageToImage

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
"""The repository's ``fixtures/`` folder (configs shipped with the project)."""

MICROSCOPES_DIR = FIXTURES_DIR / "microscopes"
HOLDERS_DIR = FIXTURES_DIR / "holders"

CASES = ("a", "b", "c", "d", "e", "f")


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid. The message is one line."""


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ProtocolConfig:
    """The measurement sequences (``[protocol]``)."""

    step_nm: float = 1000.0
    steps: int = 5
    settle_s: float = 0.0
    dwell_frames: int = 3
    dwell_interval_s: float = 30.0
    tilt_step_deg: float = 2.0
    tilt_steps: int = 3
    montage_pieces: tuple[int, int] = (3, 3)
    """``(columns, rows)`` of the montage protocol."""
    montage_overlap: float = 0.2
    """Fraction of the field of view neighbouring montage pieces share."""

    def __post_init__(self):
        # TOML, JSON (a recording, a server's describe) give the pair as a list
        object.__setattr__(self, "montage_pieces", tuple(int(n) for n in self.montage_pieces))


@dataclass(frozen=True)
class SimConfig:
    """The simulated stage and detector (``[sim]``)."""

    seed: int = 1
    backlash_nm: tuple[float, float] = (0.0, 0.0)
    scale_error: tuple[float, float] = (0.0, 0.0)
    coupling_x_to_y: float = 0.0
    coupling_y_to_x: float = 0.0
    step_noise_nm: float = 1.0
    drift_nm_per_min: tuple[float, float] = (0.0, 0.0)
    reported: str = "target"
    reported_scale_error: tuple[float, float] = (0.0, 0.0)
    reported_noise_nm: float = 0.5
    dose: float = 40.0
    move_time_s: float = 5.0
    frame_time_s: float = 2.0
    rotation_deg: float = 0.0
    flip_y: bool = False
    creep_nm: tuple[float, float] = (0.0, 0.0)
    creep_time_s: float = 10.0
    thermal_drift_nm_per_min: tuple[float, float] = (0.0, 0.0)
    thermal_time_s: float = 120.0
    stick_threshold_nm: float = 0.0
    stick_probability: float = 0.0
    wear_nm_per_mm: tuple[float, float] = (0.0, 0.0)
    reported_quantum_nm: float = 0.0
    readback_jump_nm: float = 0.0
    readback_jump_probability: float = 0.0
    scan_rotation_deg: float = 0.0
    scan_jitter_px: float = 0.0
    defocus_blur_nm_per_um: float = 0.0
    focus_z_nm: float = 0.0
    read_noise_counts: float = 0.0
    specimen: str = "procedural"
    specimen_pixel_nm: float = 1.0
    pivot_arm_mm: float = 0.0
    x_pull_scale_error: float = 0.0
    eucentric_error_nm: float = 0.0
    tilt_backlash_deg: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class RemoteConfig:
    """A microscope served over ZeroMQ (``[remote]``)."""

    endpoint: str = "tcp://127.0.0.1:5555"
    timeout_s: float = 30.0
    keys: Path | None = None
    """CURVE key folder (``stage-acceptance keys``), relative paths resolved against the config file."""


@dataclass(frozen=True)
class PyJEMConfig:
    """A JEOL microscope driven through PyJEM on its own PC (``[pyjem]``).

    Images come from exactly one of `detector` (a PyJEM detector name:
    ``PyJEM.detector.Detector(detector).snapshot_rawdata()``, 16-bit raw frames) or
    `camera` (``"module:function"``, a Python callable returning a 2-D array).
    """

    detector: str | None = None
    camera: str | None = None
    tolerance_nm: float = 50.0
    tolerance_deg: float = 0.1
    move_timeout_s: float = 120.0
    poll_s: float = 0.05


SERIALEM_PARAMETER_SETS = ("record", "preview", "view")
"""SerialEM camera parameter sets a ``kind = "serialem"`` config may image with."""


@dataclass(frozen=True)
class SerialEMConfig:
    """Any microscope SerialEM drives, through its Python module (``[serialem]``).

    SerialEM listens for external Python on `host`:`port` (property
    ``EnableExternalPython 1``). Frames are taken with the camera parameter set
    `parameter_set`, from a centred area of ``frame_px`` x ``frame_px`` binned pixels
    at `binning`.
    """

    host: str = "127.0.0.1"
    port: int = 48888
    parameter_set: str = "record"
    binning: float = 1.0
    tolerance_nm: float = 50.0
    tolerance_deg: float = 0.1
    move_timeout_s: float = 120.0
    poll_s: float = 0.05
    beta_axis: bool = False
    image_shift_tolerance_nm: float = 5.0
    pixel_size_tolerance: float = 0.05


@dataclass(frozen=True)
class MicroscopeConfig:
    """A microscope config file (microscope-v1)."""

    name: str
    kind: str
    pixel_size_nm: float
    frame_px: int
    holder: str = "default"
    stage_to_image: StageToImage | None = None
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    sim: SimConfig | None = None
    remote: RemoteConfig | None = None
    pyjem: PyJEMConfig | None = None
    serialem: SerialEMConfig | None = None
    path: Path | None = None
    given: frozenset[str] = frozenset()
    """The keys the file gives: top-level ones and ``protocol.<key>`` (the rest are defaults,
    which a remote server's ``describe`` may fill in)."""


TOLERANCE_KEYS = (
    "agreement_nm",
    "consistency_nm",
    "backlash_nm",
    "scale_error",
    "coupling",
    "skew_deg",
    "repeatability_nm",
    "drift_nm_per_min",
)

OPTIONAL_TOLERANCE_KEYS = (
    "tilt_shift_nm_per_deg",
    "tilt_backlash_deg",
)
"""Tolerances this project adds to results-v1 holder files; a holder may leave them out."""

LIMIT_KEYS = ("x_nm", "y_nm", "z_nm", "alpha_deg", "beta_deg")

REGRESSION_KEYS = (
    "backlash_nm",
    "scale_error",
    "step_scatter_nm",
    "reported_backlash_nm",
    "reported_scale_error",
    "repeatability_nm",
    "coupling",
    "skew_deg",
    "drift_nm_per_min",
    "tilt_shift_nm_per_deg",
    "tilt_backlash_deg",
    "pair_rms_nm",
    "montage_error_rms_nm",
    "montage_reported_error_rms_nm",
    "montage_growth_nm_per_piece",
    "montage_neighbour_error_max_nm",
    "montage_unplaced_pieces",
)
"""Keys of a holder's optional ``[regression]`` table: the largest change for the worse
accepted against a baseline, per metric family (both axes alike; ``coupling`` for both
slopes, ``pair_rms_nm`` for the RMS per step of the three position pairs,
``montage_<metric>`` for ``montage.<metric>``)."""


@dataclass(frozen=True)
class HolderConfig:
    """A holder tolerance file (results-v1)."""

    name: str
    tolerances: dict[str, float]
    limits: dict[str, tuple[float, float]]
    accepted_cases: tuple[str, ...]
    path: Path | None = None
    key: str = ""
    """The short name the holder was selected by (file stem)."""
    source: str = ""
    """Who chose it, for the report: ``--holder``, the microscope config, a recording's
    shipped holder name, the server, or the default."""
    regression: dict[str, float] = field(default_factory=dict)
    """``[regression]``: the largest change for the worse accepted against a baseline,
    by :data:`REGRESSION_KEYS` (empty when the file has no such table)."""


# --------------------------------------------------------------------------- bounds
#
# Every key has a type and a bounded range, written into the JSON schemas below: the
# schemas are the single source of truth (`describe_schema` lists them for the README).

MAX_FILE_BYTES = 1 << 20
"""Largest config file read (1 MiB); a config is a few kB, so anything bigger is refused unread."""
MAX_DEPTH = 8
"""Deepest nesting of tables and arrays below the top (the schemas need 2: ``[sim] coupling``)."""
MAX_VALUE_CHARS = 60
"""Longest value (or key) quoted in an error message; longer ones are cut with ``...``."""

MAX_DISTANCE_NM = 1.0e7
"""Largest distance: the travel of a holder (10 mm). Steps, errors, noise, limits."""
MAX_SPEED_NM_PER_MIN = 1.0e6
"""Largest drift speed (1 mm per minute)."""
MAX_TIME_S = 86400.0
"""Longest time: a day. Settling, intervals, simulated move and frame times, time-outs."""
MAX_DOSE = 1.0e6
"""Largest mean dose, counts per pixel (and read noise, counts)."""
MAX_SEED = 2**63 - 1
PIXEL_NM = (1.0e-3, 1.0e5)
"""Pixel size range, nm: 1 pm to 100 um."""
MAX_NAME_CHARS = 200
"""Longest name (microscope, holder, detector, endpoint, camera)."""
MAX_PATH_CHARS = 1024
"""Longest path (specimen image, key folder)."""
TOML_INT = (-(2**63), 2**63 - 1)
"""TOML integers are 64-bit."""
MAX_MONTAGE_SIDE = 50
"""Most montage pieces along a side (a 50 x 50 montage is 2500 frames)."""
MONTAGE_OVERLAP = (0.1, 0.9)
"""Overlap fraction of neighbouring montage pieces: at least the 10 % of the field a
registration needs, at most 90 %."""


def _number(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> dict:
    """A number in ``[low, high]`` (an open end with `open_low`, `open_high`)."""
    return {"type": "number", ("exclusiveMinimum" if open_low else "minimum"): low,
            ("exclusiveMaximum" if open_high else "maximum"): high}


def _integer(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


def _pair(item: dict) -> dict:
    return {"type": "array", "items": item, "minItems": 2, "maxItems": 2}


_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


def _text(max_chars: int, what: str = "a string") -> dict:
    """A non-empty one-line string of at most `max_chars` characters."""
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": _NO_CONTROL,
            "description": f"{what} (1 to {max_chars} characters, no control characters)"}


_distance = _number(0, MAX_DISTANCE_NM)
_signed_distance = _number(-MAX_DISTANCE_NM, MAX_DISTANCE_NM)
_positive_distance = _number(0, MAX_DISTANCE_NM, open_low=True)
_time = _number(0, MAX_TIME_S)
_positive_time = _number(0, MAX_TIME_S, open_low=True)
_angle = _number(-360, 360)
_probability = _number(0, 1)
_fraction = _number(-0.5, 0.5, open_low=True, open_high=True)
_coupling = _number(-1, 1)
_pixel = _number(*PIXEL_NM)
_bool = {"type": "boolean"}

KINDS = ("sim", "remote", "pyjem", "serialem")
"""Microscope kinds; each may have a table of its own name (``[sim]``, ``[remote]``, ``[pyjem]``,
``[serialem]``)."""

MICROSCOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "kind"],
    "properties": {
        "name": _text(MAX_NAME_CHARS),
        "kind": {"enum": list(KINDS)},
        "holder": _text(MAX_NAME_CHARS),
        "pixel_size_nm": _pixel,
        "frame_px": _integer(32, 8192),
        "stage_to_image": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rotation_deg"],
            "properties": {"rotation_deg": _angle, "flip_y": _bool},
        },
        "protocol": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "step_nm": _positive_distance,
                "steps": _integer(2, 100),
                "settle_s": _time,
                "dwell_frames": _integer(2, 100),
                "dwell_interval_s": _time,
                "tilt_step_deg": _number(0, 30, open_low=True),
                "tilt_steps": _integer(2, 30),
                "montage_pieces": {**_pair(_integer(1, MAX_MONTAGE_SIDE)), "not": {"const": [1, 1]},
                                   "description": f"[columns, rows]: two integers 1 to {MAX_MONTAGE_SIDE}, "
                                                  f"at least 2 pieces in all"},
                "montage_overlap": _number(*MONTAGE_OVERLAP),
            },
        },
        "sim": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "seed": _integer(0, MAX_SEED),
                "backlash_nm": _pair(_distance),
                "scale_error": _pair(_fraction),
                "coupling": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"x_to_y": _coupling, "y_to_x": _coupling},
                },
                "step_noise_nm": _distance,
                "drift_nm_per_min": _pair(_number(-MAX_SPEED_NM_PER_MIN, MAX_SPEED_NM_PER_MIN)),
                "reported": {"enum": ["target", "actual", "scaled"]},
                "reported_scale_error": _pair(_fraction),
                "reported_noise_nm": _distance,
                "dose": _number(0, MAX_DOSE, open_low=True),
                "move_time_s": _time,
                "frame_time_s": _time,
                "rotation_deg": _angle,
                "flip_y": _bool,
                "creep_nm": _pair(_distance),
                "creep_time_s": _time,
                "thermal_drift_nm_per_min": _pair(_number(0, MAX_SPEED_NM_PER_MIN)),
                "thermal_time_s": _time,
                "stick_threshold_nm": _distance,
                "stick_probability": _probability,
                "wear_nm_per_mm": _pair(_distance),
                "reported_quantum_nm": _distance,
                "readback_jump_nm": _distance,
                "readback_jump_probability": _probability,
                "scan_rotation_deg": _angle,
                "scan_jitter_px": _number(0, 100),
                "defocus_blur_nm_per_um": _number(0, 1000),
                "focus_z_nm": _signed_distance,
                "read_noise_counts": _number(0, MAX_DOSE),
                "specimen": _text(MAX_PATH_CHARS, '"procedural" or an image path'),
                "specimen_pixel_nm": _pixel,
                "pivot_arm_mm": _number(0, 1000),
                "x_pull_scale_error": _fraction,
                "eucentric_error_nm": _signed_distance,
                "tilt_backlash_deg": _pair(_number(0, 10)),
            },
        },
        "remote": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "endpoint": {"type": "string", "maxLength": MAX_NAME_CHARS,
                             "pattern": r"^tcp://[^\s\x00-\x1f\x7f]+:[0-9]{1,5}$",
                             "description": f"an endpoint tcp://HOST:PORT (at most {MAX_NAME_CHARS} characters)"},
                "timeout_s": _positive_time,
                "keys": _text(MAX_PATH_CHARS, "a folder path"),
            },
        },
        "pyjem": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "detector": _text(MAX_NAME_CHARS, "a PyJEM detector name"),
                "camera": {"type": "string", "maxLength": MAX_NAME_CHARS,
                           "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
                           "description": f'"module:function" of Python names (at most {MAX_NAME_CHARS} characters)'},
                "tolerance_nm": _positive_distance,
                "tolerance_deg": _number(0, 10, open_low=True),
                "move_timeout_s": _positive_time,
                "poll_s": _number(0, 60, open_low=True),
            },
        },
        "serialem": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string", "minLength": 2, "maxLength": 45, "pattern": r"^[0-9A-Fa-f.:]+$",
                         "description": 'an IPv4 or IPv6 address, e.g. "127.0.0.1"'},
                "port": _integer(1, 65535),
                "parameter_set": {"enum": list(SERIALEM_PARAMETER_SETS)},
                "binning": _number(0.5, 32),
                "tolerance_nm": _positive_distance,
                "tolerance_deg": _number(0, 10, open_low=True),
                "move_timeout_s": _positive_time,
                "poll_s": _number(0, 60, open_low=True),
                "beta_axis": _bool,
                "image_shift_tolerance_nm": _positive_distance,
                "pixel_size_tolerance": _number(0, 1, open_low=True),
            },
        },
    },
}

_tolerance_schemas = {
    "agreement_nm": _distance,
    "consistency_nm": _distance,
    "backlash_nm": _distance,
    "scale_error": _number(0, 1),
    "coupling": _number(0, 1),
    "skew_deg": _number(0, 90),
    "repeatability_nm": _distance,
    "drift_nm_per_min": _number(0, MAX_SPEED_NM_PER_MIN),
    "tilt_shift_nm_per_deg": _distance,
    "tilt_backlash_deg": _number(0, 90),
}
_regression_schemas = {
    "backlash_nm": _distance,
    "scale_error": _number(0, 1),
    "step_scatter_nm": _distance,
    "reported_backlash_nm": _distance,
    "reported_scale_error": _number(0, 1),
    "repeatability_nm": _distance,
    "coupling": _number(0, 1),
    "skew_deg": _number(0, 90),
    "drift_nm_per_min": _number(0, MAX_SPEED_NM_PER_MIN),
    "tilt_shift_nm_per_deg": _distance,
    "tilt_backlash_deg": _number(0, 90),
    "pair_rms_nm": _distance,
    "montage_error_rms_nm": _distance,
    "montage_reported_error_rms_nm": _distance,
    "montage_growth_nm_per_piece": _distance,
    "montage_neighbour_error_max_nm": _distance,
    "montage_unplaced_pieces": _number(0, 10000),
}
_limit_schemas = {
    "x_nm": _pair(_signed_distance),
    "y_nm": _pair(_signed_distance),
    "z_nm": _pair(_signed_distance),
    "alpha_deg": _pair(_number(-90, 90)),
    "beta_deg": _pair(_number(-90, 90)),
}

HOLDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "tolerances", "limits", "acceptance"],
    "properties": {
        "name": _text(MAX_NAME_CHARS),
        "tolerances": {
            "type": "object",
            "additionalProperties": False,
            "required": list(TOLERANCE_KEYS),
            "properties": {key: _tolerance_schemas[key] for key in TOLERANCE_KEYS + OPTIONAL_TOLERANCE_KEYS},
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "required": list(LIMIT_KEYS),
            "properties": {key: _limit_schemas[key] for key in LIMIT_KEYS},
        },
        "regression": {
            "type": "object",
            "additionalProperties": False,
            "properties": {key: _regression_schemas[key] for key in REGRESSION_KEYS},
        },
        "acceptance": {
            "type": "object",
            "additionalProperties": False,
            "required": ["accepted_cases"],
            "properties": {
                "accepted_cases": {
                    "type": "array",
                    "items": {"enum": list(CASES)},
                    "minItems": 1,
                    "maxItems": len(CASES),
                    "uniqueItems": True,
                }
            },
        },
    },
}


# --------------------------------------------------------------------------- messages


def _clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`text` on one line (control characters escaped), cut to about `limit` characters."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """A value for an error message: its repr, never longer than :data:`MAX_VALUE_CHARS`."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return f"{_clip(repr(value[:MAX_VALUE_CHARS]))} ({len(value)} characters)"
    if isinstance(value, (list, dict)) and len(value) > 20:
        return f"<{'an array' if isinstance(value, list) else 'a table'} of {len(value)} items>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an integer too long to print, a structure too deep
        return f"<{type(value).__name__}>"
    return _clip(text)


def _key(path) -> str:
    """Dotted key of a path of keys and indices, cut for a message."""
    return _clip(".".join(str(p) for p in path) or "(top level)")


def _bound(value) -> str:
    """A bound for a message: ``1e7`` rather than ``10000000.0``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    if isinstance(value, int):
        if abs(value) in (2**63, 2**63 - 1):
            return f"{'-' if value < 0 else ''}2**63{' - 1' if abs(value) == 2**63 - 1 else ''}"
        digits = str(abs(value))
        if len(digits) > 5 and digits.rstrip("0") == "1":
            return f"{'-' if value < 0 else ''}1e{len(digits) - 1}"
        return str(value)
    return repr(value)


def _range_text(node: dict) -> str:
    low = next(((k, node[k]) for k in ("minimum", "exclusiveMinimum") if k in node), None)
    high = next(((k, node[k]) for k in ("maximum", "exclusiveMaximum") if k in node), None)
    if low and high:
        return (f"{'[' if low[0] == 'minimum' else '('}{_bound(low[1])}, "
                f"{_bound(high[1])}{']' if high[0] == 'maximum' else ')'}")
    if low:
        return f"{'>=' if low[0] == 'minimum' else '>'} {_bound(low[1])}"
    if high:
        return f"{'<=' if high[0] == 'maximum' else '<'} {_bound(high[1])}"
    return ""


def expectation(node: dict) -> str | None:
    """What a schema node accepts, in words: ``a number in [0, 86400]``; None if it cannot say."""
    if "description" in node:
        return node["description"]
    if "const" in node:
        return repr(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(repr(v) for v in node["enum"])
    kind = node.get("type")
    if isinstance(kind, list):
        parts = [expectation({**node, "type": k}) for k in kind]
        return None if None in parts else " or ".join(parts)
    if kind in ("number", "integer"):
        word = "an integer" if kind == "integer" else "a number"
        where = _range_text(node)
        return f"{word} in {where}" if where.startswith(("[", "(")) else f"{word} {where}".rstrip()
    if kind == "string":
        low, high = node.get("minLength"), node.get("maxLength")
        size = (f" of {low or 0} to {high} characters" if high is not None
                else f" of at least {low} characters" if low else "")
        return f"a string{size}" + (f" matching {node['pattern']}" if "pattern" in node else "")
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        return "a table"
    if kind == "array":
        low, high = node.get("minItems"), node.get("maxItems")
        count = (f"{low} " if low is not None and low == high else f"{low or 0} to {high} " if high is not None
                 else f"at least {low} " if low else "")
        item = expectation(node["items"]) if isinstance(node.get("items"), dict) else None
        return (f"an array of {count}items" + (f", each {item}" if item else "")
                + (", all different" if node.get("uniqueItems") else ""))
    if kind == "null":
        return "null"
    return None


def describe_schema(schema: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Every key of a schema with what it accepts, in schema order (for documentation).

    Returns
    -------
    list of (str, str)
        ``(dotted key, expectation)``, e.g. ``("sim.dose", "a number in (0, 1e6]")``;
        tables are listed by their keys.
    """
    rows = []
    for key, node in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if node.get("type") == "object" and "properties" in node:
            rows.extend(describe_schema(node, f"{name}."))
        else:
            rows.append((name, expectation(node) or "?"))
    return rows


# --------------------------------------------------------------------------- validation

_STRICT_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, instance: isinstance(instance, int) and not isinstance(instance, bool))
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT_TYPES)
"""Draft 2020-12 where an integer is an integer: TOML ``steps = 5.0`` and JSON ``5.0`` are not one."""


def _known_keys(unknown, known: list[str], path: list, limit: int = 120) -> str:
    """``did you mean 'sim.backlash_nm'?`` for a near miss, else the keys allowed there (cut to `limit`)."""
    close = difflib.get_close_matches(str(unknown)[:100], known, n=1, cutoff=0.75)
    if close:
        return f"did you mean '{_key(path + close)}'?"
    listed = ", ".join(known)
    if len(listed) > limit:
        listed = listed[: listed.rfind(", ", 0, limit)] + f", ... ({len(known)} keys)"
    return f"known keys here: {listed}" if known else "no keys are allowed here"


def schema_problem(data, schema: dict) -> str | None:
    """The first problem of `data` against a JSON schema, as one line; None if valid.

    The line names the dotted key and the offending value (cut to 60 characters) and
    says what the key accepts, e.g.
    ``key 'sim.dose' has bad value -1.0: must be a number in (0, 1e6]``,
    ``unknown key 'sim.baclash_nm' (did you mean 'sim.backlash_nm'?)``,
    ``unknown key 'sim.foo' (known keys here: ...)`` or ``missing required key 'name'``.
    Integers must be integers (``5.0`` is not one).
    """
    errors = list(itertools.islice(_Validator(schema).iter_errors(data), 50))
    if not errors:
        return None
    error = jsonschema.exceptions.best_match(errors)
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted((k for k in error.instance if k not in known), key=str)
        if unknown:
            return f"unknown key '{_key(path + [unknown[0]])}' ({_known_keys(unknown[0], known, path)})"
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return f"missing required key '{_key(path + [missing[0]])}'"
    expected = expectation(error.schema)
    why = f"must be {expected}" if expected else _clip(error.message, 120)
    return f"key '{_key(path)}' has bad value {_show(error.instance)}: {why}"


def validate(data: dict, schema: dict, source: str | Path) -> None:
    """Validate parsed data against a JSON schema; raise a one-line ConfigError.

    Parameters
    ----------
    data : dict
        Parsed TOML or JSON.
    schema : dict
        JSON Schema.
    source : str or Path
        File name used in the error message.

    Raises
    ------
    ConfigError
        Naming the file, the key and the offending value.
    """
    problem = schema_problem(data, schema)
    if problem:
        raise ConfigError(f"{source}: {problem}")


def _check_values(data: Any, source: Path, path: tuple = ()) -> None:
    """Refuse what JSON Schema cannot judge: NaN and infinities, integers beyond 64 bits
    (TOML's range), and nesting deeper than :data:`MAX_DEPTH`."""
    if isinstance(data, (dict, list)):
        if len(path) >= MAX_DEPTH:
            raise ConfigError(f"{source}: key '{_key(path)}' nests tables or arrays more than {MAX_DEPTH} deep")
        items = data.items() if isinstance(data, dict) else enumerate(data)
        for key, value in items:
            _check_values(value, source, path + (key,))
    elif isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{source}: key '{_key(path)}' has bad value {data!r}: must be a finite number")
    elif isinstance(data, int) and not isinstance(data, bool) and not TOML_INT[0] <= data <= TOML_INT[1]:
        raise ConfigError(f"{source}: key '{_key(path)}' has bad value {_show(data)}: "
                          f"must be a 64-bit integer (TOML)")


_KEY_LINE = re.compile(r"^\s*([^=#\[\s][^=#]*?)\s*=")
_HEADER_LINE = re.compile(r"^\s*\[\[?\s*([^\]#]+?)\s*\]")


def _where(text: str, line_no: int, column: int | None = None) -> str:
    """``line N (key 'table.key')``: the line and, where the line holds one, its key."""
    lines = text.split("\n")  # as TOML counts lines
    table = ""
    for line in lines[: line_no - 1]:
        header = _HEADER_LINE.match(line[:500])
        if header:
            table = header.group(1).replace(" ", "")
    at = f"line {line_no}" + (f", column {column}" if column else "")
    key = _KEY_LINE.match(lines[line_no - 1][:500]) if 0 < line_no <= len(lines) else None
    if not key:
        return at
    name = key.group(1).replace(" ", "")
    return f"{at} (key '{_clip(f'{table}.{name}' if table else name)}')"


def _deep_line(text: str, limit: int = 100) -> int:
    """The first line where brackets nest beyond `limit` (a rough count: strings and comments count too)."""
    depth = 0
    for number, line in enumerate(text.split("\n"), start=1):
        for ch in line:
            depth += 1 if ch in "[{" else -1 if ch in "]}" else 0
            if depth > limit:
                return number
    return 1


def _decode(raw: bytes, path: Path) -> str:
    """The text of a TOML file: UTF-8 (a UTF-8 byte-order mark is dropped), nothing else."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if raw.startswith(bom):
            raise ConfigError(f"{path}: the file is {name} text (byte-order mark); TOML must be UTF-8: "
                              f"save it as UTF-8")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lossy = raw.decode("utf-8", errors="replace")
        line_no = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at {_where(lossy, line_no)}; "
                          f"TOML must be UTF-8: save it as UTF-8") from None
    if "\0" in text:
        line_no = text.count("\n", 0, text.index("\0")) + 1
        raise ConfigError(f"{path}: NUL byte at {_where(text, line_no)}: not a text file (UTF-16 without "
                          f"byte-order mark?); TOML must be UTF-8")
    return text


def read_bounded(path: Path, limit: int, too_large: str) -> bytes:
    """The bytes of a file of at most `limit` bytes, read without reading more.

    Raises
    ------
    ConfigError
        One line naming the file: missing, unreadable, or larger than `limit`
        (``"<path>: larger than <limit> bytes<too_large>"``).
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > limit:
        raise ConfigError(f"{path}: larger than {limit} bytes{too_large}")
    return raw


def _read_toml(path: Path) -> dict:
    """Parse a TOML file of at most :data:`MAX_FILE_BYTES`; every failure is a one-line ConfigError."""
    raw = read_bounded(path, MAX_FILE_BYTES, " (1 MiB); a config file is a few kB")
    text = _decode(raw, path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
        if at:
            message = message[: at.start()] + message[at.end():]
        where = f" at {_where(text, int(at.group(1)), int(at.group(2)))}" if at else ""
        raise ConfigError(f"{path}: not valid TOML{where}: {_clip(message, 120)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or inline tables nested too deeply to read, "
                          f"at {_where(text, _deep_line(text))}") from None
    except ValueError as exc:  # int() of more than sys.get_int_max_str_digits() digits
        limit = sys.get_int_max_str_digits()
        digits = re.search(r"[0-9][0-9_]{%d,}" % (limit - 1), text) if limit else None
        if not digits:
            raise ConfigError(f"{path}: not valid TOML: {_clip(str(exc), 120)}") from None
        line_no = text.count("\n", 0, digits.start()) + 1
        raise ConfigError(f"{path}: an integer of more than {limit} digits at {_where(text, line_no)}: "
                          f"TOML integers are 64-bit") from None


def available(directory: Path) -> list[str]:
    """Names (file stems) of the ``*.toml`` configs in `directory`, sorted."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def resolve(name_or_path: str | Path, directory: Path, what: str) -> Path:
    """Turn a config name or path into a file path.

    A value containing a path separator or ending in ``.toml`` is a path; anything
    else is looked up as ``directory/<name>.toml``.

    Raises
    ------
    ConfigError
        For an unknown name, listing the names that exist.
    """
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.endswith(".toml"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: {what} config file not found")
        return path
    path = directory / f"{text}.toml"
    if not path.is_file():
        names = ", ".join(available(directory)) or "(none)"
        raise ConfigError(f"unknown {what} '{text}': available in {directory}: {names}")
    return path


def is_shipped_holder(name: str) -> bool:
    """Whether `name` is the plain name of a holder file shipped in ``fixtures/holders/``.

    A path, or anything with a separator or a ``.toml`` ending, is not: a recording
    or a server may name a holder, never choose a tolerance file.
    """
    text = str(name)
    if not text or "/" in text or "\\" in text or text.endswith(".toml") or text.startswith("."):
        return False
    return text in available(HOLDERS_DIR)


def _floats(cls, raw: dict) -> dict:
    """`raw` with the integers given for float fields of dataclass `cls` made floats (``dose = 40``)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {key: float(value) if isinstance(defaults.get(key), float) and type(value) is int else value
            for key, value in raw.items()}


def _relative(config: Path, value: str, key: str) -> Path:
    """`value`, a path relative to the folder of the config file `config`, resolved."""
    try:
        return (config.parent / value).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. a symlink loop
        raise ConfigError(f"{config}: key '{key}' has bad value {_show(value)}: cannot resolve the path "
                          f"({type(exc).__name__})") from None


# --------------------------------------------------------------------------- loaders


def load_microscope(name_or_path: str | Path) -> MicroscopeConfig:
    """Read and validate a microscope config (microscope-v1).

    Parameters
    ----------
    name_or_path : str or Path
        A name under ``fixtures/microscopes/`` or a path to a TOML file.

    Returns
    -------
    MicroscopeConfig

    Raises
    ------
    ConfigError
        One line naming the file, the key and the value.
    """
    if str(name_or_path).startswith("tcp://"):
        return remote_endpoint(str(name_or_path))
    path = resolve(name_or_path, MICROSCOPES_DIR, "microscope")
    data = _read_toml(path)
    _check_values(data, path)
    validate(data, MICROSCOPE_SCHEMA, path)
    kind = data["kind"]
    for other in KINDS:
        if other != kind and other in data:
            raise ConfigError(f"{path}: key '{other}' is only allowed with kind = \"{other}\"")
    if kind in ("sim", "pyjem", "serialem"):
        for key in ("pixel_size_nm", "frame_px"):
            if key not in data:
                raise ConfigError(f"{path}: missing required key '{key}' (needed for kind = \"{kind}\")")

    transform = None
    if "stage_to_image" in data:
        s2i = data["stage_to_image"]
        transform = StageToImage(float(s2i["rotation_deg"]), bool(s2i.get("flip_y", False)))

    protocol = ProtocolConfig(**_floats(ProtocolConfig, data.get("protocol", {})))
    sim = None
    if kind == "sim":
        raw = dict(data.get("sim", {}))
        coupling = raw.pop("coupling", {})
        for key in ("backlash_nm", "scale_error", "drift_nm_per_min", "reported_scale_error", "creep_nm",
                    "thermal_drift_nm_per_min", "wear_nm_per_mm", "tilt_backlash_deg"):
            if key in raw:
                raw[key] = tuple(float(v) for v in raw[key])
        if raw.get("specimen", "procedural") != "procedural":
            image = _relative(path, raw["specimen"], "sim.specimen")
            if not image.is_file():
                raise ConfigError(f"{path}: key 'sim.specimen' has bad value {_show(raw['specimen'])}: "
                                  f"no such image {_clip(str(image), 120)} (give \"procedural\" or a .tif/.mrc path "
                                  f"relative to the config)")
            if image.suffix.lower() not in (".tif", ".tiff", ".mrc", ".st", ".mrcs"):
                raise ConfigError(f"{path}: key 'sim.specimen' has bad value {_show(raw['specimen'])}: "
                                  "the image must be .tif, .tiff or .mrc")
            if "specimen_pixel_nm" not in raw:
                raise ConfigError(f"{path}: missing required key 'sim.specimen_pixel_nm' (needed with an image specimen)")
            raw["specimen"] = str(image)
        sim = SimConfig(
            coupling_x_to_y=float(coupling.get("x_to_y", 0.0)),
            coupling_y_to_x=float(coupling.get("y_to_x", 0.0)),
            **_floats(SimConfig, raw),
        )
    remote = None
    if kind == "remote":
        raw = dict(data.get("remote", {}))
        if "keys" in raw:
            keys = _relative(path, raw["keys"], "remote.keys")
            if not keys.is_dir():
                raise ConfigError(f"{path}: key 'remote.keys' has bad value {_show(raw['keys'])}: "
                                  f"no such folder {_clip(str(keys), 120)}")
            raw["keys"] = keys
        remote = RemoteConfig(**_floats(RemoteConfig, raw))
    pyjem = None
    if kind == "pyjem":
        raw = dict(data.get("pyjem", {}))
        if ("detector" in raw) == ("camera" in raw):
            raise ConfigError(f"{path}: [pyjem] needs exactly one of 'pyjem.detector' (a PyJEM detector name) "
                              f"or 'pyjem.camera' (\"module:function\" returning a 2-D image)")
        pyjem = PyJEMConfig(**_floats(PyJEMConfig, raw))
    serialem = None
    if kind == "serialem":
        raw = dict(data.get("serialem", {}))
        if "host" in raw:
            try:
                ipaddress.ip_address(raw["host"])
            except ValueError:
                raise ConfigError(f"{path}: key 'serialem.host' has bad value {_show(raw['host'])}: must be "
                                  f"an IPv4 or IPv6 address (SerialEM's ConnectToSEM takes an address, not a "
                                  f"host name)") from None
        serialem = SerialEMConfig(**_floats(SerialEMConfig, raw))
    holder = data.get("holder", "default")
    return MicroscopeConfig(
        name=data["name"],
        kind=kind,
        holder=holder,
        pixel_size_nm=float(data.get("pixel_size_nm", 0.0)),  # 0: given by the server (kind = "remote")
        frame_px=int(data.get("frame_px", 0)),
        stage_to_image=transform,
        protocol=protocol,
        sim=sim,
        remote=remote,
        pyjem=pyjem,
        serialem=serialem,
        path=path,
        given=frozenset(data) | {f"protocol.{key}" for key in data.get("protocol", {})},
    )


def remote_endpoint(endpoint: str) -> MicroscopeConfig:
    """The config for ``--microscope tcp://HOST:PORT``: a remote microscope with defaults.

    Pixel size and frame size are 0 here; they come from the server's ``describe``.

    Raises
    ------
    ConfigError
        For an endpoint that is not ``tcp://HOST:PORT``.
    """
    problem = schema_problem({"endpoint": endpoint}, MICROSCOPE_SCHEMA["properties"]["remote"])
    if problem:
        raise ConfigError(f"--microscope {endpoint}: a remote endpoint must look like tcp://HOST:PORT")
    return MicroscopeConfig(name=endpoint, kind="remote", pixel_size_nm=0.0, frame_px=0,
                            remote=RemoteConfig(endpoint=endpoint))


def load_holder(name_or_path: str | Path) -> HolderConfig:
    """Read and validate a holder tolerance file (results-v1).

    Parameters
    ----------
    name_or_path : str or Path
        A name under ``fixtures/holders/`` or a path to a TOML file.

    Returns
    -------
    HolderConfig

    Raises
    ------
    ConfigError
        One line naming the file, the key and the value.
    """
    path = resolve(name_or_path, HOLDERS_DIR, "holder")
    data = _read_toml(path)
    _check_values(data, path)
    validate(data, HOLDER_SCHEMA, path)
    limits = {}
    for key in LIMIT_KEYS:
        low, high = (float(v) for v in data["limits"][key])
        if not low < high:
            raise ConfigError(f"{path}: key 'limits.{key}' has bad value {[low, high]!r}: lower limit must be below upper")
        limits[key] = (low, high)
    return HolderConfig(
        name=data["name"],
        tolerances={k: float(v) for k, v in data["tolerances"].items()},
        limits=limits,
        accepted_cases=tuple(data["acceptance"]["accepted_cases"]),
        path=path,
        key=path.stem,
        regression={k: float(v) for k, v in data.get("regression", {}).items()},
    )

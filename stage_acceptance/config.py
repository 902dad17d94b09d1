"""Reading and validating microscope configs (microscope-v1) and holder files (results-v1).

Every default lives here, in the dataclasses below. Validation uses JSON Schema
(`jsonschema`) on the parsed TOML; every error is one line that names the file, the
key and the offending value.
"""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------- schemas

_number = {"type": "number"}
_positive = {"type": "number", "exclusiveMinimum": 0}
_nonneg = {"type": "number", "minimum": 0}
_pair = {"type": "array", "items": _number, "minItems": 2, "maxItems": 2}
_probability = {"type": "number", "minimum": 0, "maximum": 1}
_pair_nonneg = {"type": "array", "items": _nonneg, "minItems": 2, "maxItems": 2}

KINDS = ("sim", "remote", "pyjem")
"""Microscope kinds; each may have a table of its own name (``[sim]``, ``[remote]``, ``[pyjem]``)."""

MICROSCOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "kind"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "kind": {"enum": list(KINDS)},
        "holder": {"type": "string", "minLength": 1},
        "pixel_size_nm": _positive,
        "frame_px": {"type": "integer", "minimum": 32, "maximum": 8192},
        "stage_to_image": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rotation_deg"],
            "properties": {"rotation_deg": _number, "flip_y": {"type": "boolean"}},
        },
        "protocol": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "step_nm": _positive,
                "steps": {"type": "integer", "minimum": 2, "maximum": 100},
                "settle_s": _nonneg,
                "dwell_frames": {"type": "integer", "minimum": 2, "maximum": 100},
                "dwell_interval_s": _nonneg,
                "tilt_step_deg": {"type": "number", "exclusiveMinimum": 0, "maximum": 30},
                "tilt_steps": {"type": "integer", "minimum": 2, "maximum": 30},
            },
        },
        "sim": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "seed": {"type": "integer", "minimum": 0},
                "backlash_nm": _pair_nonneg,
                "scale_error": {"type": "array", "items": {"type": "number", "exclusiveMinimum": -0.5,
                                                           "exclusiveMaximum": 0.5},
                                "minItems": 2, "maxItems": 2},
                "coupling": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"x_to_y": _number, "y_to_x": _number},
                },
                "step_noise_nm": _nonneg,
                "drift_nm_per_min": _pair,
                "reported": {"enum": ["target", "actual", "scaled"]},
                "reported_scale_error": {"type": "array", "items": {"type": "number", "exclusiveMinimum": -0.5,
                                                                    "exclusiveMaximum": 0.5},
                                         "minItems": 2, "maxItems": 2},
                "reported_noise_nm": _nonneg,
                "dose": _positive,
                "move_time_s": _nonneg,
                "frame_time_s": _nonneg,
                "rotation_deg": _number,
                "flip_y": {"type": "boolean"},
                "creep_nm": _pair_nonneg,
                "creep_time_s": _nonneg,
                "thermal_drift_nm_per_min": _pair_nonneg,
                "thermal_time_s": _nonneg,
                "stick_threshold_nm": _nonneg,
                "stick_probability": _probability,
                "wear_nm_per_mm": _pair_nonneg,
                "reported_quantum_nm": _nonneg,
                "readback_jump_nm": _nonneg,
                "readback_jump_probability": _probability,
                "scan_rotation_deg": _number,
                "scan_jitter_px": _nonneg,
                "defocus_blur_nm_per_um": _nonneg,
                "focus_z_nm": _number,
                "read_noise_counts": _nonneg,
                "specimen": {"type": "string", "minLength": 1},
                "specimen_pixel_nm": _positive,
                "pivot_arm_mm": _nonneg,
                "x_pull_scale_error": {"type": "number", "exclusiveMinimum": -0.5, "exclusiveMaximum": 0.5},
                "eucentric_error_nm": _number,
                "tilt_backlash_deg": _pair_nonneg,
            },
        },
        "remote": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "endpoint": {"type": "string", "pattern": "^tcp://.+:[0-9]+$"},
                "timeout_s": _positive,
                "keys": {"type": "string", "minLength": 1},
            },
        },
        "pyjem": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "detector": {"type": "string", "minLength": 1},
                "camera": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"},
                "tolerance_nm": _positive,
                "tolerance_deg": _positive,
                "move_timeout_s": _positive,
                "poll_s": _positive,
            },
        },
    },
}

HOLDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "tolerances", "limits", "acceptance"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "tolerances": {
            "type": "object",
            "additionalProperties": False,
            "required": list(TOLERANCE_KEYS),
            "properties": {key: _nonneg for key in TOLERANCE_KEYS + OPTIONAL_TOLERANCE_KEYS},
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "required": list(LIMIT_KEYS),
            "properties": {key: _pair for key in LIMIT_KEYS},
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
                    "uniqueItems": True,
                }
            },
        },
    },
}


# --------------------------------------------------------------------------- helpers


def schema_problem(data, schema: dict) -> str | None:
    """The first problem of `data` against a JSON schema, as one line; None if valid.

    The line names the dotted key and the offending value, e.g.
    ``key 'sim.dose' has bad value -1.0: -1.0 is less than or equal to the minimum of 0``,
    ``unknown key 'sim.foo' (known keys here: ...)`` or ``missing required key 'name'``.
    """
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if not errors:
        return None
    error = jsonschema.exceptions.best_match(errors)
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        return f"unknown key '{key}' (known keys here: {', '.join(known)})"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        key = f"{where}.{missing[0]}" if where else missing[0]
        return f"missing required key '{key}'"
    return f"key '{where}' has bad value {error.instance!r}: {error.message}"


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


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


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


def _finite(data: Any, source: Path, prefix: str = "") -> None:
    """Reject NaN and infinities anywhere in the parsed TOML."""
    if isinstance(data, dict):
        for key, value in data.items():
            _finite(value, source, f"{prefix}.{key}" if prefix else key)
    elif isinstance(data, list):
        for value in data:
            _finite(value, source, prefix)
    elif isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{source}: key '{prefix}' has bad value {data!r}: must be a finite number")


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
    _finite(data, path)
    validate(data, MICROSCOPE_SCHEMA, path)
    kind = data["kind"]
    for other in KINDS:
        if other != kind and other in data:
            raise ConfigError(f"{path}: key '{other}' is only allowed with kind = \"{other}\"")
    if kind in ("sim", "pyjem"):
        for key in ("pixel_size_nm", "frame_px"):
            if key not in data:
                raise ConfigError(f"{path}: missing required key '{key}' (needed for kind = \"{kind}\")")

    transform = None
    if "stage_to_image" in data:
        s2i = data["stage_to_image"]
        transform = StageToImage(float(s2i["rotation_deg"]), bool(s2i.get("flip_y", False)))

    protocol = ProtocolConfig(**{k: v for k, v in data.get("protocol", {}).items()})
    sim = None
    if kind == "sim":
        raw = dict(data.get("sim", {}))
        coupling = raw.pop("coupling", {})
        for key in ("backlash_nm", "scale_error", "drift_nm_per_min", "reported_scale_error", "creep_nm",
                    "thermal_drift_nm_per_min", "wear_nm_per_mm", "tilt_backlash_deg"):
            if key in raw:
                raw[key] = tuple(float(v) for v in raw[key])
        if raw.get("specimen", "procedural") != "procedural":
            image = (path.parent / raw["specimen"]).resolve()
            if not image.is_file():
                raise ConfigError(f"{path}: key 'sim.specimen' has bad value {raw['specimen']!r}: "
                                  f"no such image {image} (give \"procedural\" or a .tif/.mrc path relative to the config)")
            if image.suffix.lower() not in (".tif", ".tiff", ".mrc", ".st", ".mrcs"):
                raise ConfigError(f"{path}: key 'sim.specimen' has bad value {raw['specimen']!r}: "
                                  "the image must be .tif, .tiff or .mrc")
            if "specimen_pixel_nm" not in raw:
                raise ConfigError(f"{path}: missing required key 'sim.specimen_pixel_nm' (needed with an image specimen)")
            raw["specimen"] = str(image)
        sim = SimConfig(
            coupling_x_to_y=float(coupling.get("x_to_y", 0.0)),
            coupling_y_to_x=float(coupling.get("y_to_x", 0.0)),
            **raw,
        )
    remote = None
    if kind == "remote":
        raw = dict(data.get("remote", {}))
        if "keys" in raw:
            keys = (path.parent / raw["keys"]).resolve()
            if not keys.is_dir():
                raise ConfigError(f"{path}: key 'remote.keys' has bad value {raw['keys']!r}: no such folder {keys}")
            raw["keys"] = keys
        remote = RemoteConfig(**raw)
    pyjem = None
    if kind == "pyjem":
        raw = dict(data.get("pyjem", {}))
        if ("detector" in raw) == ("camera" in raw):
            raise ConfigError(f"{path}: [pyjem] needs exactly one of 'pyjem.detector' (a PyJEM detector name) "
                              f"or 'pyjem.camera' (\"module:function\" returning a 2-D image)")
        pyjem = PyJEMConfig(**raw)
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
    _finite(data, path)
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
    )

"""Fuzzing the config loaders: mutated copies of every shipped config either load, with
every value finite and within the schema's bounds, or raise ConfigError, one line that
names the file (and, for a bad value, the key), short; never any other exception.

The seeds are fixtures/microscopes/*.toml, fixtures/holders/*.toml and tests/configs/*.toml.
The schema (MICROSCOPE_SCHEMA, HOLDER_SCHEMA) is the oracle for the bounds.
"""

import dataclasses
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from stage_acceptance.config import (
    HOLDER_SCHEMA, HOLDERS_DIR, MICROSCOPE_SCHEMA, MICROSCOPES_DIR, ConfigError, HolderConfig, MicroscopeConfig,
    load_holder, load_microscope,
)

CONFIGS = Path(__file__).resolve().parent / "configs"
SEEDS = sorted(MICROSCOPES_DIR.glob("*.toml")) + sorted(HOLDERS_DIR.glob("*.toml")) + sorted(CONFIGS.glob("*.toml"))
TEXTS = {seed: seed.read_bytes() for seed in SEEDS}

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MAX_MESSAGE = 260
"""Longest error message after the file name (the file name is the caller's)."""


def loader(seed: Path):
    return load_holder if seed.parent == HOLDERS_DIR else load_microscope


@pytest.fixture(scope="module")
def target():
    """One short file path, rewritten by every example."""
    with tempfile.TemporaryDirectory(prefix="fz") as folder:
        yield Path(folder) / "c.toml"


# --------------------------------------------------------------------------- the oracle


def assert_within(value, node: dict, key: str) -> None:
    """`value` (as loaded into a config dataclass) satisfies schema node `node`."""
    if "enum" in node:
        assert value in node["enum"], (key, value)
        return
    kind = node.get("type")
    if kind in ("integer", "number"):
        if kind == "integer":
            assert type(value) is int, (key, value)
        else:
            assert type(value) is float and math.isfinite(value), (key, value)
        assert value >= node.get("minimum", -math.inf) and value > node.get("exclusiveMinimum", -math.inf), (key, value)
        assert value <= node.get("maximum", math.inf) and value < node.get("exclusiveMaximum", math.inf), (key, value)
    elif kind == "array":
        assert isinstance(value, (tuple, list)), (key, value)
        assert node.get("minItems", 0) <= len(value) <= node.get("maxItems", math.inf), (key, value)
        assert not node.get("uniqueItems") or len(set(value)) == len(value), (key, value)
        for item in value:
            assert_within(item, node["items"], key)
    elif kind == "boolean":
        assert type(value) is bool, (key, value)
    elif kind == "string":
        assert isinstance(value, str) and node.get("minLength", 0) <= len(value) <= node.get("maxLength", math.inf)
        assert re.search(node.get("pattern", ""), value), (key, value)
    else:
        raise AssertionError(f"{key}: no check for schema node {node}")


def assert_microscope_within_schema(config: MicroscopeConfig) -> None:
    top = MICROSCOPE_SCHEMA["properties"]
    for key in ("name", "kind", "holder"):
        assert_within(getattr(config, key), top[key], key)
    for key in ("pixel_size_nm", "frame_px"):
        if key in config.given or config.kind != "remote":
            assert_within(getattr(config, key), top[key], key)
        else:
            assert getattr(config, key) == 0
    if config.stage_to_image is not None:
        s2i = top["stage_to_image"]["properties"]
        assert_within(float(config.stage_to_image.rotation_deg), s2i["rotation_deg"], "stage_to_image.rotation_deg")
        assert_within(config.stage_to_image.flip_y, s2i["flip_y"], "stage_to_image.flip_y")
    tables = {"protocol": config.protocol, "sim": config.sim, "remote": config.remote, "pyjem": config.pyjem,
              "serialem": config.serialem}
    assert (config.sim is not None) == (config.kind == "sim")
    for table, values in tables.items():
        if values is None:
            continue
        schema = top[table]["properties"]
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            key = f"{table}.{field.name}"
            if field.name.startswith("coupling_"):
                assert_within(value, schema["coupling"]["properties"][field.name.removeprefix("coupling_")], key)
            elif field.name in ("specimen", "keys"):  # resolved to absolute paths
                assert value is None or value == "procedural" or Path(value).is_absolute(), (key, value)
            elif value is not None:
                assert_within(value, schema[field.name], key)


def assert_holder_within_schema(holder: HolderConfig) -> None:
    top = HOLDER_SCHEMA["properties"]
    assert_within(holder.name, top["name"], "name")
    assert set(top["tolerances"]["required"]) <= set(holder.tolerances)
    for key, value in holder.tolerances.items():
        assert_within(value, top["tolerances"]["properties"][key], f"tolerances.{key}")
    assert set(holder.limits) == set(top["limits"]["properties"])
    for key, (low, high) in holder.limits.items():
        assert_within((low, high), top["limits"]["properties"][key], f"limits.{key}")
        assert low < high
    assert_within(holder.accepted_cases, top["acceptance"]["properties"]["accepted_cases"], "accepted_cases")


def check(path: Path, content: bytes, load) -> None:
    """Write `content` to `path` and load it: a config within the schema, or a short one-line ConfigError."""
    path.write_bytes(content)
    try:
        config = load(path)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(f"{path}: "), message
        assert len(message) - len(str(path)) <= MAX_MESSAGE, message
        if "bad value" in message:
            assert re.search(r"key '[^']+' has bad value ", message), message
        event("refused: " + " ".join(re.sub(r"'[^']*'|line \d+.*", "", message[len(str(path)) + 2:]).split()[:4]))
        return
    event("loaded")
    if isinstance(config, HolderConfig):
        assert_holder_within_schema(config)
    else:
        assert_microscope_within_schema(config)


def test_the_oracle_can_fail():
    dose = MICROSCOPE_SCHEMA["properties"]["sim"]["properties"]["dose"]
    for bad in (1e300, 0.0, math.nan, 40):
        with pytest.raises(AssertionError):
            assert_within(bad, dose, "sim.dose")
    assert_within(40.0, dose, "sim.dose")
    with pytest.raises(AssertionError):
        assert_within(5.0, MICROSCOPE_SCHEMA["properties"]["protocol"]["properties"]["steps"], "protocol.steps")


@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads_within_the_schema(seed):
    config = loader(seed)(seed)
    if isinstance(config, HolderConfig):
        assert_holder_within_schema(config)
    else:
        assert_microscope_within_schema(config)


# --------------------------------------------------------------------------- mutations

seeds = st.sampled_from(SEEDS)

_ASSIGNMENT = re.compile(rb"^(\s*[A-Za-z0-9_\-]+\s*=\s*)(.*)$", re.M)

odd_literals = st.sampled_from([
    '""', '"x"', "true", "false", "0", "-1", "1", "5", "5.0", "-0.0", "1e-320", "1e300", "-1e308",
    "1.7976931348623157e308",
    "inf", "-inf", "nan", "+nan", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
    "0x7fffffffffffffff", "0o777", "0b101", "1_000", "[]", "[1]", "[1, 2]", "[1.0, 2.0, 3.0]", "[-1.0, -2.0]",
    '["a", "a"]', '["a", "g"]', "[1, \"a\"]", "{}", "{ a = 1 }", "{ x_to_y = 2.0, y_to_x = 0.0 }", "1979-05-27",
    "07:32:00", "1979-05-27T07:32:00Z", "1979-05-27T07:32:00", '"procedural"', '"a.tif"', '"../../etc/passwd"',
    '"tcp://127.0.0.1:5555"', '"tcp://h:99999999"', '"mod:fn"', '"target"', '"scaled"', '"\\u0000"', '"a\\nb"',
    "'''multi\nline'''",
])


@st.composite
def big_literals(draw):
    """Numbers at and beyond every limit: many digits, huge hex, big exponents."""
    digits = draw(st.integers(15, 6000))
    return draw(st.sampled_from([
        "9" * digits, "-" + "1" * digits, "0x" + "f" * (digits // 2), f"1e{digits % 400}", f"-1e{digits % 400}",
        "1" + "_0" * min(digits, 4500),
    ]))


@st.composite
def deep_literals(draw):
    depth = draw(st.integers(1, 1500))
    return draw(st.sampled_from(["[" * depth + "1" + "]" * depth, "{a=" * depth + "1" + "}" * depth,
                                 "[" * depth + "]" * depth]))


@st.composite
def long_strings(draw):
    size = draw(st.sampled_from([59, 60, 61, 199, 200, 201, 1024, 1025, 100_000]))
    char = draw(st.sampled_from(["n", "é", "\\n", "'", "🙂"]))
    return '"' + char * size + '"'


scalar_literals = st.one_of(
    st.integers().map(str),
    st.floats().map(repr),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=20).map(json.dumps),
)
array_literals = st.lists(scalar_literals, max_size=4).map(lambda items: "[" + ", ".join(items) + "]")
literals = st.one_of(odd_literals, scalar_literals, array_literals, big_literals(), deep_literals(), long_strings())


@st.composite
def byte_flips(draw):
    """Random bytes overwritten, inserted or deleted, and maybe a truncation."""
    seed = draw(seeds)
    data = bytearray(TEXTS[seed])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        byte = draw(st.one_of(st.integers(0x20, 0x7E), st.sampled_from(b"\n\t\r\"'[]{}=.#,"), st.integers(0, 255)))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "insert" or position == len(data):
            data.insert(position, byte)
        elif action == "set":
            data[position] = byte
        else:
            del data[position]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return seed, bytes(data)


def _number_literals(node: dict) -> st.SearchStrategy[str]:
    """Numbers at, just inside and just outside the bounds of a schema node, as TOML."""
    values = []
    for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if key in node:
            bound = float(node[key])
            values += [bound, math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf), bound * 10]
    low = node.get("minimum", node.get("exclusiveMinimum", -1e9))
    high = node.get("maximum", node.get("exclusiveMaximum", 1e9))
    inside = st.floats(float(low), float(high), allow_nan=False)
    if node["type"] == "integer":
        return st.one_of(st.sampled_from([int(v) for v in values] + [int(v) + d for v in values for d in (-1, 1)]),
                         st.integers(int(low), int(high))).map(str)
    return st.one_of(st.sampled_from(values), inside).map(repr)


def literals_for(node: dict | None) -> st.SearchStrategy[str]:
    """TOML values a schema node accepts, or nearly: in-range, boundary, enum values."""
    if node is None:
        return literals
    if "enum" in node:
        return st.sampled_from(node["enum"]).map(json.dumps)
    kind = node.get("type")
    if kind in ("number", "integer"):
        return _number_literals(node)
    if kind == "array":
        item = literals_for(node["items"])
        size = st.integers(max(node.get("minItems", 0) - 1, 0), node.get("maxItems", 3) + 1)
        return size.flatmap(lambda n: st.lists(item, min_size=n, max_size=n)).map(lambda v: "[" + ", ".join(v) + "]")
    if kind == "boolean":
        return st.sampled_from(["true", "false"])
    if kind == "string":
        return st.integers(0, node.get("maxLength", 300) + 1).map(lambda n: json.dumps("s" * n))
    return literals


def schema_node(seed: Path, table: str, key: str) -> dict | None:
    """The schema node of `table.key` in the schema of `seed`'s kind, if any."""
    node = HOLDER_SCHEMA if seed.parent == HOLDERS_DIR else MICROSCOPE_SCHEMA
    for part in [p for p in table.split(".") if p] + [key]:
        node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return node


_HEADER = re.compile(rb"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]", re.M)


@st.composite
def wrong_values(draw):
    """The value of one to three keys replaced by anything (wrong types, huge numbers, nesting, long
    strings) or by values at the key's bounds and just beyond."""
    seed = draw(seeds)
    data = TEXTS[seed]
    for _ in range(draw(st.integers(1, 3))):
        line = draw(st.sampled_from(list(_ASSIGNMENT.finditer(data))))
        headers = list(_HEADER.finditer(data, 0, line.start()))
        table = headers[-1].group(1).decode() if headers else ""
        key = line.group(1).decode().split("=")[0].strip()
        node = schema_node(seed, table, key)
        value = draw(st.one_of(literals, literals_for(node), literals_for(node)))
        data = data[: line.start(2)] + value.encode("utf-8", "surrogatepass") + data[line.end(2):]
    return seed, data


@st.composite
def structure(draw):
    """Lines inserted, duplicated or removed: deep tables, dotted keys, unknown keys, random unicode."""
    seed = draw(seeds)
    lines = TEXTS[seed].decode().split("\n")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines)))
        depth = draw(st.integers(1, 700))
        kind = draw(st.sampled_from(["table", "dotted", "array-of-tables", "unknown", "unicode", "duplicate",
                                     "remove", "padding"]))
        if kind == "table":
            lines.insert(at, "[" + ".".join(["t"] * depth) + "]")
        elif kind == "dotted":
            lines.insert(at, ".".join(["k"] * depth) + " = 1")
        elif kind == "array-of-tables":
            lines.insert(at, "[[" + draw(st.sampled_from(["sim", "protocol", "limits", "a.b"])) + "]]")
        elif kind == "unknown":
            name = draw(st.sampled_from(["seed", "dose", "x", "k" * 70, "k" * 100_000, '"\\u0007"', '"a.b"']))
            lines.insert(at, f"{name} = {draw(literals)}")
        elif kind == "unicode":
            lines.insert(at, draw(st.text(max_size=40)))
        elif kind == "duplicate" and lines:
            lines.insert(at, lines[min(at, len(lines) - 1)])
        elif kind == "remove" and lines:
            del lines[min(at, len(lines) - 1)]
        elif kind == "padding":
            lines.insert(at, "#" + "x" * draw(st.sampled_from([10, (1 << 20) - 10, 1 << 20])))
    return seed, "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def encodings(draw):
    """The file saved in another encoding, with some non-ASCII text in it."""
    seed = draw(seeds)
    text = TEXTS[seed].decode()
    extra = draw(st.text(min_size=1, max_size=10))
    where = draw(st.sampled_from(["comment", "name", "none"]))
    if where == "comment":
        text = f"# {extra}\n" + text
    elif where == "name":
        text = re.sub(r'^name = "', lambda m: m.group(0) + extra.replace('"', "").replace("\\", ""), text,
                      count=1, flags=re.M)
    codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "latin-1", "cp1252",
                                  "utf-8-sig", "utf-8", "shift_jis", "utf-7"]))
    return seed, text.encode(codec, errors="replace")


@FUZZ
@given(case=byte_flips())
def test_byte_flips_and_truncation(target, case):
    seed, content = case
    check(target, content, loader(seed))


@FUZZ
@given(case=wrong_values())
def test_wrong_types_bounds_and_huge_values(target, case):
    seed, content = case
    check(target, content, loader(seed))


@FUZZ
@given(case=structure())
def test_nesting_unknown_keys_and_unicode(target, case):
    seed, content = case
    check(target, content, loader(seed))


@settings(FUZZ, max_examples=100)
@given(case=encodings())
def test_bad_encodings(target, case):
    seed, content = case
    check(target, content, loader(seed))

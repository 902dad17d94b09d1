"""Microscope and holder configs: shipped files load, bad input gets a one-line error
naming the file, the key and the value."""

import dataclasses

import pytest

from stage_acceptance.config import (
    HOLDER_SCHEMA, HOLDERS_DIR, MICROSCOPE_SCHEMA, MICROSCOPES_DIR, ConfigError, ProtocolConfig, PyJEMConfig,
    RemoteConfig, SimConfig, available, describe_schema, expectation, load_holder, load_microscope, schema_problem,
)


def write(tmp_path, text, name="m.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = 'name = "t"\nkind = "sim"\npixel_size_nm = 5.0\nframe_px = 128\n'


@pytest.mark.parametrize("name", available(MICROSCOPES_DIR))
def test_every_shipped_microscope_loads_and_names_a_shipped_holder(name):
    config = load_microscope(name)
    assert config.name
    assert load_holder(config.holder).tolerances


@pytest.mark.parametrize("name", available(HOLDERS_DIR))
def test_every_shipped_holder_loads(name):
    holder = load_holder(name)
    assert set(holder.accepted_cases) <= set("abcdef")
    assert all(low < high for low, high in holder.limits.values())


def test_required_shipped_files_exist():
    assert {"sim", "sim-grandarm"} <= set(available(MICROSCOPES_DIR))
    assert {"default", "jeol-double-tilt"} <= set(available(HOLDERS_DIR))


def test_defaults_of_a_minimal_sim_config(tmp_path):
    config = load_microscope(write(tmp_path, MINIMAL))
    assert config.holder == "default"
    assert config.stage_to_image is None
    assert config.protocol.steps == 5 and config.protocol.step_nm == 1000.0
    assert config.sim.reported == "target" and config.sim.dose == 40.0


def test_unknown_name_lists_what_exists():
    with pytest.raises(ConfigError) as info:
        load_microscope("no-such-scope")
    message = str(info.value)
    assert "no-such-scope" in message and "sim-grandarm" in message and "\n" not in message


def test_unknown_holder_lists_what_exists():
    with pytest.raises(ConfigError, match="jeol-double-tilt"):
        load_holder("nope")


@pytest.mark.parametrize(
    "extra, key, value",
    [
        ("[sim]\nbacklash_nm = [1.0, -2.0]\n", "sim.backlash_nm.1", "-2.0"),
        ("[sim]\nreported = \"psychic\"\n", "sim.reported", "psychic"),
        ("[protocol]\nsteps = 0\n", "protocol.steps", "0"),
        ("[sim]\ndose = -1.0\n", "sim.dose", "-1.0"),
        ("[sim]\nscale_error = [0.0]\n", "sim.scale_error", "[0.0]"),
    ],
)
def test_bad_value_names_file_key_and_value(tmp_path, extra, key, value):
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as info:
        load_microscope(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and value in message
    assert "\n" not in message


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, MINIMAL + "[sim]\nbaclash_nm = [1.0, 1.0]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'sim.baclash_nm'"):
        load_microscope(path)


def test_missing_pixel_size_for_sim(tmp_path):
    path = write(tmp_path, 'name = "t"\nkind = "sim"\nframe_px = 128\n')
    with pytest.raises(ConfigError, match="pixel_size_nm"):
        load_microscope(path)


def test_nan_is_refused(tmp_path):
    path = write(tmp_path, MINIMAL + "[sim]\nstep_noise_nm = nan\n")
    with pytest.raises(ConfigError, match="sim.step_noise_nm"):
        load_microscope(path)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_microscope(path)


HOLDER = (HOLDERS_DIR / "default.toml").read_text()


def test_holder_limits_must_be_ordered(tmp_path):
    path = write(tmp_path, HOLDER.replace("x_nm = [-1.0e6, 1.0e6]", "x_nm = [1.0e6, -1.0e6]"), "h.toml")
    with pytest.raises(ConfigError, match=r"limits.x_nm"):
        load_holder(path)


def test_holder_unknown_case_is_refused(tmp_path):
    path = write(tmp_path, HOLDER.replace('accepted_cases = ["a", "b", "c", "d", "e"]', 'accepted_cases = ["a", "g"]'),
                 "h.toml")
    with pytest.raises(ConfigError, match=r"acceptance.accepted_cases.1.*'g'"):
        load_holder(path)


def test_holder_missing_tolerance_is_named(tmp_path):
    path = write(tmp_path, HOLDER.replace("skew_deg = 0.5\n", ""), "h.toml")
    with pytest.raises(ConfigError, match=r"missing required key 'tolerances.skew_deg'"):
        load_holder(path)


def test_remote_config_reads_with_defaults(tmp_path):
    config = load_microscope(write(tmp_path, 'name = "r"\nkind = "remote"\n'))
    assert config.remote.endpoint == "tcp://127.0.0.1:5555" and config.remote.timeout_s == 30.0
    assert config.sim is None


def test_remote_kind_cannot_have_a_sim_table(tmp_path):
    with pytest.raises(ConfigError, match="'sim' is only allowed"):
        load_microscope(write(tmp_path, 'name = "r"\nkind = "remote"\n[sim]\nseed = 1\n'))


# --------------------------------------------------------------------------- bounds and malformed files

SIM = (MICROSCOPES_DIR / "sim.toml").read_text()
END = SIM.count("\n") + 1
"""The line after the last of sim.toml."""


def one_line_error(load, path):
    """The ConfigError of loading `path`: one line naming the file, never echoing a long value."""
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and message.startswith(f"{path}: ")
    assert len(message) - len(str(path)) < 260, message
    return message


@pytest.mark.parametrize(
    "old, new, key, value, expected",
    [
        ("steps = 5", "steps = 5.0", "protocol.steps", "5.0", "must be an integer in [2, 100]"),
        ("seed = 1", "seed = 1.0", "sim.seed", "1.0", "must be an integer in [0, 2**63 - 1]"),
        ("frame_px = 512", "frame_px = 512.0", "frame_px", "512.0", "must be an integer in [32, 8192]"),
        ("seed = 1", "seed = -1", "sim.seed", "-1", "must be an integer"),
        ("seed = 1", "seed = 9223372036854775808", "sim.seed", "9223372036854775808", "64-bit integer"),
        ("frame_time_s = 2.0", "frame_time_s = 1e308", "sim.frame_time_s", "1e+308", "[0, 86400]"),
        ("drift_nm_per_min = [0.3, -0.2]", "drift_nm_per_min = [1e300, 0.0]", "sim.drift_nm_per_min.0",
         "1e+300", "[-1e6, 1e6]"),
        ("dose = 40.0", "dose = 1e7", "sim.dose", "10000000.0", "(0, 1e6]"),
        ("step_nm = 1000.0", "step_nm = 2e7", "protocol.step_nm", "20000000.0", "(0, 1e7]"),
        ("settle_s = 0.0", "settle_s = 86401", "protocol.settle_s", "86401", "[0, 86400]"),
        ("step_noise_nm = 1.0", "step_noise_nm = -inf", "sim.step_noise_nm", "-inf", "finite"),
        ("rotation_deg = 0.0                # true", "rotation_deg = 400.0 #", "sim.rotation_deg", "400.0",
         "[-360, 360]"),
        ('reported = "target"', "reported = true", "sim.reported", "True", "one of 'target'"),
        ("flip_y = false", 'flip_y = "no"', "stage_to_image.flip_y", "'no'", "true or false"),
        ("dose = 40.0", "dose = 1979-05-27", "sim.dose", "1979", "a number"),
        ('name = "sim"', 'name = "a\\nb"', "name", "'a\\nb'", "no control characters"),
    ],
)
def test_every_value_is_typed_and_bounded(tmp_path, old, new, key, value, expected):
    assert old in SIM
    path = write(tmp_path, SIM.replace(old, new, 1))
    message = one_line_error(load_microscope, path)
    assert f"key '{key}'" in message and value in message and expected in message


def test_remote_timeout_is_bounded(tmp_path):
    path = write(tmp_path, 'name = "r"\nkind = "remote"\n[remote]\ntimeout_s = 1e300\n')
    assert "key 'remote.timeout_s' has bad value 1e+300" in one_line_error(load_microscope, path)


def test_an_integer_for_a_float_key_is_a_float(tmp_path):
    config = load_microscope(write(tmp_path, MINIMAL + "[protocol]\nstep_nm = 500\n[sim]\ndose = 40\n"))
    assert type(config.protocol.step_nm) is float and type(config.sim.dose) is float
    assert type(config.protocol.steps) is int and type(config.frame_px) is int


def test_a_long_value_is_cut_in_the_message(tmp_path):
    path = write(tmp_path, SIM.replace('name = "sim"', 'name = "' + "n" * 100_000 + '"'))
    message = one_line_error(load_microscope, path)
    assert "key 'name'" in message and "(100000 characters)" in message and "n" * 61 not in message


def test_a_long_unknown_key_is_cut_in_the_message(tmp_path):
    message = one_line_error(load_microscope, write(tmp_path, "k" * 100_000 + " = 1\n" + SIM))
    assert "unknown key 'kkk" in message and "k" * 61 not in message


def test_a_near_miss_suggests_the_key(tmp_path):
    message = one_line_error(load_microscope, write(tmp_path, MINIMAL + "[sim]\nbaclash_nm = [1.0, 1.0]\n"))
    assert "did you mean 'sim.backlash_nm'?" in message


@pytest.mark.parametrize(
    "content, expected",
    [
        (SIM.encode("utf-16"), "UTF-16 text (byte-order mark)"),
        (SIM.encode("utf-32"), "UTF-32 text (byte-order mark)"),
        (SIM.encode("utf-16-le"), "NUL byte at line 1"),
        (SIM.replace('name = "sim"', 'name = "sïm"').encode("latin-1"),
         "not UTF-8 text: byte 0xef at line 3 (key 'name')"),
        ((SIM + "x = " + "[" * 600 + "]" * 600 + "\n").encode(),
         f"nested too deeply to read, at line {END} (key 'sim.x')"),
        ((SIM + "x = " + "{a=" * 600 + "1" + "}" * 600 + "\n").encode(), "nested too deeply"),
        ((".".join(["a"] * 600) + " = 1\n" + SIM).encode(),
         "key 'a.a.a.a.a.a.a.a' nests tables or arrays more than 8"),
        (SIM.replace("seed = 1", "seed = " + "9" * 5000).encode(), "more than 4300 digits at line 23 (key 'sim.seed')"),
        (SIM.replace("seed = 1", "seed = 0x" + "f" * 4000).encode(),
         "key 'sim.seed' has bad value <an integer of about"),
        ((SIM + "#" + "x" * (1 << 20)).encode(), "larger than 1048576 bytes"),
        ((SIM + "[sim]\n").encode(), f"not valid TOML at line {END}, column 5"),
        (b"name = \n", "not valid TOML at line 1, column 8 (key 'name')"),
    ],
    ids=["utf-16", "utf-32", "utf-16-no-bom", "latin-1", "deep-arrays", "deep-tables", "deep-dotted", "huge-int",
         "huge-hex", "over-1-MiB", "duplicate-table", "no-value"],
)
def test_a_malformed_file_is_one_line_naming_file_and_place(tmp_path, content, expected):
    path = tmp_path / "m.toml"
    path.write_bytes(content)
    assert expected in one_line_error(load_microscope, path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "m.toml"
    path.write_bytes(SIM.encode("utf-8-sig"))
    assert load_microscope(path).name == "sim"


@pytest.mark.parametrize(
    "old, new, key, expected",
    [
        ("skew_deg = 0.5", "skew_deg = -0.5", "tolerances.skew_deg", "[0, 90]"),
        ("agreement_nm = 25.0", "agreement_nm = 1e300", "tolerances.agreement_nm", "[0, 1e7]"),
        ("coupling = 0.01", "coupling = 2", "tolerances.coupling", "[0, 1]"),
        ("coupling = 0.01", "coupling = nan", "tolerances.coupling", "finite"),
        ("alpha_deg = [-30.0, 30.0]", "alpha_deg = [-300.0, 30.0]", "limits.alpha_deg.0", "[-90, 90]"),
        ("x_nm = [-1.0e6, 1.0e6]", "x_nm = [-1.0e6, 1.0e8]", "limits.x_nm.1", "[-1e7, 1e7]"),
        ('accepted_cases = ["a", "b", "c", "d", "e"]', 'accepted_cases = ["a", "a"]', "acceptance.accepted_cases",
         "all different"),
        ('accepted_cases = ["a", "b", "c", "d", "e"]', "accepted_cases = []", "acceptance.accepted_cases",
         "1 to 6 items"),
        ('name = "Generic side-entry holder"', 'name = ""', "name", "1 to 200 characters"),
    ],
)
def test_holder_values_are_bounded(tmp_path, old, new, key, expected):
    assert old in HOLDER
    message = one_line_error(load_holder, write(tmp_path, HOLDER.replace(old, new), "h.toml"))
    assert f"key '{key}'" in message and expected in message


def _leaves(node, key=""):
    """Every value node of a schema (below tables and arrays), with its dotted key."""
    if node.get("type") == "object":
        for name, child in node["properties"].items():
            yield from _leaves(child, f"{key}.{name}".lstrip("."))
    elif node.get("type") == "array":
        yield key, node
        yield from _leaves(node["items"], f"{key}[]")
    else:
        yield key, node


@pytest.mark.parametrize("schema", [MICROSCOPE_SCHEMA, HOLDER_SCHEMA], ids=["microscope", "holder"])
def test_every_key_of_the_schemas_is_bounded(schema):
    for key, node in _leaves(schema):
        kind = node.get("type")
        if kind in ("number", "integer"):
            assert {"minimum", "exclusiveMinimum"} & set(node) and {"maximum", "exclusiveMaximum"} & set(node), key
        elif kind == "string":
            assert node.get("maxLength", 10**9) <= 1024, key
        elif kind == "array":
            assert "maxItems" in node, key
        else:
            assert "enum" in node or kind == "boolean", key
        assert expectation(node), key


def test_the_schema_and_the_dataclasses_name_the_same_keys():
    sim = set(MICROSCOPE_SCHEMA["properties"]["sim"]["properties"]) - {"coupling"}
    sim |= {f"coupling_{k}" for k in MICROSCOPE_SCHEMA["properties"]["sim"]["properties"]["coupling"]["properties"]}
    assert sim == {f.name for f in dataclasses.fields(SimConfig)}
    for table, cls in (("protocol", ProtocolConfig), ("remote", RemoteConfig), ("pyjem", PyJEMConfig)):
        assert set(MICROSCOPE_SCHEMA["properties"][table]["properties"]) == {f.name for f in dataclasses.fields(cls)}


def test_every_default_is_within_the_schema():
    for table, cls in (("protocol", ProtocolConfig), ("sim", SimConfig), ("remote", RemoteConfig),
                       ("pyjem", PyJEMConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not None}
        defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()
                    if not k.startswith("coupling_")}
        problem = schema_problem({table: defaults}, {"type": "object", "properties": {
            table: MICROSCOPE_SCHEMA["properties"][table]}})
        assert problem is None, problem


def test_describe_schema_lists_every_key_with_its_range():
    rows = dict(describe_schema(MICROSCOPE_SCHEMA))
    assert rows["sim.dose"] == "a number in (0, 1e6]"
    assert rows["protocol.steps"] == "an integer in [2, 100]"
    assert rows["sim.coupling.x_to_y"] == "a number in [-1, 1]"
    assert rows["sim.seed"] == "an integer in [0, 2**63 - 1]"
    assert "?" not in rows.values()
    assert dict(describe_schema(HOLDER_SCHEMA))["limits.x_nm"] == "an array of 2 items, each a number in [-1e7, 1e7]"

"""Microscope and holder configs: shipped files load, bad input gets a one-line error
naming the file, the key and the value."""

import pytest

from stage_acceptance.config import (
    HOLDERS_DIR, MICROSCOPES_DIR, ConfigError, available, load_holder, load_microscope,
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

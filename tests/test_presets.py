"""The reference presets fixtures/microscopes/sim-case-X.toml certify as case X for any seed.

The property runs each preset with its stage unchanged but smaller frames (128 px over
the same 3.75 um field) and three steps per direction, to stay fast."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import certify_sim
from stage_acceptance.config import load_microscope


def reduced(letter: str, seed: int):
    config = load_microscope(f"sim-case-{letter}")
    return dataclasses.replace(
        config,
        frame_px=128,
        pixel_size_nm=config.pixel_size_nm * config.frame_px / 128,
        protocol=dataclasses.replace(config.protocol, steps=3),
        sim=dataclasses.replace(config.sim, seed=seed),
    )


@pytest.mark.parametrize("letter", list("abcdef"))
def test_preset_names_its_case(letter):
    config = load_microscope(f"sim-case-{letter}")
    assert config.name == f"sim-case-{letter}" and config.holder == "default"


@pytest.mark.parametrize("letter", list("abcdef"))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1))
def test_every_preset_keeps_its_case_across_seeds(letter, seed, tmp_path_factory):
    analysis, certificate, _ = certify_sim(reduced(letter, seed), tmp_path_factory.mktemp("rec"))
    assert certificate.case == letter, certificate.reasons

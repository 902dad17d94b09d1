"""The readback quantum: recovered from the steps of a quantised readback, and not
reported for a readback that is continuous or only repeats the commanded steps."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import CONFIGS, record_sim
from stage_acceptance.analysis import analyse, readback_quanta
from stage_acceptance.config import load_microscope
from stage_acceptance.readback import readback_quantum_nm, readback_resolution_nm
from stage_acceptance.report import readback_json


@settings(max_examples=60, deadline=None)
@given(quantum=st.floats(1.0, 100.0), offset=st.floats(-1e5, 1e5),
       multiples=st.lists(st.integers(-20, 20).filter(bool), min_size=3, max_size=15))
def test_a_random_quantum_is_recovered_from_rounded_readings(quantum, offset, multiples):
    if math.gcd(*multiples) != 1:  # steps all of 2 quanta are steps of a quantum twice as large
        multiples = multiples + [1]
    readings = np.round(offset + quantum * np.concatenate([[0], np.cumsum(multiples)]), 2)  # written to 0.01 nm
    found = readback_quantum_nm(np.diff(readings), 0.01)
    assert found.quantum_nm == pytest.approx(quantum, abs=0.01)
    assert found.multiples == tuple(multiples)


def test_the_nist_titan_readback_is_a_multiple_of_19_5_nm():
    readings_nm = np.array([-15990.0, -16009.5, -16029.0, -16029.0, -16107.0, -16107.0])  # StagePosition x
    assert readback_resolution_nm(readings_nm) == pytest.approx(0.1)
    found = readback_quantum_nm(np.diff(readings_nm), 0.1)
    assert found.quantum_nm == pytest.approx(19.5) and found.multiples == (-1, -1, -4)
    assert found.largest_misfit_nm == pytest.approx(0.0, abs=1e-9)


def test_a_continuous_readback_has_no_quantum():
    readings = np.random.default_rng(4).normal(0.0, 300.0, 40)
    found = readback_quantum_nm(np.diff(readings), readback_resolution_nm(readings))
    assert found.quantum_nm is None and "not quantised at its resolution" in found.reason


def test_too_few_steps_and_a_readback_that_repeats_the_commands_are_not_measured():
    assert "needs >= 3 nonzero readback steps; the session has 1" in readback_quantum_nm([39.3, 0.0], 0.1).reason
    targets = np.zeros((8, 5))
    targets[:, 0] = np.arange(8) * 600.0
    quanta = readback_quanta(targets.copy(), targets)  # the readback equals the target
    assert quanta["x"].quantum_nm is None
    assert "7 readback step(s) equal to the commanded step were left out" in quanta["x"].reason
    with pytest.raises(ValueError, match="tolerance_nm must be a finite number > 0"):
        readback_quantum_nm([1.0, 2.0, 3.0], 0.0)


def test_the_simulated_quantised_readback_is_found_and_reported(tmp_path):
    base = load_microscope(CONFIGS / "case-a.toml")
    # 600 nm steps read as 12 or 13 quanta of 47 nm (a quantum much finer than the step,
    # e.g. 7.3 nm read as 82 or 83 of them, is not unique at the readings' 0.1 nm)
    sim = dataclasses.replace(base.sim, reported_quantum_nm=47.0)
    session, _ = record_sim(dataclasses.replace(base, sim=sim), tmp_path / "rec", protocols=["hysteresis-x"])
    analysis = analyse(session, jobs=1)
    document = readback_json(analysis)
    assert document["x"]["quantum_nm"] == pytest.approx(47.0, abs=0.01)
    assert document["x"]["steps"] >= 3 and document["y"]["quantum_nm"] is None

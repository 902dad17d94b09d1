"""Helpers for the framework's own tests: run the simulated pipeline without pytest's plugin."""

from __future__ import annotations

import os
from pathlib import Path

import importlib
import pytest
from hypothesis import settings

from stage_acceptance.analysis import analyse
from stage_acceptance.certification import certify
from stage_acceptance.config import MicroscopeConfig, ProtocolConfig, load_holder, load_microscope
from stage_acceptance.geometry import StageToImage
from stage_acceptance.microscope import Envelope
from stage_acceptance.protocols import FAMILIES, build
from stage_acceptance.session import RecordingWriter, run_protocols
from stage_acceptance.sim.microscope import SimulatedMicroscope

CONFIGS = Path(__file__).parent / "configs"
SUITES = Path(__file__).parent.parent / "suites"
SERIALEM_DATA = Path(__file__).parent / "data" / "serialem-nist-titan"
"""Real SerialEM frames (NIST Titan), cropped to 512 x 512, shipped with the tests (see its README)."""

pytest_plugins = ["pytester"]

# These tests start some 30 pytest and command-line subprocesses, and each one imports
# and assertion-rewrites the pytest plugins (pytest-html, hypothesis, xdist, this
# project) again when Python may not cache bytecode: about 1.3 s of compiling per
# process. Caching changes nothing else, so the subprocesses (and the xdist workers,
# started after this file is read) may cache it, whatever the environment says.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Loaded once here: pytester restores sys.modules after each of its tests, and importing
# SQLAlchemy's PostgreSQL dialect (through Alembic) a second time warns.
importlib.import_module("alembic.command")

# CI explores the same examples on every run (reproducible); developers' runs explore anew.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def record_on(microscope, directory: Path, protocol: ProtocolConfig, protocols, holder="default", **meta):
    """Run `protocols` on any microscope behind the holder's envelope, recording to `directory`."""
    meta = {"microscope": microscope.name, "holder": holder, "pixel_size_nm": microscope.pixel_size_nm, **meta}
    writer = RecordingWriter(directory, meta)
    s2i = meta.get("stage_to_image")
    plan = build(protocol, protocols, field_nm=microscope.frame_px * microscope.pixel_size_nm,
                 stage_to_image=None if s2i is None else StageToImage(s2i["rotation_deg"], s2i["flip_y"]))
    return run_protocols(Envelope(microscope, load_holder(holder).limits), plan, writer)


def record_sim(config: MicroscopeConfig, directory: Path, protocols=FAMILIES["certification"], holder="default"):
    """Run `protocols` on the simulated microscope of `config`; return (session, microscope)."""
    microscope = SimulatedMicroscope(config)
    meta = {}
    if config.stage_to_image is not None:
        meta["stage_to_image"] = {"rotation_deg": config.stage_to_image.rotation_deg,
                                  "flip_y": config.stage_to_image.flip_y}
    return record_on(microscope, directory, config.protocol, protocols, holder, **meta), microscope


def certify_sim(config: MicroscopeConfig, directory: Path, holder="default"):
    """Record, analyse and certify; return (analysis, certificate, microscope)."""
    session, microscope = record_sim(config, directory, holder=holder)
    analysis = analyse(session)
    return analysis, certify(analysis, load_holder(holder)), microscope


@pytest.fixture
def case_config():
    """``case_config("a")`` loads tests/configs/case-a.toml."""
    return lambda letter: load_microscope(CONFIGS / f"case-{letter}.toml")


def results_document(microscope="sim", holder="default", verdict="accepted", case="a",
                     measured="2026-01-10T08:00:00+00:00", analysed=None, backlash_nm=2.0, **extra):
    """A results-v1 document of the shape stage-acceptance writes (two checks and a pair)."""
    return {
        "schema": "stage-acceptance/results", "version": 1, "microscope": microscope, "holder": holder,
        "holder_name": "Generic side-entry holder", "source": "live", "session": "/data/rec",
        "verdict": verdict, "certification": {"case": case, "accepted": verdict == "accepted"},
        "date_utc": analysed or measured, "date_measured_utc": measured, "stage_acceptance_version": "0.1.0",
        "checks": {
            "x.backlash_nm": {"label": "Backlash, x", "value": backlash_nm, "unit": "nm", "limit": 15.0,
                              "passed": abs(backlash_nm) <= 15.0, "ci95": [backlash_nm - 1.5, backlash_nm + 1.5],
                              "marginal": False},
            "drift_nm_per_min": {"label": "Drift while standing still", "value": None, "unit": "nm/min",
                                 "limit": 5.0, "passed": None, "ci95": None, "marginal": False},
        },
        "pairs": {"target_actual": {"rms_nm": 3.0, "rms_ci95": [2.0, 4.5], "agree": True, "consistent": True}},
        **extra,
    }


@pytest.fixture(autouse=True)
def _no_history_from_the_environment(monkeypatch):
    """A developer's STAGE_ACCEPTANCE_HISTORY never receives the framework's own test runs."""
    from stage_acceptance.history import HISTORY_ENV

    monkeypatch.delenv(HISTORY_ENV, raising=False)


class FakeClock:
    """A clock that advances only when slept."""

    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds

"""Helpers for the framework's own tests: run the simulated pipeline without pytest's plugin."""

from __future__ import annotations

import os
from pathlib import Path

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
SERIALEM_DATA = Path(os.environ.get(
    "STAGE_ACCEPTANCE_SERIALEM_DATA",
    Path(__file__).resolve().parents[2] / "shared" / "data" / "serialem-nist-titan"))
"""Real SerialEM frames (NIST Titan) from the project's shared/ folder beside the checkout."""

pytest_plugins = ["pytester"]

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

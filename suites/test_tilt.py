"""Tilt axes: image shift per degree (eucentric height) and tilt backlash."""

import pytest

pytestmark = pytest.mark.tilt

TILTS = ["alpha", "beta"]


@pytest.mark.parametrize("axis", TILTS)
def test_image_shift_per_degree(axis, stage_checks, verify, attach_figure):
    """How far the specimen moves sideways per degree of tilt (off the eucentric height)."""
    attach_figure(f"tilt-{axis}")
    verify(stage_checks[f"tilt.{axis}.shift_nm_per_deg"])


@pytest.mark.parametrize("axis", TILTS)
def test_tilt_backlash(axis, stage_checks, verify, attach_figure):
    """Tilt lost on the first step after a reversal."""
    attach_figure(f"tilt-{axis}")
    verify(stage_checks[f"tilt.{axis}.backlash_deg"])

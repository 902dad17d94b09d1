"""Frames without a move in between: speed of the image content."""

import pytest

pytestmark = pytest.mark.drift


def test_drift(stage_checks, verify, attach_figure):
    attach_figure("drift")
    verify(stage_checks["drift_nm_per_min"])

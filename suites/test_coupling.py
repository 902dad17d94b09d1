"""Figure 4 of Fiedler et al. (2023): out and back along each cardinal direction."""

import pytest

pytestmark = pytest.mark.coupling


@pytest.mark.parametrize("metric", ["x_to_y", "y_to_x"])
def test_coupling(metric, stage_checks, verify, attach_figure):
    """How far a step along one axis moves the specimen along the other (slope)."""
    attach_figure("cross")
    verify(stage_checks[f"coupling.{metric}"])


def test_skew(stage_checks, verify, attach_figure):
    """Angle between the measured x and y directions, minus 90 degrees."""
    attach_figure("cross")
    verify(stage_checks["coupling.skew_deg"])

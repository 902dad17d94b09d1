"""Figure 3 of Fiedler et al. (2023): steps along one axis, both directions, twice."""

import pytest

pytestmark = pytest.mark.hysteresis

AXES = ["x", "y"]


@pytest.mark.parametrize("axis", AXES)
def test_backlash(axis, stage_checks, verify, attach_figure):
    """Lost motion of the first step after a reversal, beyond that of plain steps."""
    attach_figure(f"hysteresis-{axis}")
    attach_figure(f"overlay-{axis}")
    verify(stage_checks[f"{axis}.backlash_nm"])


@pytest.mark.parametrize("axis", AXES)
def test_scale_error(axis, stage_checks, verify, attach_figure):
    """Actual step length / commanded step length - 1, over plain steps."""
    attach_figure(f"hysteresis-{axis}")
    verify(stage_checks[f"{axis}.scale_error"])


@pytest.mark.parametrize("axis", AXES)
def test_step_scatter(axis, stage_checks, verify, attach_figure):
    """Random error of plain steps around the scaled commanded step."""
    attach_figure(f"hysteresis-{axis}")
    verify(stage_checks[f"{axis}.step_scatter_nm"])


@pytest.mark.parametrize("axis", AXES)
def test_reported_backlash(axis, stage_checks, verify, attach_figure):
    """Backlash as the microscope's readback sees it."""
    attach_figure(f"hysteresis-{axis}")
    verify(stage_checks[f"{axis}.reported_backlash_nm"])


@pytest.mark.parametrize("axis", AXES)
def test_reported_scale_error(axis, stage_checks, verify, attach_figure):
    """Scale error of the readback against the commanded steps."""
    attach_figure(f"hysteresis-{axis}")
    verify(stage_checks[f"{axis}.reported_scale_error"])
